"""Fixtures of the Pulumi program's tests: the program run under Pulumi's mocks for every stack
file, the monitoring files each stack generates written to disk, and the real promtool/amtool.

No Pulumi CLI, Docker engine or cloud is involved (none exists on these machines); promtool and
amtool are Debian's (``prometheus``, ``prometheus-alertmanager``), required in CI.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cesar.dev import tls
from infra import offline
from infra.monitoring import files as monitoring_files
from tests.infra.helpers import STACKS, settings_of, tool


@pytest.fixture(scope="session")
def promtool() -> Callable[..., subprocess.CompletedProcess[str]]:
    exe = tool("promtool", "prometheus")

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=120)

    return run


@pytest.fixture(scope="session")
def amtool() -> Callable[..., subprocess.CompletedProcess[str]]:
    exe = tool("amtool", "prometheus-alertmanager")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture(scope="session")
def runs() -> dict[str, offline.OfflineRun]:
    """The program run under mocks once per stack file (each run takes well under a second)."""
    return {stack: offline.run(stack) for stack in STACKS}


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each stack's monitoring bundle written to disk, with a real CA certificate and stand-in
    secret files where the containers would have them, so promtool can check the whole config."""
    out = {}
    for stack in STACKS:
        spec = settings_of(stack)
        targets = monitoring_files.placeholder_cloud_targets(spec) \
            if spec.flavour == "cloud" else None
        root = tmp_path_factory.mktemp(f"monitoring-{stack}")
        monitoring_files.write(monitoring_files.build(spec, cloud_targets=targets), root)
        certs = root / "prometheus" / "certs"
        tls.ensure_server_certificates(certs)
        secrets = root / "prometheus" / "secrets"
        secrets.mkdir()
        (secrets / "cockroach-cloud-api-key").write_text("stand-in\n")
        (secrets / "cesar-api-metrics-token").write_text("stand-in\n")
        out[stack] = root
    return out
