"""The migration runner (successor of the seed's ``apply_migrations_cockroach.sh``).

Migrations are ``NNN_name.up.sql`` / ``NNN_name.down.sql`` pairs in a directory, applied in
name order and tracked in the ``schema_migrations`` table (one row per migration).
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg import errors as pgerrors

TRACKING_TABLE = "schema_migrations"
EVENTS_TABLE = "schema_migration_events"
LEASE_TABLE = "schema_migration_lease"

DEFAULT_DIR = Path("sql/migrations")
PACKAGED_DIR = Path(__file__).parent / "_sql" / "migrations"

#: Statuses that count as "applied" (the schema contains the migration's objects).
APPLIED_STATUSES = frozenset({"succeeded", "baselined"})

_UP_FILE = re.compile(r"^(?P<name>\d{3,}_[a-z0-9_]+)\.up\.sql$")


def resolve_dir(migrations_dir: Path | None = None) -> Path:
    """The migrations directory: the given one, else ``sql/migrations`` relative to the cwd,
    else the copy packaged in the wheel (``cesar/_sql/migrations``)."""
    if migrations_dir is not None:
        return migrations_dir
    return DEFAULT_DIR if DEFAULT_DIR.is_dir() else PACKAGED_DIR


def migration_names(migrations_dir: Path | None = None) -> list[str]:
    """Names (``001_agents``) of the up files in the directory, in apply order."""
    directory = resolve_dir(migrations_dir)
    if not directory.is_dir():
        return []
    names = (m["name"] for p in directory.iterdir() if (m := _UP_FILE.match(p.name)))
    return sorted(names)


def summary(conn: psycopg.Connection, migrations_dir: Path | None = None) -> dict[str, int]:
    """Counts for /health and /metrics: ``{"applied", "total", "failed", "pending"}``.

    One query of the tracking table; never creates it (before the first run: nothing applied,
    ``total`` from the files). ``total`` is the union of the files and the tracked names, so a
    database ahead of this checkout still reads ``applied <= total``.
    """
    files = set(migration_names(migrations_dir))
    rows = _tracked_statuses(conn)
    applied = {name for name, status in rows if status in APPLIED_STATUSES}
    failed = {name for name, status in rows if status == "failed"}
    total = len(files | applied)
    return {"applied": len(applied), "total": total, "failed": len(failed),
            "pending": total - len(applied)}


def _tracked_statuses(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """``(name, status)`` of every tracked migration; empty when the table does not exist."""
    query = f"SELECT name, status FROM {TRACKING_TABLE}"
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if idle:
        try:
            rows = conn.execute(query).fetchall()
        except pgerrors.UndefinedTable:
            if not conn.autocommit:
                conn.rollback()  # we opened that transaction; the caller's state is unchanged
            return []
        if not conn.autocommit:
            conn.rollback()  # read-only: leave the connection idle as we found it
        return [(str(n), str(s)) for n, s in rows]
    try:
        with conn.transaction():  # a savepoint: an error must not abort the caller's transaction
            rows = conn.execute(query).fetchall()
    except pgerrors.UndefinedTable:
        return []
    return [(str(n), str(s)) for n, s in rows]
