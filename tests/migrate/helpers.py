"""Helpers of the migration runner's tests: the repository's migrations and the runner's events.

Fixtures live in conftest.py beside this file; database helpers every area uses (``query``,
``schema_dump``, ``full_dump``) live in tests/helpers.py.
"""

from __future__ import annotations

from typing import Any

from cesar import migrate
from tests.helpers import REPO, query

REPO_MIGRATIONS = REPO / "sql" / "migrations"


def events(url: str, event: str | None = None) -> list[tuple[Any, ...]]:
    """(migration, event) of every runner event, oldest first."""
    where = "WHERE event = %s" if event else ""
    return query(url, f"SELECT migration, event FROM schema_migration_events {where} "
                      "ORDER BY occurred_at, id", [event] if event else None)


def file_count() -> int:
    return len(migrate.migration_names(REPO_MIGRATIONS))
