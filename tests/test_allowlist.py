"""cesar.allowlist: the widest-prefix policy, its refusals and its two renderings."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cesar import allowlist
from cesar.errors import ConfigError

STRICT = allowlist.Policy.for_environment("production")
LOOSE = allowlist.Policy.for_environment("development")


def test_entries_keep_their_order_names_and_flags() -> None:
    entries = allowlist.parse([
        {"name": "api-hosts", "cidr": "203.0.113.16/28"},
        "198.51.100.7/32",
        {"name": "operators", "cidr": "198.51.100.64/26", "sql": True, "ui": True},
    ], STRICT)
    assert [e.as_dict() for e in entries] == [
        {"name": "api-hosts", "cidr": "203.0.113.16/28", "sql": True, "ui": False},
        {"name": "net-198-51-100-7-32", "cidr": "198.51.100.7/32", "sql": True, "ui": False},
        {"name": "operators", "cidr": "198.51.100.64/26", "sql": True, "ui": True},
    ]


@pytest.mark.parametrize("environment", ["staging", "production"])
@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_the_whole_internet_is_refused_outside_development(environment: str, cidr: str) -> None:
    policy = allowlist.Policy.for_environment(environment)
    with pytest.raises(ConfigError, match=r"'anywhere' .* whole Internet"):
        allowlist.parse([{"name": "anywhere", "cidr": cidr}], policy)


def test_development_may_be_open() -> None:
    entries = allowlist.parse([{"name": "anywhere", "cidr": "0.0.0.0/0"}], LOOSE)
    assert entries[0].network.prefixlen == 0


def test_an_entry_wider_than_the_limit_is_refused_naming_it() -> None:
    policy = allowlist.Policy.for_environment("staging", widest_prefix_v4=24)
    allowlist.parse([{"name": "ok", "cidr": "10.1.2.0/24"}], policy)
    with pytest.raises(ConfigError) as caught:
        allowlist.parse([{"name": "ok", "cidr": "10.1.2.0/24"},
                         {"name": "office-wide", "cidr": "10.1.0.0/16"}], policy)
    message = str(caught.value)
    assert "'office-wide'" in message and "10.1.0.0/16" in message and "/24" in message
    assert "65536 addresses" in message


def test_the_limit_is_configurable_per_family() -> None:
    policy = allowlist.Policy.for_environment("production", widest_prefix_v4=16,
                                              widest_prefix_v6=32)
    allowlist.parse(["10.1.0.0/16", "2001:db8::/32"], policy)
    with pytest.raises(ConfigError, match="/32"):
        allowlist.parse(["2001:db8::/31"], policy)


@pytest.mark.parametrize("limit", [0, 33, -1])
def test_a_nonsense_limit_is_refused(limit: int) -> None:
    with pytest.raises(ConfigError, match="allowlistWidestPrefix"):
        allowlist.Policy.for_environment("production", widest_prefix_v4=limit)


@pytest.mark.parametrize(("item", "fragment"), [
    ({"name": "typo", "cidr": "10.0.0.300/32"}, "not a network"),
    ({"name": "hostbits", "cidr": "10.0.0.5/24"}, "did you mean 10.0.0.0/24"),
    ({"name": "nothing", "cidr": "10.0.0.0/24", "sql": False}, "neither sql nor ui"),
    ({"name": "Bad Name", "cidr": "10.0.0.0/24"}, "name 'Bad Name' is not valid"),
    ({"name": "flag", "cidr": "10.0.0.0/24", "sql": "yes"}, "true or false"),
    ({"name": "nocidr"}, "has no cidr"),
])
def test_malformed_entries_are_refused_with_the_fix(item: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        allowlist.parse([item], LOOSE)


def test_duplicates_are_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        allowlist.parse([{"name": "a", "cidr": "10.0.0.0/24"},
                         {"name": "a", "cidr": "10.0.1.0/24"}], LOOSE)
    with pytest.raises(ConfigError, match="duplicates 'a'"):
        allowlist.parse([{"name": "a", "cidr": "10.0.0.0/24"},
                         {"name": "b", "cidr": "10.0.0.0/24"}], LOOSE)


def test_not_a_list_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a list"):
        allowlist.parse("10.0.0.0/24", LOOSE)  # type: ignore[arg-type]


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32),
       st.integers(min_value=1, max_value=32))
def test_strict_policy_accepts_exactly_what_is_narrow_enough(address, prefix, limit) -> None:
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    policy = allowlist.Policy.for_environment("production", widest_prefix_v4=limit)
    try:
        [entry] = allowlist.parse([{"name": "n", "cidr": str(network)}], policy)
    except ConfigError:
        assert network.prefixlen == 0 or network.prefixlen < limit
    else:
        assert entry.network.prefixlen >= limit and entry.network.prefixlen > 0


def test_hba_configuration_lists_sql_entries_then_rejects_everything_else() -> None:
    entries = allowlist.parse([
        {"name": "api-hosts", "cidr": "10.20.1.0/28"},
        {"name": "console-only", "cidr": "10.20.9.0/24", "sql": False, "ui": True},
        {"name": "v6", "cidr": "2001:db8::/48"},
    ], STRICT)
    gateway = ("docker-gateway", ipaddress.ip_network("172.28.0.1/32"))
    text = allowlist.hba_configuration(entries, extra_sql_networks=[gateway])
    rules = [line.split("#")[0].split() for line in text.splitlines()
             if line and not line.startswith("#")]
    assert rules == [
        ["host", "all", "all", "172.28.0.1/32", "cert-password"],
        ["host", "all", "all", "10.20.1.0/28", "cert-password"],
        ["host", "all", "all", "2001:db8::/48", "cert-password"],
        ["host", "all", "all", "all", "reject"],
    ]


def test_cloud_entries_split_address_and_mask_and_refuse_ipv6() -> None:
    entries = allowlist.parse([{"name": "ops", "cidr": "198.51.100.64/26", "ui": True}], STRICT)
    assert allowlist.cloud_entries(entries) == [
        {"name": "ops", "cidr_ip": "198.51.100.64", "cidr_mask": 26, "sql": True, "ui": True}]
    v6 = allowlist.parse([{"name": "v6", "cidr": "2001:db8::/48"}], STRICT)
    with pytest.raises(ConfigError, match="IPv4 networks only"):
        allowlist.cloud_entries(v6)
