"""The sync as ``/health`` and ``/metrics`` see it: lag per table and direction, from
``sync_state`` in the database the API serves (every run writes it to both sides).

- ``/health``: :data:`COMPONENT` adds ``components.sync`` and a problem (status ``degraded``)
  for each table and direction whose lag is over ``CESAR_SYNC_LAG_LIMIT_SECONDS`` (600);
- ``/metrics``: the gauges ``cesar_sync_lag_seconds{table,direction}`` and
  ``cesar_sync_last_success_timestamp_seconds{table,direction}`` are set on every probe; the
  counters ``cesar_sync_rows_total{table,direction}`` and ``cesar_sync_conflicts_total{table}``
  are the totals ``sync_state`` keeps, exposed by :class:`SyncCounters` (a collector: a total
  kept in the database cannot be a ``prometheus_client.Counter``, and in multiprocess mode
  workers' counters would be summed);
- divergence (``sync_divergence``, :mod:`cesar.sync.divergence`): a problem for each table whose
  sides were last found to differ, and the gauge ``cesar_sync_divergent_rows{table}``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg import errors as pgerrors
from pydantic import BaseModel, Field

from cesar import metrics
from cesar.sync import divergence, state
from cesar.sync.tables import load_sync_settings


class SyncLag(BaseModel):
    table: str
    direction: str
    lag_seconds: float | None = Field(
        description="Age of the oldest change not yet moved, or time since the last successful "
        "run when none is pending; null when no run ever succeeded.")
    last_sync_at: str | None
    pending: int
    rows_total: int
    conflicts_total: int
    last_error: str | None = Field(
        default=None, description="Why the last run of this table and direction failed or "
        "was refused (a clock-skew refusal included); null after a successful run.")


class SyncDivergence(BaseModel):
    table: str
    divergent_rows: int = Field(description="Rows the two sides differ by, as last found.")
    method: str = Field(description="count: row counts with nothing pending (every run); "
                        "full: the reconcile's key-by-key comparison (`--full`).")
    checked_at: str


class SyncHealth(BaseModel):
    tables: list[SyncLag] = Field(description="One entry per table and direction; empty before "
                                  "the first `cesar sync run`.")
    divergence: list[SyncDivergence] = Field(
        default_factory=list, description="Per table, the last divergence check of a run.")
    max_lag_seconds: float | None
    lag_limit_seconds: float


@functools.cache
def _lag_limit() -> float:
    """CESAR_SYNC_LAG_LIMIT_SECONDS, read once per process (not on every probe)."""
    return load_sync_settings().lag_limit_seconds


def probe(conn: psycopg.Connection) -> dict[str, Any]:
    """Read on the API's pooled (autocommit) connection; ``tables`` empty before any run or
    before migration 010 (a database that does not sync has nothing to report)."""
    limit = _lag_limit()
    try:
        rows = state.read_state(conn)
    except pgerrors.UndefinedTable:
        rows = []
    tables = [{
        "table": r["table_name"], "direction": r["direction"], "lag_seconds": r["lag_seconds"],
        "last_sync_at": r["last_sync_at"].isoformat() if r["last_sync_at"] else None,
        "pending": int(r["pending"]), "rows_total": int(r["rows_total"]),
        "conflicts_total": int(r["conflicts_total"]), "last_error": r["last_error"],
        "_last_sync_epoch": r["last_sync_at"].timestamp() if r["last_sync_at"] else None,
    } for r in rows]
    lags = [t["lag_seconds"] for t in tables if t["lag_seconds"] is not None]
    found = [{"table": d["table"], "divergent_rows": int(d["divergent_rows"]),
              "method": d["method"], "checked_at": d["checked_at"].isoformat()}
             for d in divergence.read(conn)]
    return {"tables": tables, "divergence": found,
            "max_lag_seconds": max(lags) if lags else None, "lag_limit_seconds": limit}


def problems(value: dict[str, Any]) -> list[str]:
    limit = value["lag_limit_seconds"]
    out = []
    for t in value["tables"]:
        lag = t["lag_seconds"]
        if lag is None:
            out.append(f"sync: {t['table']} {t['direction']} has never synced successfully "
                       "(see `cesar sync status`)")
        elif lag > limit:
            out.append(f"sync: {t['table']} {t['direction']} lag {lag:.0f} s is over the "
                       f"{limit:.0f} s limit (is the `cesar sync run` cron job running? "
                       "see `cesar sync status`)")
        if t.get("last_error"):
            out.append(f"sync: {t['table']} {t['direction']}: the last run failed: "
                       f"{t['last_error']}")
    for d in value.get("divergence", []):
        if d["divergent_rows"]:
            out.append(f"sync: {d['table']}: the two sides differ by {d['divergent_rows']} "
                       f"row{'' if d['divergent_rows'] == 1 else 's'} (found by the "
                       f"{d['method']} check at {d['checked_at'][:19]}); run "
                       "`cesar sync run --full`, see docs/sync.md")
    return out


def export(value: dict[str, Any]) -> None:
    for t in value["tables"]:
        labels = {"table": t["table"], "direction": t["direction"]}
        if t["lag_seconds"] is not None:
            metrics.SYNC_LAG.labels(**labels).set(t["lag_seconds"])
        if t["_last_sync_epoch"] is not None:
            metrics.SYNC_LAST_SUCCESS.labels(**labels).set(t["_last_sync_epoch"])
    COUNTERS.update(value["tables"], value.get("divergence", []))


class SyncCounters(Collector):
    """``cesar_sync_rows_total`` and ``cesar_sync_conflicts_total`` from the last probe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], int] = {}
        self._conflicts: dict[str, int] = {}
        self._divergent: dict[str, int] = {}

    def update(self, tables: list[dict[str, Any]],
               found: list[dict[str, Any]] | None = None) -> None:
        rows = {(t["table"], t["direction"]): t["rows_total"] for t in tables}
        conflicts: dict[str, int] = {}
        for t in tables:
            conflicts[t["table"]] = conflicts.get(t["table"], 0) + t["conflicts_total"]
        divergent = {d["table"]: d["divergent_rows"] for d in found or []}
        with self._lock:
            self._rows, self._conflicts, self._divergent = rows, conflicts, divergent

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self._lock:
            rows, conflicts = dict(self._rows), dict(self._conflicts)
            divergent = dict(self._divergent)
        moved = CounterMetricFamily("cesar_sync_rows", "Rows the sync has written, by table and "
                                    "direction (from sync_state).", labels=("table", "direction"))
        for (table, direction), n in sorted(rows.items()):
            moved.add_metric([table, direction], n)
        yield moved
        lost = CounterMetricFamily("cesar_sync_conflicts", "Conflicts the sync has recorded in "
                                   "sync_conflicts, by table (from sync_state).", labels=("table",))
        for table, n in sorted(conflicts.items()):
            lost.add_metric([table], n)
        yield lost
        differ = GaugeMetricFamily("cesar_sync_divergent_rows", "Rows the two sides of the sync "
                                   "differ by, per table, as the last run found (sync_divergence)"
                                   ".", labels=("table",))
        for table, n in sorted(divergent.items()):
            differ.add_metric([table], n)
        yield differ


COUNTERS = SyncCounters()
metrics.REGISTRY.register(COUNTERS)
metrics.EXTRA_COLLECTORS.append(COUNTERS)
