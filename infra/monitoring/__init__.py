"""The monitoring part of the Pulumi program: Prometheus, Alertmanager and Grafana.

``infra.monitoring`` was one module (now ``component``); its names still import from here. They
load on first use, so the pure generators beside it (``rules``, ``files``...) do not pull in
Pulumi's Docker provider.
"""

from __future__ import annotations

import importlib
from typing import Any

_COMPONENT = ("Monitoring", "GRAFANA_ADMIN_USER", "GRAFANA_PASSWORD_FILE", "GRAFANA_UID",
              "PROMETHEUS_UID", "prometheus_command", "alertmanager_command", "grafana_env")


def __getattr__(name: str) -> Any:
    if name in _COMPONENT:
        return getattr(importlib.import_module("infra.monitoring.component"), name)
    raise AttributeError(f"module 'infra.monitoring' has no attribute {name!r}")
