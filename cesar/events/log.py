"""The durable event log (migration 016): reading it in id order without skipping, and pruning.

Ids come from a sequence when a row is *written*, not when it commits, so a reader can see id
N+1 committed while N belongs to a transaction still open. Moving past N then would lose it for
good (the reader's position is "everything up to here"). :class:`Tail` therefore delivers ids
in order and stops at the first missing one, until the missing id is *settled*: committed (it
shows up) or never coming (its transaction rolled back, or the statement failed).

When is a gap settled? Every id below a visible id V was handed out before V was, hence before
the snapshot that saw V. A transaction holding such an id had already written a watched row
(the capture is an AFTER trigger), so it had an xid, and at that snapshot it was either over
(its ids are visible, or will never be) or listed among the snapshot's in-progress xids. So on
PostgreSQL a gap below V is settled once none of the in-progress xids of the snapshot that saw
V is still in progress (``pg_current_snapshot()``; exact, no timing assumption). This needs the
sequence to hand out ids in order across sessions: it is ``CACHE 1``.

CockroachDB has neither xids nor ``pg_current_snapshot()``: a gap there is settled after
``gap_seconds`` (``CESAR_EVENTS_GAP_SECONDS``). A writing transaction that stays open longer
than that and then commits has its events skipped by the live stream (they remain in the log);
the window must exceed the longest writing transaction (docs/events.md).

Retention: :func:`prune` deletes events older than the retention and records the highest id
deleted in ``event_log_state.pruned_through``; a client resuming at or below it is told to
reload (``reset``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from cesar.db.engines import Engine

logger = logging.getLogger(__name__)

#: The channel the capture trigger notifies on PostgreSQL.
CHANNEL = "cesar_events"
#: The tables whose changes the log records (triggers of migration 016).
WATCHED_TABLES: tuple[str, ...] = ("agents", "tasks", "task_assignments", "agent_runs",
                                   "agent_run_events", "sync_state", "sync_conflicts")

_SELECT = ("SELECT id, table_name, op, pk, CAST(row_image AS TEXT), occurred_at "
           "FROM event_log WHERE id > %s ORDER BY id LIMIT %s")
_SELECT_RANGE = ("SELECT id, table_name, op, pk, CAST(row_image AS TEXT), occurred_at "
                 "FROM event_log WHERE id > %s AND id <= %s ORDER BY id LIMIT %s")
_SNAPSHOT = ("SELECT CAST(pg_snapshot_xmax(s) AS TEXT), "
             "ARRAY(SELECT CAST(pg_snapshot_xip(s) AS TEXT)) "
             "FROM (SELECT pg_current_snapshot() AS s) AS snap")


@dataclass(frozen=True)
class Event:
    id: int
    table: str
    op: str
    pk: str
    row: str | None  # the row as JSON text, None for a delete
    at: datetime

    def data(self) -> str:
        """The event's JSON body (the row is embedded as the database wrote it)."""
        head = json.dumps({"id": self.id, "table": self.table, "op": self.op, "pk": self.pk})
        return (f'{head[:-1]}, "row": {self.row if self.row is not None else "null"}, '
                f'"at": {json.dumps(self.at.isoformat())}}}')

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "table": self.table, "op": self.op, "pk": self.pk,
                "row": None if self.row is None else json.loads(self.row),
                "at": self.at.isoformat()}


def _events(rows: Sequence[tuple[Any, ...]]) -> list[Event]:
    return [Event(int(i), t, o, p, r, a) for i, t, o, p, r, a in rows]


@dataclass
class _Horizon:
    """A gap seen at some snapshot: settled once ``xids`` are over (or ``deadline`` passes)."""

    through: int  # the highest id visible then: every missing id below it is settled with it
    xids: frozenset[int]
    deadline: float


class Tail:
    """Reads the log forward from ``position`` and never skips an id that may still commit.

    Not thread-safe: one reader (the API's event source) owns it.
    """

    def __init__(self, engine: Engine, *, gap_seconds: float = 30.0, batch: int = 1000) -> None:
        self.engine = engine
        self.gap_seconds = gap_seconds
        self.batch = batch
        #: Every id at or below this is delivered or known never to come (None: not started).
        self.position: int | None = None
        self._settled = 0  # missing ids at or below this will never come
        self._horizon: _Horizon | None = None
        self._start: _Horizon | None = None

    @property
    def waiting(self) -> bool:
        """Whether a gap (or the start) waits on open transactions: poll again soon."""
        return self._horizon is not None or self.position is None

    def _snapshot(self, conn: psycopg.Connection) -> tuple[int, frozenset[int]]:
        if not self.engine.snapshot_xids:
            return 0, frozenset()
        row = conn.execute(_SNAPSHOT).fetchone()
        assert row is not None
        return int(row[0]), frozenset(int(x) for x in row[1])

    def _over(self, horizon: _Horizon, xip: frozenset[int]) -> bool:
        if not self.engine.snapshot_xids:
            return time.monotonic() >= horizon.deadline
        return not (horizon.xids & xip)

    def read(self, conn: psycopg.Connection) -> list[Event]:
        """The next events in id order that can be delivered now (``conn``: autocommit)."""
        with conn.transaction():
            if self.engine.snapshot_xids:
                # One snapshot for the xids and the rows.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            _, xip = self._snapshot(conn)
            if self.position is None:
                return self._begin(conn, xip)
            rows = _events(conn.execute(_SELECT, (self.position, self.batch)).fetchall())
        if self._horizon is not None and self._over(self._horizon, xip):
            self._settled = max(self._settled, self._horizon.through)
            self._horizon = None
        out: list[Event] = []
        for event in rows:
            if event.id != self.position + 1 and event.id - 1 > self._settled:
                if self._horizon is None:
                    # Every id below the highest visible one was handed out before this snapshot.
                    self._horizon = _Horizon(rows[-1].id, xip,
                                             time.monotonic() + self.gap_seconds)
                break
            out.append(event)
            self.position = event.id
        return out

    def _begin(self, conn: psycopg.Connection, xip: frozenset[int]) -> list[Event]:
        """The starting position: the newest id, once every id below it is settled."""
        row = conn.execute("SELECT coalesce(max(id), 0) FROM event_log").fetchone()
        newest = int(row[0]) if row else 0
        if not self.engine.snapshot_xids:
            # No xids to wait on, and waiting out the window would keep the stream unready that
            # long: start at once (a write in flight at this moment may be skipped, as a gap).
            self.position = self._settled = newest
            return []
        if self._start is None:
            self._start = _Horizon(newest, xip, time.monotonic() + self.gap_seconds)
        over = self._over(self._start, xip)
        if over or time.monotonic() >= self._start.deadline:
            if not over:
                logger.warning(
                    "the /events reader starts at id %d although transactions that were "
                    "writing when it started are still open after %g s; their events, if they "
                    "commit, are not streamed live (they stay in the log)",
                    self._start.through, self.gap_seconds)
            self.position = self._settled = self._start.through
            self._start = None
        return []


def read_range(conn: psycopg.Connection, after: int, through: int,
               limit: int = 1000) -> list[Event]:
    """Events with ``after < id <= through`` in id order (a backlog: ``through`` is settled)."""
    return _events(conn.execute(_SELECT_RANGE, (after, through, limit)).fetchall())


@dataclass(frozen=True)
class Bounds:
    pruned_through: int
    last_issued: int  # the highest id the sequence has handed out (0: none)


def bounds(conn: psycopg.Connection) -> Bounds:
    """What a resuming client's id is checked against: pruned, or never issued, means reset."""
    row = conn.execute(
        "SELECT (SELECT pruned_through FROM event_log_state WHERE singleton), "
        "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM event_log_id_seq)"
    ).fetchone()
    assert row is not None
    return Bounds(int(row[0] or 0), int(row[1] or 0))


def needs_reset(after: int, b: Bounds) -> bool:
    """Whether events after ``after`` may be missing (pruned) or ``after`` was never issued."""
    return after < b.pruned_through or after > b.last_issued


@dataclass(frozen=True)
class Pruned:
    deleted: int
    pruned_through: int


def prune(conn: psycopg.Connection, older_than_seconds: float, *, dry_run: bool = False
          ) -> Pruned:
    """Delete events older than ``older_than_seconds`` (one transaction; ``conn``: autocommit).

    ``pruned_through`` only grows, so a reset decision never goes back."""
    with conn.transaction():
        if dry_run:
            row = conn.execute(
                "SELECT count(*), coalesce(max(id), 0) FROM event_log "
                "WHERE occurred_at < now() - %s * INTERVAL '1 second'",
                (older_than_seconds,)).fetchone()
            assert row is not None
            current = bounds(conn).pruned_through
            return Pruned(int(row[0]), max(current, int(row[1])))
        row = conn.execute(
            "WITH gone AS (DELETE FROM event_log "
            "  WHERE occurred_at < now() - %s * INTERVAL '1 second' RETURNING id) "
            "SELECT count(*), coalesce(max(id), 0) FROM gone", (older_than_seconds,)).fetchone()
        assert row is not None
        deleted, through = int(row[0]), int(row[1])
        state = conn.execute(
            "UPDATE event_log_state SET pruned_through = greatest(pruned_through, %s), "
            "pruned_at = now() WHERE singleton RETURNING pruned_through", (through,)).fetchone()
        assert state is not None
        return Pruned(deleted, int(state[0]))
