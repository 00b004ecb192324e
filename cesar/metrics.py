"""The Prometheus metrics the API exposes on ``/metrics``.

The names are a contract with the sync and the monitoring rules: change none of them.

One process (``cesar api``, the default): the samples live in this process and ``/metrics``
renders the default registry (with the process collector: CPU, memory, open files).

Several workers (``cesar api --workers N``): prometheus_client's multiprocess mode. Every
worker writes its samples to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and whichever
worker serves ``/metrics`` aggregates all of them, so counters and histograms are the sums over
the workers and no scrape depends on which worker answered. The variable must be set before this
module is imported (``cesar api`` does it: ``cesar.api.server.prepare_metrics_dir``). Gauges say how
workers combine: the pool gauges are summed over live workers (``livesum``: connections held by
the whole service), the database and migration gauges are the most recent value any live worker
measured (``livemostrecent``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Bucket bounds in seconds; 0.02 and 0.2 are the latency targets (bench and smoke budget).
# No `*_created` series: Prometheus does not need them and multiprocess mode has none, so the
# exposition reads the same with one worker or several.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)

HTTP_REQUEST_DURATION = Histogram(
    "cesar_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status code.",
    ("method", "route", "status"),
    buckets=LATENCY_BUCKETS,
)
DB_CONNECTION_ERRORS = Counter(
    "cesar_db_connection_errors",
    "Attempts to open a database connection that failed (all pools of the service).",
)
DB_UP = Gauge(
    "cesar_db_up",
    "1 when the database serving queries answered the last probe, else 0.",
    multiprocess_mode="livemostrecent",
)
DB_POOL_SIZE = Gauge(
    "cesar_db_pool_size",
    "Connections the pool holds or is opening (in use and idle).",
    multiprocess_mode="livesum",
)
DB_POOL_AVAILABLE = Gauge(
    "cesar_db_pool_available", "Idle connections ready in the pool.", multiprocess_mode="livesum"
)
DB_POOL_WAITING = Gauge(
    "cesar_db_pool_waiting",
    "Requests waiting for a connection from the pool.",
    multiprocess_mode="livesum",
)
MIGRATIONS_APPLIED = Gauge(
    "cesar_migrations_applied",
    "Migrations applied to the database serving queries.",
    multiprocess_mode="livemostrecent",
)
MIGRATIONS_TOTAL = Gauge(
    "cesar_migrations_total",
    "Migrations known (files shipped with this release and rows tracked in the database).",
    multiprocess_mode="livemostrecent",
)
MIGRATIONS_FAILED = Gauge(
    "cesar_migrations_failed",
    "Migrations whose last run failed (schema_migrations.status = 'failed').",
    multiprocess_mode="livemostrecent",
)
SYNC_LAG = Gauge(
    "cesar_sync_lag_seconds",
    "Age of the oldest change of a table not yet synced in a direction, or the time since its "
    "last successful sync when none is pending (from sync_state).",
    ("table", "direction"),
    multiprocess_mode="livemostrecent",
)
# --- the sync (cesar/sync/health.py): the lag above, this gauge, and the counters
# cesar_sync_rows_total / cesar_sync_conflicts_total, which are totals kept in sync_state and so
# are exposed by a collector (EXTRA_COLLECTORS) rather than a prometheus_client Counter.
SYNC_LAST_SUCCESS = Gauge(
    "cesar_sync_last_success_timestamp_seconds",
    "Unix time of the last successful sync of a table in a direction (from sync_state).",
    ("table", "direction"),
    multiprocess_mode="livemostrecent",
)
# --- authentication (cesar/api/auth.py): reason is one of AUTH_FAILURE_REASONS, so clients
# cannot grow the label set.
AUTH_FAILURE_REASONS = ("missing", "malformed", "unknown", "expired", "revoked", "scope",
                        "throttled")
API_AUTH_FAILURES = Counter(
    "cesar_api_auth_failures",
    "Requests refused by authentication: missing, malformed, unknown, expired or revoked key "
    "(401), a scope the key lacks (403), or a client address throttled after failures (429).",
    ("reason",),
)
for _reason in AUTH_FAILURE_REASONS:  # every series exists from the start, at 0
    API_AUTH_FAILURES.labels(_reason)
#: Collectors rendered beside the samples of all workers in multiprocess mode (each is also
#: registered in the default registry by whoever appends it).
EXTRA_COLLECTORS: list[Any] = []


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def mark_worker_dead(pid: int | None = None) -> None:
    """Drop this worker's live gauges (multiprocess mode) when it stops; no-op otherwise."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid or os.getpid())


def render() -> bytes:
    """The exposition text: this process's registry, or all workers' files aggregated."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY) + backup_textfile()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for collector in EXTRA_COLLECTORS:
        registry.register(collector)
    return generate_latest(registry) + backup_textfile()


BACKUP_METRICS_ENV = "CESAR_BACKUP_METRICS_FILE"


def backup_textfile() -> bytes:
    """The figures the backup timers write on the database's host (cesar.backup.status), served
    here so that one scrape job covers them; nothing when the variable is unset or the file
    is missing."""
    path = os.environ.get(BACKUP_METRICS_ENV)
    if not path:
        return b""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return b""
    return data if not data or data.endswith(b"\n") else data + b"\n"


# ------------------------------------------------------------------------- pool figures
class StatsSource(Protocol):
    """What :class:`PoolWatcher` reads: a psycopg_pool pool (anything with ``get_stats``)."""

    def get_stats(self) -> dict[str, int]: ...


class PoolWatcher:
    """Copies psycopg_pool's figures into the pool gauges and the connection-error counter.

    ``connections_errors`` is psycopg_pool's own count of failed connection attempts (the pool
    retries in the background while the database is down); the counter grows by the difference
    since the last look, so it counts every real failure once. The first pool given is the one
    serving queries (its figures fill the gauges); errors are counted for all of them.
    A daemon thread refreshes every ``interval`` seconds so that, with several workers, the
    summed gauges are never older than that; :meth:`refresh` also runs on every scrape.
    """

    def __init__(self, pools: Iterable[StatsSource], interval: float = 5.0) -> None:
        self.pools = list(pools)
        self.interval = interval
        self._errors_seen = [0] * len(self.pools)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> dict[str, int]:
        """Update the gauges; returns the serving pool's figures (for /health)."""
        with self._lock:
            figures: dict[str, int] = {}
            for i, pool in enumerate(self.pools):
                stats = pool.get_stats()
                errors = stats.get("connections_errors", 0)
                if errors > self._errors_seen[i]:
                    DB_CONNECTION_ERRORS.inc(errors - self._errors_seen[i])
                self._errors_seen[i] = errors
                if i == 0:
                    figures = pool_figures(stats)
            if figures:
                DB_POOL_SIZE.set(figures["size"])
                DB_POOL_AVAILABLE.set(figures["available"])
                DB_POOL_WAITING.set(figures["waiting"])
            return figures

    def replace(self, old: StatsSource, new: StatsSource) -> None:
        """A pool was replaced by a fresh one: watch the new one in its place."""
        with self._lock:
            for i, pool in enumerate(self.pools):
                if pool is old:
                    self.pools[i], self._errors_seen[i] = new, 0

    def start(self) -> PoolWatcher:
        self.refresh()  # every worker's gauges exist from its start, not from its first tick
        self._thread = threading.Thread(target=self._run, name="cesar-pool-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a metrics thread must never die silently
                log.exception("refreshing the pool gauges failed")


def pool_figures(stats: dict[str, int]) -> dict[str, int]:
    """psycopg_pool's ``get_stats()`` reduced to what /health and the gauges show."""
    return {
        "size": stats.get("pool_size", 0),
        "available": stats.get("pool_available", 0),
        "waiting": stats.get("requests_waiting", 0),
        "min": stats.get("pool_min", 0),
        "max": stats.get("pool_max", 0),
    }


def set_migrations(counts: dict[str, Any]) -> None:
    MIGRATIONS_APPLIED.set(counts["applied"])
    MIGRATIONS_TOTAL.set(counts["total"])
    MIGRATIONS_FAILED.set(counts["failed"])
