"""The wheelhouse: the ``cesar`` package and its pinned runtime dependencies as wheel files.

Hosts never reach a package index (the test hosts cannot, and air-gapped production hosts must
not), so the controller builds everything they install, once per release:

    wheelhouse/
        cesar_ops-<version>-py3-none-any.whl      built from this checkout (``uv build``)
        <dependency>-<version>-<tags>.whl ...     exactly the versions in uv.lock, for the
                                                  hosts' Python and platform (``pip download``)
        requirements.txt                          every wheel pinned with its sha256
        release.json                              the release id and what it was built for

The hosts install with ``pip install --no-index --find-links DIR --require-hashes -r
requirements.txt``: nothing outside the folder can be installed, and nothing inside it that was
altered. The release id is a digest of ``requirements.txt``, so the same source and lock give the
same id (hatchling builds reproducible wheels) and a deploy of an unchanged release is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from cesar.console import emit_json
from cesar.errors import ConfigError, OperationFailed

# Debian bookworm, the hosts' release: CPython 3.11, glibc 2.36.
DEFAULT_PYTHON = "3.11"
DEFAULT_GLIBC = (2, 36)
REQUIREMENTS = "requirements.txt"
RELEASE_FILE = "release.json"
PROJECT = "cesar-ops"
_PIP = ("uv", "tool", "run", "--from", "pip>=24.0", "pip")


@dataclass(frozen=True)
class Release:
    """What ``release.json`` records; ``id`` names the release directory on the hosts."""

    id: str
    version: str
    python: str
    platform: str
    wheels: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def manylinux_platforms(
    glibc: tuple[int, int] = DEFAULT_GLIBC, arch: str | None = None
) -> list[str]:
    """Every manylinux tag a host with this glibc accepts, newest first (pip wants them all)."""
    arch = arch or platform.machine()
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]
    return tags


def release_id(requirements_text: str) -> str:
    """A short, stable digest of the pinned and hashed requirements: the release's name."""
    return hashlib.sha256(requirements_text.encode()).hexdigest()[:12]


def build(
    out: Path,
    *,
    project_dir: Path = Path("."),
    python: str = DEFAULT_PYTHON,
    platforms: Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> Release:
    """Build the wheelhouse into ``out`` (replaced atomically). Raises OperationFailed naming
    the step that failed."""
    project_dir = project_dir.resolve()
    if not (project_dir / "pyproject.toml").exists() or not (project_dir / "uv.lock").exists():
        raise ConfigError(
            f"{project_dir} has no pyproject.toml and uv.lock; run from the repository root"
        )
    if shutil.which("uv") is None:
        raise ConfigError("building the wheelhouse needs uv: python3 -m pip install uv")
    if not re.fullmatch(r"3\.\d+", python):
        raise ConfigError(f"--python {python!r} is not a Python version like 3.11")
    platforms = list(platforms or manylinux_platforms())
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        progress("building the cesar wheel (uv build)")
        wheel = _build_wheel(project_dir, staging)
        progress("exporting the locked runtime dependencies (uv export)")
        pinned = _export_requirements(project_dir)
        deps_file = staging / ".dependencies.txt"
        deps_file.write_text(pinned)
        progress(f"downloading wheels for CPython {python} on {platforms[0]} (pip download)")
        _download(deps_file, staging, python, platforms)
        deps_file.unlink()
        requirements = pinned + _pin(wheel)
        (staging / REQUIREMENTS).write_text(requirements)
        release = Release(
            id=release_id(requirements), version=_wheel_version(wheel), python=python,
            platform=platforms[0], wheels=len(list(staging.glob("*.whl"))),
        )
        (staging / RELEASE_FILE).write_text(json.dumps(release.as_dict(), indent=2) + "\n")
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"wheelhouse {out}: release {release.id}, {release.wheels} wheels")
    return release


def load(path: Path) -> Release:
    """The release recorded in an existing wheelhouse."""
    try:
        return Release(**json.loads((path / RELEASE_FILE).read_text()))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is not a wheelhouse (no {RELEASE_FILE}); build one with "
            "`uv run cesar wheelhouse build`"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path / RELEASE_FILE} is unreadable ({exc}); rebuild it") from None


# -------------------------------------------------------------------- steps
def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_NO_PROGRESS": "1"}
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env,
                              timeout=900, check=True)
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or exc.stdout or "").strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()] or lines
        tail = errors[-1] if errors else f"exit code {exc.returncode}"
        raise OperationFailed(f"{what} failed: {tail}") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{what} did not finish within 900 s") from None
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} needs {exc.filename}, which is not installed") from None
    return done.stdout


def _build_wheel(project_dir: Path, dest: Path) -> Path:
    _run(["uv", "build", "--wheel", "--out-dir", str(dest), str(project_dir)], "uv build")
    wheels = list(dest.glob("cesar_ops-*.whl"))
    if len(wheels) != 1:
        raise OperationFailed(f"uv build produced {len(wheels)} cesar wheels, expected one")
    return wheels[0]


def _export_requirements(project_dir: Path) -> str:
    """The runtime dependencies exactly as locked, each with its hashes (uv.lock unchanged)."""
    return _run(
        ["uv", "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header",
         "--format", "requirements-txt"],
        "uv export", cwd=project_dir,
    )


def _download(requirements: Path, dest: Path, python: str, platforms: Sequence[str]) -> None:
    cmd = [*_PIP, "download", "--quiet", "--dest", str(dest), "--require-hashes", "--no-deps",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
           "--abi", f"cp{python.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    for tag in platforms:
        cmd += ["--platform", tag]
    _run([*cmd, "-r", str(requirements)], "pip download")


def _pin(wheel: Path) -> str:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"{PROJECT}=={_wheel_version(wheel)} \\\n    --hash=sha256:{digest}\n"


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into place at ``target``; a reader never sees a half-built wheelhouse."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    new_mode = 0o755
    target.chmod(new_mode)
    shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------- command line
@click.group("wheelhouse")
def wheelhouse_group() -> None:
    """The wheels the hosts install (they never reach a package index)."""


@wheelhouse_group.command("build")
@click.option("--out", default="dist/wheelhouse", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Directory to (re)write.")
@click.option("--python", "python", default=DEFAULT_PYTHON, show_default=True,
              help="The hosts' Python version (Debian bookworm: 3.11).")
@click.option("--glibc", default="2.36", show_default=True,
              help="The hosts' glibc version: the newest manylinux wheels they accept.")
@click.option("--json", "as_json", is_flag=True, help="Print release.json instead of progress.")
def build_command(out: Path, python: str, glibc: str, as_json: bool) -> None:
    """Build the cesar wheel and download its locked dependencies for the hosts."""
    try:
        major, minor = (int(x) for x in glibc.split("."))
    except ValueError:
        raise ConfigError(f"--glibc {glibc!r} is not a version like 2.36") from None
    release = build(out, python=python, platforms=manylinux_platforms((major, minor)),
                    progress=(lambda _m: None) if as_json else (lambda m: click.echo(m)))
    if as_json:
        emit_json(release.as_dict())
