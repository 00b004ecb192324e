"""infra.settings: the stack config, typed and checked; every refusal names the key and the fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cesar.errors import ConfigError
from infra import settings

STAGING: dict[str, Any] = {
    "environment": "staging",
    "flavour": "self-hosted",
    "cluster": {"nodes": 3, "bindAddress": "10.20.0.10"},
    "allowlist": [{"name": "api-hosts", "cidr": "10.20.1.0/28"}],
    "monitoring": {"bindAddress": "10.20.0.10", "apiTargets": ["10.20.1.4:8000"]},
}
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "flavour": "cloud",
    "regions": ["us-east1", "europe-west1"],
    "cloud": {"plan": "ADVANCED", "nodesPerRegion": 3},
    "allowlist": [{"name": "api-hosts", "cidr": "203.0.113.16/28"}],
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key].update(value)
        else:
            values[key] = value
    return values


def refused(values: dict[str, Any], stack: str = "staging") -> str:
    with pytest.raises(ConfigError) as caught:
        settings.from_values(values, stack=stack)
    return str(caught.value)


def test_a_valid_staging_stack() -> None:
    spec = settings.from_values(STAGING, stack="staging")
    assert spec.self_hosted is not None and spec.cloud is None
    assert (spec.self_hosted.nodes, spec.self_hosted.bind_address) == (3, "10.20.0.10")
    assert spec.self_hosted.gateway == "172.28.0.1"
    assert not spec.self_hosted.loopback_only
    assert spec.cluster_name == "cesar-staging" and spec.database == "cesar"
    assert spec.node_count == 3 and spec.active_login == "cesar_app_a"


def test_a_valid_production_stack_counts_nodes_over_regions() -> None:
    spec = settings.from_values(PRODUCTION, stack="production")
    assert spec.cloud is not None and spec.node_count == 6
    serverless = with_(PRODUCTION, cloud={"plan": "STANDARD"})
    assert settings.from_values(serverless, stack="production").node_count == 0


def test_an_insecure_cluster_is_refused_outside_development() -> None:
    message = refused(with_(STAGING, cluster={"insecure": True}))
    assert "cesar:cluster.insecure" in message and "outside development" in message
    dev = with_(STAGING, environment="development", allowlist=[],
                cluster={"insecure": True, "bindAddress": "127.0.0.1"},
                monitoring={"bindAddress": "127.0.0.1"})
    assert settings.from_values(dev, stack="dev").self_hosted.insecure  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["cluster", "monitoring"])
def test_publishing_on_every_interface_is_refused_outside_development(key: str) -> None:
    message = refused(with_(STAGING, **{key: {"bindAddress": "0.0.0.0"}}))
    assert f"cesar:{key}.bindAddress=0.0.0.0" in message and "private address" in message


def test_a_wide_allowlist_entry_is_refused_in_production_and_staging() -> None:
    wide = [{"name": "everyone", "cidr": "0.0.0.0/0"}]
    assert "'everyone' (0.0.0.0/0)" in refused(with_(PRODUCTION, allowlist=wide), "production")
    assert "'everyone' (0.0.0.0/0)" in refused(with_(STAGING, allowlist=wide))
    office = [{"name": "office", "cidr": "10.0.0.0/16"}]
    assert "wider than the limit /24" in refused(with_(STAGING, allowlist=office))
    raised = with_(STAGING, allowlist=office, allowlistWidestPrefix=16)
    assert settings.from_values(raised, stack="staging").allowlist[0].cidr == "10.0.0.0/16"


def test_an_empty_allowlist_is_refused_outside_development() -> None:
    assert "no API host could connect" in refused(with_(STAGING, allowlist=[]))


def test_ipv6_entries_are_refused_on_cloud() -> None:
    v6 = [{"name": "v6", "cidr": "2001:db8::/48"}]
    assert "IPv6" in refused(with_(PRODUCTION, allowlist=v6), "production")


def test_an_unpinned_image_is_refused() -> None:
    message = refused(with_(STAGING, images={"cockroach": "cockroachdb/cockroach:latest"}))
    assert "cockroach image" in message and "not pinned" in message


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"environment": "prod"}, "cesar:environment='prod' is not valid"),
    ({"flavour": None}, "cesar:flavour is not set"),
    ({"colour": "blue"}, "unknown config key(s) cesar:colour"),
    ({"cluster": {"nodes": 2}}, "survives a node failure only with 3"),
    ({"cluster": {"nodez": 3}}, "cesar:cluster has unknown key(s) ['nodez']"),
    ({"cluster": {"subnet": "8.8.8.0/24"}}, "must be a private network"),
    ({"cluster": {"nodes": "three"}}, "is not a whole number"),
    ({"cloud": {"plan": "ADVANCED"}}, "cesar:cloud is set on a self-hosted stack"),
    ({"activeLogin": "root"}, "cesar:activeLogin='root'"),
    ({"regions": ["a", "b", "c", "d"]}, "cannot cover 4 regions"),
    ({"monitoring": {"apiTargets": ["api-host"]}}, "is not HOST:PORT"),
    ({"monitoring": {"critical": {"kind": "slack"}}}, "channel is required"),
    ({"monitoring": {"critical": {"kind": "webhook", "url": "http://pager.example.com/x"}}},
     "plain http to a public host"),
    ({"monitoring": {"warning": {"kind": "email"}}}, "cesar:monitoring.warning.kind='email'"),
])
def test_refusals_name_the_key(changes: dict[str, Any], fragment: str) -> None:
    values = with_(STAGING, **changes)
    values = {k: v for k, v in values.items() if v is not None}
    assert fragment in refused(values)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"regions": []}, "needs at least one region"),
    ({"cloud": {"adminUser": "cesar_app_a"}}, "collides with the application's roles"),
    ({"cloud": {"provider": "OVH"}}, "cesar:cloud.provider='OVH'"),
    ({"cluster": {"nodes": 3}}, "cesar:cluster describes a self-hosted cluster"),
])
def test_cloud_refusals(changes: dict[str, Any], fragment: str) -> None:
    assert fragment in refused(with_(PRODUCTION, **changes), "production")


def test_required_secrets_are_named_with_the_command_that_sets_them() -> None:
    spec = settings.from_values(with_(PRODUCTION, monitoring={
        "critical": {"kind": "webhook", "url": "https://pager.example.com/hook"},
        "warning": {"kind": "slack", "channel": "#ops"}}), stack="production")
    asked: list[str] = []
    settings.check_secrets(spec, lambda key: asked.append(key) or True)
    assert asked == ["cloudMetricsApiKey", "warningReceiverSecret"]  # a webhook token is optional
    with pytest.raises(ConfigError) as caught:
        settings.check_secrets(spec, lambda key: key != "warningReceiverSecret")
    assert ("pulumi config set --secret cesar:warningReceiverSecret VALUE --stack production"
            in str(caught.value))


def test_urls_use_the_public_host() -> None:
    spec = settings.from_values(with_(STAGING, monitoring={"publicHost": "mon.internal"}),
                                stack="staging")
    assert spec.monitoring.url(spec.monitoring.grafana_port) == "http://mon.internal:3000"
