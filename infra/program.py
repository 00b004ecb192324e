"""The Pulumi program, wired from the components beside it.

Reads and checks the stack's settings (every refusal happens there, before any resource), makes
the application's passwords (stack secrets override the generated ones: password rotation sets
them), the cluster of the stack's flavour with its bootstrap SQL, the monitoring, and exports
the outputs. ``__main__.py`` calls :func:`main`; the tests call :func:`define_stack` under
``pulumi.runtime.set_mocks``.
"""

from __future__ import annotations

import base64
from typing import Any

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from cesar import cluster_bootstrap
from cesar.errors import CesarError
from infra import outputs
from infra import settings as stack_settings
from infra.cluster import backups as backup_infra
from infra.cluster import security, selfhosted
from infra.cluster.cloud import CloudCluster
from infra.cluster.selfhosted import SelfHostedCluster
from infra.monitoring import GRAFANA_ADMIN_USER, Monitoring
from infra.monitoring.alertmanager_config import CRITICAL, WARNING
from infra.settings import StackSettings


def _password(config: pulumi.Config, settings: StackSettings, login: str) -> pulumi.Output[str]:
    """The login's password: the stack secret if set (rotation sets it), else generated once."""
    configured = config.get_secret(stack_settings.password_key(login))
    if configured is not None:
        return configured
    generated = random.RandomPassword(settings.names.resource(f"{login}-password"), length=32,
                                      special=False, min_lower=2, min_upper=2, min_numeric=2)
    return pulumi.Output.secret(generated.result)


def _scram_salt(settings: StackSettings, login: str) -> pulumi.Output[str]:
    """A login's SCRAM salt, made once and kept in state, so the bootstrap script (which holds
    the verifier, never the password) stays the same from one `pulumi up` to the next."""
    return random.RandomBytes(settings.names.resource(f"{login}-scram-salt"), length=16).base64


def _bootstrap_sql(settings: StackSettings, passwords: dict[str, pulumi.Output[str]],
                   *, hba: str | None, set_passwords: bool,
                   audit: bool = False,
                   license_key: pulumi.Output[str] | None = None) -> pulumi.Output[str]:
    logins = list(passwords)
    regions = tuple(settings.regions) if len(settings.regions) > 1 else ()
    salts = [_scram_salt(settings, login) for login in logins] if set_passwords else []

    def render(values: list[str]) -> str:
        secrets, key = values[:len(logins)], values[len(logins)]
        salt_values = values[len(logins) + 1:]
        spec = cluster_bootstrap.Bootstrap(
            database=settings.database, passwords=dict(zip(logins, secrets, strict=True)),
            hba=hba, regions=regions, set_passwords=set_passwords, audit=audit,
            license=key or None,
            salts={login: base64.b64decode(salt)
                   for login, salt in zip(logins, salt_values, strict=False)})
        return cluster_bootstrap.script(spec)

    return pulumi.Output.secret(pulumi.Output.all(
        *passwords.values(), license_key or "", *salts).apply(render))


def _docker_provider(settings: StackSettings, what: str,
                     host: str | None) -> docker.Provider | None:
    if host is None:
        return None  # the local engine (DOCKER_HOST or the default socket)
    return docker.Provider(settings.names.resource(f"{what}-docker"), host=host)


def define_stack() -> dict[str, Any]:
    """Create every resource of the running stack and return the outputs (also exported)."""
    settings = stack_settings.load()
    backup_spec = backup_infra.load(settings)  # refused, like the rest, before any resource
    config = pulumi.Config("cesar")
    names = settings.names
    passwords = {login: _password(config, settings, login) for login in settings.logins}

    cluster: SelfHostedCluster | CloudCluster
    if settings.self_hosted is not None:
        spec = settings.self_hosted
        provider = _docker_provider(settings, "cluster", spec.docker_host)
        license_key = config.get_secret(stack_settings.LICENSE_KEY)
        warning = stack_settings.license_warning(settings, license_key is not None)
        if warning:
            pulumi.log.warn(warning)
        cluster = SelfHostedCluster(
            names.resource("cluster"), settings,
            bootstrap_sql=_bootstrap_sql(settings, passwords, hba=selfhosted.hba(settings),
                                         set_passwords=not spec.insecure,
                                         audit=security.audit_in_bootstrap(settings),
                                         license_key=license_key),
            opts=pulumi.ResourceOptions(providers=[provider] if provider else None))
        monitoring_provider = provider
        tls, network_name, cloud_targets, cloud_key = (
            not spec.insecure, cluster.network.name, None, None)
    else:
        monitoring_provider = _docker_provider(settings, "monitoring",
                                               settings.monitoring.docker_host)
        cluster = CloudCluster(
            names.resource("cluster"), settings,
            bootstrap_sql=_bootstrap_sql(settings, passwords, hba=None, set_passwords=True,
                                         audit=security.audit_in_bootstrap(settings)),
            docker_provider=monitoring_provider, cockroach_image=settings.images.cockroach)
        tls, network_name = True, None
        cloud_targets, cloud_key = cluster.metrics_targets, config.get_secret("cloudMetricsApiKey")
        security.log_export(settings, config, cluster)

    receiver_secrets = {
        CRITICAL: config.get_secret("criticalReceiverSecret")
        if settings.monitoring.critical.kind != "none" else None,
        WARNING: config.get_secret("warningReceiverSecret")
        if settings.monitoring.warning.kind != "none" else None,
    }
    grafana_password = config.get_secret("grafanaAdminPassword") or pulumi.Output.secret(
        random.RandomPassword(names.resource("grafana-admin-password"), length=24,
                              special=False).result)
    # The credential Prometheus presents on the API's /metrics; the hosts get it as
    # CESAR_API_METRICS_TOKEN (output api_metrics_token, into the Ansible Vault).
    api_metrics_token = config.get_secret("apiMetricsToken") or pulumi.Output.secret(
        random.RandomPassword(names.resource("api-metrics-token"), length=40,
                              special=False).result)
    monitoring = Monitoring(
        names.resource("monitoring"), settings,
        network_name=network_name, ca_cert_pem=cluster.ca_cert_pem,
        cloud_targets=cloud_targets, cloud_api_key=cloud_key,
        receiver_secrets=receiver_secrets, grafana_password=grafana_password,
        api_metrics_token=api_metrics_token, provider=monitoring_provider,
        opts=pulumi.ResourceOptions(depends_on=[cluster]))

    backups = backup_infra.Backups(
        names.resource("backups"), settings, backup_spec, cluster=cluster,
        provider=monitoring_provider, opts=pulumi.ResourceOptions(depends_on=[cluster]))

    def url_for(login: str) -> pulumi.Output[str]:
        return pulumi.Output.secret(pulumi.Output.all(
            passwords[login], cluster.sql_host, cluster.sql_port).apply(
                lambda a: outputs.connection_url(
                    login=login, password=a[0], host=a[1], port=int(a[2]),
                    database=settings.database, tls=tls, ssl_root_cert=settings.ssl_root_cert)))

    urls = {login: url_for(login) for login in settings.logins}
    result: dict[str, Any] = {
        "environment": settings.environment,
        "stack": settings.stack,
        "flavour": settings.flavour,
        "cluster_name": settings.cluster_name,
        "regions": list(settings.regions),
        "sql_endpoints": cluster.sql_endpoints,
        "sql_host": cluster.sql_host,
        "sql_port": cluster.sql_port,
        "database": settings.database,
        "app_role": settings.app_role,
        "logins": list(settings.logins),
        "active_login": settings.active_login,
        "connection_url": urls[settings.active_login],
        "connection_urls": pulumi.Output.secret(pulumi.Output.all(**urls)),
        "ca_cert_pem": cluster.ca_cert_pem,
        "ssl_root_cert": settings.ssl_root_cert if tls else None,
        "console_url": cluster.console_url,
        "allowlist": [e.as_dict() for e in settings.allowlist],
        "prometheus_url": monitoring.prometheus_url,
        "alertmanager_url": monitoring.alertmanager_url,
        "grafana_url": monitoring.grafana_url,
        "grafana_admin_user": GRAFANA_ADMIN_USER,
        "grafana_admin_password": grafana_password,
        "api_metrics_targets": list(settings.monitoring.api_targets),
        "backups": {"store": backup_spec.store,
                    "schedule": None if backups.schedule is None else (
                        backup_spec.plan.label if backup_spec.store != "cloud"
                        else "cesar_operator_backup"),
                    "recurring": backup_spec.plan.recurring, "full": backup_spec.plan.full,
                    "managed": backup_spec.store == "cloud"},
        "api_metrics_token": api_metrics_token,
    }
    for name, value in result.items():
        pulumi.export(name, value)
    return result


def main() -> None:
    """Entry point of ``pulumi up``: a configuration refusal is one line, not a traceback."""
    try:
        define_stack()
    except CesarError as exc:
        raise pulumi.RunError(f"cesar: error: {exc}") from None
