"""The bulk path of a run: a large backlog of upserts moved with COPY and set-based statements.

Used when a table has at least ``CESAR_SYNC_BULK_THRESHOLD`` pending upserts in one direction
and both databases are PostgreSQL (CockroachDB takes the batch path: see docs/sync.md). The
backlog moves in chunks of ``CESAR_SYNC_BULK_CHUNK`` keys, in key order; per chunk:

1. **read**: one ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` on the source: each pending
   version row joined to its row (one statement: one snapshot, so a row and its version agree);
2. **apply**, in one target transaction (``cesar.sync_apply = on``: not captured; the run's
   ``lock_timeout``): the bytes are piped into a temporary staging table with ``COPY FROM``, then
   a few set-based statements write, for the keys the rule lets through *without a conflict*,
   the rows and their version rows (the incoming version, ``pending = false``), taking locks in
   a writer's order (the row, then its version row: no deadlock with a writer of one key):

   - keys the target has neither a row nor a version row for (a first copy): inserted;
   - keys whose target version row is not pending and older than the incoming version (a
     change the target has already acknowledged an older version of): updated. When the
     target has no version row at all between the chunk's lowest and highest key (a first
     copy), the statements for these would find nothing and are not run.

   Every other key (the target holds the same version, a newer one, an unsent change of its
   own, a row older than the capture, or a writer holds it) is left pending on the source and
   moves by the batch path right after, which decides, records conflicts and defers exactly as
   always. The written keys and versions are kept in a second temporary table; the run's lease
   is checked last in the transaction (fencing), then it commits;
3. **acknowledge**, on the source: those keys and versions are piped back with ``COPY`` and one
   ``UPDATE ... FROM`` clears ``pending`` where the version row still holds the version that was
   sent (a key written again since keeps ``pending``); fenced the same way. If a writer holds
   one of those version rows past the short ``lock_timeout``, the batch path's careful
   acknowledgement (``SKIP LOCKED``) takes over for that chunk.

The chunks move as a pipeline: while the target applies chunk N, the source reads chunk N+1
(step 1, into a spooled buffer) and acknowledges chunk N-1 (step 3, on a second connection);
an acknowledgement starts only once its chunk's target transaction has committed.

A chunk whose apply fails (a unique violation from a writer's concurrent insert, a lock wait
past ``lock_timeout``) is rolled back whole and left to the batch path. Killed at any point, a
run leaves every unacknowledged key pending: the next run finds the target already holding that
version (the same write: acknowledged, nothing written twice).

What a chunk committed is counted as it commits, in the caller's ``BulkResult``: a failure on a
later chunk (raised to the caller) leaves the counts of the earlier ones in the run's report.
A chunk that cannot be kept in its temporary file (the temporary directory removed or made
read-only during the run, a full disk) stops the bulk path for its table with one warning; its
keys, and every key after it, are still pending and move by the batch path (which keeps
nothing on disk) in the same run.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import IO

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar.console import first_line
from cesar.sync import capture
from cesar.sync.apply import ROW_ERRORS, Target
from cesar.sync.capture import Change
from cesar.sync.tables import TableSpec

log = logging.getLogger(__name__)

STAGE = sql.Identifier("cesar_sync_stage")
WRITTEN = sql.Identifier("cesar_sync_written")
ACKED = sql.Identifier("cesar_sync_acked")
#: Joins of a chunk's keys to a whole table (the source's read of the rows; on the target the
#: parents looked up, the rows locked first, the acknowledged-and-older version rows and the
#: keys never seen) as one index probe per key: the planner otherwise hashes the whole table for
#: every chunk, so a chunk's cost grew with the rows already there (at 1,000,000 rows: 0.2 s
#: for the first chunk's lock, 1.0 s for the tenth; docs/performance.md). Transaction-local;
#: set back to the server's own values (``RESTORE_JOINS``) for a statement that joins two
#: chunk-sized tables with no index between them.
PROBE_JOINS = ("SELECT set_config('enable_hashjoin', 'off', true), "
               "set_config('enable_mergejoin', 'off', true)")
RESTORE_JOINS = ("SET LOCAL enable_hashjoin TO DEFAULT", "SET LOCAL enable_mergejoin TO DEFAULT")
#: What the source waits, at most, for a writer's lock while acknowledging a chunk at once.
ACK_LOCK_TIMEOUT = "200ms"
#: The memory a bulk statement's sorts, hashes and trigger transition tables may use before
#: spilling to temporary files: at the default 4MB a chunk of 100,000 keys spilled in the
#: source's read (hash join), the target's insert (its transition tables, the event log's
#: included) and the acknowledgement (hash join); set per transaction, never for the session.
WORK_MEM = "64MB"
#: What a chunk read ahead keeps in memory; beyond that its bytes wait in a temporary file.
SPOOL_BYTES = 64 * 1024 * 1024
COPY_BLOCK = 1024 * 1024


class SpoolFailed(Exception):
    """A chunk's bytes could not be written to, or read back from, its temporary file."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(first_line(cause))
        self.cause = cause


def _discard(data: IO[bytes]) -> None:
    # Closing flushes what a failed write left buffered, which fails the same way; the file is
    # unlinked already, so nothing is left behind.
    with contextlib.suppress(OSError):
        data.close()


def _tempdir() -> str:
    try:
        return tempfile.gettempdir()
    except OSError:  # none of the usual directories is usable either
        return "none usable"


@dataclass
class BulkResult:
    applied: int = 0
    acknowledged: int = 0
    chunks: int = 0
    left_to_batches: int = 0      # chunks whose apply failed and were left to the batch path
    position: datetime | None = None


def _bounds(source: psycopg.Connection, spec: TableSpec, after: str,
            chunk: int) -> tuple[int, str | None]:
    """How many pending upserts follow ``after`` (at most ``chunk``) and the last key of them."""
    row = source.execute(
        "SELECT count(*), max(pk) FROM (SELECT pk FROM sync_versions WHERE table_name = %s "
        "AND pending AND NOT deleted AND pk > %s ORDER BY pk LIMIT %s) AS c",
        [spec.name, after, chunk]).fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


def _read_query(spec: TableSpec, after: str, last: str) -> sql.Composed:
    return sql.SQL(
        "COPY (SELECT v.pk, v.version, v.origin, {cols} FROM sync_versions AS v "
        "JOIN {t} AS t ON t.id = CAST(v.pk AS {pk_type}) WHERE v.table_name = {name} "
        "AND v.pending AND NOT v.deleted AND v.pk > {after} AND v.pk <= {last}) "
        "TO STDOUT (FORMAT BINARY)").format(
        cols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c.name))
                                for c in spec.columns),
        t=spec.ident, pk_type=sql.SQL(spec.pk_type), name=sql.Literal(spec.name),
        after=sql.Literal(after), last=sql.Literal(last))


@dataclass(frozen=True)
class Merge:
    """One statement of a chunk's apply (see _merge_queries)."""
    query: sql.Composed
    #: Its row count is the number of keys it recorded in WRITTEN.
    records: bool
    #: Its joins probe an index per key (PROBE_JOINS), or run as the planner likes.
    probe: bool
    #: It writes only keys the target already has a version row of: with none of them in the
    #: chunk's key range it would find nothing, and is not run.
    known_keys: bool


def _merge_queries(spec: TableSpec) -> list[Merge]:
    """The statements that write every key applying without a conflict, in a writer's lock
    order (the row, then its version row), recording each in WRITTEN (key, version, origin)."""
    staged = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c.name))
                                for c in spec.columns)
    names = {"name": sql.Literal(spec.name), "stage": STAGE, "t": spec.ident,
             "cols": spec.column_list, "staged": staged, "updates": spec.update_list,
             "written": WRITTEN}
    return [Merge(sql.SQL(q).format(**names), records, probe, known)
            for q, records, probe, known in (
        # The rows the target has of these keys, locked first, as a writer locks them.
        # Always: rows older than the capture have no version row, and a writer's delete of
        # one must wait for this chunk rather than commit under its insert.
        ("SELECT count(*) FROM (SELECT 1 FROM {t} AS t JOIN {stage} AS s ON t.id = s.id "
         "FOR UPDATE OF t) AS locked", False, True, False),
        # Keys whose version row is acknowledged and older: the incoming version, not pending
        # (re-checked against the latest committed version row, which is locked by the update).
        ("WITH newer AS (UPDATE sync_versions AS v SET version = s.sync_version, "
         "origin = s.sync_origin, deleted = false, pending = false FROM {stage} AS s "
         "WHERE v.table_name = {name} AND v.pk = s.sync_pk AND NOT v.pending "
         "AND (v.version < s.sync_version OR (v.version = s.sync_version "
         "AND v.origin COLLATE \"C\" < s.sync_origin COLLATE \"C\")) "
         "RETURNING v.pk, v.version, v.origin) "
         "INSERT INTO {written} SELECT pk, version, origin FROM newer", True, True, True),
        # WRITTEN has no index: two chunk-sized tables, joined as the planner likes.
        ("INSERT INTO {t} ({cols}) SELECT {staged} FROM {stage} AS s JOIN {written} AS w "
         "ON w.pk = s.sync_pk ON CONFLICT (id) DO UPDATE SET {updates}", False, False, True),
        # Keys the target has never seen: the row first, then its version row (the join back
        # to the staged rows probes the stage's index on id). A version row that a writer
        # committed after this statement's snapshot (it inserted, or deleted, that key on the
        # target meanwhile) is a unique violation, not skipped: skipped, the row just inserted
        # would stand under the writer's version. The chunk rolls back to the batch path.
        ("WITH fresh AS (INSERT INTO {t} ({cols}) SELECT {staged} FROM {stage} AS s "
         "WHERE NOT EXISTS (SELECT 1 FROM sync_versions AS v WHERE v.table_name = {name} "
         "AND v.pk = s.sync_pk) ON CONFLICT (id) DO NOTHING RETURNING id), "
         "versions AS (INSERT INTO sync_versions (table_name, pk, version, origin, deleted, "
         "pending) SELECT {name}, s.sync_pk, s.sync_version, s.sync_origin, false, false "
         "FROM {stage} AS s JOIN fresh AS f ON f.id = s.id "
         "RETURNING pk, version, origin) "
         "INSERT INTO {written} SELECT pk, version, origin FROM versions", True, True, False),
    )]


def _knows_keys(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether the target has any version row between the chunk's lowest and highest staged
    key (by the target's own collation). None on a first copy: then the two statements that
    update acknowledged version rows and their rows have nothing to write. Skipping them is
    safe whatever happens meanwhile: they write only version rows that are acknowledged, which
    nothing but this run (it holds the lease) writes, and a key they would have written stays
    pending for the batch path."""
    bounds = conn.execute(sql.SQL("SELECT min(sync_pk), max(sync_pk) FROM {}").format(
        STAGE)).fetchone()
    if bounds is None or bounds[0] is None:
        return False
    # The bounds as values, not a join: the planner then reads the version rows' primary key
    # from the low bound, where a join to an aggregate could be planned as a scan of them all.
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM sync_versions WHERE table_name = %s AND pk >= %s "
        "AND pk <= %s)", [spec.name, bounds[0], bounds[1]]).fetchone()
    return bool(row and row[0])


@dataclass
class Chunk:
    """One chunk read from the source: the keys in (``after``, ``last``] and their COPY bytes."""
    after: str
    last: str
    count: int
    data: IO[bytes]


def read_chunk(source: psycopg.Connection, spec: TableSpec, after: str,
               chunk: int) -> Chunk | None:
    """Step 1 for the next ``chunk`` pending upserts after ``after`` (None: there are none).
    The bytes are kept in memory up to SPOOL_BYTES, beyond that in a temporary file; raises
    SpoolFailed when that file cannot be written (the source's connection is left idle)."""
    # Closed by the caller once applied (it outlives this function).
    data: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    failed: OSError | None = None
    try:
        with source.transaction():
            source.execute("SELECT set_config('work_mem', %s, true)", [WORK_MEM])
            source.execute(PROBE_JOINS)
            count, last = _bounds(source, spec, after, chunk)
            if count == 0 or last is None:
                data.close()
                return None
            with source.cursor().copy(_read_query(spec, after, last)) as out:
                for block in out:
                    if failed is not None:
                        # The rest is read and dropped: the COPY ends by itself, where leaving
                        # it would take a cancel request, which can reach the next statement.
                        continue
                    try:
                        data.write(block)
                    except OSError as exc:
                        failed = exc
        if failed is not None:
            raise SpoolFailed(failed) from failed
        try:
            data.seek(0)  # flushes what the file still buffers
        except OSError as exc:
            raise SpoolFailed(exc) from exc
    except BaseException:
        _discard(data)
        raise
    return Chunk(after, last, count, data)


def apply_chunk(piece: Chunk, target: Target, spec: TableSpec) -> int:
    """Step 2 for one chunk read: returns how many keys were written (their keys and versions
    are then in the target session's WRITTEN table)."""
    conn = target.conn
    with conn.transaction():
        # The chunk commits durably whatever the target's own setting: its acknowledgement on
        # the source follows the commit, and a chunk lost after it would never move again.
        conn.execute("SELECT set_config('cesar.sync_apply', 'on', true), "
                     "set_config('lock_timeout', %s, true), set_config('work_mem', %s, true), "
                     "CASE WHEN current_setting('synchronous_commit') = 'off' "
                     "THEN set_config('synchronous_commit', 'on', true) END",
                     [f"{target.lock_timeout()}ms", WORK_MEM])
        conn.execute(sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} (pk TEXT, version TIMESTAMPTZ, "
            "origin TEXT) ON COMMIT PRESERVE ROWS").format(WRITTEN))
        conn.execute(sql.SQL("TRUNCATE {}").format(WRITTEN))
        conn.execute(sql.SQL(
            "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT CAST(NULL AS TEXT) AS sync_pk, "
            "CAST(NULL AS TIMESTAMPTZ) AS sync_version, CAST(NULL AS TEXT) AS sync_origin, "
            "{} FROM {} WITH NO DATA").format(STAGE, spec.column_list, spec.ident))
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(
                STAGE)) as into:
            while True:
                try:
                    block = piece.data.read(COPY_BLOCK)
                except OSError as exc:
                    # Raised inside the COPY: the server is told it failed, and the chunk's
                    # transaction rolls back whole (its keys stay pending).
                    raise SpoolFailed(exc) from exc
                if not block:
                    break
                into.write(block)
        # No ANALYZE: building the index records the stage's row count, all the planner needs
        # for joins that probe an index per key (an ANALYZE was 5% of a first copy's time).
        conn.execute(sql.SQL("CREATE INDEX ON {} (id)").format(STAGE))
        conn.execute(PROBE_JOINS)
        for fk in spec.parents:
            # A row whose parent is not on the target yet (a writer committed both after the
            # parent's pass): left to the batch path, which holds it for the next run, instead
            # of failing the chunk on the constraint.
            conn.execute(sql.SQL(
                "DELETE FROM {stage} AS s WHERE s.{c} IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM {p} AS p WHERE p.id = s.{c})").format(
                stage=STAGE, c=sql.Identifier(fk.column), p=sql.Identifier(fk.parent)))
        written, probing, known = 0, True, _knows_keys(conn, spec)
        for merge in _merge_queries(spec):
            if merge.known_keys and not known:
                continue
            if merge.probe != probing:
                for setting in ((PROBE_JOINS,) if merge.probe else RESTORE_JOINS):
                    conn.execute(setting)
                probing = merge.probe
            cur = conn.execute(merge.query)
            if merge.records:
                written += max(cur.rowcount, 0)
        if target.fence is not None:
            target.fence(conn)
    return written


def written_rows(target: Target) -> tuple[bytes, datetime | None]:
    """What the target committed for the last chunk (WRITTEN, as COPY bytes) and the newest
    version among it: taken before the target's session moves on to the next chunk."""
    conn = target.conn
    newest = conn.execute(sql.SQL("SELECT max(version) FROM {}").format(WRITTEN)).fetchone()
    data = bytearray()
    with conn.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(
            WRITTEN)) as out:
        for block in out:
            data += block
    return bytes(data), newest[0] if newest else None


def _load_acked(source: psycopg.Connection, written: bytes) -> None:
    source.execute(sql.SQL(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {} (pk TEXT, version TIMESTAMPTZ, "
        "origin TEXT) ON COMMIT DELETE ROWS").format(ACKED))
    with source.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(
            ACKED)) as into:
        into.write(written)


def acknowledge_chunk(source: psycopg.Connection, spec: TableSpec, written: bytes,
                      fence: Callable[[psycopg.Connection], None] | None,
                      retry: dict[str, float], keys: tuple[str, str]) -> int:
    """Step 3: clear ``pending`` on the source for what the target committed (``written``,
    from written_rows). Returns how many were acknowledged.

    Committed with ``synchronous_commit = off``: an acknowledgement lost in a crash of the
    source leaves its keys pending, and the next run finds the target holding their versions
    (acknowledged then, nothing written twice); a later commit on the source is durable only
    with every earlier one (the WAL is flushed in order), so nothing built on a lost
    acknowledgement survives it. The target's chunk, which the acknowledgement vouches for, is
    committed synchronously before this starts. ``keys``: the chunk's (after, last] key range,
    read on this same database, which holds every written key: it lets the update read the
    chunk's version rows by their primary key instead of every pending one of the table."""
    try:
        with source.transaction():
            source.execute("SELECT set_config('lock_timeout', %s, true), "
                           "set_config('synchronous_commit', 'off', true), "
                           "set_config('work_mem', %s, true)", [ACK_LOCK_TIMEOUT, WORK_MEM])
            _load_acked(source, written)
            done = source.execute(sql.SQL(
                "UPDATE sync_versions AS v SET pending = false FROM {} AS a "
                "WHERE v.table_name = %s AND v.pk = a.pk AND v.pending "
                "AND v.version = a.version AND v.origin = a.origin "
                "AND v.pk > %s AND v.pk <= %s").format(ACKED),
                [spec.name, *keys]).rowcount
            if fence is not None:
                fence(source)
        return done
    except (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected):
        pass
    # A writer holds some of them: the careful acknowledgement, batch by batch.
    with source.transaction():
        _load_acked(source, written)
        rows = source.execute(sql.SQL("SELECT pk, version, origin FROM {} ORDER BY pk")
                              .format(ACKED)).fetchall()
    changes = [Change(pk, version, origin, False, None) for pk, version, origin in rows]
    done = 0
    for i in range(0, len(changes), 5000):
        done += capture.acknowledge(source, spec, changes[i:i + 5000], fence=fence,
                                    **retry)
    return done


def _spool_warning(spec: TableSpec, exc: SpoolFailed) -> None:
    log.warning("the bulk path of %s stopped and the rest of its backlog moves by the batch "
                "path: a chunk could not be kept in a temporary file (%s); point TMPDIR at a "
                "writable directory with free space (now: %s) to keep the bulk path's speed",
                spec.name, exc, _tempdir())


def move(source: psycopg.Connection, target: Target, spec: TableSpec, *, chunk: int,
         check: Callable[[], None], fence: Callable[[psycopg.Connection], None] | None,
         retry: dict[str, float], progress: Callable[[str], None],
         ack_source: psycopg.Connection, result: BulkResult) -> None:
    """The whole backlog of pending upserts of ``spec``, chunk by chunk (see the module), as a
    pipeline: while the target applies chunk N, the source reads chunk N+1 (on ``source``) and
    acknowledges chunk N-1 (on ``ack_source``, a second connection to the same database).

    Each chunk's counts are added to ``result`` once it has committed (the target's apply,
    then the source's acknowledgement), so that they are there when this raises: the caller
    reads ``result`` in a ``finally``. A chunk that cannot be spooled ends the bulk path
    normally (a warning): whatever is still pending is the batch path's."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="cesar-bulk") as pool:
        reading: Future[Chunk | None] | None = pool.submit(read_chunk, source, spec, "", chunk)
        acking: Future[int] | None = None
        try:
            while reading is not None:
                check()
                try:
                    piece = reading.result()
                except SpoolFailed as exc:
                    reading = None
                    _spool_warning(spec, exc)
                    break
                # Only once it has answered: interrupted while waiting, the read-ahead is
                # still ``reading``, and the ``finally`` below frees its buffer.
                reading = None
                if piece is None:
                    break
                if piece.count == chunk:
                    reading = pool.submit(read_chunk, source, spec, piece.last, chunk)
                result.chunks += 1
                try:
                    written = apply_chunk(piece, target, spec)
                except ROW_ERRORS as exc:
                    # Whole chunk rolled back: its keys are still pending and take the batch
                    # path.
                    result.left_to_batches += 1
                    log.info("bulk chunk of %s after %r left to the batch path: %s", spec.name,
                             piece.after, first_line(exc))
                    written = 0
                except SpoolFailed as exc:
                    result.left_to_batches += 1
                    _spool_warning(spec, exc)
                    break
                finally:
                    _discard(piece.data)
                if not written:
                    continue
                # Committed on the target: counted now, whatever fails after this.
                result.applied += written
                data, position = written_rows(target)
                if position is not None and (result.position is None
                                             or position > result.position):
                    result.position = position
                if acking is not None:
                    result.acknowledged += acking.result()
                    acking = None
                # Only now: the target's transaction of this chunk has committed.
                acking = pool.submit(acknowledge_chunk, ack_source, spec, data, fence, retry,
                                     (piece.after, piece.last))
                progress(f"  bulk {spec.name}: {result.applied} rows so far")
            if acking is not None:
                result.acknowledged += acking.result()
                acking = None
        finally:
            for future in (reading, acking):
                if future is not None:
                    future.cancel()
            pool.shutdown(wait=True)
            # An acknowledgement that was running when the loop stopped has committed by now
            # (or failed): what it acknowledged is counted like any other.
            if acking is not None and not acking.cancelled() and acking.exception() is None:
                result.acknowledged += acking.result()
            # A chunk read ahead and never applied (the run stopped): its buffer goes now.
            if reading is not None and not reading.cancelled() and reading.exception() is None:
                ahead = reading.result()
                if ahead is not None:
                    _discard(ahead.data)
