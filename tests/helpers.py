"""Helpers the tests share: requirements, child environments, the embedded server's handle.

Fixtures live in conftest.py; what a test calls directly lives here, imported by its public name.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cesar.config import Settings
from cesar.credentials import APP_ROLE
from cesar.dev.embedded import EmbeddedPostgres, StackState

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Variables that would leak an operator's configuration into in-process tests.
CONFIG_VARS = ("ENVIRONMENT", "DATABASE_TARGET", "LOCAL_DB_URL", "COCKROACH_DB_URL",
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
           if not k.startswith(("CESAR_", "PG")) and k not in CONFIG_VARS}
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
