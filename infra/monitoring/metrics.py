"""Which metrics exist: the contract with the API and the sync, and CockroachDB's own.

Alert rules and dashboards may only name metrics listed here (the tests enforce it), so a typo in
a query, or a metric renamed on one side of the contract, fails a test instead of drawing an
empty panel in production.

- The application's metrics are the contract between the API, the sync and the monitoring
  (exact names, types and labels; the API serves all of them on ``/metrics``).
- CockroachDB's come from a node's ``/_status/vars`` (self-hosted) or from CockroachDB Cloud's
  Prometheus export, whose ``crdb_cloud_`` prefix the scrape configuration removes so that both
  flavours share one set of rules. The names are those of CockroachDB's own
  ``monitoring/rules`` and ``monitoring/grafana-dashboards``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    type: str  # counter, gauge, histogram
    labels: tuple[str, ...] = ()
    source: str = "api"  # api, sync, cockroachdb, mtail, prometheus

    def series(self) -> tuple[str, ...]:
        """The series names Prometheus stores for this metric."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


APPLICATION = (
    Metric("cesar_http_request_duration_seconds", "histogram", ("method", "route", "status")),
    Metric("cesar_db_connection_errors_total", "counter"),
    Metric("cesar_db_up", "gauge"),
    Metric("cesar_db_pool_size", "gauge"),
    Metric("cesar_db_pool_available", "gauge"),
    Metric("cesar_db_pool_waiting", "gauge"),
    Metric("cesar_migrations_applied", "gauge"),
    Metric("cesar_migrations_total", "gauge"),
    Metric("cesar_migrations_failed", "gauge"),
    Metric("cesar_sync_lag_seconds", "gauge", ("table", "direction"), "sync"),
    Metric("cesar_sync_rows_total", "counter", ("table", "direction"), "sync"),
    Metric("cesar_sync_conflicts_total", "counter", ("table",), "sync"),
    Metric("cesar_sync_last_success_timestamp_seconds", "gauge", ("table", "direction"), "sync"),
    # The backup timers' figures (cesar.backup.status), served by the API from their textfile.
    Metric("cesar_backup_last_success_timestamp_seconds", "gauge", (), "backup"),
    Metric("cesar_backup_schedule_seconds", "gauge", (), "backup"),
    Metric("cesar_backup_archive_failures", "gauge", (), "backup"),
    Metric("cesar_backup_archive_failing", "gauge", (), "backup"),
    Metric("cesar_backup_archive_gaps", "gauge", (), "backup"),
    Metric("cesar_backup_drill_success", "gauge", (), "backup"),
    Metric("cesar_backup_drill_timestamp_seconds", "gauge", (), "backup"),
    Metric("cesar_backup_drill_rpo_seconds", "gauge", (), "backup"),
    Metric("cesar_backup_drill_rto_seconds", "gauge", (), "backup"),
    Metric("cesar_backup_status_timestamp_seconds", "gauge", (), "backup"),
    Metric("cesar_api_auth_failures_total", "counter", ("reason",)),
)

COCKROACHDB = tuple(Metric(name, kind, labels, "cockroachdb") for name, kind, labels in (
    ("liveness_livenodes", "gauge", ()),
    ("clock_offset_meannanos", "gauge", ()),
    ("ranges_unavailable", "gauge", ("store",)),
    ("ranges_underreplicated", "gauge", ("store",)),
    ("capacity", "gauge", ("store",)),
    ("capacity_available", "gauge", ("store",)),
    ("security_certificate_expiration_ca", "gauge", ()),
    ("security_certificate_expiration_node", "gauge", ()),
    ("sys_uptime", "gauge", ()),
    ("sql_conns", "gauge", ()),
))

# Read from the database servers' logs by mtail (ansible/roles/cesar_log_metrics).
LOGS = (Metric("cesar_db_auth_failures_total", "counter", ("engine", "reason"), "mtail"),)

# Series every Prometheus has for each target.
PROMETHEUS = (Metric("up", "gauge", (), "prometheus"),)

CATALOG = {m.name: m for m in APPLICATION + COCKROACHDB + LOGS + PROMETHEUS}
SYNC_DIRECTIONS = ("local_to_cluster", "cluster_to_local")


def known_series() -> frozenset[str]:
    return frozenset(s for m in CATALOG.values() for s in m.series())


# ----------------------------------------------------------- PromQL names
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan", "start", "end",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric (or recording rule) names a PromQL expression selects.

    A small scanner, not a parser: strings, label matchers, ranges and grouping clauses are
    removed, then every identifier not followed by ``(`` (a function) and not a keyword is a
    metric name. Good enough for the queries this repository writes; promtool checks syntax.
    """
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
