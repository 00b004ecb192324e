"""Helpers of the migration runner's tests: the repository's migrations and the runner's events.

Fixtures live in conftest.py beside this file; database helpers every area uses (``query``,
``schema_dump``, ``full_dump``) live in tests/helpers.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from cesar import migrate
from tests.helpers import REPO, PgStack, query

REPO_MIGRATIONS = REPO / "sql" / "migrations"


def events(url: str, event: str | None = None) -> list[tuple[Any, ...]]:
    """(migration, event) of every runner event, oldest first."""
    where = "WHERE event = %s" if event else ""
    return query(url, f"SELECT migration, event FROM schema_migration_events {where} "
                      "ORDER BY occurred_at, id", [event] if event else None)


def file_count() -> int:
    return len(migrate.migration_names(REPO_MIGRATIONS))


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "",
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def sleeping_in_migration(pg: PgStack, url: str) -> bool:
    """Whether a runner is inside 900_slow's sleep (other sessions' queries: superuser only)."""
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    with pg.superuser() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep(CASE%%'", [dbname]).fetchone()
    return bool(row and row[0])
