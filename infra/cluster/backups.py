"""The cluster's backups: where they go and the schedule that writes them.

``cesar:backups`` in the stack file chooses the store:

- ``store: minio`` (dev): an S3-compatible store (MinIO, pinned) on the cluster's private
  network, its bucket made by a one-shot ``mc`` container, credentials generated as secrets;
- ``store: bucket`` (staging): a bucket the operator names (``bucket: s3://...`` or ``gs://...``,
  with ``AUTH=implicit`` so no key is written down; or the whole URI as the secret
  ``cesar:backupBucketUri``);
- ``store: cloud`` (production): CockroachDB Cloud's managed backups (``managed:
  frequencyMinutes, retentionDays`` on the cluster resource) plus, when ``operatorBucket`` (or
  the secret ``cesar:backupBucketUri``) is set, a schedule into a bucket the operator owns.

The schedule SQL comes from ``cesar.backup.cockroach`` (golden-file tested) and is applied by a
one-shot container, like the bootstrap SQL; the statement holding the storage URI is a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_docker as docker
import pulumi_random as random
import pulumiverse_cockroach as cockroach

from cesar.backup.cockroach import BackupPlan, setup_sql
from cesar.errors import ConfigError
from infra.cluster import cloud
from infra.cluster.selfhosted import require_success
from infra.images import require_pinned
from infra.naming import SQL_PORT, Names, docker_labels
from infra.settings import StackSettings

MINIO = "minio/minio:RELEASE.2024-10-13T13-34-11Z"
MINIO_CLIENT = "minio/mc:RELEASE.2024-10-08T09-37-26Z"
STORE_HOST = "backup-store"
STORE_PORT = 9000
BUCKET = "cesar-backups"
SETUP_FILE = "/backup/setup.sql"
CERTS_DIR = "/certs"
STORES = ("minio", "bucket", "cloud")
MANAGED_FREQUENCIES = (5, 10, 15, 30, 60, 240, 1440)   # the Cloud API's accepted values
MANAGED_RETENTION = (2, 7, 30, 90, 365)
_SECRET_PARAMS = ("AWS_SECRET_ACCESS_KEY", "CREDENTIALS", "AZURE_ACCOUNT_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class BackupSettings:
    store: str
    plan: BackupPlan
    bucket: str | None = None
    operator_bucket: str | None = None
    managed_frequency_minutes: int = 60
    managed_retention_days: int = 30
    minio_image: str = MINIO
    mc_image: str = MINIO_CLIENT


def parse(raw: Any, settings: StackSettings) -> BackupSettings:
    """Check ``cesar:backups``; every refusal names the key and the fix."""
    if not isinstance(raw, dict):
        raise ConfigError("cesar:backups is missing or not a mapping: set `store: minio` (dev), "
                          "`store: bucket` with `bucket:` (staging) or `store: cloud` (production)")
    allowed = {"store", "bucket", "operatorBucket", "recurring", "full", "managed", "images"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"cesar:backups has unknown key(s) {unknown}; known: {sorted(allowed)}")
    store = raw.get("store")
    if store not in STORES:
        raise ConfigError(f"cesar:backups.store is {store!r}; use one of {', '.join(STORES)}")
    if store == "cloud" and settings.cloud is None:
        raise ConfigError("cesar:backups.store is cloud but the stack is self-hosted")
    if store != "cloud" and settings.self_hosted is None:
        raise ConfigError(f"cesar:backups.store is {store} but the stack is a Cloud cluster: "
                          "use store: cloud")
    if store == "minio" and settings.environment != "development":
        raise ConfigError("cesar:backups.store minio keeps backups beside the cluster: allowed "
                          "in development only; use store: bucket")
    plan = BackupPlan(database=settings.database,
                      recurring=str(raw.get("recurring", "*/15 * * * *")),
                      full=str(raw.get("full", "@daily")))
    for key in ("bucket", "operatorBucket"):
        uri = raw.get(key)
        if uri and any(p in str(uri).upper() for p in _SECRET_PARAMS):
            raise ConfigError(f"cesar:backups.{key} carries a credential in the stack file; use "
                              "AUTH=implicit, or set the whole URI as the secret "
                              "`pulumi config set --secret cesar:backupBucketUri ...`")
    managed = raw.get("managed") or {}
    freq = int(managed.get("frequencyMinutes", 60))
    keep = int(managed.get("retentionDays", 30))
    if freq not in MANAGED_FREQUENCIES:
        raise ConfigError(f"cesar:backups.managed.frequencyMinutes {freq} is not one of "
                          f"{MANAGED_FREQUENCIES}")
    if keep not in MANAGED_RETENTION:
        raise ConfigError(f"cesar:backups.managed.retentionDays {keep} is not one of "
                          f"{MANAGED_RETENTION}")
    images = raw.get("images") or {}
    return BackupSettings(
        store=store, plan=plan, bucket=raw.get("bucket"), operator_bucket=raw.get("operatorBucket"),
        managed_frequency_minutes=freq, managed_retention_days=keep,
        minio_image=require_pinned(str(images.get("minio", MINIO)), "minio"),
        mc_image=require_pinned(str(images.get("mc", MINIO_CLIENT)), "mc"))


def load(settings: StackSettings) -> BackupSettings:
    return parse(pulumi.Config("cesar").get_object("backups"), settings)


def managed_config(spec: BackupSettings) -> cockroach.ClusterBackupConfigArgs | None:
    """The Cloud cluster's own backups (the ``backup_config`` of the cluster resource)."""
    if spec.store != "cloud":
        return None
    return cockroach.ClusterBackupConfigArgs(
        enabled=True, frequency_minutes=spec.managed_frequency_minutes,
        retention_days=spec.managed_retention_days)


def minio_location(stack: str, user: str, password: str) -> str:
    endpoint = quote(f"http://{STORE_HOST}:{STORE_PORT}", safe="")
    return (f"s3://{BUCKET}/{stack}?AWS_ENDPOINT={endpoint}&AWS_ACCESS_KEY_ID={quote(user)}"
            f"&AWS_SECRET_ACCESS_KEY={quote(password, safe='')}&AWS_REGION=us-east-1"
            "&AWS_USE_PATH_STYLE=true")


def selfhosted_shell(insecure: bool) -> str:
    flags = "--insecure" if insecure else f"--certs-dir={CERTS_DIR}"
    host = f"{Names.node_host(1)}:{SQL_PORT}"
    return "\n".join([
        "set -euo pipefail",
        "for i in $(seq 1 90); do",
        f"  cockroach sql {flags} --host={host} -e 'SELECT 1' >/dev/null 2>&1 && break",
        '  if [ "$i" = 90 ]; then echo "SQL not ready after 180 s" >&2; exit 1; fi',
        "  sleep 2",
        "done",
        f"cockroach sql {flags} --host={host} --file={SETUP_FILE}",
        'echo "backup schedule applied"',
    ]) + "\n"


def cloud_shell() -> str:
    return cloud.bootstrap_shell().replace(cloud.BOOTSTRAP_FILE, SETUP_FILE).replace(
        "bootstrap applied", "backup schedule applied")


class Backups(pulumi.ComponentResource):
    """The store (dev), the managed backups (Cloud, set on the cluster) and the schedule."""

    def __init__(self, name: str, settings: StackSettings, spec: BackupSettings, *,
                 cluster: Any, provider: pulumi.ProviderResource | None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cesar:infra:Backups", name, None, opts)
        names = settings.names
        on_host = pulumi.ResourceOptions(parent=self, provider=provider)
        secret_uri = pulumi.Config("cesar").get_secret("backupBucketUri")
        location: pulumi.Output[str] | None = None
        self.store_container: docker.Container | None = None
        waits: list[pulumi.Resource] = []
        if spec.store == "minio":
            password = random.RandomPassword(names.resource("backup-store-password"), length=32,
                                             special=False, opts=pulumi.ResourceOptions(
                                                 parent=self))
            user = "cesar-backup"
            image = docker.RemoteImage(names.resource("backup-store-image"),
                                       name=spec.minio_image, keep_locally=True, opts=on_host)
            mc_image = docker.RemoteImage(names.resource("backup-mc-image"), name=spec.mc_image,
                                          keep_locally=True, opts=on_host)
            volume = docker.Volume(names.resource("backup-store-data"),
                                   name=names.resource("backup-store-data"),
                                   labels=docker_labels(settings.stack, "backup-store",
                                                        docker.VolumeLabelArgs),
                                   opts=pulumi.ResourceOptions(parent=self, provider=provider,
                                                               protect=True))
            env = pulumi.Output.secret(password.result.apply(
                lambda p: [f"MINIO_ROOT_USER={user}", f"MINIO_ROOT_PASSWORD={p}"]))
            self.store_container = docker.Container(
                names.resource("backup-store"), name=names.resource("backup-store"),
                hostname=STORE_HOST, image=image.image_id, command=["server", "/data"],
                envs=env,
                networks_advanced=[docker.ContainerNetworksAdvancedArgs(
                    name=cluster.network.name, aliases=[STORE_HOST])],
                volumes=[docker.ContainerVolumeArgs(volume_name=volume.name,
                                                    container_path="/data")],
                restart="unless-stopped", security_opts=["no-new-privileges:true"],
                labels=docker_labels(settings.stack, "backup-store", docker.ContainerLabelArgs),
                opts=on_host)
            mc_env = pulumi.Output.secret(password.result.apply(
                lambda p: [f"MC_HOST_store=http://{user}:{p}@{STORE_HOST}:{STORE_PORT}"]))
            bucket = docker.Container(
                names.resource("backup-bucket"), name=names.resource("backup-bucket"),
                image=mc_image.image_id, entrypoints=["/bin/sh", "-c"],
                command=["for i in $(seq 1 60); do mc ready store >/dev/null 2>&1 && break; "
                         "sleep 1; done; mc mb --ignore-existing store/" + BUCKET],
                envs=mc_env,
                networks_advanced=[docker.ContainerNetworksAdvancedArgs(
                    name=cluster.network.name)],
                must_run=False, attach=True, logs=True, restart="no",
                opts=pulumi.ResourceOptions(parent=self, provider=provider,
                                            depends_on=[self.store_container]))
            waits.append(bucket)
            location = pulumi.Output.secret(password.result.apply(
                lambda p: minio_location(settings.stack, user, p)))
        elif spec.store == "bucket":
            location = secret_uri or (pulumi.Output.from_input(spec.bucket) if spec.bucket
                                      else None)
            if location is None:
                raise ConfigError("cesar:backups.store is bucket but neither "
                                  "cesar:backups.bucket nor the secret cesar:backupBucketUri "
                                  "is set")
        else:  # cloud: managed backups on the cluster; an operator bucket when configured
            location = secret_uri or (pulumi.Output.from_input(spec.operator_bucket)
                                      if spec.operator_bucket else None)

        self.schedule: docker.Container | None = None
        self.setup_sql: pulumi.Output[str] | None = None
        if location is not None:
            plan = spec.plan if spec.store != "cloud" else BackupPlan(
                database=spec.plan.database, recurring=spec.plan.recurring, full=spec.plan.full,
                label="cesar_operator_backup", connection="cesar_operator_backups")
            self.setup_sql = pulumi.Output.secret(
                pulumi.Output.from_input(location).apply(lambda loc: setup_sql(plan, loc)))
            self.schedule = self._schedule_container(settings, cluster, provider, waits)
        # A one-shot container that failed fails the update, in one line (no traceback).
        checks = [c for c in (self.schedule, *waits) if c is not None]
        self.exit_codes = [c.exit_code.apply(lambda code, n=c._name: require_success(n, code))
                           for c in checks]
        self.register_outputs({"exit_codes": self.exit_codes})

    def _schedule_container(self, settings: StackSettings, cluster: Any,
                            provider: pulumi.ProviderResource | None,
                            waits: list[pulumi.Resource]) -> docker.Container:
        names = settings.names
        assert self.setup_sql is not None
        uploads = [docker.ContainerUploadArgs(file=SETUP_FILE, content=self.setup_sql,
                                              permissions="0600")]
        if settings.self_hosted is not None:
            spec = settings.self_hosted
            if cluster.certs is not None:
                cert, key = cluster.certs.root_client
                uploads += [
                    docker.ContainerUploadArgs(file=f"{CERTS_DIR}/ca.crt",
                                               content=cluster.certs.ca_cert_pem,
                                               permissions="0644"),
                    docker.ContainerUploadArgs(file=f"{CERTS_DIR}/client.root.crt",
                                               content=cert, permissions="0644"),
                    docker.ContainerUploadArgs(file=f"{CERTS_DIR}/client.root.key",
                                               content=key, permissions="0600")]
            return docker.Container(
                names.resource("backup-schedule"), name=names.resource("backup-schedule"),
                image=cluster.image.image_id, entrypoints=["/bin/bash", "-c"],
                command=[selfhosted_shell(spec.insecure)],
                networks_advanced=[docker.ContainerNetworksAdvancedArgs(
                    name=cluster.network.name)],
                uploads=uploads, must_run=False, attach=True, logs=True, restart="no",
                labels=docker_labels(settings.stack, "backup-schedule",
                                     docker.ContainerLabelArgs),
                opts=pulumi.ResourceOptions(parent=self, provider=provider,
                                            depends_on=[cluster.init, *waits]))
        url = pulumi.Output.secret(pulumi.Output.all(
            cluster.admin_password.result, cluster.sql_host).apply(
                lambda a: cloud.admin_url(settings.cloud.admin_user, a[0], a[1],
                                          with_ca=settings.cloud.plan == "ADVANCED")))
        uploads.append(docker.ContainerUploadArgs(file=cloud.ADMIN_URL_FILE, content=url,
                                                  permissions="0600"))
        if cluster.ca_cert_pem is not None:
            uploads.append(docker.ContainerUploadArgs(file=cloud.CA_FILE,
                                                      content=cluster.ca_cert_pem,
                                                      permissions="0644"))
        image = docker.RemoteImage(names.resource("backup-schedule-image"),
                                   name=settings.images.cockroach, keep_locally=True,
                                   opts=pulumi.ResourceOptions(parent=self, provider=provider))
        return docker.Container(
            names.resource("backup-schedule"), name=names.resource("backup-schedule"),
            image=image.image_id, entrypoints=["/bin/bash", "-c"], command=[cloud_shell()],
            uploads=uploads, must_run=False, attach=True, logs=True, restart="no",
            opts=pulumi.ResourceOptions(parent=self, provider=provider,
                                        depends_on=[cluster.bootstrap]))


__all__ = ["Backups", "BackupSettings", "load", "managed_config", "parse"]
