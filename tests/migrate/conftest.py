"""Fixtures of the migration runner's tests: real PostgreSQL, real runner processes.

``migrations`` is a private copy of the repository's ``sql/migrations`` that a test may edit
(drift, a failing statement, a fix). ``cli`` runs ``cesar migrate ...`` in-process (fast);
``spawn`` starts it as a separate process (for concurrency and SIGKILL).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cesar import migrate
from cesar.dev.embedded import pg_bindir
from tests.helpers import REPO, PgStack, make_settings
from tests.helpers import child_env as base_child_env

REPO_MIGRATIONS = REPO / "sql" / "migrations"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A copy of the repository's migrations that the test may change."""
    target = tmp_path / "migrations"
    shutil.copytree(REPO_MIGRATIONS, target)
    return target


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``cesar migrate ARGS`` in this process; returns the exit code and both outputs."""
    from cesar.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(["migrate", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:  # pragma: no cover - main always exits
            code = 0
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def child_env() -> dict[str, str]:
    """The environment of a runner subprocess: no operator configuration leaks in."""
    return base_child_env()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``cesar migrate ARGS`` as its own process (killed at the end if still running)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cesar.cli", "migrate", *args],
            cwd=tmp_path, env=child_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def runner_for(migrations: Path) -> Iterator[Callable[..., migrate.Runner]]:
    """A Runner on its own autocommit connection (closed at the end)."""
    conns: list[psycopg.Connection] = []
    settings = make_settings()

    def make(url: str, **options: Any) -> migrate.Runner:
        options.setdefault("migrations_dir", migrations)
        conn, runner = migrate.open_runner(url, settings, **options)
        conns.append(conn)
        return runner

    yield make
    for conn in conns:
        conn.close()


def schema_dump(pg: PgStack, url: str, *extra: str) -> str:
    """``pg_dump --schema-only`` of the database behind ``url`` (as its owner, over TCP)."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    env = {**child_env(), "PGPASSWORD": str(params["password"])}
    out = subprocess.run(
        [str(pg_bindir() / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
         "-h", str(params["host"]), "-p", str(params["port"]), "-U", str(params["user"]),
         *extra, str(params["dbname"])],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    # The header names the server and pg_dump versions and (since 17.6) a random \restrict key.
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("\\restrict", "\\unrestrict", "-- Dumped")))


def full_dump(pg: PgStack, url: str) -> str:
    """Schema and data: what a dry run must leave byte-for-byte unchanged."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    env = {**child_env(), "PGPASSWORD": str(params["password"])}
    out = subprocess.run(
        [str(pg_bindir() / "pg_dump"), "--no-owner", "--no-privileges",
         "-h", str(params["host"]), "-p", str(params["port"]), "-U", str(params["user"]),
         str(params["dbname"])],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("\\restrict", "\\unrestrict", "-- Dumped")))


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def events(url: str, event: str | None = None) -> list[tuple[Any, ...]]:
    """(migration, event) of every runner event, oldest first."""
    where = "WHERE event = %s" if event else ""
    return query(url, f"SELECT migration, event FROM schema_migration_events {where} "
                      "ORDER BY occurred_at, id", [event] if event else None)


def file_count() -> int:
    return len(migrate.migration_names(REPO_MIGRATIONS))
