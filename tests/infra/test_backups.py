"""The cluster's backups in the Pulumi program (mocks): the dev store, the staging bucket, the
production managed backups and operator bucket, and the schedule SQL each applies."""

from __future__ import annotations

import json
import re

import pytest

from cesar.backup import cockroach
from cesar.errors import ConfigError
from infra import images, offline
from infra.cluster import backups, selfhosted
from tests.infra.helpers import CONTAINER, image_of, upload


def _override(stack: str, key: str, patch: dict | None) -> dict[str, str]:
    base = offline.decode_value(offline.stack_config(stack)[key])
    merged = {**base, **patch} if patch is not None else None
    return {key: json.dumps(merged)}


def test_dev_runs_a_pinned_s3_store_on_the_cluster_network_and_schedules_into_it(runs) -> None:
    run = runs["dev"]
    store = run.named("cesar-dev-backup-store")
    assert image_of(run, store) == backups.MINIO
    images.require_pinned(backups.MINIO, "minio")
    net = store.plain_inputs["networksAdvanced"][0]
    assert net["aliases"] == [backups.STORE_HOST]
    assert offline.is_secret(store.inputs["envs"])  # the generated root password
    assert "ports" not in store.plain_inputs  # reachable from the cluster only

    bucket = run.named("cesar-dev-backup-bucket")
    assert image_of(run, bucket) == backups.MINIO_CLIENT
    assert f"mc mb --ignore-existing store/{backups.BUCKET}" in bucket.plain_inputs["command"][0]

    schedule = run.named("cesar-dev-backup-schedule")
    sql_upload = upload(schedule, backups.SETUP_FILE)
    assert offline.is_secret(schedule.inputs["uploads"])
    sql = sql_upload["content"]
    assert sql.endswith(cockroach.schedule_sql(cockroach.BackupPlan()))
    assert re.search(r"AS 's3://cesar-backups/dev\?AWS_ENDPOINT=http%3A%2F%2Fbackup-store%3A9000"
                     r"&AWS_ACCESS_KEY_ID=cesar-backup&AWS_SECRET_ACCESS_KEY=\w{32}&", sql)
    deps = set(schedule.dependencies)
    assert {run.named("cesar-dev-roach-init").urn, bucket.urn} <= deps
    assert run.outputs["backups"] == {"store": "minio", "schedule": "cesar_backup",
                                      "recurring": "*/15 * * * *", "full": "@daily",
                                      "managed": False}


def test_staging_schedules_into_its_bucket_without_a_store(runs) -> None:
    run = runs["staging"]
    names = {r.name for r in run.of_type(CONTAINER)}
    assert "cesar-staging-backup-store" not in names
    sql = upload(run.named("cesar-staging-backup-schedule"), backups.SETUP_FILE)["content"]
    assert "AS 's3://cesar-staging-backups/cluster?AUTH=implicit&AWS_REGION=eu-west-1'" in sql
    assert "FOR BACKUP DATABASE cesar INTO 'external://cesar_backups'" in sql


def test_production_has_managed_backups_and_an_operator_bucket_schedule(runs) -> None:
    run = runs["production"]
    cluster = next(r for r in run.resources if r.name == "cesar-production-cluster"
                   and r.type == "cockroach:index/cluster:Cluster")
    assert cluster.plain_inputs["backupConfig"] == {"enabled": True, "frequencyMinutes": 60,
                                                    "retentionDays": 30}
    schedule = run.named("cesar-production-backup-schedule")
    sql = upload(schedule, backups.SETUP_FILE)["content"]
    assert "CREATE SCHEDULE IF NOT EXISTS cesar_operator_backup" in sql
    assert "gs://cesar-production-backups/cluster?AUTH=implicit" in sql
    assert run.named("cesar-production-sql-bootstrap").urn in schedule.dependencies
    assert run.outputs["backups"]["managed"] is True


def test_production_without_an_operator_bucket_keeps_only_the_managed_backups() -> None:
    raw = offline.decode_value(offline.stack_config("production")["cesar:backups"])
    raw.pop("operatorBucket")
    run = offline.run("production", config={"cesar:backups": json.dumps(raw)})
    assert "cesar-production-backup-schedule" not in {r.name for r in run.resources}
    assert run.outputs["backups"]["schedule"] is None


def test_a_secret_bucket_uri_replaces_the_stack_file_one_and_stays_secret() -> None:
    uri = "s3://b/c?AWS_ACCESS_KEY_ID=k&AWS_SECRET_ACCESS_KEY=verysecretvalue1"
    run = offline.run("staging", secrets={**offline.required_secret_stand_ins("staging"),
                                          "cesar:backupBucketUri": uri})
    schedule = run.named("cesar-staging-backup-schedule")
    assert offline.is_secret(schedule.inputs["uploads"])
    assert uri in upload(schedule, backups.SETUP_FILE)["content"]


@pytest.mark.parametrize(("stack", "patch", "fragment"), [
    ("staging", {"store": "minio"}, "allowed in development only"),
    ("staging", {"bucket": "s3://b/c?AWS_SECRET_ACCESS_KEY=x"}, "carries a credential"),
    ("dev", {"store": "tape"}, "use one of minio, bucket, cloud"),
    ("dev", {"when": "daily"}, "unknown key(s) ['when']"),
    ("dev", {"recurring": "every minute"}, "not a crontab expression"),
    ("dev", {"images": {"minio": "minio/minio:latest"}}, "is not pinned"),
    ("production", {"managed": {"frequencyMinutes": 7}}, "frequencyMinutes 7 is not one of"),
    ("production", {"store": "bucket"}, "the stack is a Cloud cluster"),
])
def test_unsafe_backup_settings_are_refused_before_anything(stack, patch, fragment) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        offline.run(stack, config=_override(stack, "cesar:backups", patch))


def test_missing_backup_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="cesar:backups is missing"):
        offline.run("dev", config=_override("dev", "cesar:backups", None))


def test_a_failed_schedule_container_fails_the_update_in_one_line() -> None:
    with pytest.raises(selfhosted.OneShotFailed, match="cesar-dev-backup-schedule exited"):
        offline.run("dev", exit_codes={"cesar-dev-backup-schedule": 3})
