"""The generated alertmanager.yml: valid for amtool, and critical/warning reach their receivers.

``amtool config routes test`` resolves a label set against the routing tree exactly as
Alertmanager does; ``--verify.receivers`` makes it exit non-zero on any other answer.
"""

from __future__ import annotations

import pytest
import yaml

from infra.monitoring import alertmanager_config as am
from tests.infra.helpers import STACKS


def path(rendered, stack: str) -> str:
    return str(rendered[stack] / "alertmanager" / "alertmanager.yml")


def doc(rendered, stack: str) -> dict:
    return yaml.safe_load((rendered[stack] / "alertmanager" / "alertmanager.yml").read_text())


@pytest.mark.parametrize("stack", STACKS)
def test_amtool_accepts_the_config(rendered, amtool, stack: str) -> None:
    result = amtool("check-config", path(rendered, stack))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout and "1 inhibit rules" in result.stdout


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=CockroachDBNodeNotLive", "cluster=c"], am.CRITICAL),
    (["severity=warning", "alertname=DatabaseSyncLag", "table=agents"], am.WARNING),
    (["alertname=SomethingWithoutSeverity"], am.WARNING),
])
def test_alerts_reach_the_intended_receiver(rendered, amtool, stack: str, labels: list[str],
                                            receiver: str) -> None:
    result = amtool("config", "routes", "test", f"--config.file={path(rendered, stack)}",
                    f"--verify.receivers={receiver}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_routes_test_fails_on_the_wrong_receiver(rendered, amtool) -> None:
    """The check above can fail: a critical alert does not resolve to the chat receiver."""
    result = amtool("config", "routes", "test", f"--config.file={path(rendered, 'dev')}",
                    f"--verify.receivers={am.WARNING}", "severity=critical")
    assert result.returncode != 0


def test_receivers_of_each_kind(rendered) -> None:
    dev = doc(rendered, "dev")
    assert dev["receivers"] == [{"name": am.CRITICAL}, {"name": am.WARNING}]  # UI only
    staging = {r["name"]: r for r in doc(rendered, "staging")["receivers"]}
    slack = staging[am.WARNING]["slack_configs"][0]
    assert slack["api_url_file"] == "/etc/alertmanager/secrets/cesar-warning"
    assert slack["channel"] == "#cesar-staging"
    production = {r["name"]: r for r in doc(rendered, "production")["receivers"]}
    hook = production[am.CRITICAL]["webhook_configs"][0]
    assert hook["url"] == "https://alerts.cesar.internal/hooks/pager"
    assert "http_config" not in hook  # no token rendered when the secret is not set


def test_a_webhook_token_is_read_from_a_file_never_inlined() -> None:
    spec = am.ReceiverSpec(am.CRITICAL, "webhook", "https://pager.example.com/x", has_secret=True)
    rendered = am.render(spec, am.ReceiverSpec(am.WARNING))
    hook = yaml.safe_load(rendered)["receivers"][0]["webhook_configs"][0]
    assert hook["http_config"]["authorization"] == {
        "type": "Bearer", "credentials_file": "/etc/alertmanager/secrets/cesar-critical"}


def test_critical_inhibits_warnings_of_the_same_cluster(rendered) -> None:
    config = doc(rendered, "dev")
    assert config["inhibit_rules"] == [{"source_matchers": ['severity="critical"'],
                                     "target_matchers": ['severity="warning"'],
                                     "equal": ["cluster"]}]
