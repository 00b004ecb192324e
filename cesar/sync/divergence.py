"""Divergence is never silent: a cheap check on every run, a precise one on every ``--full``,
and TRUNCATE (which no row trigger sees) refused on PostgreSQL.

- Every run, for the tables with nothing pending on either side (no captured change in flight:
  the run holds the lease, so nothing else acknowledges), both sides' ``count(*)`` are compared
  and the difference is recorded in ``sync_divergence`` (method ``count``) on both sides. It
  finds rows removed or added behind the capture on one side (a TRUNCATE, a restore, hand edits
  with the capture disabled); an update behind the capture keeps the counts equal and is found
  by the next ``--full``.
- Per table and side, the live version rows whose row is gone (one snapshot: works on a busy
  table, and finds rows removed on both sides alike). It reads every version row of the table,
  so it runs only when it can find what the counts cannot: the table is busy, its fingerprint
  (file nodes, delete counter) changed, the last search found some or is older than
  ``CESAR_SYNC_ORPHAN_CHECK_SECONDS``, or the run is a ``--full`` (:func:`_decide`). Each side
  records its last search in ``sync_orphan_checks`` (migration 019) once it has finished.
- ``--full`` records the keys it found differing and could not repair (method ``full``).
- ``cesar sync status``, ``/health`` (a problem per table) and ``/metrics``
  (``cesar_sync_divergent_rows{table}``) report the last record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar import db
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
    #: Per side (local, cluster): whether this run searched for orphaned version rows, and why.
    orphan_check: dict[str, OrphanCheck] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "divergent_rows": self.divergent_rows,
                "method": self.method, "local_rows": self.local_rows,
                "cluster_rows": self.cluster_rows,
                "orphan_check": {side: c.as_dict() for side, c in self.orphan_check.items()}}


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


@dataclass(frozen=True)
class OrphanCheck:
    """Whether this run searched one side of one table for orphaned version rows, and why."""

    ran: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "reason": self.reason}


@dataclass(frozen=True)
class _Record:
    age_seconds: float | None  # on the side's own clock; negative when its clock went back
    orphans: int
    fingerprint: str | None


#: Per side and table, the last search for orphaned version rows (migration 019).
RECORDS = "sync_orphan_checks"

#: PostgreSQL: what changes whenever a synced table may have lost a row its version row still
#: claims. Its file node (TRUNCATE, VACUUM FULL, a restore with a new table) and sync_versions'
#: own; its cumulative count of deleted rows (every DELETE, captured or not: the counters are
#: bumped after the deleting transaction is visible, and are read before the search's
#: snapshot, so a delete the search did not see changes the fingerprint the next run reads);
#: when the counters last started from zero (a reset, a server restart; a crash restart of
#: the backends keeps the postmaster's start time: the bound covers it). Nothing when
#: the server keeps no counters (track_counts off): the bound alone then applies.
FINGERPRINTS = """
SELECT c.relname, concat_ws(':', pg_relation_filenode(c.oid),
       pg_relation_filenode(CAST('sync_versions' AS regclass)), s.n_tup_del,
       extract(epoch FROM d.stats_reset), extract(epoch FROM pg_postmaster_start_time()))
FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid
CROSS JOIN pg_stat_database AS d
WHERE d.datname = current_database() AND c.relname = ANY(%s)
  AND c.relnamespace = CAST(current_schema() AS regnamespace)
  AND current_setting('track_counts') = 'on'"""


def _fingerprints(conn: psycopg.Connection, names: Sequence[str],
                  use: bool) -> dict[str, str]:
    if not use:
        return {}
    try:
        return {r[0]: r[1] for r in conn.execute(FINGERPRINTS, [list(names)]).fetchall()}
    except psycopg.Error as exc:  # counters unreadable here: the bound alone applies
        log.warning("could not read the synced tables' change counters (%s); the search for "
                    "orphaned version rows runs on its time bound only", first_line(exc))
        return {}


def _records(conn: psycopg.Connection, names: Sequence[str]) -> dict[str, _Record] | None:
    """The last search per table on this side; None before migration 019."""
    try:
        with conn.transaction():
            # The age on the side's own clock (both times from it), subtracted here: plain
            # timestamps read the same way on both engines.
            rows = conn.execute(
                f"SELECT table_name, checked_at, orphans, fingerprint, now() FROM {RECORDS} "
                "WHERE table_name = ANY(%s)", [list(names)]).fetchall()
    except pgerrors.UndefinedTable:
        return None
    return {r[0]: _Record(None if r[1] is None else (r[4] - r[1]).total_seconds(), int(r[2]),
                          r[3]) for r in rows}


def _decide(busy: bool, record: _Record | None, fingerprint: str | None, *,
            bound: float, force: bool) -> OrphanCheck:
    """Search when it can find what the count comparison cannot, or when the bound is due."""
    if force:
        return OrphanCheck(True, "full run")
    if bound <= 0:
        return OrphanCheck(True, "every run (CESAR_SYNC_ORPHAN_CHECK_SECONDS=0)")
    if busy:
        return OrphanCheck(True, "changes pending: the counts cannot be compared")
    if record is None:
        return OrphanCheck(True, "never searched on this side")
    if record.orphans:
        return OrphanCheck(True, "the last search found orphaned version rows")
    if fingerprint != record.fingerprint:
        return OrphanCheck(True, "the table was written to, truncated or rewritten since")
    if record.age_seconds is None or record.age_seconds < 0:
        return OrphanCheck(True, "the last search is dated after this server's clock")
    if record.age_seconds >= bound:
        return OrphanCheck(True, f"the last search is older than {bound:g} s")
    return OrphanCheck(False, "unchanged since the last search")


class _Side:
    """One side's part of the check, on its own connection (a thread of its own)."""

    def __init__(self, conn: psycopg.Connection, specs: Sequence[TableSpec],
                 fingerprinted: bool) -> None:
        self.conn, self.specs, self.fingerprinted = conn, specs, fingerprinted
        self.names = [s.name for s in specs]
        self.records = _records(conn, self.names)
        self.checks: dict[str, OrphanCheck] = {}
        self.rows: dict[str, int] = {}
        self.gone: dict[str, int] = {}

    def run(self, busy: set[str], *, bound: float, force: bool) -> None:
        # Read before any search's snapshot (see FINGERPRINTS).
        prints = _fingerprints(self.conn, self.names, self.fingerprinted)
        for spec in self.specs:
            if self.records is None:
                check = OrphanCheck(True, f"no {RECORDS} table (migration 019): every run")
            else:
                check = _decide(spec.name in busy, self.records.get(spec.name),
                                prints.get(spec.name), bound=bound, force=force)
            self.checks[spec.name] = check
            if check.ran:
                self._search(spec, prints.get(spec.name))
            else:
                self.rows[spec.name] = count_rows(self.conn, spec)

    def search_late(self, names: set[str]) -> None:
        """Tables that became busy during the check, searched after all (their counts no
        longer compare)."""
        late = [s for s in self.specs if s.name in names and not self.checks[s.name].ran]
        if not late:
            return
        prints = _fingerprints(self.conn, [s.name for s in late], self.fingerprinted)
        for spec in late:
            self.checks[spec.name] = OrphanCheck(
                True, "changes arrived during the check: the counts cannot be compared")
            self._search(spec, prints.get(spec.name))

    def _search(self, spec: TableSpec, fingerprint: str | None) -> None:
        rows, gone, started = search_orphans(self.conn, spec)
        self.rows[spec.name], self.gone[spec.name] = rows, gone
        if self.records is None:
            return
        # Only now, after the search finished: a run killed during it leaves the last record.
        # A record only moves forward: a run paused past its lease that wakes up after a newer
        # search (a takeover's) cannot put its older "nothing found" over that one's finding.
        self.conn.execute(
            f"INSERT INTO {RECORDS} (table_name, checked_at, orphans, fingerprint) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET "
            "checked_at = excluded.checked_at, orphans = excluded.orphans, "
            f"fingerprint = excluded.fingerprint WHERE {RECORDS}.checked_at <= "
            "excluded.checked_at",
            [spec.name, started, gone, fingerprint])


def count_check(local: psycopg.Connection, cluster: psycopg.Connection,
                specs: Sequence[TableSpec], *, bound_seconds: float = 0.0,
                force: bool = False,
                fingerprinted: tuple[bool, bool] = (True, True),
                pending: set[str] | None = None) -> list[Found]:
    """Every table, every run: for the tables with nothing pending on either side, the
    difference of the two sides' row counts. On each side, the live version rows whose row is
    gone (read in one snapshot: the capture writes a row and its version in one transaction,
    so they agree however busy the table is), searched when that can find what the counts
    cannot (see :func:`_decide`). The larger of the two is recorded.

    ``fingerprinted``: per side, whether its engine has the counters :data:`FINGERPRINTS`
    reads (PostgreSQL). ``pending``: the tables with changes pending on either side, read
    by the caller just now (saves reading them again)."""
    def quiet() -> set[str]:
        busy = set(pending_summary(local)) | set(pending_summary(cluster))
        return {s.name for s in specs if s.name not in busy}

    before = quiet() if pending is None else {s.name for s in specs if s.name not in pending}
    busy = {s.name for s in specs} - before
    local_side = _Side(local, specs, fingerprinted[0])
    cluster_side = _Side(cluster, specs, fingerprinted[1])
    # A search reads every version row of a table: the two sides (two servers in production)
    # are read at the same time, each on its own connection.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cesar-sync-count") as pool:
        done = pool.submit(local_side.run, busy, bound=bound_seconds, force=force)
        cluster_side.run(busy, bound=bound_seconds, force=force)
        done.result()
    after = quiet()
    compared = before & after
    late = {s.name for s in specs} - compared
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cesar-sync-count") as pool:
        done = pool.submit(local_side.search_late, late)
        cluster_side.search_late(late)
        done.result()
    found = []
    for spec in specs:
        local_gone = local_side.gone.get(spec.name, 0)
        cluster_gone = cluster_side.gone.get(spec.name, 0)
        for side, gone in (("local", local_gone), ("cluster", cluster_gone)):
            if gone:
                log.warning("%s: %d rows gone on the %s side behind the capture (their versions "
                            "are live): run `cesar sync run --full`", spec.name, gone, side)
        local_rows, cluster_rows = local_side.rows[spec.name], cluster_side.rows[spec.name]
        divergent = local_gone + cluster_gone
        if spec.name in compared:
            divergent = max(divergent, abs(local_rows - cluster_rows))
        found.append(Found(spec.name, divergent, "count", local_rows, cluster_rows,
                           {"local": local_side.checks[spec.name],
                            "cluster": cluster_side.checks[spec.name]}))
    return found


def count_rows(conn: psycopg.Connection, spec: TableSpec) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(spec.ident)).fetchone()
    assert row is not None
    return int(row[0])


def search_orphans(conn: psycopg.Connection, spec: TableSpec) -> tuple[int, int, Any]:
    """(rows, live version rows without their row, when the snapshot was taken) of one side,
    in one snapshot. Rows without a version row are not counted as wrong: rows older than the
    capture have none."""
    pk_type = sql.SQL(str(spec.pk_type))
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM {t}), (SELECT count(*) FROM sync_versions AS v "
            "WHERE v.table_name = %s AND NOT v.deleted AND NOT EXISTS "
            "(SELECT 1 FROM {t} AS t WHERE t.id = CAST(v.pk AS {pk}))), "
            "transaction_timestamp()").format(
            t=spec.ident, pk=pk_type), [spec.name]).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), row[2]


def record(conns: Iterable[psycopg.Connection], found: Sequence[Found], *,
           fence: Callable[[psycopg.Connection], None] | None = None,
           retry: dict[str, float] | None = None) -> None:
    """The findings, on each side in one transaction (retried on a serialization failure with
    ``retry``, :func:`cesar.db.run_transaction`'s arguments); ``fence`` (the run's lease)
    first, so that a run paused past its lease cannot write its older finding over a newer
    one."""
    if not found:
        return

    def write(conn: psycopg.Connection) -> None:
        if fence is not None:
            fence(conn)
        _record_side(conn, found)

    for conn in conns:
        db.run_transaction(conn, write, **(retry or {}))


def _record_side(conn: psycopg.Connection, found: Sequence[Found]) -> None:
    """Every table's finding in one statement (the same form as the state rows')."""
    conn.execute(
        "INSERT INTO sync_divergence (table_name, divergent_rows, method, local_rows, "
        "cluster_rows, checked_at) "
        "SELECT unnest(CAST(%b AS TEXT[])), unnest(CAST(%b AS BIGINT[])), "
        "unnest(CAST(%b AS TEXT[])), unnest(CAST(%b AS BIGINT[])), "
        "unnest(CAST(%b AS BIGINT[])), now() "
        "ON CONFLICT (table_name) DO UPDATE SET divergent_rows = excluded.divergent_rows, "
        "method = excluded.method, local_rows = excluded.local_rows, "
        "cluster_rows = excluded.cluster_rows, checked_at = excluded.checked_at",
        [[f.table for f in found], [f.divergent_rows for f in found],
         [f.method for f in found], [f.local_rows for f in found],
         [f.cluster_rows for f in found]])


def read(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The last record per table ([] before migration 012 or any run)."""
    try:
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            return cur.execute(
                "SELECT table_name AS table, divergent_rows, method, local_rows, cluster_rows, "
                "checked_at FROM sync_divergence ORDER BY table_name").fetchall()
    except pgerrors.UndefinedTable:
        return []
