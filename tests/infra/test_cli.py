"""infra.cli (``cesar infra`` / ``invoke infra.*``): the stack from ENVIRONMENT, the
preflight that refuses in one line what a machine lacks, the pulumi command lines, and the
offline ``plan``/``render`` that need no Pulumi CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cesar.errors import ConfigError
from infra import cli as provisioning
from tests.helpers import REPO

FOUND = {"pulumi": "/opt/pulumi/bin/pulumi"}.get


@pytest.mark.parametrize(("environment", "stack"), [
    ("development", "dev"), ("staging", "staging"), ("production", "production")])
def test_the_stack_follows_the_environment(environment: str, stack: str) -> None:
    assert provisioning.stack_for(environment) == stack


def test_the_project_root_is_found_from_a_subdirectory() -> None:
    assert provisioning.project_root(REPO / "infra") == REPO
    with pytest.raises(ConfigError, match="no Pulumi.yaml"):
        provisioning.project_root(Path("/"))


def test_no_pulumi_cli_is_refused_naming_what_to_install() -> None:
    with pytest.raises(ConfigError) as caught:
        provisioning.preflight("dev", REPO, which=lambda name: None)
    assert "the Pulumi CLI is not installed" in str(caught.value)
    assert "https://get.pulumi.com" in str(caught.value)


def test_a_self_hosted_stack_needs_a_docker_engine(tmp_path: Path) -> None:
    missing = tmp_path / "docker.sock"
    with pytest.raises(ConfigError, match="install Docker Engine"):
        provisioning.preflight("dev", REPO, which=FOUND, environ={}, docker_socket=missing)
    assert provisioning.preflight("dev", REPO, which=FOUND, environ={"DOCKER_HOST": "tcp://h:2376"},
                                  docker_socket=missing) == "/opt/pulumi/bin/pulumi"
    # staging runs on its remote Docker host over SSH: no local engine needed.
    assert provisioning.preflight("staging", REPO, which=FOUND, environ={},
                                  docker_socket=missing) == "/opt/pulumi/bin/pulumi"


def test_an_unknown_stack_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no stack file Pulumi.qa.yaml; known stacks: dev, "
                                          "production, staging"):
        provisioning.preflight("qa", REPO, which=FOUND)


def test_the_pulumi_command_lines() -> None:
    root = Path("/repo")
    assert provisioning.pulumi_args("up", "dev", root, yes=True) == [
        "up", "--stack", "dev", "--cwd", "/repo", "--yes"]
    assert provisioning.pulumi_args("preview", "production", root, diff=True) == [
        "preview", "--stack", "production", "--cwd", "/repo", "--diff"]
    assert provisioning.pulumi_args("outputs", "staging", root, show_secrets=True) == [
        "stack", "output", "--json", "--stack", "staging", "--cwd", "/repo", "--show-secrets"]


def test_the_dev_ca_is_written_where_the_url_expects_it(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    written = provisioning.write_ca({"ca_cert_pem": pem, "ssl_root_cert": ".cesar/p/ca.crt"},
                                    tmp_path)
    assert written == tmp_path / ".cesar/p/ca.crt" and written.read_text() == pem
    assert provisioning.write_ca({"ca_cert_pem": pem, "ssl_root_cert": "/etc/cesar/ca.crt"},
                                 tmp_path) is None  # a host path: Ansible installs it there


def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("task", ["infra.up", "infra.preview"])
def test_invoke_infra_without_pulumi_fails_in_one_line_with_exit_2(task: str, tmp_path) -> None:
    result = invoke(task, env={"PATH": str(tmp_path), "ENVIRONMENT": "production"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "cesar: error: the Pulumi CLI is not installed (no `pulumi` on PATH): "
        + provisioning.INSTALL_PULUMI]


def test_invoke_infra_plan_runs_the_program_without_pulumi(tmp_path) -> None:
    result = invoke("infra.plan", "--json", env={"PATH": str(tmp_path),
                                                 "ENVIRONMENT": "staging"})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["stack"] == "staging"
    names = {r["name"] for r in plan["resources"]}
    assert {"cesar-staging-roach-1", "cesar-staging-prometheus", "cesar-staging-grafana"} <= names
    assert "connection_url" in plan["secret_outputs"]


def test_invoke_infra_render_writes_the_monitoring_files(tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("infra.render", "--stack", "production", "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "alertmanager/alertmanager.yml",
        "grafana/dashboards/cesar-overview.json",
        "grafana/provisioning/dashboards/cesar.yaml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "prometheus/prometheus.yml",
        "prometheus/rules/cesar.rules.yml",
        "prometheus/rules/cockroachdb.rules.yml",
        "prometheus/rules/dbauth.rules.yml",
    ]
    assert "placeholder cluster id" in result.stdout
