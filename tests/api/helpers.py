"""Helpers of the API's tests: the real application served by uvicorn on a free port (in a
thread of the test process, so a test can also read the app's state) or as ``cesar api`` in its
own process, keys and databases for it, HTTP calls with a key, and reads of the served database.

Fixtures that use them (``migrated_url``, ``api``, ``migrated_db``) live in tests/conftest.py:
the smoke and demo tests outside tests/api/ use them too.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from psycopg.rows import dict_row

from cesar import migrate
from cesar.api.app import create_app
from cesar.api.settings import AuthSettings
from cesar.config import Settings
from cesar.dev.embedded import free_port
from cesar.events.settings import EventSettings
from tests.helpers import REPO, PgStack, make_settings


@dataclass
class ApiServer:
    url: str
    server: uvicorn.Server
    #: A key with every scope, created in the served database when it could be (else one of the
    #: right shape that no database knows: its lookup then meets the database's state).
    key: str = ""
    #: The monitoring credential (CESAR_API_METRICS_TOKEN) this server accepts.
    monitor: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, *, key: str | None = None, **kwargs: object) -> httpx.Response:
        """GET with the server's key (``key=""``: none; or another key)."""
        chosen = self.key if key is None else key
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        if chosen:
            headers.setdefault("Authorization", f"Bearer {chosen}")
        return httpx.get(f"{self.url}{path}", timeout=kwargs.pop("timeout", 5.0),  # type: ignore[arg-type]
                         headers=headers, **kwargs)  # type: ignore[arg-type]


def make_key(url: str, *scopes: str, name: str = "tests", **kwargs: object) -> str:
    """A new API key in the database at ``url`` (every scope unless given)."""
    from cesar import keys

    with psycopg.connect(url, autocommit=True) as conn:
        return keys.create(conn, name, list(scopes or keys.SCOPES), actor="tests",
                           **kwargs).key  # type: ignore[arg-type]


def server_key(url: str | None) -> str:
    from cesar import keys

    if url:
        try:
            return make_key(url)
        except psycopg.Error:  # down or not migrated: the test is about that
            pass
    return keys.generate()[0]


def settings_for(url: str, tmp: Path, **overrides: object) -> Settings:
    """Development settings serving ``url`` as the local database, and nothing embedded."""
    return make_settings(local_db_url=url, state_dir=tmp / "no-embedded-stack", **overrides)


@contextmanager
def serve(settings: Settings, auth: AuthSettings | None = None,
          events: EventSettings | None = None) -> Iterator[ApiServer]:
    """The application under uvicorn (real HTTP) on a free port, for the block's duration."""
    port = free_port()
    key = server_key(settings.local_db_url)
    monitor = secrets.token_urlsafe(24)
    auth = auth or AuthSettings(_env_file=None, metrics_token=monitor)  # type: ignore[call-arg]
    secret = auth.metrics_token.get_secret_value() if auth.metrics_token else ""
    config = uvicorn.Config(create_app(settings, auth, events), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see the captured log)")
        time.sleep(0.02)
    try:
        yield ApiServer(f"http://127.0.0.1:{port}", server, key, secret)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def migrated_database(pg_stack: PgStack, settings: Settings | None = None) -> tuple[str, str]:
    """A new database with every migration applied; returns (name, app URL)."""
    name = f"t_api_{uuid.uuid4().hex[:10]}"
    url = pg_stack.create_database(name)
    migrate.apply_all(url, settings or make_settings(),
                      migrations_dir=REPO / "sql" / "migrations")
    return name, url


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (``labels`` as written, e.g. ``route="/x"``),
    summed over every series of that name whose labels contain it."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
        if match and labels in (match.group(1) or ""):
            total += float(match.group(2))
            found = True
    if not found:
        raise AssertionError(f"no sample {name}{{{labels}}} in the exposition")
    return total


def run_cesar(*args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``cesar ARGS`` as a separate process, from the repository root."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("CESAR_", "PROMETHEUS_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cesar.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def call(url: str, key: str, method: str, path: str, json: Any = None,
         headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=json, timeout=30,
                         headers={"Authorization": f"Bearer {key}", **(headers or {})},
                         **kwargs)


def rows(db_url: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn, \
            conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def active_agents(db_url: str) -> list[str]:
    return [str(r["id"]) for r in rows(db_url, "SELECT id FROM agents WHERE status = 'active' "
                                               "ORDER BY name")]


@contextmanager
def cesar_api(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``cesar api ARGS`` as its own process (as systemd runs it), stopped with SIGTERM after."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("CESAR_", "PROMETHEUS_"))}
    full_env.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "cesar.cli", "api", *args], cwd=REPO,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"cesar api exited: {proc.stdout.read() if proc.stdout else ''}"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/health never answered 200")


#: The monitoring credential the servers started here accept on /metrics (generated per run).
MONITOR = secrets.token_urlsafe(24)


def base_env(url: str, tmp: Path) -> dict[str, str]:
    return {"ENVIRONMENT": "development", "LOCAL_DB_URL": url,
            "CESAR_STATE_DIR": str(tmp / "state"), "CESAR_API_METRICS_TOKEN": MONITOR}


#: Every route the application serves (test_routes.py checks the OpenAPI document lists these).
ROUTES = {"/agents", "/agents/{agent_id}", "/events", "/health", "/health/live", "/metrics"}
#: The work routes (tasks, runs, dispatch): tests/api/test_tasks.py, test_runs.py, test_dispatch.py.
ROUTES |= {"/tasks", "/tasks/{task_id}", "/tasks/{task_id}/cancel", "/dispatch", "/runs",
           "/runs/{run_id}", "/runs/{run_id}/events", "/runs/{run_id}/finish"}
#: The sync's conflicts, read-only (the dashboard's conflicts page): tests/web/.
ROUTES |= {"/conflicts"}


def event_settings(**overrides: Any) -> EventSettings:
    """Event settings that poll fast and let idle streams go after a second."""
    values: dict[str, Any] = {"heartbeat_seconds": 15.0, "poll_seconds": 0.05,
                              "idle_seconds": 1.0}
    values.update(overrides)
    return EventSettings(_env_file=None, **values)  # type: ignore[call-arg]


def serve_events(url: str, tmp: Path, **overrides: Any) -> Any:
    """``serve`` with event settings for the /events tests (and no lockout from failed keys)."""
    auth = AuthSettings(_env_file=None, auth_failure_limit=100_000)  # type: ignore[call-arg]
    app_settings = settings_for(url, tmp)
    return serve(app_settings, auth, events=event_settings(**overrides))
