"""Helpers the tests share: requirements, child environments, the embedded server's handle.

Fixtures live in conftest.py; what a test calls directly lives here, imported by its public name.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cesar.config import Settings
from cesar.credentials import APP_ROLE
from cesar.dev.embedded import EmbeddedPostgres, StackState, pg_bindir

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


@dataclass
class CliResult:
    """A ``cesar`` command's exit code and both outputs."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_in_process(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> CliResult:
    """``cesar ARGV`` in this process (fast; no subprocess), its outputs read from ``capsys``."""
    from cesar.cli import main

    capsys.readouterr()
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:  # pragma: no cover - main always exits
        code = 0
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; its rows, if it returns any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def _pg_dump(url: str, *args: str) -> str:
    """``pg_dump ARGS`` of the database behind ``url`` (as its login, over TCP), without the
    header lines that name the versions and (since 17.6) a random \\restrict key."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    env = {**child_env(), "PGPASSWORD": str(params["password"])}
    out = subprocess.run(
        [str(pg_bindir() / "pg_dump"), "--no-owner", "--no-privileges",
         "-h", str(params["host"]), "-p", str(params["port"]), "-U", str(params["user"]),
         *args, str(params["dbname"])],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("\\restrict", "\\unrestrict", "-- Dumped")))


def schema_dump(pg: PgStack, url: str, *extra: str) -> str:
    """``pg_dump --schema-only`` of the database behind ``url``."""
    return _pg_dump(url, "--schema-only", *extra)


def full_dump(pg: PgStack, url: str) -> str:
    """Schema and data: what a dry run must leave byte-for-byte unchanged."""
    return _pg_dump(url)
