"""Audit and authentication logs of the clusters (docs/security.md).

- Self-hosted clusters and Cloud Advanced: the bootstrap SQL turns on authentication logging
  (``server.auth_log.sql_connections.enabled``, ``server.auth_log.sql_sessions.enabled``) and
  the SQL audit of ``api_keys`` and ``audit_log`` (``cesar.cluster_bootstrap``). An insecure
  development cluster has no authentication to log and is left alone.
- Cloud clusters in production: a log export (``cesar:logExport``: ``type`` one of
  AWS_CLOUDWATCH, GCP_CLOUD_LOGGING, AZURE_LOG_ANALYTICS, ``authPrincipal``, optional
  ``logName`` and ``region``) sending the ``SESSIONS`` (authentication) and
  ``SENSITIVE_ACCESS`` (table audit) channels, redacted, to the operator's log sink. Required
  in production: a refusal names the setting.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumiverse_cockroach as cockroach

from cesar.errors import ConfigError
from infra.settings import StackSettings

EXPORT_TYPES = ("AWS_CLOUDWATCH", "GCP_CLOUD_LOGGING", "AZURE_LOG_ANALYTICS")
# The log channels the export groups: who tried to log in, and who touched the audited tables.
EXPORT_GROUPS = {"auth": ["SESSIONS"], "audit": ["SENSITIVE_ACCESS"]}


def audit_in_bootstrap(settings: StackSettings) -> bool:
    if settings.self_hosted is not None:
        return not settings.self_hosted.insecure
    # Standard (serverless) clusters do not let the tenant set these cluster settings.
    return settings.cloud is not None and settings.cloud.plan == "ADVANCED"


def export_spec(raw: Any, settings: StackSettings) -> dict[str, str] | None:
    """The checked ``cesar:logExport`` value (None when not set outside production)."""
    if raw is None:
        if settings.environment == "production":
            raise ConfigError(
                "cesar:logExport is not set for the production cloud stack: its authentication "
                "and audit logs must leave the cluster; set type (one of "
                f"{', '.join(EXPORT_TYPES)}) and authPrincipal (the AWS role ARN or GCP project)")
        return None
    if not isinstance(raw, dict):
        raise ConfigError("cesar:logExport must be a mapping with type and authPrincipal")
    unknown = sorted(set(raw) - {"type", "authPrincipal", "logName", "region"})
    if unknown:
        raise ConfigError(f"cesar:logExport has unknown key(s) {', '.join(unknown)}; known: "
                          "type, authPrincipal, logName, region")
    kind = str(raw.get("type", ""))
    if kind not in EXPORT_TYPES:
        raise ConfigError(f"cesar:logExport.type {kind!r} is not one of {', '.join(EXPORT_TYPES)}")
    principal = str(raw.get("authPrincipal", "")).strip()
    if not principal:
        raise ConfigError("cesar:logExport.authPrincipal is empty; set the AWS role ARN or GCP "
                          "project ID the cluster may write its logs to")
    spec = {"type": kind, "authPrincipal": principal,
            "logName": str(raw.get("logName", f"cesar-{settings.environment}"))}
    if raw.get("region"):
        spec["region"] = str(raw["region"])
    return spec


def log_export(settings: StackSettings, config: pulumi.Config,
               cluster: Any) -> cockroach.LogExportConfig | None:
    """The Cloud cluster's log export (production requires it)."""
    spec = export_spec(config.get_object("logExport"), settings)
    if spec is None:
        return None
    return cockroach.LogExportConfig(
        settings.names.resource("log-export"),
        cluster_id=cluster.cluster.id,
        type=spec["type"], auth_principal=spec["authPrincipal"], log_name=spec["logName"],
        region=spec.get("region"), redact=True,
        groups=[cockroach.LogExportConfigGroupArgs(log_name=name, channels=channels,
                                                   redact=True)
                for name, channels in EXPORT_GROUPS.items()],
        opts=pulumi.ResourceOptions(parent=cluster, depends_on=[cluster.cluster]))
