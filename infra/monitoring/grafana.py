"""Grafana provisioning: the Prometheus data source and the CESAR dashboard, as files.

The dashboard answers the operators' questions at a glance: how far behind the sync is per table
(its "Grafana sync-lag query", now from ``cesar_sync_lag_seconds`` rather than SQL on
``sync_state``), the API's p95 latency against the 200 ms budget, connection errors against the
alert's threshold, and the cluster's health (live nodes, unavailable and under-replicated
ranges, clock offset, disk). Every query names only metrics of ``infra.monitoring.metrics`` or
recording rules of ``infra.monitoring.rules`` (tested), and is plain PromQL that promtool parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from infra.monitoring.rules import CONNECTION_ERRORS_IN_5M, SYNC_LAG_SECONDS
from infra.naming import PROMETHEUS_PORT

DATASOURCE_UID = "cesar-prometheus"
DASHBOARD_UID = "cesar-overview"
DASHBOARDS_DIR = "/etc/grafana/dashboards"
API_P95_BUDGET_SECONDS = 0.2  # the API's budget: p95 under 200 ms
SCHEMA_VERSION = 39           # Grafana 11


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries or stat
    unit: str = "short"
    threshold: float | None = None
    description: str = ""
    width: int = 12
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


API = 'job="cesar-api"'
CRDB = 'job="cockroachdb"'

PANELS: tuple[Panel, ...] = (
    Panel("Sync lag per table", (
        Query(f"max by (table, direction) (cesar_sync_lag_seconds{{{API}}})",
              "{{table}} {{direction}}"),),
        unit="s", threshold=SYNC_LAG_SECONDS,
        description=f"Age of the oldest change not yet synced; DatabaseSyncLag fires above "
                    f"{SYNC_LAG_SECONDS} s for 10 minutes."),
    Panel("API p95 latency by route", (
        Query("histogram_quantile(0.95, sum by (le, route) "
              f"(rate(cesar_http_request_duration_seconds_bucket{{{API}}}[5m])))", "{{route}}"),),
        unit="s", threshold=API_P95_BUDGET_SECONDS,
        description="95th percentile of request duration over 5 minutes; budget 200 ms."),
    Panel("Database connection errors (5 min)", (
        Query(f"sum by (instance) (increase(cesar_db_connection_errors_total{{{API}}}[5m]))",
              "{{instance}}"),),
        threshold=CONNECTION_ERRORS_IN_5M,
        description=f"CockroachDBConnectionFailure fires above {CONNECTION_ERRORS_IN_5M}."),
    Panel("Database reachable", (
        Query(f"min by (instance) (cesar_db_up{{{API}}})", "{{instance}}"),),
        kind="stat", width=6,
        extra={"mappings": [{"type": "value", "options": {
            "0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}}}]}),
    Panel("Migrations", (
        Query(f"max(cesar_migrations_applied{{{API}}})", "applied"),
        Query(f"max(cesar_migrations_total{{{API}}})", "total"),
        Query(f"max(cesar_migrations_failed{{{API}}})", "failed"),),
        kind="stat", width=6),
    Panel("Connection pool", (
        Query(f"sum(cesar_db_pool_size{{{API}}})", "size"),
        Query(f"sum(cesar_db_pool_available{{{API}}})", "available"),
        Query(f"sum(cesar_db_pool_waiting{{{API}}})", "waiting"),)),
    Panel("Sync throughput and conflicts", (
        Query(f"sum by (table, direction) (rate(cesar_sync_rows_total{{{API}}}[5m]))",
              "rows/s {{table}} {{direction}}"),
        Query(f"sum by (table) (increase(cesar_sync_conflicts_total{{{API}}}[1h]))",
              "conflicts/h {{table}}"),)),
    Panel("Live nodes", (
        Query(f"min by (cluster) (liveness_livenodes{{{CRDB}}})", "{{cluster}}"),),
        kind="stat", width=6),
    Panel("Ranges unavailable / under-replicated", (
        Query(f"sum(ranges_unavailable{{{CRDB}}})", "unavailable"),
        Query(f"sum(ranges_underreplicated{{{CRDB}}})", "under-replicated"),),
        kind="stat", width=6, threshold=1),
    Panel("Clock offset from cluster mean", (
        Query(f"clock_offset_meannanos{{{CRDB}}} / 1e6", "{{instance}}"),),
        unit="ms", threshold=300),
    Panel("Disk available", (
        Query(f"cluster:capacity_available:ratio{{{CRDB}}}", "{{cluster}}"),
        Query(f"capacity_available:ratio{{{CRDB}}}", "{{instance}} store {{store}}"),),
        unit="percentunit"),
    Panel("Scrape targets up", (
        Query("up", "{{job}} {{instance}}"),), kind="stat", width=24, height=4),
    Panel("Local database backups: age and last drill", (
        Query(f"time() - max by (instance) "
              f"(cesar_backup_last_success_timestamp_seconds{{{API}}})", "backup age {{instance}}"),
        Query(f"time() - max by (instance) (cesar_backup_drill_timestamp_seconds{{{API}}})",
              "drill age {{instance}}"),
        Query(f"max by (instance) (cesar_backup_drill_rpo_seconds{{{API}}})",
              "drill RPO {{instance}}"),
        Query(f"max by (instance) (cesar_backup_drill_rto_seconds{{{API}}})",
              "drill RTO {{instance}}"),
        Query(f"time() - max by (instance) (cesar_backup_status_timestamp_seconds{{{API}}})",
              "figures age {{instance}}"),), unit="s"),
    Panel("Local database WAL archive", (
        Query(f"max by (instance) (cesar_backup_archive_failures{{{API}}})",
              "failures {{instance}}"),
        Query(f"max by (instance) (cesar_backup_archive_gaps{{{API}}})", "gaps {{instance}}"),
        Query(f"min by (instance) (cesar_backup_drill_success{{{API}}})",
              "last drill ok {{instance}}"),), kind="stat", width=12),
)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.threshold is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": panel.threshold}]}
    for key, value in panel.extra.items():
        defaults[key] = value
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": q.expr, "legendFormat": q.legend,
             "datasource": {"type": "prometheus", "uid": DATASOURCE_UID}}
            for i, q in enumerate(panel.queries)
        ],
    }


def dashboard(environment: str) -> dict[str, Any]:
    panels, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(PANELS, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": DASHBOARD_UID,
        "title": f"CESAR overview ({environment})",
        "tags": ["cesar", "cockroachdb", environment],
        "timezone": "utc",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def datasource_provisioning(prometheus_url: str = f"http://prometheus:{PROMETHEUS_PORT}") -> str:
    doc = {"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy",
        "url": prometheus_url, "isDefault": True, "editable": False,
        "jsonData": {"timeInterval": "15s"},
    }]}
    return yaml.safe_dump(doc, sort_keys=False)


def dashboard_provisioning() -> str:
    doc = {"apiVersion": 1, "providers": [{
        "name": "cesar", "folder": "CESAR", "type": "file", "disableDeletion": True,
        "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": DASHBOARDS_DIR, "foldersFromFilesStructure": False},
    }]}
    return yaml.safe_dump(doc, sort_keys=False)


def render_dashboard(environment: str) -> str:
    return json.dumps(dashboard(environment), indent=2, sort_keys=False) + "\n"
