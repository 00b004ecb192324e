"""The API's hot reads on the event loop: psycopg's async pool, no worker thread per request
(``CESAR_API_READ_PATH=async``, the default; ``threads`` keeps the threaded path, see
ReadSettings).

``/agents``, ``/agents/{id}`` and the API-key lookup run here. Per request that is one pooled
connection checked out on the event loop, one autocommit statement (prepared on each connection
by the server after its first use: ``prepare=True``), and no thread hop; identical ``/agents``
reads in flight together share one query that started after each of them arrived
(:class:`Coalescer`). The rest of the
service (the ``/health`` probe, the batched usage writes, the commands) keeps the threaded pool
of :class:`cesar.db.Database`.

The pool does not check each connection with a round trip at checkout (what
``ConnectionPool.check_connection`` costs: as much as the query itself). Instead:

- a connection the client library already knows is broken or closed is discarded at checkout
  (no I/O: libpq's own state);
- a connection idle for more than :data:`CHECK_IDLE_SECONDS` gets the round trip (after a quiet
  spell, a server restart or a dropped TCP connection is likely; under load it never happens);
- a read that fails with a connection error (a server restart closes every idle connection
  without the client noticing) makes the pool check all its idle connections, and is run once
  more on a fresh one. These reads change nothing, so running one twice is harmless; a second
  failure is the outage itself (503).

After an outage, psycopg_pool retries its connections with an exponential backoff (1, 2, 4, ...
seconds): a database back after a minute could wait another minute for the pool. So a read that
found no connection while none was in use (the pool is failing, not exhausted) tries one direct
connection; if that works the database is back, and a fresh pool replaces the failing one at
once (the old one is closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Literal, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cesar import keys
from cesar.config import ENV_FILES, load
from cesar.console import first_line
from cesar.db import Database, Endpoint, connect_kwargs
from cesar.errors import OperationFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A connection idle longer than this is checked with a round trip before use.
CHECK_IDLE_SECONDS = 2.0


class Coalescer:
    """Identical reads in flight together share one query that started after each arrived.

    A read that arrives while the same read (same key) is running does not join it: that
    query may have taken its snapshot before a write the newcomer has already seen committed.
    It waits for the running one to end and joins the next, which starts once, for every read
    that arrived meanwhile; so every answer comes from a query that began after its request
    arrived, and a write acknowledged before a request is in its answer. Under load (50
    clients asking for the same page) one query serves a whole batch; alone, a read runs at
    once as before. A request that goes away does not cancel the query the others wait for."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[Any]] = {}
        self._next: dict[Hashable, asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        batch = self._next.get(key)
        if batch is None:
            batch = asyncio.ensure_future(self._start(key, self._running.get(key), read))
            batch.add_done_callback(_retrieved)
            self._next[key] = batch
        return await asyncio.shield(batch)  # type: ignore[no-any-return]

    async def _start(self, key: Hashable, running: asyncio.Future[Any] | None,
                     read: Callable[[], Awaitable[T]]) -> T:
        if running is not None:
            await asyncio.wait([running])  # its outcome is its own readers'
        this = self._next.pop(key)  # arrivals from now on make the next batch
        self._running[key] = this
        try:
            return await read()
        finally:
            if self._running.get(key) is this:
                del self._running[key]


def _retrieved(future: asyncio.Future[Any]) -> None:
    """An exception no reader waited for (all went away) is not logged as never retrieved."""
    if not future.cancelled():
        future.exception()


class AsyncReads:
    """One async pool per endpoint the API reads from (the primary, and the read replica)."""

    def __init__(self, database: Database, *, check_idle: float | None = CHECK_IDLE_SECONDS,
                 prepare: bool = True, coalesce: bool = True) -> None:
        self.database = database
        self.settings = database.settings
        #: None: a round trip at every checkout (psycopg_pool's own check), for comparison.
        self.check_idle = check_idle
        #: False: leave preparing to psycopg's default threshold (after 5 uses).
        self.prepare = prepare
        #: False: every read runs its own query (:class:`Coalescer`), for comparison.
        self.coalesce = coalesce
        self.coalescer = Coalescer()
        self._returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self.pool = self._make_pool(database.endpoint)
        self.read_pool = (self._make_pool(database.route.read_replica)
                          if database.read_pool is not None and database.route.read_replica
                          else None)
        self._in_use: dict[str, int] = {"primary": 0, "replica": 0}
        self._reviving = False
        #: Pools replaced after an outage (see :meth:`_revive`).
        self.replaced = 0
        #: Told of each replacement (the metrics' pool watcher).
        self.on_replace: Callable[[AsyncConnectionPool, AsyncConnectionPool], None] | None = None

    def _make_pool(self, endpoint: Endpoint) -> AsyncConnectionPool:
        s = self.settings
        name = endpoint.name
        conninfo: Any = ((lambda: self.database._current_url(name)) if self.database.reloadable
                         else endpoint.url)
        return AsyncConnectionPool(
            conninfo,
            min_size=min(s.pool_min_size, s.pool_max_size),
            max_size=s.pool_max_size,
            timeout=s.pool_timeout,
            max_lifetime=s.pool_max_lifetime,
            kwargs={**connect_kwargs(s), "autocommit": True},
            check=self._check,
            name=f"cesar-async-{endpoint.name}",
            open=False,
        )

    @property
    def pools(self) -> list[AsyncConnectionPool]:
        return [p for p in (self.pool, self.read_pool) if p is not None]

    async def open(self) -> AsyncReads:
        for pool in self.pools:
            await pool.open(wait=False)
        return self

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()

    # ---------------------------------------------------------------- the pool's callback
    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.broken or conn.closed:
            raise psycopg.OperationalError("the connection is broken")
        if self.check_idle is None:
            await AsyncConnectionPool.check_connection(conn)
            return
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > self.check_idle:
            await AsyncConnectionPool.check_connection(conn)

    # ---------------------------------------------------------------- use
    def _pick(self, read_only: bool) -> tuple[str, AsyncConnectionPool, Endpoint]:
        if read_only and self.read_pool is not None and self.database.route.read_replica:
            return "replica", self.read_pool, self.database.route.read_replica
        return "primary", self.pool, self.database.endpoint

    async def _run(self, which: str, pool: AsyncConnectionPool,
                   queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
        # getconn/putconn rather than pool.connection(): that context manager also enters the
        # connection's own (a lock, and a COMMIT check that autocommit makes moot), and a pool
        # with a reset callback returns each connection through its worker task, a hop per
        # request. The time a connection comes back is stamped here instead (see _check).
        conn = await pool.getconn()
        self._in_use[which] += 1
        try:
            out = []
            async with conn.cursor() as cur:
                for query, params in queries:
                    await cur.execute(query, params,  # type: ignore[arg-type]
                                      prepare=self.prepare or None)
                    out.append(await cur.fetchall())
            return out
        finally:
            self._in_use[which] -= 1
            self._returned[conn] = time.monotonic()
            await pool.putconn(conn)

    async def fetch(self, queries: Sequence[tuple[str, Sequence[Any]]], *,
                    read_only: bool = True) -> list[list[tuple[Any, ...]]]:
        """Run read-only ``queries`` on one pooled connection; their rows as tuples.

        A connection error makes the pool check its idle connections, then the reads run once
        more (they change nothing); a second error propagates (503 upstream)."""
        which, pool, endpoint = self._pick(read_only)
        checked = revived = False
        while True:
            try:
                return await self._run(which, pool, queries)
            # PoolTimeout is an OperationalError: it comes first.
            except PoolTimeout:
                if revived or self._in_use[which] or not await self._revive(which, endpoint):
                    raise OperationFailed(
                        f"no connection to the {endpoint.name} database {endpoint.masked} "
                        f"within {self.settings.pool_timeout:g} s (is it up? is the pool "
                        "exhausted?)") from None
                revived = True
                which, pool, endpoint = self._pick(read_only)
            except psycopg.OperationalError as exc:
                if checked:
                    raise
                checked = True
                log.info("a pooled connection to the %s database failed (%s); checking the "
                         "pool and reading again", endpoint.name,
                         first_line(exc))
                await pool.check()

    async def _revive(self, which: str, endpoint: Endpoint) -> bool:
        """The pool gave no connection while none was in use: if the database answers a direct
        connection now, replace the pool (its reconnection may be backing off). True if so."""
        if self._reviving:
            return False
        self._reviving = True
        try:
            url = self.database._current_url(endpoint.name)
            try:
                conn = await psycopg.AsyncConnection.connect(url, **connect_kwargs(self.settings))
            except psycopg.OperationalError:
                return False
            await conn.close()
            old = self.pool if which == "primary" else self.read_pool
            fresh = self._make_pool(endpoint)
            await fresh.open(wait=False)
            if which == "primary":
                self.pool = fresh
            else:
                self.read_pool = fresh
            self.replaced += 1
            if self.on_replace is not None and old is not None:
                self.on_replace(old, fresh)
            log.warning("the %s database answers again; its connection pool was replaced "
                        "(the old one was still backing off)", endpoint.name)
            if old is not None:
                await old.close(timeout=0)
            return True
        finally:
            self._reviving = False

    async def lookup_key(self, digest: str) -> keys.KeyRecord | None:
        """:func:`cesar.keys.lookup` on the primary (a revocation is read where it is made)."""
        (rows,) = await self.fetch([(keys.LOOKUP, (digest,))], read_only=False)
        return keys.record_of(rows[0]) if rows else None


# ------------------------------------------------------------------------------ settings
READ_PATHS = ("async", "async-checked", "async-unprepared", "async-uncoalesced", "threads")


class ReadSettings(BaseSettings):
    """``CESAR_API_READ_PATH``: how the hot reads run. ``async`` (the default) as above,
    ``threads`` (the threaded pool, one worker thread per request), and variants of ``async``
    to measure each lever (``invoke bench --suite api_levers``): ``async-checked`` (a round
    trip at every checkout), ``async-unprepared`` (psycopg's default of preparing a statement
    after its fifth use), ``async-uncoalesced`` (a query per request, see :class:`Coalescer`).
    ``async`` is the default since it was measured on an idle machine: more ``/agents``
    requests per second than ``threads`` on one worker (docs/performance.md); under heavy CPU
    contention the threaded one did better."""

    model_config = SettingsConfigDict(env_prefix="CESAR_API_", env_file=ENV_FILES,
                                      env_file_encoding="utf-8", extra="ignore", frozen=True)

    read_path: Literal["async", "async-checked", "async-unprepared", "async-uncoalesced",
                       "threads"] = Field(
        "async", description="CESAR_API_READ_PATH: " + ", ".join(READ_PATHS))
    gc: Literal["tuned", "default"] = Field(
        "tuned", description="CESAR_API_GC: tuned (start-up objects frozen, young collections "
        "rarer: cesar/api/worker_gc.py) or default (CPython's collector as it is)")


def load_read_settings() -> ReadSettings:
    return load(ReadSettings)


async def open_reads(database: Database, settings: ReadSettings) -> AsyncReads | None:
    """The async reads the settings ask for (None: the threaded path), opened."""
    if settings.read_path == "threads":
        return None
    reads = AsyncReads(database,
                       check_idle=None if settings.read_path == "async-checked"
                       else CHECK_IDLE_SECONDS,
                       prepare=settings.read_path != "async-unprepared",
                       coalesce=settings.read_path != "async-uncoalesced")
    return await reads.open()
