"""A CockroachDB Cloud cluster through the ``pulumiverse_cockroach`` provider (production).

The cluster (one entry per configured region, the first primary), its allow list entries from
``cesar:allowlist``, the admin SQL user and the database, and the Prometheus metrics export that
Prometheus scrapes. The application's two logins and their group role are made by the same
bootstrap SQL as on a self-hosted cluster, run by a one-shot container on the monitoring Docker
host as the admin user: CockroachDB Cloud gives users created through its Console/API SQL
``admin`` privileges, which the application's logins must not have.

Provider credentials: ``COCKROACH_API_KEY`` in the environment (or ``pulumi config set --secret
cockroach:apikey``), a service account with the Cluster Admin role.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker
import pulumi_random as random
import pulumiverse_cockroach as cockroach

from cesar import allowlist
from cesar.db import urls
from infra.cluster.selfhosted import require_success
from infra.naming import SQL_PORT
from infra.settings import StackSettings

CA_FILE = "/certs/ca.crt"
ADMIN_URL_FILE = "/secrets/admin-url"
BOOTSTRAP_FILE = "/bootstrap/bootstrap.sql"
SQL_READY_ATTEMPTS = 60  # x 5 s


def bootstrap_shell() -> str:
    """Shell for the one-shot bootstrap container: wait until the cluster answers as the admin
    user (allow list entries take a moment), then apply the bootstrap SQL."""
    return "\n".join([
        "set -euo pipefail",
        f'url="$(cat {ADMIN_URL_FILE})"',
        f"for i in $(seq 1 {SQL_READY_ATTEMPTS}); do",
        '  cockroach sql --url "$url" -e "SELECT 1" >/dev/null 2>&1 && break',
        f'  if [ "$i" = {SQL_READY_ATTEMPTS} ]; then echo "cluster not reachable as the admin '
        'user: is this host in cesar:allowlist?" >&2; exit 1; fi',
        "  sleep 5",
        "done",
        f'cockroach sql --url "$url" --file={BOOTSTRAP_FILE}',
        'echo "bootstrap applied"',
    ]) + "\n"


def admin_url(user: str, password: str, host: str, *, with_ca: bool) -> str:
    params = {"sslmode": "verify-full"}
    if with_ca:
        params["sslrootcert"] = CA_FILE
    return urls.build(user=user, password=password, host=host, port=SQL_PORT,
                      dbname="defaultdb", **params)


class CloudCluster(pulumi.ComponentResource):
    """Cluster, allow list, admin user, database, metrics export and the bootstrap container."""

    def __init__(self, name: str, settings: StackSettings, *,
                 bootstrap_sql: pulumi.Output[str],
                 docker_provider: pulumi.ProviderResource | None,
                 cockroach_image: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cesar:infra:CloudCluster", name, None, opts)
        from infra.cluster import backups as backup_infra  # it builds on this module
        spec = settings.cloud
        assert spec is not None
        names = settings.names
        child = pulumi.ResourceOptions(parent=self)
        advanced = spec.plan == "ADVANCED"

        # `primary` exists for multi-region STANDARD (serverless) clusters only: the provider
        # refuses it on ADVANCED ones, even when false ("Dedicated clusters do not support the
        # primary attribute on regions", terraform-provider-cockroach cluster_resource.go). An
        # ADVANCED cluster's database primary region is set by the bootstrap SQL instead.
        regions = [
            cockroach.ClusterRegionArgs(
                name=region, primary=None if advanced else (index == 0 or None),
                node_count=spec.nodes_per_region if advanced else None)
            for index, region in enumerate(settings.regions)
        ]
        self.cluster = cockroach.Cluster(
            names.resource("cluster"),
            name=settings.cluster_name,
            cloud_provider=spec.provider,
            plan=spec.plan,
            # The pin fixes the version of ADVANCED clusters only: the provider accepts a
            # version on a STANDARD cluster only with manual upgrades, which would leave keeping
            # it supported to us. A STANDARD cluster keeps Cloud's automatic major upgrades
            # (stated, not defaulted) and starts on the version Cloud offers; `cesar doctor`
            # checks it against the minimum.
            cockroach_version=spec.version if advanced else None,
            regions=regions,
            dedicated=cockroach.ClusterDedicatedArgs(
                storage_gib=spec.storage_gib, num_virtual_cpus=spec.num_virtual_cpus,
            ) if advanced else None,
            serverless=None if advanced else cockroach.ClusterServerlessArgs(
                upgrade_type="AUTOMATIC",
                usage_limits=cockroach.ClusterServerlessUsageLimitsArgs(
                    provisioned_virtual_cpus=spec.provisioned_virtual_cpus)),
            delete_protection=spec.delete_protection,
            backup_config=backup_infra.managed_config(backup_infra.load(settings)),
            opts=pulumi.ResourceOptions(parent=self, protect=spec.delete_protection),
        )
        cluster_child = pulumi.ResourceOptions(parent=self, depends_on=[self.cluster])
        self.allow_list = [
            cockroach.AllowList(names.resource(f"allow-{entry['name']}"),
                                cluster_id=self.cluster.id, opts=cluster_child, **entry)
            for entry in allowlist.cloud_entries(settings.allowlist)
        ]
        self.admin_password = random.RandomPassword(
            names.resource("admin-password"), length=32, special=False, opts=child)
        self.admin = cockroach.SqlUser(
            names.resource("admin-user"), cluster_id=self.cluster.id, name=spec.admin_user,
            password=self.admin_password.result, opts=cluster_child)
        self.database = cockroach.Database(
            names.resource("database"), cluster_id=self.cluster.id, name=settings.database,
            opts=cluster_child)
        self.metrics_export = cockroach.MetricExportPrometheusConfig(
            names.resource("metrics-export"), cluster_id=self.cluster.id, opts=cluster_child)

        first = self.cluster.regions.apply(lambda rs: rs[0])
        self.sql_host = first.apply(lambda r: r.sql_dns)
        self.sql_port = pulumi.Output.from_input(SQL_PORT)
        self.sql_endpoints = self.cluster.regions.apply(
            lambda rs: [f"{r.sql_dns}:{SQL_PORT}" for r in rs])
        self.console_url = first.apply(
            lambda r: f"https://{r.ui_dns}:8080" if advanced else "https://cockroachlabs.cloud")
        self.ca_cert_pem = cockroach.get_cluster_cert_output(id=self.cluster.id).cert \
            if advanced else None
        self.metrics_targets = self.metrics_export.targets

        url = pulumi.Output.all(self.admin_password.result, self.sql_host).apply(
            lambda a: admin_url(spec.admin_user, a[0], a[1], with_ca=advanced))
        uploads = [
            docker.ContainerUploadArgs(file=ADMIN_URL_FILE, content=pulumi.Output.secret(url),
                                       permissions="0600"),
            docker.ContainerUploadArgs(file=BOOTSTRAP_FILE,
                                       content=pulumi.Output.secret(bootstrap_sql),
                                       permissions="0600"),
        ]
        if self.ca_cert_pem is not None:
            uploads.append(docker.ContainerUploadArgs(file=CA_FILE, content=self.ca_cert_pem,
                                                      permissions="0644"))
        on_host = pulumi.ResourceOptions(parent=self, provider=docker_provider)
        image = docker.RemoteImage(names.resource("bootstrap-image"), name=cockroach_image,
                                   keep_locally=True, opts=on_host)
        self.bootstrap = docker.Container(
            names.bootstrap,
            name=names.bootstrap,
            image=image.image_id,
            entrypoints=["/bin/bash", "-c"],
            command=[bootstrap_shell()],
            uploads=uploads,
            must_run=False, attach=True, logs=True, restart="no",
            opts=pulumi.ResourceOptions(
                parent=self, provider=docker_provider,
                depends_on=[self.admin, self.database, *self.allow_list],
                # its output is kept in Pulumi's state: encrypted there, never in plain text
                additional_secret_outputs=["container_logs"]),
        )
        self.bootstrap_exit_code = self.bootstrap.exit_code.apply(
            lambda code: require_success(names.bootstrap, code))
        self.register_outputs({"sql_endpoints": self.sql_endpoints,
                               "console_url": self.console_url,
                               "bootstrap_exit_code": self.bootstrap_exit_code})
