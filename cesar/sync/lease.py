"""One sync run at a time, without advisory locks (CockroachDB has none): a lease row.

``sync_lease`` (id 1, in the cluster database, which every run of a pair reaches) names its
holder and expires at a time set by the *database* clock (``now() + lease``), so the runners'
clocks never matter. A heartbeat thread on its own connection renews it every third of the lease;
a run killed with SIGKILL stops renewing and the row can be taken over once expired. The run
checks :meth:`SyncLease.check` between batches and stops if another run took over.

Correctness does not depend on the lease (every step of a run is conditional on versions and
row locks); it keeps cron's overlapping runs from doing the same work twice, and gives the
operator a clear "a run is in progress".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from cesar import db
from cesar.errors import OperationFailed

log = logging.getLogger(__name__)


class LeaseLost(OperationFailed):
    """Another run took the lease over (ours had expired): stop before the next batch."""


@dataclass(frozen=True)
class Holder:
    holder: str
    host: str
    pid: int
    acquired_at: datetime
    seconds_left: float

    def describe(self) -> str:
        return (f"{self.holder} (pid {self.pid} on {self.host}, running since "
                f"{self.acquired_at:%Y-%m-%d %H:%M:%S %Z}, lease expires in "
                f"{max(self.seconds_left, 0):.0f} s unless renewed)")

    def as_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "host": self.host, "pid": self.pid,
                "acquired_at": self.acquired_at.isoformat(),
                "seconds_left": round(self.seconds_left, 1)}


def read(conn: psycopg.Connection) -> Holder | None:
    row = conn.execute(
        "SELECT holder, host, pid, acquired_at, EXTRACT(EPOCH FROM expires_at - now()) "
        "FROM sync_lease WHERE id = 1").fetchone()
    if row is None:
        return None
    return Holder(row[0], row[1], int(row[2]), row[3], float(row[4]))


def new_holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SyncLease:
    """The lease held by this run: :meth:`acquire`, then use as a context manager."""

    def __init__(self, conn: psycopg.Connection, connect: Callable[[], psycopg.Connection],
                 seconds: float) -> None:
        self.conn = conn
        self.connect = connect
        self.seconds = seconds
        self.name = new_holder_name()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, conn: psycopg.Connection, connect: Callable[[], psycopg.Connection], *,
                seconds: float, wait: float) -> tuple[SyncLease | None, Holder | None]:
        """``(lease, None)`` when taken; ``(None, holder)`` when a live run still holds it after
        waiting up to ``wait`` seconds (0: do not wait)."""
        lease = cls(conn, connect, seconds)
        deadline = time.monotonic() + wait
        while True:
            holder = db.run_transaction(conn, lease._try_take)
            if holder is None:
                lease._start_heartbeat()
                return lease, None
            now = time.monotonic()
            if now >= deadline:
                return None, holder
            time.sleep(min(deadline - now, 0.5, max(0.05, holder.seconds_left)))

    def _try_take(self, conn: psycopg.Connection) -> Holder | None:
        row = conn.execute("SELECT holder, expires_at < now() FROM sync_lease WHERE id = 1 "
                           "FOR UPDATE").fetchone()
        values = [self.name, socket.gethostname(), os.getpid(), timedelta(seconds=self.seconds)]
        if row is None:
            taken = conn.execute(
                "INSERT INTO sync_lease (id, holder, host, pid, expires_at) "
                "VALUES (1, %s, %s, %s, now() + %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                values).fetchone()
            return None if taken is not None else read(conn)
        if row[1]:
            log.warning("taking over the sync lease of %s: it expired (that run died)", row[0])
            conn.execute(
                "UPDATE sync_lease SET holder = %s, host = %s, pid = %s, acquired_at = now(), "
                "renewed_at = now(), expires_at = now() + %s WHERE id = 1", values)
            return None
        return read(conn)

    def check(self) -> None:
        if self._lost.is_set():
            raise LeaseLost(
                f"this sync run ({self.name}) lost its lease: it was paused past its "
                f"{self.seconds:g} s lease and another run took over; it stopped between two "
                "batches (nothing is lost: what it did not acknowledge is sent again)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.seconds)
        try:
            self.conn.execute("DELETE FROM sync_lease WHERE id = 1 AND holder = %s", [self.name])
        except psycopg.Error as exc:  # it then simply expires
            log.warning("could not release the sync lease (it expires by itself): %s", exc)

    def __enter__(self) -> SyncLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, name="sync-lease-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.wait(self.seconds / 3):
                try:
                    if conn is None or conn.closed:
                        conn = self.connect()
                    row = conn.execute(
                        "UPDATE sync_lease SET renewed_at = now(), expires_at = now() + %s "
                        "WHERE id = 1 AND holder = %s RETURNING id",
                        [timedelta(seconds=self.seconds), self.name]).fetchone()
                    if row is None:
                        self._lost.set()
                        return
                except (psycopg.Error, OperationFailed) as exc:
                    log.warning("sync lease heartbeat failed (will retry): %s", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
