"""The dashboard (``web/``) on the development stack: build it when its sources change.

The API serves the static export itself under ``/ui/`` (``cesar.api.dashboard``), so the page
and the API share one origin: no CORS, and the key travels only in the ``Authorization`` header
of same-origin requests. ``build`` runs ``npm ci`` when ``package-lock.json`` changed and ``next
build`` when any source changed (a hash stamp in the state directory), then swaps the export
into ``<state>/web`` in one rename, so a running API never serves a half-written build. On hosts
nginx serves the same export (ansible role ``cesar_web``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cesar.api.dashboard import BASE_PATH
from cesar.errors import ConfigError, OperationFailed

WEB_SOURCE = Path(__file__).resolve().parent.parent / "web"
#: What the build depends on; node_modules, .next and out are its products.
_SOURCES = ("package.json", "package-lock.json", "next.config.mjs", "tsconfig.json", "src",
            "public")
#: Seconds npm ci and next build may take.
BUILD_TIMEOUT = 600


def sources_hash(source: Path = WEB_SOURCE) -> str:
    digest = hashlib.sha256()
    for name in _SOURCES:
        top = source / name
        paths = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in paths:
            if not path.is_file():
                continue
            digest.update(str(path.relative_to(source)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _lock_hash(source: Path) -> str:
    return hashlib.sha256((source / "package-lock.json").read_bytes()).hexdigest()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                              env={**os.environ, "NEXT_TELEMETRY_DISABLED": "1"})
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} needs `{cmd[0]}` (Node.js 20 with npm); install nodejs and "
                          "npm, or set CESAR_WEB=off to start the stack without the dashboard"
                          ) from exc
    except subprocess.TimeoutExpired as exc:
        raise OperationFailed(f"{what} took more than {BUILD_TIMEOUT} s; run `{' '.join(cmd)}` "
                              f"in {cwd} to see why") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise OperationFailed(f"{what} failed ({tail}); run `{' '.join(cmd)}` in {cwd}")


@contextmanager
def _source_lock(source: Path) -> Iterator[None]:
    """One process at a time changes node_modules or out/ of a checkout: `npm ci` empties
    node_modules first, which would break a build (or another install) running beside it."""
    import fcntl

    with (source / ".cesar-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def install(source: Path = WEB_SOURCE, stamp_dir: Path | None = None) -> bool:
    """``npm ci`` unless node_modules matches the lock file. True when it ran."""
    with _source_lock(source):
        return _install_locked(source, stamp_dir)


def _install_locked(source: Path, stamp_dir: Path | None = None) -> bool:
    stamp = (stamp_dir or source / "node_modules") / ".cesar-lock-hash"
    want = _lock_hash(source)
    if (source / "node_modules").is_dir() and stamp.is_file() and stamp.read_text() == want:
        return False
    _run(["npm", "ci", "--no-audit", "--no-fund"], source, "installing the dashboard's packages")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(want)
    return True


def build(target: Path, source: Path = WEB_SOURCE, force: bool = False) -> list[str]:
    """Make ``target`` hold the export of the current sources; what it did, as actions.

    The export in ``web/out`` is made once per change of the sources (a hash stamp beside it)
    and copied to each target, so several state directories (tests) share one build; a file
    lock keeps two builds of the same checkout from interleaving."""
    actions: list[str] = []
    if not (source / "package.json").is_file():
        raise ConfigError(f"no dashboard sources in {source}")
    want = sources_hash(source)
    stamp = target.parent / f".{target.name}.hash"
    if not force and (target / "index.html").is_file() and stamp.is_file() \
            and stamp.read_text() == want:
        return actions
    with _source_lock(source):
        out = source / "out"
        built = source / ".cesar-build-hash"
        if force or not (out / "index.html").is_file() or not built.is_file() \
                or built.read_text() != want:
            if _install_locked(source):
                actions.append("installed the dashboard's packages (npm ci)")
            built.unlink(missing_ok=True)
            _run(["npm", "run", "--silent", "build"], source, "building the dashboard")
            if not (out / "index.html").is_file():
                raise OperationFailed(f"the dashboard build left no {out / 'index.html'}")
            built.write_text(want)
            actions.append("built the dashboard (next build)")
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = target.parent / f".{target.name}.new"
        old = target.parent / f".{target.name}.old"
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        shutil.copytree(out, fresh)
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    stamp.write_text(want)
    actions.append(f"deployed the dashboard to {target}")
    return actions


def stack_up(target: Path) -> list[str]:
    """What ``invoke up`` does for the dashboard: build and deploy it, or say why not.

    Without Node.js the rest of the stack still comes up (the dashboard is an addition, not a
    dependency of the API); a build that fails is an error, not a silent stale page."""
    if not enabled():
        return []
    if shutil.which("npm") is None or shutil.which("node") is None:
        return ["the dashboard is not built: no `node`/`npm` here (install Node.js 18.17+ with "
                "npm, or set CESAR_WEB=off to silence this)"]
    return build(target)


def enabled() -> bool:
    return os.environ.get("CESAR_WEB", "on").lower() not in {"off", "0", "false", "no"}


def dashboard_url(api_url: str, target: Path, answers: bool) -> str | None:
    """The URL while the running API serves a build (asked, not assumed), else None."""
    if not (answers and (target / "index.html").is_file()):
        return None
    import httpx

    url = f"{api_url}{BASE_PATH}/"
    try:
        served = httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        served = False
    return url if served else None


def status_fields(api_status: dict[str, Any], target: Path) -> dict[str, Any]:
    api = api_status.get("api") or {}
    return {"dashboard_url": dashboard_url(str(api_status.get("api_url")), target,
                                           bool(api.get("answers")))}


CLIENT_SCHEMA = WEB_SOURCE / "src" / "lib" / "api-schema.ts"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the API serves at /openapi.json (no database needed to make it)."""
    from cesar.api.app import create_app  # FastAPI's whole app, only when a client is generated

    return create_app().openapi()


def generate_client(out: Path = CLIENT_SCHEMA, source: Path = WEB_SOURCE) -> Path:
    """Write the typed client's schema with openapi-typescript from the API's document."""
    import json
    import tempfile

    install(source)
    generator = source / "node_modules" / ".bin" / "openapi-typescript"
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "openapi.json"
        doc.write_text(json.dumps(openapi_document(), indent=2))
        _run([str(generator), str(doc), "-o", str(out)], source,
             "generating the dashboard's API client")
    out.write_text(_break_self_references(out.read_text()))
    return out


_SELF_REFERENCE = re.compile(
    r'^( +)(\w+): ([^\n]*components\["schemas"\]\["\2"\][^\n]*(?:\n\1 +[^\n]*)*?\n\1}[^\n]*;)$',
    re.MULTILINE)


def _break_self_references(text: str) -> str:
    """A schema that refers to itself (JSON values: arrays and objects of JSON values) comes out
    as a type that indexes itself, which TypeScript rejects (TS2502); the client reads such
    values as ``unknown``, which is what they are to it."""
    return _SELF_REFERENCE.sub(r"\1\2: unknown;", text)
