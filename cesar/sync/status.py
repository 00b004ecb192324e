"""``cesar sync status``: the pair, the lease, and per table and direction the last run, the lag,
what is pending and the conflicts recorded; read from both databases (either may be down)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from cesar.config import Settings
from cesar.console import first_line
from cesar.db import Endpoint
from cesar.errors import ConfigError, OperationFailed
from cesar.sync import capture, divergence, lease, run, state
from cesar.sync.tables import SyncSettings


@dataclass
class SideStatus:
    role: str
    url: str
    reachable: bool = False
    error: str | None = None
    engine: str | None = None
    origin: str | None = None
    peer: str | None = None
    pending: dict[str, int] = field(default_factory=dict)
    conflicts: dict[str, dict[str, int]] = field(default_factory=dict)
    state: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "reachable": self.reachable, "error": self.error,
                "engine": self.engine, "origin": self.origin, "peer": self.peer,
                "pending": self.pending, "conflicts": self.conflicts}


def _read_side(endpoint: Endpoint, settings: Settings, sync: SyncSettings
               ) -> tuple[SideStatus, psycopg.Connection | None]:
    from cesar import db

    role = endpoint.name
    side = SideStatus(role, endpoint.masked)
    try:
        conn = run.connect(endpoint, settings, sync)
    except OperationFailed as exc:
        side.error = str(exc)
        return side, None
    side.reachable = True
    side.engine = db.detect_engine(conn)
    try:
        node = state.read_node(conn, role, side.url)
        side.origin, side.peer = node.origin, node.peer
        side.pending = {t: p.total for t, p in capture.pending_summary(conn).items()}
        side.conflicts = state.conflict_counts(conn)
        side.state = state.read_state(conn)
    except (ConfigError, psycopg.Error) as exc:  # reported, not raised: the other side may answer
        side.error = first_line(exc)
    return side, conn


def collect(settings: Settings, sync: SyncSettings, local_url: str | None = None,
            remote_url: str | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able object."""
    local_end, cluster_end = run.resolve_endpoints(settings, local_url, remote_url)
    local, lconn = _read_side(local_end, settings, sync)
    cluster, cconn = _read_side(cluster_end, settings, sync)
    holder = None
    differ: list[dict[str, Any]] = []
    try:
        for conn in (cconn, lconn):
            if conn is not None and not differ:
                try:
                    differ = divergence.read(conn)
                except psycopg.Error:
                    differ = []
        for d in differ:
            d["checked_at"] = d["checked_at"].isoformat()
        if cconn is not None:
            try:
                found = lease.read(cconn)
                holder = found.as_dict() if found else None
            except psycopg.Error:
                holder = None
    finally:
        for conn in (lconn, cconn):
            if conn is not None:
                conn.close()
    # Both sides hold the same sync_state; prefer the cluster's, the one every run writes last.
    rows = cluster.state or local.state
    lags = [r["lag_seconds"] for r in rows if r["lag_seconds"] is not None]
    for r in rows:
        for k in ("last_run_at", "last_sync_at", "position", "oldest_pending_at"):
            r[k] = r[k].isoformat() if r[k] is not None else None
    return {
        "local": local.as_dict(),
        "cluster": cluster.as_dict(),
        "paired": bool(local.peer and local.peer == cluster.origin
                       and cluster.peer == local.origin),
        "lease": holder,
        "tables": rows,
        "divergence": differ,
        "max_lag_seconds": max(lags) if lags else None,
        "lag_limit_seconds": sync.lag_limit_seconds,
    }
