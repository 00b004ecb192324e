"""The runner's own tables: ``schema_migrations``, its append-only events, and the lease row.

They are created by the first run that has work to do (never by a dry run or by ``status``),
with ``CREATE ... IF NOT EXISTS`` so that several runners starting at once on an empty
database all succeed. They belong to one database and are never synced: the local database and
the cluster each track their own schema.

Every statement here runs on PostgreSQL and CockroachDB alike.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.rows import dict_row

from cesar.db.lease import holder_name
from cesar.errors import OperationFailed

#: The runner's tables are always named with their schema, so that a migration changing
#: ``search_path`` (pg_dump's header does) cannot make them disappear from under the runner.
#: ``public`` is where runners that named them without a schema created them.
SCHEMA = "public"
TRACKING_TABLE = f"{SCHEMA}.schema_migrations"
EVENTS_TABLE = f"{SCHEMA}.schema_migration_events"
LEASE_TABLE = f"{SCHEMA}.schema_migration_lease"

#: What reading a runner table that does not exist raises: the table is missing, or the whole
#: ``public`` schema (a PostgreSQL database where it was dropped).
MISSING = (pgerrors.UndefinedTable, pgerrors.InvalidSchemaName)

STATUSES = ("running", "succeeded", "failed", "rolled_back", "baselined")
#: Statuses that count as "applied" (the schema contains the migration's objects).
APPLIED_STATUSES = frozenset({"succeeded", "baselined"})
EVENTS = ("apply", "fail", "rollback", "repair", "mark-applied", "lock-broken", "lease-takeover",
          "resume", "set-locality")

_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (
    name              TEXT        PRIMARY KEY,
    checksum          TEXT        NOT NULL,
    status            TEXT        NOT NULL CHECK (status IN {STATUSES!r}),
    direction         TEXT        NOT NULL DEFAULT 'up' CHECK (direction IN ('up', 'down')),
    mode              TEXT,
    attempt_checksum  TEXT,
    statements_total  INT         NOT NULL DEFAULT 0,
    statements_done   INT         NOT NULL DEFAULT 0,
    progress_checksum TEXT,
    resumable         BOOLEAN     NOT NULL DEFAULT false,
    error_sqlstate    TEXT,
    error_message     TEXT,
    error_statement   INT,
    error_line        INT,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    duration_ms       BIGINT,
    applied_by        TEXT,
    applied_from      TEXT,
    runner_version    TEXT,
    holder            TEXT,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    f"""CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    id          UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    migration   TEXT,
    event       TEXT        NOT NULL CHECK (event IN {EVENTS!r}),
    actor       TEXT        NOT NULL,
    host        TEXT        NOT NULL,
    reason      TEXT,
    detail      JSONB       NOT NULL DEFAULT '{{}}'
)""",
    "CREATE INDEX IF NOT EXISTS schema_migration_events_migration_idx "
    f"ON {EVENTS_TABLE} (migration, occurred_at)",
    f"""CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (
    id          INT         PRIMARY KEY CHECK (id = 1),
    holder      TEXT        NOT NULL,
    actor       TEXT        NOT NULL,
    host        TEXT        NOT NULL,
    pid         INT         NOT NULL,
    command     TEXT        NOT NULL,
    migration   TEXT,
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    generation  BIGINT      NOT NULL DEFAULT 0
)""",
)

# Two runners creating the same table at the same moment: PostgreSQL can report the loser's
# CREATE ... IF NOT EXISTS as a duplicate (its catalog's unique index fires first).
_CREATE_RACES = (pgerrors.UniqueViolation, pgerrors.DuplicateTable, pgerrors.DuplicateObject)


@dataclass(frozen=True)
class Identity:
    """Who runs this process: recorded as lease holder and in every row and event.

    The database user comes from ``session_user`` in SQL (the login, not the ``cesar_app`` role
    it switches to); the host is the client's hostname, because CockroachDB's
    ``inet_client_addr()`` is a stub that returns no address.
    """

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    command: str = "migrate"

    @property
    def holder(self) -> str:
        return holder_name(self.host, self.pid, self.token)


@dataclass
class Tracked:
    """One row of ``schema_migrations``."""

    name: str
    checksum: str
    status: str
    direction: str = "up"
    mode: str | None = None
    attempt_checksum: str | None = None
    statements_total: int = 0
    statements_done: int = 0
    progress_checksum: str | None = None
    resumable: bool = False
    error_sqlstate: str | None = None
    error_message: str | None = None
    error_statement: int | None = None
    error_line: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    applied_by: str | None = None
    applied_from: str | None = None
    runner_version: str | None = None
    holder: str | None = None
    updated_at: datetime | None = None

    @property
    def applied(self) -> bool:
        return self.status in APPLIED_STATUSES

    @property
    def interrupted_rollback(self) -> bool:
        return self.direction == "down" and self.status in ("running", "failed")

    @property
    def partial(self) -> bool:
        """Some statements of an up migration ran and stayed (per-statement mode only)."""
        return (self.direction == "up" and self.status in ("running", "failed")
                and self.statements_done > 0)


_TRACKED_COLUMNS = ", ".join(Tracked.__dataclass_fields__)


def tables_exist(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL "
        "AND to_regclass(%s) IS NOT NULL", [TRACKING_TABLE, EVENTS_TABLE, LEASE_TABLE]
    ).fetchone()
    return bool(row and row[0])


def ensure_tables(conn: psycopg.Connection) -> bool:
    """Create the runner's tables if missing (autocommit connection). True when it created."""
    try:
        if tables_exist(conn):
            return False
        for attempt in range(5):
            try:
                for ddl in _DDL:
                    conn.execute(ddl)  # type: ignore[arg-type]
                return True
            except _CREATE_RACES:
                if attempt == 4:
                    raise
    except pgerrors.InvalidSchemaName:
        raise OperationFailed(
            f"the runner keeps its tables in the schema {SCHEMA}, which this database does not "
            f"have; create it (CREATE SCHEMA {SCHEMA}) and run again"
        ) from None
    return True


def read_tracked(conn: psycopg.Connection) -> dict[str, Tracked] | None:
    """Every row of ``schema_migrations`` in one query; None when the table does not exist.

    Raises nothing for a missing table, so a dry run or ``status`` on a new database works
    without creating anything.
    """
    try:
        rows = conn.execute(f"SELECT {_TRACKED_COLUMNS} FROM {TRACKING_TABLE}").fetchall()
    except MISSING:
        if not conn.autocommit:
            conn.rollback()
        return None
    return {r[0]: Tracked(*r) for r in rows}


def insert_event(
    conn: psycopg.Connection, identity: Identity, event: str, migration: str | None,
    reason: str | None = None, detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        f"INSERT INTO {EVENTS_TABLE} (migration, event, actor, host, reason, detail) "
        "VALUES (%s, %s, session_user, %s, %s, %s)",
        [migration, event, identity.host, reason, json.dumps(detail or {}, default=str)],
    )


def widen_events_check(conn: psycopg.Connection) -> None:
    """Let the events table accept every event of :data:`EVENTS`.

    An events table created by an older runner has a CHECK listing the events of its day, and
    ``CREATE TABLE IF NOT EXISTS`` never changes it; the first new event then fails with 23514.
    The runner calls this and inserts again. One ALTER TABLE (autocommit connection), so the
    check is replaced atomically; its old name differs by engine (PostgreSQL
    ``schema_migration_events_event_check``, CockroachDB ``check_event``), hence the lookup.
    """
    names = [r[0] for r in conn.execute(
        "SELECT conname FROM pg_catalog.pg_constraint "
        "WHERE conrelid = CAST(%s AS REGCLASS) AND contype = 'c' "
        "AND pg_get_constraintdef(oid) LIKE '%%event%%'", [EVENTS_TABLE]).fetchall()]
    drops = "".join(f"DROP CONSTRAINT {sql.Identifier(n).as_string(conn)}, " for n in names)
    conn.execute(f"ALTER TABLE {EVENTS_TABLE} {drops}ADD CONSTRAINT "
                 "schema_migration_events_event_check "
                 f"CHECK (event IN {EVENTS!r})")  # type: ignore[arg-type]


def read_events(conn: psycopg.Connection, migration: str | None = None) -> list[dict[str, Any]]:
    """The events, oldest first (all of them, or one migration's)."""
    where, params = ("WHERE migration = %s", [migration]) if migration else ("", [])
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                f"SELECT occurred_at, migration, event, actor, host, reason, detail "
                f"FROM {EVENTS_TABLE} {where} ORDER BY occurred_at, id", params
            ).fetchall()
    except MISSING:
        if not conn.autocommit:
            conn.rollback()
        return []
