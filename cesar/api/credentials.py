"""The API's pools follow a password rotation as soon as the credential files change.

Both pools take their connection string as a callable (:meth:`cesar.db.Database._current_url`),
so a *new* connection uses the rotated password. But a pool keeps its idle connections until
one is used past ``CESAR_POOL_MAX_LIFETIME`` (psycopg_pool expires a connection when it goes
back to the pool, never while it sits idle), and a pool nobody uses keeps its sessions on the
previous login indefinitely: the threaded pool when ``CESAR_API_READ_PATH=async`` serves the
reads, the async pool's read-replica side, any pool between bursts. A rotation's retire waits
for the previous login's sessions (up to its ``--grace``), so those idle sessions made every
rotation wait out its whole grace, and once retired they would be the last on a login that can
no longer log in.

So once a second the credential files' modification times are compared (a few ``stat`` calls;
:func:`cesar.db.credential_files_stamp` inside ``_current_url``); when the URL of an endpoint in
use changed, each pool is drained (psycopg_pool ``drain``: idle connections closed and replaced
at once, connections in use replaced when they come back). Requests are not failed: a request
holding a connection finishes on it, and new ones wait for the fresh connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import anyio

from cesar.api.aio import AsyncReads
from cesar.db import Database

log = logging.getLogger(__name__)

#: How often the credential files are looked at.
POLL_SECONDS = 1.0


class CredentialFollower:
    def __init__(self, database: Database, reads: AsyncReads | None) -> None:
        self.database = database
        self.reads = reads
        self._seen = self._urls()
        self._task: asyncio.Task[None] | None = None
        #: Drains made (each one: every pool of the process).
        self.drains = 0

    def _names(self) -> list[str]:
        names = [self.database.endpoint.name]
        replica = self.database.route.read_replica
        if replica is not None and (self.database.read_pool is not None
                                    or (self.reads is not None and self.reads.read_pool)):
            names.append(replica.name)
        return names

    def _urls(self) -> dict[str, str]:
        return {name: self.database._current_url(name) for name in self._names()}

    def start(self) -> CredentialFollower:
        if self.database.reloadable:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="cesar-credentials")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - a failed look must not end the follower
                log.warning("could not check the credential files (%s); trying again", exc)

    async def check(self) -> bool:
        """Drain every pool if the credentials changed since the last look. True if drained."""
        urls = self._urls()
        if urls == self._seen:
            return False
        self._seen = urls
        sync_pools: list[Any] = [p for p in (self.database.pool, self.database.read_pool)
                                 if p is not None]
        for pool in sync_pools:
            await anyio.to_thread.run_sync(pool.drain)
        for apool in (self.reads.pools if self.reads is not None else []):
            await apool.drain()
        self.drains += 1
        log.info("the credentials changed: the connection pools were drained, new connections "
                 "use the new login")
        return True
