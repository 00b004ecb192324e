"""The Pulumi program (``pulumi up``): CockroachDB clusters, allowlists and monitoring.

``Pulumi.yaml`` points at this directory; ``__main__.py`` is three lines. Two parts:
``infra.cluster`` builds the database (``selfhosted``, ``cloud``, ``certs``, ``backups``,
``security``) and ``infra.monitoring`` the Prometheus/Alertmanager/Grafana stack (the component,
and the pure generators the tests call directly: ``files``, ``rules`` with the shipped rule files
in ``monitoring/rules/``, ``prometheus_config``, ``alertmanager_config``, ``grafana``,
``metrics``). What both use stays here (``settings``, ``images``, ``naming``, ``outputs``,
``program``, ``cli``, ``offline``). See docs/infra.md.
"""

from cesar._moved import install

# The flat module names from before the two parts keep importing, as the same module objects.
MOVED: dict[str, str] = {
    "infra.selfhosted": "infra.cluster.selfhosted",
    "infra.cloud": "infra.cluster.cloud",
    "infra.certs": "infra.cluster.certs",
    "infra.backups": "infra.cluster.backups",
    "infra.security": "infra.cluster.security",
    "infra.monitoring_files": "infra.monitoring.files",
    "infra.prometheus_config": "infra.monitoring.prometheus_config",
    "infra.alertmanager_config": "infra.monitoring.alertmanager_config",
    "infra.grafana": "infra.monitoring.grafana",
    "infra.metrics": "infra.monitoring.metrics",
    "infra.rules": "infra.monitoring.rules",
    "infra.security_rules": "infra.monitoring.security_rules",
    # The provisioning commands' module before they moved into infra/. Only infra knows the
    # name: the cesar wheel on hosts has no infra/, so cesar itself must never name it.
    "cesar.provisioning": "infra.cli",
}

install(MOVED)
