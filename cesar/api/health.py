"""``/health``: one bounded probe of the database, shared with the gauges of ``/metrics``.

The probe runs on a small thread pool of its own and is bounded twice: the checkout from the
connection pool waits at most ``CHECKOUT_TIMEOUT`` and the whole probe at most ``DEADLINE``.
So ``/health`` answers 503 in under a second when the database is down, hangs, or the pool is
exhausted, and 200 again as soon as the pool has reconnected (psycopg_pool does that in the
background; each checkout is health-checked, so broken connections are replaced).

Beyond the connection, each :class:`Component` reads one thing on the same connection and adds
it under ``components.<name>``. To add one (as the sync lag does): write its probe, give it a
field in :class:`cesar.api.models.Components`, and append it to :data:`COMPONENTS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from cesar import __version__, db, metrics
from cesar.api import models
from cesar.console import first_line
from cesar.sync import health as sync_health

log = logging.getLogger(__name__)

#: Seconds the whole probe may take before /health answers 503.
DEADLINE = 0.8
#: Seconds to wait for a pooled connection.
CHECKOUT_TIMEOUT = 0.5
#: Concurrent probes; more requests wait their turn (within DEADLINE) instead of
#: taking connections the API's own routes need.
PROBE_THREADS = 4


@dataclass(frozen=True)
class Component:
    """Something /health reads from the serving database beside the connection itself.

    ``probe`` runs on a pooled connection (autocommit) and returns the JSON shown under
    ``components.<name>``; ``problems`` says what is wrong with that value (a problem makes the
    status ``degraded``, never 503: the instance can still serve); ``export`` copies the value
    into Prometheus gauges.
    """

    name: str
    probe: Callable[[psycopg.Connection], dict[str, Any]]
    problems: Callable[[dict[str, Any]], list[str]]
    export: Callable[[dict[str, Any]], None]


def _migrations(conn: psycopg.Connection) -> dict[str, Any]:
    from cesar import migrate

    return dict(migrate.summary(conn))


def _migration_problems(counts: dict[str, Any]) -> list[str]:
    problems = []
    if counts["failed"]:
        problems.append(f"migrations: {counts['failed']} failed (see `cesar migrate status`)")
    if counts["pending"]:
        problems.append(
            f"migrations: {counts['applied']}/{counts['total']} applied, "
            f"{counts['pending']} pending (run `invoke migrate`)"
        )
    return problems


MIGRATIONS = Component("migrations", _migrations, _migration_problems, metrics.set_migrations)
# The sync lag per table and direction, from sync_state (cesar/sync/health.py).
SYNC = Component("sync", sync_health.probe, sync_health.problems, sync_health.export)

#: Read in this order on every probe.
COMPONENTS: tuple[Component, ...] = (MIGRATIONS, SYNC)


@dataclass
class ConnectionProbe:
    endpoint: str
    reachable: bool = False
    latency_ms: float | None = None
    error: str | None = None
    values: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PoolTimeout):
        return f"no connection from the pool within {CHECKOUT_TIMEOUT:g} s"
    first = first_line(exc)
    return f"{type(exc).__name__}: {first}"


class HealthChecker:
    """Probes the service's pools; one per application (it owns a small thread pool)."""

    def __init__(self, database: db.Database, watcher: metrics.PoolWatcher,
                 components: tuple[Component, ...] = COMPONENTS) -> None:
        self.database = database
        self.watcher = watcher
        self.components = components
        self.engine: models.Engine | None = None
        self._executor = ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="cesar-health")
        self._inflight: asyncio.Future[models.Health] | None = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> models.Health:
        """Probe within :data:`DEADLINE`, update the gauges, and build the /health body.

        Requests that arrive while a probe is running share its result (single flight): a
        storm of health checks costs the database one probe at a time, not one each."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._check())
        return await asyncio.shield(self._inflight)

    async def _check(self) -> models.Health:
        probes = [self._bounded(self._probe_primary, self.database.endpoint.name)]
        if self.database.read_pool is not None:
            probes.append(self._bounded(self._probe_replica, "read-replica"))
        primary, *rest = await asyncio.gather(*probes)  # side by side: one deadline for both
        replica = rest[0] if rest else None
        pool = self.watcher.refresh()
        metrics.DB_UP.set(1 if primary.reachable else 0)
        return self._report(primary, replica, pool)

    async def _bounded(self, fn: Callable[[], ConnectionProbe], endpoint: str) -> ConnectionProbe:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, fn), DEADLINE)
        except TimeoutError:
            return ConnectionProbe(endpoint, error=f"no answer within {DEADLINE:g} s")

    def _probe_primary(self) -> ConnectionProbe:
        assert self.database.pool is not None
        return self._connect(self.database.pool, self.database.endpoint.name)

    def _probe_replica(self) -> ConnectionProbe:
        assert self.database.read_pool is not None
        return self._connect(self.database.read_pool, "read-replica", components=False)

    def _connect(self, pool: ConnectionPool, endpoint: str, *,
                 components: bool = True) -> ConnectionProbe:
        probe = ConnectionProbe(endpoint)
        try:
            with pool.connection(timeout=CHECKOUT_TIMEOUT) as conn:
                conn.autocommit = True  # one round trip per read, no BEGIN/ROLLBACK
                try:
                    started = time.perf_counter()
                    conn.execute("SELECT 1")
                    probe.latency_ms = round((time.perf_counter() - started) * 1000, 3)
                    probe.reachable = True
                    if components:
                        if self.engine is None:
                            self.engine = db.detect_engine(conn)
                        self._read_components(conn, probe)
                finally:
                    with suppress(psycopg.Error):  # a broken connection is the pool's to drop
                        conn.autocommit = False
        except (PoolTimeout, psycopg.OperationalError) as exc:
            probe.reachable = False
            probe.error = _reason(exc)
        return probe

    def _read_components(self, conn: psycopg.Connection, probe: ConnectionProbe) -> None:
        for component in self.components:
            try:
                value = component.probe(conn)
            except psycopg.OperationalError:
                raise  # the connection itself failed: unreachable
            except psycopg.Error as exc:
                log.warning("health component %s failed: %s", component.name, _reason(exc))
                probe.values[component.name] = None
                probe.problems.append(f"{component.name}: cannot be read ({_reason(exc)})")
                continue
            probe.values[component.name] = value
            probe.problems.extend(component.problems(value))
            component.export(value)

    def _report(self, primary: ConnectionProbe, replica: ConnectionProbe | None,
                pool: dict[str, int]) -> models.Health:
        problems: list[str] = []
        for probe in (primary, replica):
            if probe is not None and not probe.reachable:
                problems.append(f"database ({probe.endpoint}) unreachable: {probe.error}")
        if self.database.fell_back:
            problems.append(
                "serving the local database: the cluster was unreachable when the service "
                "started (DATABASE_TARGET=cluster falls back in development only)"
            )
        problems.extend(primary.problems)
        components: dict[str, Any] = {
            "database": self.engine,
            "connection": _connection(primary),
            "read_replica": _connection(replica) if replica is not None else None,
            "pool": models.Pool(**pool),
        }
        for component in self.components:
            components[component.name] = primary.values.get(component.name)
        return models.Health(
            status="ok" if not problems else "degraded",
            environment=self.database.settings.environment,
            version=__version__,
            components=models.Components(**components),
            problems=problems,
        )

    @staticmethod
    def http_status(health: models.Health) -> int:
        """503 when a database the routes need is unreachable; 200 otherwise (even degraded)."""
        c = health.components
        reachable = c.connection.reachable and (c.read_replica is None or c.read_replica.reachable)
        return 200 if reachable else 503


def _connection(probe: ConnectionProbe) -> models.Connection:
    return models.Connection(endpoint=probe.endpoint, reachable=probe.reachable,  # type: ignore[arg-type]
                             latency_ms=probe.latency_ms, error=probe.error)
