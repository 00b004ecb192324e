"""The API process of the development stack: ``invoke up`` starts it, ``invoke down`` stops it.

``cesar api`` runs detached (its own session, so it outlives the invoke process) on 127.0.0.1
and ``CESAR_API_PORT`` (default 8000), logging to ``<state>/log/api.log``; its pid is in
``<state>/api.pid`` and its address in ``<state>/api.json``. ``start`` returns once ``/health``
answers 200 and is idempotent: a running API is found, checked and left alone. In production a
process manager runs ``cesar api`` instead (see docs/api.md); nothing here is used there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from cesar.api.server import check_port
from cesar.api.settings import load_api_settings
from cesar.config import Settings
from cesar.credentials import write_private
from cesar.errors import OperationFailed

HOST = "127.0.0.1"
#: Seconds `start` waits for /health to answer 200.
START_TIMEOUT = 30.0
#: Seconds `stop` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT = 15.0


@dataclass
class ApiProcess:
    pid: int
    host: str
    port: int
    started_at: float

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ApiService:
    """The API started from one state directory (``.cesar/`` unless CESAR_STATE_DIR)."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.port = port or load_api_settings().port
        self.pid_file = self.state_dir / "api.pid"
        self.state_file = self.state_dir / "api.json"
        self.log_file = self.state_dir / "log" / "api.log"

    @classmethod
    def for_settings(cls, settings: Settings) -> ApiService:
        return cls(settings.state_dir)

    # ------------------------------------------------------------------ state
    def running(self) -> ApiProcess | None:
        """The API this directory started, if its process is still alive (and still ours)."""
        try:
            proc = ApiProcess(**json.loads(self.state_file.read_text()))
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError, TypeError):
            return None
        if pid != proc.pid or not _is_our_api(pid):
            return None
        return proc

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ actions
    def start(self) -> list[str]:
        """Start the API unless it runs; wait until /health answers 200."""
        proc = self.running()
        if proc is not None:
            wait_healthy(proc.url, deadline=time.monotonic() + START_TIMEOUT, log=self.log_file)
            return [f"the API is already running on {proc.url} (pid {proc.pid})"]
        self._forget()  # stale files of a process that is gone
        check_port(HOST, self.port)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CESAR_STATE_DIR": str(self.state_dir)}
        with self.log_file.open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "cesar.cli", "api", "--host", HOST,
                 "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # outlives `invoke up`; Ctrl-C there does not reach it
            )
        proc = ApiProcess(child.pid, HOST, self.port, time.time())
        write_private(self.pid_file, f"{child.pid}\n")
        write_private(self.state_file, json.dumps(asdict(proc), indent=2) + "\n")
        try:
            wait_healthy(proc.url, deadline=time.monotonic() + START_TIMEOUT,
                          log=self.log_file, child=child)
        except OperationFailed:
            self._terminate(child.pid)
            self._forget()
            raise
        return [f"started the API on {proc.url} (pid {proc.pid}, log {self.log_file})"]

    def stop(self) -> list[str]:
        proc = self.running()
        if proc is None:
            self._forget()
            return []
        self._terminate(proc.pid)
        self._forget()
        return [f"stopped the API (pid {proc.pid})"]

    def _terminate(self, pid: int) -> None:
        """SIGTERM (uvicorn finishes open requests), then SIGKILL the whole session."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # its own session: the group id is its pid

    def status(self) -> dict[str, Any]:
        """``api_url`` and whether the API answers, for ``invoke status --json``."""
        proc = self.running()
        url = proc.url if proc else f"http://{HOST}:{self.port}"
        code, engine = _health(url)
        return {
            "api_url": url,
            "api": {
                "running": proc is not None, "pid": proc.pid if proc else None,
                "answers": code is not None, "health_status": code, "database": engine,
                "log_file": str(self.log_file),
            },
        }


# ---------------------------------------------------------------------------- helpers
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our child, not yet reaped) is gone for every purpose here.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_api(pid: int) -> bool:
    """True when ``pid`` runs ``cesar.cli api`` (a recycled pid is someone else's)."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"cesar.cli" in argv and b"api" in argv


def _health(url: str, timeout: float = 2.0) -> tuple[int | None, str | None]:
    """(/health's status code, components.database), or (None, None) when nothing answers."""
    try:
        response = httpx.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError:
        return None, None
    try:
        engine = response.json()["components"]["database"]
    except (ValueError, KeyError, TypeError):
        engine = None
    return response.status_code, engine


def wait_healthy(url: str, *, deadline: float, log: Path,
                 child: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url``/health answers 200; a started ``child`` that exits ends the wait with
    the last line of its ``log``. Raises OperationFailed past ``deadline`` (monotonic)."""
    code: int | None = None
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            raise OperationFailed(
                f"the API exited while starting (exit code {child.returncode}): "
                f"{_last_line(log)}; see {log}"
            )
        code, _ = _health(url, timeout=1.0)
        if code == 200:
            return
        time.sleep(0.1)
    state = f"/health answered {code}" if code else "nothing answered"
    raise OperationFailed(
        f"the API on {url} did not become healthy within {START_TIMEOUT:g} s ({state}); "
        f"see {log}"
    )


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
