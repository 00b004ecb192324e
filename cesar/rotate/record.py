"""Which application login is active, recorded in the database the application uses.

The record (``credential_rotation``, migration 014) is the authority a rotation starts from: an
operator's file (``.env.cockroach``) naming the other login is stale, because someone else has
rotated since it was written, and is refused before anything changes. A rotation moves the
record from one login to the other with a compare-and-set (``WHERE active_login = <from>``), in
the same transaction as the check that it still holds the rotation lock, so a paused rotation
that lost its lock cannot switch it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from cesar import db
from cesar.db import engines
from cesar.errors import ConfigError, OperationFailed

TABLE = "credential_rotation"
NAME = "app"


@dataclass(frozen=True)
class Record:
    active_login: str
    generation: int
    rotation_id: str | None
    switched_by: str
    switched_at: datetime

    def describe(self) -> str:
        by = f"rotation {self.rotation_id} by {self.switched_by}" if self.rotation_id \
            else f"recorded by {self.switched_by}"
        return f"{self.active_login} ({by} at {self.switched_at:%Y-%m-%d %H:%M:%S %Z})"

    def as_dict(self) -> dict[str, Any]:
        return {"active_login": self.active_login, "generation": self.generation,
                "rotation_id": self.rotation_id, "switched_by": self.switched_by,
                "switched_at": self.switched_at.isoformat()}


def _missing() -> ConfigError:
    return ConfigError(f"the database has no {TABLE} table (migration 014): run "
                       "`invoke migrate` (or `cesar migrate up`) before rotating")


def read(conn: psycopg.Connection) -> Record | None:
    try:
        row = conn.execute(
            f"SELECT active_login, generation, rotation_id, switched_by, switched_at "
            f"FROM {TABLE} WHERE name = %s", [NAME]).fetchone()
    except psycopg.errors.UndefinedTable:
        raise _missing() from None
    return Record(*row) if row else None


def ensure(conn: psycopg.Connection, login: str, who: str) -> Record:
    """The record, written from ``login`` the first time (a database rotated before the table
    existed: the operator's credential, just proven to connect, is the one in use)."""
    def work(c: psycopg.Connection) -> Record:
        try:
            c.execute(f"INSERT INTO {TABLE} (name, active_login, switched_by) "
                      "VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING", [NAME, login, who])
        except psycopg.errors.UndefinedTable:
            raise _missing() from None
        record = read(c)
        assert record is not None
        return record
    return db.run_transaction(conn, work)


def check_not_stale(record: Record, login: str, source: str) -> None:
    """Refuse a file whose credential is not the one the database records as active."""
    if record.active_login != login:
        raise ConfigError(
            f"{source} is stale: it uses {login}, but the database records {record.describe()} "
            f"as active; fetch the current credential (the vault or a colleague's "
            f"{source}) and run again")


def switch(conn: psycopg.Connection, *, from_login: str, to_login: str, rotation_id: str,
           who: str, fence: Callable[[psycopg.Connection], None] | None = None) -> Record:
    """Move the record from ``from_login`` to ``to_login``; idempotent for the same rotation."""
    def work(c: psycopg.Connection) -> Record:
        if fence is not None:
            fence(c)
        row = c.execute(
            f"UPDATE {TABLE} SET active_login = %s, generation = generation + 1, "
            "rotation_id = %s, switched_by = %s, switched_at = now() "
            "WHERE name = %s AND active_login = %s RETURNING name",
            [to_login, rotation_id, who, NAME, from_login]).fetchone()
        record = read(c)
        if row is None and not (record and record.active_login == to_login
                                and record.rotation_id == rotation_id):
            raise OperationFailed(
                f"finish: the database no longer records {from_login} as active "
                f"(now {record.describe() if record else 'no record'}); another rotation ran; "
                "nothing was switched by this one: check `invoke rotate-password --status`")
        assert record is not None
        return record
    return db.run_transaction(conn, work)


@dataclass(frozen=True)
class Session:
    id: str
    database: str | None
    application: str | None
    client: str | None

    def describe(self) -> str:
        return (f"{self.id} (application {self.application or '-'}, client "
                f"{self.client or '-'}, database {self.database or '-'})")


def session_id(conn: psycopg.Connection) -> str:
    """This connection's id as :func:`sessions_of` reports it."""
    row = conn.execute(engines.of(conn).session_id_query).fetchone()
    assert row is not None
    return str(row[0])


def sessions_of(admin: psycopg.Connection, login: str) -> list[Session]:
    """The server's open sessions of ``login``, read through the admin connection, with only
    the columns any role that may list other users' sessions can read (the engine's
    ``sessions_query`` says which, and since which release)."""
    rows = admin.execute(engines.of(admin).sessions_query, [login]).fetchall()
    return [Session(*row) for row in rows]
