"""``prometheus.yml``: what Prometheus scrapes, its rules and its Alertmanager.

Two jobs, whatever the flavour: ``cockroachdb`` (every node's ``/_status/vars`` over TLS with the
cluster's CA, or CockroachDB Cloud's Prometheus export, one scrape path per region, with the
``crdb_cloud_`` prefix removed so that the same rules serve both) and ``cesar-api`` (each API
host's ``/metrics``, where the sync's metrics are served too), and ``cesar-db-auth`` (mtail on
the same hosts, port :data:`MTAIL_PORT`: failed database logins read from the servers' logs).

File paths are relative to the configuration file, as Prometheus resolves them, so the same text
works in the container (``/etc/prometheus``) and in a test directory checked by promtool. No
secret is written in this file: the Cloud API key is read from ``secrets/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from infra.naming import ALERTMANAGER_PORT, HTTP_PORT

CA_FILE = "certs/ca.crt"
CLOUD_API_KEY_FILE = "secrets/cockroach-cloud-api-key"
#: The monitoring credential the API accepts on /metrics (CESAR_API_METRICS_TOKEN on the hosts).
API_METRICS_TOKEN_FILE = "secrets/cesar-api-metrics-token"
RULE_FILES = ("rules/cesar.rules.yml", "rules/cockroachdb.rules.yml", "rules/dbauth.rules.yml")
# mtail's HTTP port on the hosts of the cesar_log_metrics role (its default).
MTAIL_PORT = 3903
CLOUD_PREFIX_REGEX = "crdb_(?:cloud|dedicated)_(.*)"


@dataclass(frozen=True)
class PrometheusInputs:
    cluster: str
    environment: str
    stack: str
    api_targets: Sequence[str]
    node_hosts: Sequence[str] = ()          # self-hosted: roach-1, roach-2, ...
    tls: bool = True                        # self-hosted secure cluster
    cloud_targets: Mapping[str, str] = field(default_factory=dict)  # region -> scrape URL
    scrape_interval: str = "15s"
    log_metrics_targets: Sequence[str] = ()  # mtail on the hosts (failed database logins)
    alertmanager: str = f"alertmanager:{ALERTMANAGER_PORT}"


def config(inputs: PrometheusInputs) -> dict[str, Any]:
    if bool(inputs.node_hosts) == bool(inputs.cloud_targets):
        raise ValueError("give either node_hosts (self-hosted) or cloud_targets (cloud)")
    scrape: list[dict[str, Any]] = []
    if inputs.node_hosts:
        job: dict[str, Any] = {
            "job_name": "cockroachdb",
            "metrics_path": "/_status/vars",
            "scheme": "https" if inputs.tls else "http",
            "static_configs": [{
                "targets": [f"{host}:{HTTP_PORT}" for host in inputs.node_hosts],
                "labels": {"cluster": inputs.cluster},
            }],
        }
        if inputs.tls:
            job["tls_config"] = {"ca_file": CA_FILE}
        scrape.append(job)
    for region, url in sorted(inputs.cloud_targets.items()):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc or not parts.path:
            raise ValueError(f"Cloud scrape target for {region} is not an https URL: {url!r}")
        scrape.append({
            "job_name": f"cockroachdb-{region}",
            "metrics_path": parts.path,
            "scheme": "https",
            "honor_labels": True,  # keep the export's per-node instance and cluster labels
            "authorization": {"type": "Bearer", "credentials_file": CLOUD_API_KEY_FILE},
            "static_configs": [{"targets": [parts.netloc], "labels": {"region": region}}],
            "relabel_configs": [{"target_label": "job", "replacement": "cockroachdb"}],
            "metric_relabel_configs": [{
                "source_labels": ["__name__"], "regex": CLOUD_PREFIX_REGEX,
                "target_label": "__name__", "replacement": "$1",
            }],
        })
    scrape.append({
        "job_name": "cesar-api",
        "metrics_path": "/metrics",
        "scheme": "http",
        "authorization": {"type": "Bearer", "credentials_file": API_METRICS_TOKEN_FILE},
        "static_configs": [{"targets": list(inputs.api_targets)}],
    })
    if inputs.log_metrics_targets:
        scrape.append({
            "job_name": "cesar-db-auth",
            "metrics_path": "/metrics",
            "scheme": "http",
            "static_configs": [{"targets": list(inputs.log_metrics_targets)}],
        })
    return {
        "global": {
            "scrape_interval": inputs.scrape_interval,
            "evaluation_interval": inputs.scrape_interval,
            "external_labels": {"environment": inputs.environment, "stack": inputs.stack},
        },
        "rule_files": list(RULE_FILES),
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [inputs.alertmanager]}]}]},
        "scrape_configs": scrape,
    }


def log_metrics_targets(api_targets: Sequence[str]) -> list[str]:
    """mtail runs on each API host (the cesar_log_metrics role): same host, mtail's port."""
    hosts = []
    for target in api_targets:
        host = target.rsplit(":", 1)[0]
        if host not in hosts:
            hosts.append(host)
    return [f"{host}:{MTAIL_PORT}" for host in hosts]


def render(inputs: PrometheusInputs) -> str:
    return ("# Generated by infra/monitoring/prometheus_config.py (pulumi up); do not edit.\n"
            + yaml.safe_dump(config(inputs), sort_keys=False, width=100))
