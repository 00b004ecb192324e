"""The stack outputs: what the Ansible inventory and the invoke tasks read.

``pulumi stack output --json`` (``invoke infra.outputs``) prints them; secrets print as
``[secret]`` unless ``--show-secrets`` is given. Names are stable: docs/infra.md lists each one
and who reads it.
"""

from __future__ import annotations

from cesar.db import urls

#: Every output a stack exports (the tests check that the program exports exactly these).
NAMES = (
    "environment", "stack", "flavour", "cluster_name", "regions",
    "sql_endpoints", "sql_host", "sql_port", "database",
    "app_role", "logins", "active_login", "connection_url", "connection_urls",
    "ca_cert_pem", "ssl_root_cert", "console_url", "allowlist",
    "prometheus_url", "alertmanager_url", "grafana_url",
    "grafana_admin_user", "grafana_admin_password", "api_metrics_targets",
    "backups",
    "api_metrics_token",
)
SECRET_NAMES = frozenset({"connection_url", "connection_urls", "grafana_admin_password",
                          "api_metrics_token"})


def connection_url(*, login: str, password: str, host: str, port: int, database: str,
                   tls: bool, ssl_root_cert: str | None) -> str:
    """The application's URL: ``sslmode=verify-full`` on every secure cluster (``disable`` only
    for an insecure development cluster), ``sslrootcert`` when the cluster has a private CA."""
    params = {"sslmode": "verify-full" if tls else "disable"}
    if tls and ssl_root_cert:
        params["sslrootcert"] = ssl_root_cert
    return urls.build(user=login, password=password, host=host, port=port, dbname=database,
                      **params)
