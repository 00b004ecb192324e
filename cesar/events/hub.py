"""One reader of the event log per API process, fanning out to every subscriber of ``/events``.

The reader is a thread with its own connection (not the pool: clients' queries cannot starve
it). On PostgreSQL with ``CESAR_EVENTS_SOURCE=notify`` it LISTENs on ``cesar_events`` and reads
the log when woken (the notification says only "something committed"; the log is the truth),
and at least every ``idle_seconds``; otherwise (``poll``, and always on CockroachDB, which has
no LISTEN/NOTIFY) it reads every ``poll_seconds``. Either way the same :class:`Tail` decides
what can be delivered, so the two sources deliver the same events in the same order.

Subscribers live on the event loop. Each has a bounded queue of events (shared objects: a
subscriber costs a slot per event, not a copy); one that falls ``queue_size`` events behind is
dropped, its queue freed, and its stream ends: the client resumes with its last id. Memory is
thus bounded by subscribers x queue_size, whatever a client does.

Every worker process has its own hub and reads the same log, so each delivers every event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import psycopg

from cesar import db
from cesar.console import first_line
from cesar.db import engines
from cesar.events import log as elog
from cesar.events.settings import EventSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """An event encoded once for every subscriber."""

    id: int
    data: str  # the JSON body

    @property
    def sse(self) -> bytes:
        return f"id: {self.id}\ndata: {self.data}\n\n".encode()


@dataclass(eq=False)
class Subscriber:
    maxsize: int
    live_from: int
    queue: deque[Item] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False
    closed: bool = False

    def offer(self, items: list[Item]) -> bool:
        """Queue what is newer than ``live_from``; False when this makes the subscriber drop."""
        for item in items:
            if item.id > self.live_from:
                self.queue.append(item)
        if len(self.queue) > self.maxsize:
            self.dropped = True
            self.queue.clear()
        self.wakeup.set()
        return not self.dropped

    async def next(self, timeout: float) -> Item | None:
        """The next event, or None after ``timeout`` (or when dropped or closed)."""
        if not self.queue and not self.dropped and not self.closed:
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except TimeoutError:
                return None
        if self.dropped or self.closed or not self.queue:
            return None
        return self.queue.popleft()


class Hub:
    def __init__(self, database: db.Database, settings: EventSettings) -> None:
        self.database = database
        self.settings = settings
        self.subscribers: set[Subscriber] = set()
        #: Every id at or below this has been published (None until the reader has started).
        self.position: int | None = None
        self.engine: engines.Engine | None = None
        self.mode: str | None = None
        self.dropped_total = 0
        self.published_total = 0
        self._ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cesar-events", daemon=True)
        self._conn: psycopg.Connection | None = None
        self._url = ""  # what the reader's connection was opened with
        self._born = 0.0

    # ------------------------------------------------------------ lifecycle (event loop)
    def start(self) -> Hub:
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for sub in self.subscribers:
            sub.closed = True
            sub.wakeup.set()
        self._thread.join(timeout=5)

    async def wait_ready(self, timeout: float) -> bool:
        assert self._ready is not None
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def subscribe(self) -> Subscriber:
        """A new subscriber receiving every event after the current position (call when ready)."""
        assert self.position is not None
        sub = Subscriber(self.settings.queue_size, self.position)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _publish(self, items: list[Item], position: int) -> None:
        for sub in list(self.subscribers):
            if not sub.offer(items):
                self.subscribers.discard(sub)
                self.dropped_total += 1
                logger.warning("dropped a slow /events subscriber (more than %d events behind); "
                               "it can resume from its last id", sub.maxsize)
        self.published_total += len(items)
        self.position = position
        assert self._ready is not None
        self._ready.set()

    # ------------------------------------------------------------ the reader (its thread)
    def _connect(self) -> psycopg.Connection:
        url = self._url = self.database._current_url(self.database.endpoint.name)
        self._born = time.monotonic()
        kwargs = db.connect_kwargs(self.database.settings)
        # Its own name: an operator sees (and may end) the reader in pg_stat_activity.
        kwargs["application_name"] = f"{kwargs['application_name']}-events"[:63]
        conn = psycopg.connect(url, **{**kwargs, "autocommit": True})
        self.engine = engines.of(conn)
        self.mode = ("notify" if self.engine.listen_notify and self.settings.source == "notify"
                     else "poll")
        if self.mode == "notify":
            conn.execute(f"LISTEN {elog.CHANNEL}")
        return conn

    def _run(self) -> None:
        tail: elog.Tail | None = None
        backoff = 0.5
        last_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                conn = self._conn = self._connect()
                tail = tail or elog.Tail(self.engine or engines.POSTGRESQL,
                                         gap_seconds=self.settings.gap_seconds)
                backoff = 0.5
                with conn:
                    while not self._stop.is_set():
                        self._read(conn, tail)
                        if (self.settings.prune_seconds
                                and time.monotonic() - last_prune >= self.settings.prune_seconds):
                            last_prune = time.monotonic()
                            self._prune(conn)
                        self._wait(conn, tail)
                        if self._stale():
                            break  # `with conn` closes it; the next one starts where this ended
            except psycopg.Error as exc:
                logger.warning("the /events reader lost its database connection (%s); "
                               "reconnecting in %.1f s",
                               first_line(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # a bug: logged, and the reader keeps going
                logger.exception("the /events reader failed; restarting it")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _stale(self) -> bool:
        """Whether the reader's connection is to be replaced: its credentials were rotated (so
        the retired login is not held open by the reader: a rotation waits for its sessions),
        or it is older than the pool's connections may get."""
        current = self.database._current_url(self.database.endpoint.name)
        if current != self._url:
            logger.info("the /events reader reconnects with the reloaded credentials")
            return True
        return time.monotonic() - self._born >= self.database.settings.pool_max_lifetime

    def _read(self, conn: psycopg.Connection, tail: elog.Tail) -> None:
        while True:
            events = tail.read(conn)
            if tail.position is None:
                return
            items = [Item(e.id, e.data()) for e in events]
            self._post(items, tail.position)
            if len(events) < tail.batch:
                return

    def _post(self, items: list[Item], position: int) -> None:
        if not items and position == self.position:
            return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._publish, items, position)
        except RuntimeError:  # the loop is closed: shutting down
            self._stop.set()

    def _wait(self, conn: psycopg.Connection, tail: elog.Tail) -> None:
        timeout = self.settings.poll_seconds
        if self.mode == "poll" or tail.waiting:
            self._stop.wait(timeout)
            return
        # One notification is enough: the next read takes everything committed since.
        for _ in conn.notifies(timeout=self.settings.idle_seconds, stop_after=1):
            pass

    def _prune(self, conn: psycopg.Connection) -> None:
        pruned = elog.prune(conn, self.settings.retention_hours * 3600)
        if pruned.deleted:
            logger.info("pruned %d events older than %g h (through id %d)", pruned.deleted,
                        self.settings.retention_hours, pruned.pruned_through)
