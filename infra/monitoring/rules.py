"""Prometheus alerting and recording rules, as data.

In the style of CockroachDB's own ``monitoring/rules``: one group per concern, ``job`` in every
selector, recording rules for the ratios the alerts use, every alert with a ``severity`` label
(``critical`` pages, ``warning`` goes to chat) and ``summary``/``description`` annotations.
The three original alerts keep their meaning (sync lag over 600 s for 10 minutes; more than five
connection errors in 5 minutes; a failed migration), beside CockroachDB's essentials.

Every alert has a firing and a non-firing case in ``tests/infra/promtool/*.test.yml``; the
tests fail if an alert is added here without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

SEVERITIES = ("critical", "warning")

# Thresholds, named once (docs/infra.md lists them).
SYNC_LAG_SECONDS = 600
SYNC_LAG_FOR = "10m"
CONNECTION_ERRORS_IN_5M = 5
SYNC_STALE_SECONDS = 1800
CLOCK_OFFSET_WARN_NANOS = 300 * 1000 * 1000  # nodes stop at 80% of --max-offset (500ms): 400ms
NODE_CERT_DAYS = 30
CA_CERT_DAYS = 90
STORE_AVAILABLE_RATIO = 0.15
CLUSTER_AVAILABLE_RATIO = 0.20
DRILL_MAX_AGE_DAYS = 14  # drills run weekly: one missed run is tolerated, two are not
BACKUP_AGE_SCHEDULES = 2  # the newest good backup may be this many schedule periods old


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert {self.name}: severity must be one of {SEVERITIES}")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_:
            out["for"] = self.for_
        out["labels"] = {"severity": self.severity}
        out["annotations"] = {"summary": self.summary, "description": self.description}
        return out


@dataclass(frozen=True)
class Record:
    record: str
    expr: str

    def as_dict(self) -> dict[str, Any]:
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Alert | Record, ...]

    def alerts(self) -> list[Alert]:
        return [r for r in self.rules if isinstance(r, Alert)]

    def records(self) -> list[Record]:
        return [r for r in self.rules if isinstance(r, Record)]


def application_group() -> Group:
    return Group("cesar.rules", (
        Alert(
            "DatabaseSyncLag",
            f"max by (table, direction) (cesar_sync_lag_seconds{{job=\"cesar-api\"}}) "
            f"> {SYNC_LAG_SECONDS}",
            "warning",
            "Sync of {{ $labels.table }} ({{ $labels.direction }}) is "
            "{{ $value | humanizeDuration }} behind",
            f"The oldest change of table {{{{ $labels.table }}}} not yet synced "
            f"({{{{ $labels.direction }}}}) is more than {SYNC_LAG_SECONDS} s old for "
            f"{SYNC_LAG_FOR}. Check the sync cron job's log and `invoke smoke`.",
            SYNC_LAG_FOR,
        ),
        Alert(
            "SyncNotSucceeding",
            "time() - max by (table, direction) "
            "(cesar_sync_last_success_timestamp_seconds{job=\"cesar-api\"}) "
            f"> {SYNC_STALE_SECONDS}",
            "warning",
            "No successful sync of {{ $labels.table }} ({{ $labels.direction }}) for "
            "{{ $value | humanizeDuration }}",
            f"The sync of {{{{ $labels.table }}}} ({{{{ $labels.direction }}}}) has not succeeded "
            f"for more than {SYNC_STALE_SECONDS} s although it runs every 5 minutes.",
            "5m",
        ),
        Alert(
            "CockroachDBConnectionFailure",
            f"increase(cesar_db_connection_errors_total{{job=\"cesar-api\"}}[5m]) "
            f"> {CONNECTION_ERRORS_IN_5M}",
            "critical",
            "{{ $labels.instance }} failed to connect to the database {{ $value | humanize }} "
            "times in 5 minutes",
            f"More than {CONNECTION_ERRORS_IN_5M} connection errors in 5 minutes on "
            "{{ $labels.instance }}. Check the cluster's health, the allowlist and the "
            "credentials (docs/infra.md, Alerts).",
        ),
        Alert(
            "MigrationFailed",
            "max by (instance) (cesar_migrations_failed{job=\"cesar-api\"}) > 0",
            "critical",
            "{{ $value }} migration(s) failed on the database behind {{ $labels.instance }}",
            "schema_migrations records a failed migration. Run `cesar migrate status`, fix "
            "the cause and apply again; the runner resumes at the failed statement.",
        ),
        Alert(
            "CesarDatabaseDown",
            "max by (instance) (cesar_db_up{job=\"cesar-api\"}) == 0",
            "critical",
            "{{ $labels.instance }} cannot reach its database",
            "The API reports its database unreachable (cesar_db_up == 0) for 2 minutes; "
            "/health answers 503.",
            "2m",
        ),
        Alert(
            "CesarApiDown",
            "up{job=\"cesar-api\"} == 0",
            "critical",
            "Prometheus cannot scrape the API on {{ $labels.instance }}",
            "The API's /metrics endpoint on {{ $labels.instance }} has not answered for "
            "5 minutes: the service is down or unreachable from Prometheus.",
            "5m",
        ),
        *backup_alerts(),
        *api_auth_alerts(),
    ))


def backup_alerts() -> tuple[Alert, ...]:
    """The local database's backups (cesar.backup; the API serves the figures the backup
    timers write): too old, WAL archiving failing or incomplete, the last drill failed."""
    job = 'job="cesar-api"'
    return (
        Alert(
            "BackupTooOld",
            f"time() - max by (instance) (cesar_backup_last_success_timestamp_seconds{{{job}}}) "
            f"> {BACKUP_AGE_SCHEDULES} * max by (instance) "
            f"(cesar_backup_schedule_seconds{{{job}}})",
            "critical",
            "The newest backup of the database behind {{ $labels.instance }} is "
            "{{ $value | humanizeDuration }} old",
            f"No base backup has succeeded for more than {BACKUP_AGE_SCHEDULES} schedule "
            "periods. Check `systemctl status cesar-backup.service` and run `invoke backup`; "
            "restores need replaying ever more WAL.",
            "10m",
        ),
        Alert(
            "BackupArchiveFailing",
            f"max by (instance) (cesar_backup_archive_failing{{{job}}}) > 0",
            "critical",
            "WAL archiving fails on the database behind {{ $labels.instance }}",
            "The server's last archive_command failed for 5 minutes, so WAL piles up on its disk "
            "and nothing written since is restorable. See the server's log and "
            "`invoke dr.status`.",
            "5m",
        ),
        Alert(
            "BackupArchiveGap",
            f"max by (instance) (cesar_backup_archive_gaps{{{job}}}) > 0",
            "critical",
            "{{ $value }} WAL segment(s) missing from the archive behind {{ $labels.instance }}",
            "Point-in-time restores past the first missing segment are impossible. Take a new "
            "base backup now (`invoke backup`) and find what removed the files.",
        ),
        Alert(
            "BackupDrillFailed",
            f"min by (instance) (cesar_backup_drill_success{{{job}}}) == 0",
            "critical",
            "The last restore drill of the database behind {{ $labels.instance }} failed",
            "A restore of the newest backup did not reproduce every table. Run "
            "`invoke dr.drill` and read the table or file it names (docs/backup.md).",
        ),
        Alert(
            "BackupDrillStale",
            f"time() - max by (instance) (cesar_backup_drill_timestamp_seconds{{{job}}}) "
            f"> {DRILL_MAX_AGE_DAYS} * 86400",
            "warning",
            "The last restore drill of the database behind {{ $labels.instance }} is "
            "{{ $value | humanizeDuration }} old",
            f"No restore drill has run for more than {DRILL_MAX_AGE_DAYS} days, so its success "
            "says nothing about today's backups (a drill killed outright records nothing). "
            "Check `systemctl status cesar-backup-drill.timer` and run `invoke dr.drill`.",
        ),
    )


def cockroachdb_group(expected_nodes: int) -> Group:
    """CockroachDB's essentials. ``expected_nodes`` is the cluster's node count (0: serverless,
    where liveness is not exported and the node alert is left out)."""
    job = 'job="cockroachdb"'
    # Per-node labels: self-hosted targets have `instance`; the Cloud export adds `node` and
    # `node_id` (and keeps `instance`), so cluster-wide sums drop all three.
    per_node = "instance, node, node_id"
    rules: list[Alert | Record] = [
        Record("node:capacity", f"sum without (store) (capacity{{{job}}})"),
        Record("node:capacity_available", f"sum without (store) (capacity_available{{{job}}})"),
        Record("cluster:capacity", f"sum without ({per_node}) (node:capacity{{{job}}})"),
        Record("cluster:capacity_available",
               f"sum without ({per_node}) (node:capacity_available{{{job}}})"),
        Record("capacity_available:ratio",
               f"capacity_available{{{job}}} / capacity{{{job}}}"),
        Record("cluster:capacity_available:ratio",
               f"cluster:capacity_available{{{job}}} / cluster:capacity{{{job}}}"),
        Alert(
            "CockroachDBInstanceDown",
            f"up{{{job}}} == 0",
            "critical",
            "CockroachDB target {{ $labels.instance }} is down",
            "Prometheus has not scraped {{ $labels.instance }} of cluster {{ $labels.cluster }} "
            "for 5 minutes (a node, or the Cloud metrics export, is unreachable).",
            "5m",
        ),
    ]
    if expected_nodes > 0:
        rules.append(Alert(
            "CockroachDBNodeNotLive",
            f"min by (cluster) (liveness_livenodes{{{job}}}) < {expected_nodes}",
            "critical",
            "Cluster {{ $labels.cluster }} has {{ $value }} live node(s) of "
            f"{expected_nodes}",
            f"CockroachDB's own liveness counts fewer than the {expected_nodes} nodes this stack "
            "runs for 5 minutes. Another failure could make ranges unavailable.",
            "5m",
        ))
    rules += [
        Alert(
            "CockroachDBClockOffsetNearMax",
            f"clock_offset_meannanos{{{job}}} > {CLOCK_OFFSET_WARN_NANOS}",
            "critical",
            "Clock of {{ $labels.instance }} is {{ $value | humanize }}ns off the cluster mean",
            "A node stops itself at 80% of --max-offset (400 ms by default); fix NTP on "
            "{{ $labels.instance }} now.",
            "5m",
        ),
        Alert(
            "CockroachDBUnavailableRanges",
            f"sum by (instance, cluster) (ranges_unavailable{{{job}}}) > 0",
            "critical",
            "{{ $labels.instance }} has {{ $value }} unavailable range(s)",
            "Ranges without a quorum of replicas cannot serve reads or writes. Check which "
            "nodes are down (DB Console, Replication dashboard).",
            "5m",
        ),
        Alert(
            "CockroachDBUnderReplicatedRanges",
            f"sum by (instance, cluster) (ranges_underreplicated{{{job}}}) > 0",
            "warning",
            "{{ $labels.instance }} has {{ $value }} under-replicated range(s)",
            "Ranges have fewer replicas than configured for 15 minutes; a further failure may "
            "make them unavailable.",
            "15m",
        ),
        Alert(
            "CockroachDBNodeCertificateExpiresSoon",
            f"(security_certificate_expiration_node{{{job}}} > 0) and "
            f"(security_certificate_expiration_node{{{job}}} - time()) < 86400 * {NODE_CERT_DAYS}",
            "warning",
            "Node certificate of {{ $labels.instance }} expires in less than "
            f"{NODE_CERT_DAYS} days",
            "Renew it with `pulumi up` (the program re-issues certificates before "
            "their early-renewal window) and restart the node.",
        ),
        Alert(
            "CockroachDBCACertificateExpiresSoon",
            f"(security_certificate_expiration_ca{{{job}}} > 0) and "
            f"(security_certificate_expiration_ca{{{job}}} - time()) < 86400 * {CA_CERT_DAYS}",
            "warning",
            "CA certificate of {{ $labels.instance }} expires in less than "
            f"{CA_CERT_DAYS} days",
            "Plan the CA rotation (docs/infra.md): every node and client certificate depends "
            "on it.",
        ),
        Alert(
            "CockroachDBStoreDiskLow",
            f"capacity_available:ratio{{{job}}} < {STORE_AVAILABLE_RATIO}",
            "warning",
            "Store {{ $labels.store }} on {{ $labels.instance }} has "
            "{{ $value | humanizePercentage }} of its disk free",
            "Add disk or nodes before the store fills; a full store stops accepting writes.",
            "10m",
        ),
        Alert(
            "CockroachDBClusterDiskLow",
            f"cluster:capacity_available:ratio{{{job}}} < {CLUSTER_AVAILABLE_RATIO}",
            "critical",
            "Cluster {{ $labels.cluster }} has {{ $value | humanizePercentage }} of its disk free",
            "The whole cluster is running out of disk: add capacity now.",
            "10m",
        ),
    ]
    return Group("cockroachdb.rules", tuple(rules))


def groups(expected_nodes: int) -> list[Group]:
    from infra import security_rules  # imports this module's types

    return [application_group(), cockroachdb_group(expected_nodes), security_rules.group()]


def render(group: Group) -> str:
    """One rule file (``promtool check rules`` format)."""
    doc = {"groups": [{"name": group.name, "rules": [r.as_dict() for r in group.rules]}]}
    return yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def file_name(group: Group) -> str:
    return f"{group.name.split('.')[0]}.rules.yml"


# API authentication (cesar/api/auth.py): refused keys, not refused scopes (a 403 is a client
# with a valid key asking for too much, not someone guessing).
API_AUTH_FAILURES_IN_5M = 50


def api_auth_alerts() -> tuple[Alert, ...]:
    return (
        Alert(
            "ApiAuthFailureBurst",
            "sum by (instance) (increase(cesar_api_auth_failures_total"
            f"{{job=\"cesar-api\",reason!=\"scope\"}}[5m])) > {API_AUTH_FAILURES_IN_5M}",
            "warning",
            "{{ $labels.instance }} refused {{ $value | humanize }} API authentications in "
            "5 minutes",
            f"More than {API_AUTH_FAILURES_IN_5M} requests with a missing, unknown, expired or "
            "revoked API key (or throttled) in 5 minutes on {{ $labels.instance }}: someone is "
            "guessing keys, or a client uses a revoked one. See the access log and "
            "`cesar keys list`.",
        ),
    )
