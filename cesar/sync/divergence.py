"""Divergence is never silent: a cheap check on every run, a precise one on every ``--full``,
and TRUNCATE (which no row trigger sees) refused on PostgreSQL.

- Every run, per table and side, the live version rows whose row is gone (one snapshot: works
  on a busy table). Once nothing is pending on either side (no captured change in flight:
  the run holds the lease, so nothing else acknowledges), both sides' ``count(*)`` are compared
  and the difference is recorded in ``sync_divergence`` (method ``count``) on both sides. It
  finds rows removed or added behind the capture (a TRUNCATE, a restore, hand edits with the
  capture disabled); an update behind the capture keeps the counts equal and is found by the
  next ``--full``.
- ``--full`` records the keys it found differing and could not repair (method ``full``).
- ``cesar sync status``, ``/health`` (a problem per table) and ``/metrics``
  (``cesar_sync_divergent_rows{table}``) report the last record.

The check reads every version row of every table on each side, every run (a hash anti-join):
at the sizes this project syncs (thousands to a few million rows) a fraction of a second to a
few seconds per side, the largest fixed cost of an incremental run on a large table; the two
sides are read at the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar.console import first_line
from cesar.sync.capture import pending_summary
from cesar.sync.tables import TableSpec

log = logging.getLogger(__name__)

GUARD = "sync_refuse_truncate"
#: PostgreSQL only (CockroachDB has no statement-level triggers: docs/sync.md says what then).
GUARD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {GUARD}() RETURNS TRIGGER AS $$
BEGIN
    IF current_setting('cesar.sync_apply', true) = 'on' THEN
        RETURN NULL;  -- deliberate (a restore): the divergence check reports what differs
    END IF;
    RAISE EXCEPTION 'TRUNCATE of the synced table % is refused: the sync cannot see it and '
        'the other side would keep every row; use DELETE FROM % (captured row by row)',
        TG_TABLE_NAME, TG_TABLE_NAME USING ERRCODE = '55000';
END;
$$ LANGUAGE plpgsql"""


@dataclass(frozen=True)
class Found:
    table: str
    divergent_rows: int
    method: str  # count or full
    local_rows: int | None = None
    cluster_rows: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "divergent_rows": self.divergent_rows,
                "method": self.method, "local_rows": self.local_rows,
                "cluster_rows": self.cluster_rows}


#: Longest wait for the table lock the guard's DDL needs (SHARE ROW EXCLUSIVE, which blocks the
#: application's writes while it is queued): behind a long transaction the run gives up and
#: tries again on its next run instead of stalling the application's writes.
GUARD_LOCK_TIMEOUT = "1s"


def ensure_truncate_guard(conn: psycopg.Connection, specs: Sequence[TableSpec]) -> list[str]:
    """PostgreSQL: a BEFORE TRUNCATE trigger, enabled, on every synced table. Returns the tables
    guarded (or re-enabled) now. Each table's DDL waits at most :data:`GUARD_LOCK_TIMEOUT` for
    its lock; a table whose lock is held, or without the privilege, gets a warning and is tried
    again on the next run (the count check still reports a truncated table meanwhile)."""
    have = {r[0]: r[1] for r in conn.execute(
        "SELECT c.relname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = %s AND c.relnamespace = current_schema()::regnamespace",
        [GUARD]).fetchall()}
    todo = [s for s in specs if have.get(s.name) not in ("O", "A")]
    if not todo:
        return []
    done = []
    for spec in todo:
        disabled = spec.name in have
        if disabled:
            log.warning("the TRUNCATE guard on %s was disabled: enabling it again", spec.name)
            stmt = sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(
                spec.ident, sql.Identifier(GUARD))
        else:
            stmt = sql.SQL("CREATE TRIGGER {} BEFORE TRUNCATE ON {} FOR EACH STATEMENT "
                           "EXECUTE FUNCTION {}()").format(
                sql.Identifier(GUARD), spec.ident, sql.Identifier(GUARD))
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(GUARD_LOCK_TIMEOUT)))
                conn.execute(GUARD_FUNCTION)  # type: ignore[arg-type]
                conn.execute(stmt)
        except pgerrors.LockNotAvailable:
            log.warning("could not add the TRUNCATE guard on %s: a transaction holds a lock on "
                        "it (waited %s); the next run tries again", spec.name,
                        GUARD_LOCK_TIMEOUT)
            continue
        except (pgerrors.InsufficientPrivilege, pgerrors.DuplicateObject) as exc:
            log.warning("could not add the TRUNCATE guard on %s (%s); a TRUNCATE is then "
                        "reported by the divergence check, not refused", spec.name,
                        first_line(exc))
            continue
        done.append(spec.name)
    return done


def count_check(local: psycopg.Connection, cluster: psycopg.Connection,
                specs: Sequence[TableSpec]) -> list[Found]:
    """Every table, every run: on each side, the live version rows whose row is gone (read in
    one snapshot: the capture writes a row and its version in one transaction, so they agree
    however busy the table is); and, for the tables with nothing pending on either side, the
    difference of the two sides' row counts. The larger of the two is recorded."""
    def quiet() -> set[str]:
        busy = set(pending_summary(local)) | set(pending_summary(cluster))
        return {s.name for s in specs if s.name not in busy}

    before = quiet()
    # Each side's check reads every version row of every table: the two sides (two servers in
    # production) are read at the same time, each on its own connection.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cesar-sync-count") as pool:
        local_side = pool.submit(lambda: {spec.name: _orphans(local, spec) for spec in specs})
        cluster_side = {spec.name: _orphans(cluster, spec) for spec in specs}
        sides = {name: (found, cluster_side[name])
                 for name, found in local_side.result().items()}
    after = quiet()
    found = []
    for spec in specs:
        (local_rows, local_gone), (cluster_rows, cluster_gone) = sides[spec.name]
        for side, gone in (("local", local_gone), ("cluster", cluster_gone)):
            if gone:
                log.warning("%s: %d rows gone on the %s side behind the capture (their versions "
                            "are live): run `cesar sync run --full`", spec.name, gone, side)
        divergent = local_gone + cluster_gone
        if spec.name in before and spec.name in after:
            divergent = max(divergent, abs(local_rows - cluster_rows))
        found.append(Found(spec.name, divergent, "count", local_rows, cluster_rows))
    return found


def _orphans(conn: psycopg.Connection, spec: TableSpec) -> tuple[int, int]:
    """(rows, live version rows without their row) of one side, in one snapshot. Rows without
    a version row are not counted as wrong: rows older than the capture have none."""
    pk_type = sql.SQL(str(spec.pk_type))
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM {t}), (SELECT count(*) FROM sync_versions AS v "
            "WHERE v.table_name = %s AND NOT v.deleted AND NOT EXISTS "
            "(SELECT 1 FROM {t} AS t WHERE t.id = CAST(v.pk AS {pk})))").format(
            t=spec.ident, pk=pk_type), [spec.name]).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def record(conns: Iterable[psycopg.Connection], found: Sequence[Found]) -> None:
    if not found:
        return
    for conn in conns:
        for f in found:
            conn.execute(
                "INSERT INTO sync_divergence (table_name, divergent_rows, method, local_rows, "
                "cluster_rows, checked_at) VALUES (%s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (table_name) DO UPDATE SET divergent_rows = excluded.divergent_rows, "
                "method = excluded.method, local_rows = excluded.local_rows, "
                "cluster_rows = excluded.cluster_rows, checked_at = excluded.checked_at",
                [f.table, f.divergent_rows, f.method, f.local_rows, f.cluster_rows])


def read(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The last record per table ([] before migration 012 or any run)."""
    try:
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            return cur.execute(
                "SELECT table_name AS table, divergent_rows, method, local_rows, cluster_rows, "
                "checked_at FROM sync_divergence ORDER BY table_name").fetchall()
    except pgerrors.UndefinedTable:
        return []
