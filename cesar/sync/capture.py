"""The source side of a run: what is pending, reading it, and acknowledging it.

The capture itself is the ``sync_capture`` trigger (migration 011): every write on a synced
table leaves its row's ``sync_versions`` entry with ``pending = true``. Here a run reads those
entries in key order (joined to the rows they describe, as JSON) and, once the target has
committed them, clears ``pending`` where the version is still the one that was read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar import db
from cesar.sync.rule import Version
from cesar.sync.tables import TableSpec, key_filter


@dataclass(frozen=True)
class Change:
    """One row's state on the source: its version, and its image as JSON (None: deleted)."""

    pk: str
    written_at: datetime | None  # None only for a repair of a row older than the capture
    origin: str
    deleted: bool
    row: str | None

    @property
    def version(self) -> Version | None:
        return None if self.written_at is None else (self.written_at, self.origin)


@dataclass(frozen=True)
class Pending:
    """How much a side has to send for one table."""

    rows: int = 0
    deletes: int = 0
    oldest: datetime | None = None

    @property
    def total(self) -> int:
        return self.rows + self.deletes


def pending_summary(conn: psycopg.Connection) -> dict[str, Pending]:
    """Per table, the pending upserts and deletes and the oldest pending version.

    One query over the partial index of pending rows: its cost is the number of changes."""
    out: dict[str, Pending] = {}
    for table, deleted, count, oldest in conn.execute(
        "SELECT table_name, deleted, count(*), min(version) FROM sync_versions "
        "WHERE pending GROUP BY table_name, deleted"
    ).fetchall():
        cur = out.get(table, Pending())
        oldest = min(o for o in (oldest, cur.oldest) if o is not None)
        if deleted:
            out[table] = Pending(cur.rows, int(count), oldest)
        else:
            out[table] = Pending(int(count), cur.deletes, oldest)
    return out


def read_pending(conn: psycopg.Connection, spec: TableSpec, *, deleted: bool, after: str,
                 limit: int) -> list[Change]:
    """The next ``limit`` pending changes of one kind after key ``after``, in key order.

    One statement, read committed, no locks: it sees what is committed now and never waits for
    an open transaction (whose change stays pending and is read by a later batch or run)."""
    query = sql.SQL(
        "SELECT v.pk, v.version, v.origin, v.deleted, "
        "CASE WHEN t.id IS NULL THEN NULL ELSE CAST(row_to_json(t.*) AS TEXT) END "
        "FROM sync_versions AS v LEFT JOIN {table} AS t ON t.id = CAST(v.pk AS {pk_type}) "
        "WHERE v.table_name = %s AND v.pending AND v.deleted = %s AND v.pk > %s "
        "ORDER BY v.pk LIMIT %s"
    ).format(table=spec.ident, pk_type=sql.SQL(spec.pk_type))
    rows = conn.execute(query, [spec.name, deleted, after, limit]).fetchall()
    # A version row that says "live" without its row means the row was deleted with the capture
    # bypassed: what the source holds is "absent", so that is what travels.
    return [Change(pk, written_at, origin, is_deleted or row is None, row)
            for pk, written_at, origin, is_deleted, row in rows]


#: ``pending`` as the acknowledgement tests it: the same on this NOT NULL column, but written
#: so that PostgreSQL's planner (15 to 18) cannot prove that the partial index of pending rows
#: (``WHERE pending``, 010) applies, and probes the primary key once per key (both engines have
#: the operator). That index's row estimate comes from statistics, and a backlog that arrived
#: after the last ANALYZE (which saw nothing pending) makes it look nearly empty: the planner
#: then scanned every pending row of the table for each batch and filtered it against the
#: batch's keys, and once the statement ran as a generic plan (psycopg prepares it from its
#: sixth run, PostgreSQL plans it generically from the eleventh) without hashing them. 100,000
#: pending rows of 1,000,000: 0.2 s an acknowledgement at first, 3.7 s from the eleventh batch
#: (docs/performance.md, section 2, "Eighth pass"). PostgreSQL's development branch (19)
#: rewrites ``IS DISTINCT FROM`` of inputs that cannot be null to plain equality, which would
#: match the partial index again: the statements are also never prepared (``prepare=False``),
#: so that the worst there is a custom plan, whose keys are a constant array, hashed.
STILL_PENDING = "pending IS DISTINCT FROM false"


def acknowledge(conn: psycopg.Connection, spec: TableSpec, changes: Sequence[Change],
                fence: Callable[[psycopg.Connection], None] | None = None, **retry: float) -> int:
    """Clear ``pending`` for the changes the target has committed; returns how many.

    Only where the version row still holds the version that was read (a row written since keeps
    ``pending`` and moves next run), and never waiting for a writer: rows locked by an open
    transaction are skipped (``SKIP LOCKED``), they are about to get a newer version anyway.
    ``fence`` runs last in that transaction (the run's lease: a paused run's late
    acknowledgement fails instead of landing).

    Its rows are found by the primary key, one probe per key (:data:`STILL_PENDING`), so an
    acknowledgement costs its batch, never the table's backlog."""
    if not changes:
        return 0

    def fenced(n: int, c: psycopg.Connection) -> int:
        if fence is not None:
            fence(c)
        return n

    sent = {ch.pk: (ch.written_at, ch.origin) for ch in changes}

    def at_once(c: psycopg.Connection) -> int:
        # The usual case, in one statement: clear them all and read back the versions they
        # held; the few written again since the read (another version) are set back at once,
        # in the same transaction, so no one ever sees them cleared. A row that a writer holds
        # makes the statement give up after a moment (lock_timeout): then the careful way.
        c.execute("SELECT set_config('lock_timeout', '200ms', true)")
        rows = c.execute(
            sql.SQL("UPDATE sync_versions SET pending = false WHERE table_name = %(table)s "
                    "AND {} AND " + STILL_PENDING + " RETURNING pk, version, origin").format(
                key_filter("pk", "TEXT[]")),
            {"table": spec.name, "keys": list(sent)}, prepare=False,
        ).fetchall()
        newer = [pk for pk, version, origin in rows if sent[pk] != (version, origin)]
        if newer:
            c.execute(sql.SQL("UPDATE sync_versions SET pending = true "
                              "WHERE table_name = %(table)s AND {}").format(
                key_filter("pk", "TEXT[]")), {"table": spec.name, "keys": newer})
        return fenced(len(rows) - len(newer), c)

    def careful(c: psycopg.Connection) -> int:
        # Lock the rows (skipping those a writer holds) and keep those still at the version
        # that was sent; then clear them.
        held = c.execute(
            sql.SQL("SELECT pk, version, origin FROM sync_versions WHERE table_name = %(table)s "
                    "AND {} AND " + STILL_PENDING + " FOR UPDATE SKIP LOCKED").format(
                key_filter("pk", "TEXT[]")),
            {"table": spec.name, "keys": list(sent)}, prepare=False,
        ).fetchall()
        done = [pk for pk, version, origin in held if sent[pk] == (version, origin)]
        if not done:
            return 0
        c.execute(sql.SQL("UPDATE sync_versions SET pending = false "
                          "WHERE table_name = %(table)s AND {}").format(key_filter("pk", "TEXT[]")),
                  {"table": spec.name, "keys": done})
        return fenced(len(done), c)

    try:
        return db.run_transaction(conn, at_once, **retry)  # type: ignore[arg-type]
    except (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected):
        return db.run_transaction(conn, careful, **retry)  # type: ignore[arg-type]
