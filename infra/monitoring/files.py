"""Every monitoring file a stack generates, as one bundle of paths and texts.

The Pulumi component uploads the bundle into the containers; ``invoke infra.render`` writes it
to a directory for inspection; the tests check it with promtool and amtool. The monitoring
generators live under ``infra/`` rather than ``cesar/`` because only the Pulumi program (and
its tests) use them: the ``cesar`` wheel installed on API hosts has no use for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.monitoring import alertmanager_config, grafana, prometheus_config, rules
from infra.naming import Names
from infra.settings import Receiver, StackSettings

PROMETHEUS_DIR = "/etc/prometheus"
ALERTMANAGER_DIR = "/etc/alertmanager"
GRAFANA_PROVISIONING_DIR = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS_DIR = grafana.DASHBOARDS_DIR
DASHBOARD_FILE = f"{grafana.DASHBOARD_UID}.json"
PLACEHOLDER_CLUSTER_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class Bundle:
    """Container directory -> {relative path: text}. Secrets and certificates are not in it."""

    prometheus: dict[str, str]
    alertmanager: dict[str, str]
    grafana_provisioning: dict[str, str]
    grafana_dashboards: dict[str, str]

    def by_directory(self) -> dict[str, dict[str, str]]:
        return {
            PROMETHEUS_DIR: self.prometheus, ALERTMANAGER_DIR: self.alertmanager,
            GRAFANA_PROVISIONING_DIR: self.grafana_provisioning,
            GRAFANA_DASHBOARDS_DIR: self.grafana_dashboards,
        }


def receiver_spec(name: str, receiver: Receiver,
                  has_secret: bool) -> alertmanager_config.ReceiverSpec:
    """Slack always has its secret (the webhook URL); a webhook's bearer token is optional."""
    return alertmanager_config.ReceiverSpec(name, receiver.kind, receiver.url, receiver.channel,
                                            has_secret)


def build(settings: StackSettings, *, cloud_targets: Mapping[str, str] | None = None,
          webhook_secrets: Mapping[str, bool] | None = None) -> Bundle:
    """The bundle for ``settings``. A cloud stack needs its metrics export's ``cloud_targets``
    (region -> scrape URL, known once the cluster exists); ``webhook_secrets`` says which
    webhook receivers have a bearer token (``cesar-critical``/``cesar-warning`` -> bool)."""
    spec = settings.self_hosted
    inputs = prometheus_config.PrometheusInputs(
        cluster=settings.cluster_name, environment=settings.environment, stack=settings.stack,
        api_targets=settings.monitoring.api_targets,
        node_hosts=[Names.node_host(i) for i in range(1, spec.nodes + 1)] if spec else (),
        tls=not (spec and spec.insecure),
        cloud_targets=dict(cloud_targets or {}) if settings.flavour == "cloud" else {},
        log_metrics_targets=prometheus_config.log_metrics_targets(settings.monitoring.api_targets),
    )
    if settings.flavour == "cloud" and not inputs.cloud_targets:
        raise ValueError("a cloud stack's monitoring needs the metrics export's targets")
    prometheus = {"prometheus.yml": prometheus_config.render(inputs)}
    for group in rules.groups(settings.node_count):
        prometheus[f"rules/{rules.file_name(group)}"] = rules.render(group)

    secrets = dict(webhook_secrets or {})
    critical = receiver_spec(alertmanager_config.CRITICAL, settings.monitoring.critical,
                             secrets.get(alertmanager_config.CRITICAL, False))
    warning = receiver_spec(alertmanager_config.WARNING, settings.monitoring.warning,
                            secrets.get(alertmanager_config.WARNING, False))
    return Bundle(
        prometheus=prometheus,
        alertmanager={"alertmanager.yml": alertmanager_config.render(critical, warning)},
        grafana_provisioning={
            "datasources/prometheus.yaml": grafana.datasource_provisioning(),
            "dashboards/cesar.yaml": grafana.dashboard_provisioning(),
        },
        grafana_dashboards={DASHBOARD_FILE: grafana.render_dashboard(settings.environment)},
    )


def placeholder_cloud_targets(settings: StackSettings) -> dict[str, str]:
    """Scrape URLs of the documented form for an offline rendering (the real ones come from the
    metrics export once the cluster exists)."""
    return {region: (f"https://cockroachlabs.cloud/api/v1/clusters/{PLACEHOLDER_CLUSTER_ID}"
                     f"/metricexport/prometheus/{region}/scrape")
            for region in settings.regions}


def write(bundle: Bundle, root: Path) -> list[Path]:
    """Write the bundle under ``root`` (prometheus/, alertmanager/, grafana/...)."""
    written = []
    for directory, files in bundle.by_directory().items():
        base = root / directory.strip("/").removeprefix("etc/")
        for relative, text in files.items():
            path = base / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written
