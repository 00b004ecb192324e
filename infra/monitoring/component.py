"""Prometheus, Alertmanager and Grafana as pinned containers, configured by generated files.

On a self-hosted stack they join the cluster's private network (Prometheus scrapes the nodes by
name over TLS with the cluster's CA); on a cloud stack they get their own network on the
monitoring Docker host and Prometheus scrapes CockroachDB Cloud's metrics export with an API key
read from a file. Ports are published on the configured address (loopback in development).
Secrets (the Cloud API key, receiver secrets, Grafana's admin password) are uploaded as files
readable only by the service's user; the generated configuration names the files, never the
values.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_docker as docker

from infra.monitoring import files as monitoring_files
from infra.monitoring.prometheus_config import API_METRICS_TOKEN_FILE, CA_FILE, CLOUD_API_KEY_FILE
from infra.naming import ALERTMANAGER_PORT, GRAFANA_PORT, PROMETHEUS_PORT, docker_labels
from infra.settings import StackSettings

PROMETHEUS_UID = "65534"   # nobody, in prom/prometheus and prom/alertmanager
GRAFANA_UID = "472"        # grafana, in grafana/grafana
GRAFANA_PASSWORD_FILE = "/etc/grafana/secrets/admin-password"
GRAFANA_ADMIN_USER = "admin"


def prometheus_command(settings: StackSettings) -> list[str]:
    m = settings.monitoring
    return [
        f"--config.file={monitoring_files.PROMETHEUS_DIR}/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        f"--storage.tsdb.retention.time={m.retention}",
        f"--web.listen-address=:{PROMETHEUS_PORT}",
        f"--web.external-url={m.url(m.prometheus_port)}",
    ]


def alertmanager_command(settings: StackSettings) -> list[str]:
    m = settings.monitoring
    return [
        f"--config.file={monitoring_files.ALERTMANAGER_DIR}/alertmanager.yml",
        "--storage.path=/alertmanager",
        f"--web.listen-address=:{ALERTMANAGER_PORT}",
        f"--web.external-url={m.url(m.alertmanager_port)}",
    ]


def grafana_env(settings: StackSettings) -> list[str]:
    m = settings.monitoring
    return [
        f"GF_SECURITY_ADMIN_USER={GRAFANA_ADMIN_USER}",
        f"GF_SECURITY_ADMIN_PASSWORD__FILE={GRAFANA_PASSWORD_FILE}",
        f"GF_SERVER_ROOT_URL={m.url(m.grafana_port)}",
        "GF_AUTH_ANONYMOUS_ENABLED=false",
        "GF_USERS_ALLOW_SIGN_UP=false",
        "GF_ANALYTICS_REPORTING_ENABLED=false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES=false",
        f"GF_PATHS_PROVISIONING={monitoring_files.GRAFANA_PROVISIONING_DIR}",
    ]


def _files(directory: str, files: Mapping[str, str | pulumi.Output[str]],
           ) -> list[docker.ContainerUploadArgs]:
    return [docker.ContainerUploadArgs(file=f"{directory}/{path}", content=text,
                                       permissions="0444")
            for path, text in sorted(files.items())]


def _secret_file(path: str, value: pulumi.Output[str], owner: str) -> docker.ContainerUploadArgs:
    return docker.ContainerUploadArgs(file=path, content=pulumi.Output.secret(value),
                                      owner=owner, group=owner, permissions="0400")


class Monitoring(pulumi.ComponentResource):
    """The three monitoring containers of one stack."""

    def __init__(self, name: str, settings: StackSettings, *,
                 network_name: pulumi.Input[str] | None,
                 ca_cert_pem: pulumi.Input[str] | None,
                 cloud_targets: pulumi.Output[Mapping[str, str]] | None,
                 cloud_api_key: pulumi.Output[str] | None,
                 receiver_secrets: Mapping[str, pulumi.Output[str] | None],
                 grafana_password: pulumi.Output[str],
                 api_metrics_token: pulumi.Output[str] | None = None,
                 provider: pulumi.ProviderResource | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cesar:infra:Monitoring", name, None, opts)
        m = settings.monitoring
        names = settings.names
        child = pulumi.ResourceOptions(parent=self, provider=provider)

        has_secret = {k: v is not None for k, v in receiver_secrets.items()}
        placeholder = monitoring_files.placeholder_cloud_targets(settings) \
            if settings.flavour == "cloud" else None
        self.bundle = monitoring_files.build(settings, cloud_targets=placeholder,
                                             webhook_secrets=has_secret)
        prometheus_files: dict[str, str | pulumi.Output[str]] = dict(self.bundle.prometheus)
        if settings.flavour == "cloud":
            if cloud_targets is None or cloud_api_key is None:
                raise ValueError("a cloud stack's monitoring needs the export targets and key")
            prometheus_files["prometheus.yml"] = cloud_targets.apply(
                lambda targets: monitoring_files.build(
                    settings, cloud_targets=targets, webhook_secrets=has_secret,
                ).prometheus["prometheus.yml"])

        if network_name is None:
            network = docker.Network(names.resource("monitoring-net"),
                                     name=names.resource("monitoring-net"), driver="bridge",
                                     labels=docker_labels(settings.stack, "network",
                                                          docker.NetworkLabelArgs),
                                     opts=child)
            network_name = network.name

        def image(what: str, ref: str) -> docker.RemoteImage:
            return docker.RemoteImage(names.resource(f"{what}-image"), name=ref,
                                      keep_locally=True, opts=child)

        def volume(what: str) -> docker.Volume:
            data = names.resource(f"{what}-data")
            return docker.Volume(data, name=data,
                                 labels=docker_labels(settings.stack, what, docker.VolumeLabelArgs),
                                 opts=child)

        def container(what: str, ref: str, port: int, published: int, data_path: str,
                      health_path: str, **kwargs: object) -> docker.Container:
            return docker.Container(
                names.service(what),
                name=names.service(what),
                hostname=what,
                image=image(what, ref).image_id,
                networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network_name,
                                                                        aliases=[what])],
                ports=[docker.ContainerPortArgs(internal=port, external=published,
                                                ip=m.bind_address)],
                volumes=[docker.ContainerVolumeArgs(volume_name=volume(what).name,
                                                    container_path=data_path)],
                healthcheck=docker.ContainerHealthcheckArgs(
                    tests=["CMD", "wget", "-q", "--spider", f"http://localhost:{port}{health_path}"],
                    interval="15s", timeout="5s", retries=3, start_period="30s"),
                restart="unless-stopped",
                security_opts=["no-new-privileges:true"],
                labels=docker_labels(settings.stack, what, docker.ContainerLabelArgs),
                opts=child,
                **kwargs,  # type: ignore[arg-type]
            )

        prometheus_uploads = _files(monitoring_files.PROMETHEUS_DIR, prometheus_files)
        if ca_cert_pem is not None and settings.flavour == "self-hosted":
            prometheus_uploads.append(docker.ContainerUploadArgs(
                file=f"{monitoring_files.PROMETHEUS_DIR}/{CA_FILE}", content=ca_cert_pem,
                permissions="0444"))
        if cloud_api_key is not None:
            prometheus_uploads.append(_secret_file(
                f"{monitoring_files.PROMETHEUS_DIR}/{CLOUD_API_KEY_FILE}", cloud_api_key,
                PROMETHEUS_UID))
        if api_metrics_token is not None:
            prometheus_uploads.append(_secret_file(
                f"{monitoring_files.PROMETHEUS_DIR}/{API_METRICS_TOKEN_FILE}", api_metrics_token,
                PROMETHEUS_UID))
        self.prometheus = container(
            "prometheus", settings.images.prometheus, PROMETHEUS_PORT, m.prometheus_port,
            "/prometheus", "/-/ready", command=prometheus_command(settings),
            uploads=prometheus_uploads,
            hosts=[docker.ContainerHostArgs(host="host.docker.internal", ip="host-gateway")])

        alertmanager_uploads = _files(monitoring_files.ALERTMANAGER_DIR, self.bundle.alertmanager)
        for receiver, value in sorted(receiver_secrets.items()):
            if value is not None:
                alertmanager_uploads.append(_secret_file(
                    f"/etc/alertmanager/secrets/{receiver}", value, PROMETHEUS_UID))
        self.alertmanager = container(
            "alertmanager", settings.images.alertmanager, ALERTMANAGER_PORT, m.alertmanager_port,
            "/alertmanager", "/-/ready", command=alertmanager_command(settings),
            uploads=alertmanager_uploads)

        grafana_uploads = (
            _files(monitoring_files.GRAFANA_PROVISIONING_DIR, self.bundle.grafana_provisioning)
            + _files(monitoring_files.GRAFANA_DASHBOARDS_DIR, self.bundle.grafana_dashboards)
            + [_secret_file(GRAFANA_PASSWORD_FILE, grafana_password, GRAFANA_UID)])
        self.grafana = container(
            "grafana", settings.images.grafana, GRAFANA_PORT, m.grafana_port,
            "/var/lib/grafana", "/api/health", envs=grafana_env(settings),
            uploads=grafana_uploads)

        self.prometheus_url = pulumi.Output.from_input(m.url(m.prometheus_port))
        self.alertmanager_url = pulumi.Output.from_input(m.url(m.alertmanager_port))
        self.grafana_url = pulumi.Output.from_input(m.url(m.grafana_port))
        self.register_outputs({"prometheus_url": self.prometheus_url,
                               "alertmanager_url": self.alertmanager_url,
                               "grafana_url": self.grafana_url})
