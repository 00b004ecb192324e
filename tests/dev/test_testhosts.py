"""The test-host harness's own decisions, without booting anything (no root needed)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cesar.dev import testhosts
from cesar.errors import ConfigError


def test_missing_requirements_name_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(testhosts.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(testhosts, "have_tool", lambda tool: tool not in ("debootstrap", "ssh"))
    monkeypatch.setattr(testhosts, "tls_bindir", lambda: None)
    missing = testhosts.missing_requirements()
    assert missing == [
        "root (systemd-nspawn and network namespaces need it)",
        "debootstrap (apt-get install debootstrap)",
        "ssh (apt-get install openssh-client)",
        "a PostgreSQL built with SSL (apt-get install postgresql)",
    ]
    with pytest.raises(ConfigError, match="test hosts need root"):
        testhosts.check_requirements()


def _addresses(*cidrs: str) -> str:
    return json.dumps([{"ifname": f"if{i}", "addr_info": [
        {"local": c.split("/")[0], "prefixlen": int(c.split("/")[1])}]}
        for i, c in enumerate(cidrs)])


def test_subnet_is_the_first_unused_24_of_10_77() -> None:
    listing = _addresses("127.0.0.1/8", "192.0.2.2/24", "10.77.0.1/24", "10.77.1.9/24")
    assert testhosts.pick_subnet(listing) == ipaddress.ip_network("10.77.2.0/24")


def test_a_wider_network_on_the_machine_is_avoided_entirely() -> None:
    assert testhosts.pick_subnet(_addresses("10.77.0.5/23")) == ipaddress.ip_network("10.77.2.0/24")


def test_count_is_bounded() -> None:
    with pytest.raises(ConfigError, match="between 1 and 20"):
        testhosts.up(0)


def test_a_pid_that_is_not_our_nspawn_is_never_signalled(tmp_path) -> None:
    """pids are reused: teardown checks the process is still the nspawn of that host."""
    import os

    host = testhosts.Host(name="h1", netns="n", veth="v", address="10.77.0.2",
                          root=str(tmp_path / "h1"), pid=os.getpid())
    assert testhosts.is_our_nspawn(os.getpid(), host) is False
    assert testhosts.stop_nspawn(host) is False
