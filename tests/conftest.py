"""Shared fixtures: a real embedded PostgreSQL for the whole session, fresh databases per test.

Nothing here mocks the database. A requirement that is missing fails the run in CI (CI=true)
with a message naming what to install; outside CI it skips with the same message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cesar.config import Settings
from cesar.dev.embedded import APP_ROLE, LOGINS, EmbeddedPostgres, StackState

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Variables that would leak an operator's configuration into in-process tests.
_CONFIG_VARS = ("ENVIRONMENT", "DATABASE_TARGET", "LOCAL_DB_URL", "COCKROACH_DB_URL",
                "COCKROACH_READ_REPLICA_URL")


def require(condition: bool, message: str) -> None:
    """Fail in CI, skip elsewhere, when a test's requirement is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing requirement (CI must provide it): {message}", pytrace=False)
    pytest.skip(message)


def child_env() -> dict[str, str]:
    """The environment for a `cesar`/`invoke` subprocess: no operator configuration leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CESAR_", "PG")) and k not in _CONFIG_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    return env


def stopped(proc: subprocess.Popen[str]) -> bool:
    """Whether the process is stopped (SIGSTOP): state ``T`` in /proc/PID/stat."""
    with open(f"/proc/{proc.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def wait_stopped(proc: subprocess.Popen[str], what: str, timeout: float = 60) -> None:
    """Wait until ``proc`` has paused itself; fail if it exits or never pauses."""
    deadline = time.monotonic() + timeout
    while not stopped(proc):
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"{what} exited ({proc.returncode}) instead of pausing: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never paused")
        time.sleep(0.05)


def make_settings(**overrides: object) -> Settings:
    """Settings from the given values only: no .env files, no process environment."""
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _clean_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("CESAR_"):
            monkeypatch.delenv(name, raising=False)


@dataclass
class PgStack:
    """The session's embedded server and its generated credentials."""

    pg: EmbeddedPostgres
    state: StackState

    @property
    def local_url(self) -> str:
        return self.pg.local_url(self.state)

    @property
    def cluster_url(self) -> str:
        return self.pg.cluster_url(self.state)

    def url(self, dbname: str, login: str | None = None) -> str:
        return self.state.url(dbname, login)

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.pg.superuser_conninfo(dbname), autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by the application role; returns its app-login URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with self.superuser() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(APP_ROLE)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.superuser() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def new_state_dir(prefix: str) -> Path:
    """A state directory under the checkout's ignored .cesar/ (reachable by the server user)."""
    path = REPO / ".cesar" / "tests" / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def pg_stack() -> Iterator[PgStack]:
    """One embedded PostgreSQL (pgserver's binaries) for the whole test session."""
    from cesar.dev.embedded import pg_bindir

    try:
        pg_bindir()
    except Exception as exc:  # noqa: BLE001 - reported as a requirement, not an error
        require(False, str(exc))
    state_dir = new_state_dir("session")
    pg = EmbeddedPostgres(state_dir)
    state, _ = pg.up()
    try:
        yield PgStack(pg, state)
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def tls_bindir() -> Path | None:
    """A PostgreSQL build with SSL (Debian's postgresql package), for verify-full tests."""
    from cesar.dev.embedded import ssl_supported

    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "postgres").exists() and ssl_supported(bindir):
            return bindir
    return None


@pytest.fixture(scope="session")
def tls_stack() -> Iterator[PgStack]:
    """A second embedded server built with SSL: its cluster stand-in URL is verify-full."""
    bindir = tls_bindir()
    require(bindir is not None,
            "a PostgreSQL server built with SSL: apt-get install postgresql (Debian's package)")
    state_dir = new_state_dir("tls")
    pg = EmbeddedPostgres(state_dir, bindir=bindir)
    state, _ = pg.up()
    try:
        yield PgStack(pg, state)
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def fresh_db(pg_stack: PgStack) -> Iterator[str]:
    """A fresh, empty database for one test; yields the application login's URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_stack.create_database(name)
    try:
        yield url
    finally:
        pg_stack.drop_database(name)


__all__ = ["LOGINS", "PgStack", "REPO", "make_settings", "new_state_dir", "require"]
