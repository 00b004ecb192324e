"""Audit and authentication logging in the Pulumi program, under the mocks
(infra/cluster/security.py).

The statements are CockroachDB syntax and are not executed here (no CockroachDB binary on these
machines); what is checked is that each cluster flavour gets them, in the bootstrap SQL the
cluster runs, and that production's Cloud cluster exports those log channels.
"""

from __future__ import annotations

import json

import pytest

from cesar.errors import ConfigError
from infra import offline
from tests.infra.helpers import override, upload

AUDIT_STATEMENTS = [
    "SET CLUSTER SETTING server.auth_log.sql_connections.enabled = true;",
    "SET CLUSTER SETTING server.auth_log.sql_sessions.enabled = true;",
    'ALTER TABLE IF EXISTS "api_keys" EXPERIMENTAL_AUDIT SET READ WRITE;',
    'ALTER TABLE IF EXISTS "audit_log" EXPERIMENTAL_AUDIT SET READ WRITE;',
]
EXPORT = "cockroach:index/logExportConfig:LogExportConfig"


def _sql(run: offline.OfflineRun, container: str) -> list[str]:
    return upload(run.named(container), "/bootstrap/bootstrap.sql")["content"].splitlines()


@pytest.mark.parametrize(("stack", "container"), [
    ("dev", "cesar-dev-roach-init"), ("staging", "cesar-staging-roach-init"),
    ("production", "cesar-production-sql-bootstrap")])
def test_secure_clusters_log_authentication_and_audit_the_sensitive_tables(
        runs, stack: str, container: str) -> None:
    lines = _sql(runs[stack], container)
    for stmt in AUDIT_STATEMENTS:
        assert stmt in lines, stmt
    # In the application's database (the tables are looked up there).
    assert lines.index('USE "cesar";') < lines.index(AUDIT_STATEMENTS[2])


def test_an_insecure_dev_cluster_has_no_authentication_to_log() -> None:
    run = offline.run("dev", config=override("dev", "cesar:cluster", {"insecure": True}))
    text = "\n".join(_sql(run, "cesar-dev-roach-init"))
    assert "auth_log" not in text and "EXPERIMENTAL_AUDIT" not in text


def test_production_exports_the_session_and_audit_channels(runs) -> None:
    run = runs["production"]
    [export] = run.of_type(EXPORT)
    inputs = export.plain_inputs
    assert inputs["type"] == "GCP_CLOUD_LOGGING" and inputs["authPrincipal"]
    assert inputs["redact"] is True
    groups = {g["logName"]: g["channels"] for g in inputs["groups"]}
    assert groups == {"auth": ["SESSIONS"], "audit": ["SENSITIVE_ACCESS"]}
    assert inputs["clusterId"]
    assert not runs["staging"].of_type(EXPORT) and not runs["dev"].of_type(EXPORT)


@pytest.mark.parametrize(("value", "fragment"), [
    ("null", "cesar:logExport is not set for the production cloud stack"),
    (json.dumps({"type": "SYSLOG", "authPrincipal": "p"}), "is not one of AWS_CLOUDWATCH"),
    (json.dumps({"type": "AWS_CLOUDWATCH"}), "authPrincipal is empty"),
    (json.dumps({"type": "AWS_CLOUDWATCH", "authPrincipal": "x", "lvl": 1}), "unknown key(s) lvl"),
])
def test_production_without_a_valid_log_export_is_refused(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        offline.run("production", config={"cesar:logExport": value})
