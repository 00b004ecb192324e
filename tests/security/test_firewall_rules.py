"""cesar.firewall: the API hosts' nftables ruleset and the networks it accepts. The ruleset is
checked by the real `nft -c` (Debian's nftables); the packets are the host tier's test
(tests/hosts/test_firewall.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cesar import firewall
from cesar.errors import ConfigError
from tests.helpers import require


@pytest.mark.parametrize(("cidrs", "environment", "fragment"), [
    (["0.0.0.0/0"], "staging", "opens the API to the whole Internet"),
    ([{"name": "anyone", "cidr": "::/0"}], "production", "opens the API to the whole Internet"),
    (["10.0.0.0/8"], "production", "wider than the limit /24"),
    ([], "staging", "cesar_firewall_api_allowed_cidrs is empty in staging"),
    (["10.0.0.5/24"], "development", "did you mean 10.0.0.0/24?"),
])
def test_bad_networks_are_refused_with_one_line(cidrs, environment: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        firewall.render(cidrs, environment, 8000)
    message = str(raised.value)
    assert fragment in message and "\n" not in message
    assert "cesar_firewall_api_allowed_cidrs" in message


def test_development_may_be_open() -> None:
    assert "0.0.0.0/0" in firewall.render(["0.0.0.0/0"], "development", 8000)


def test_the_ruleset_admits_only_the_listed_networks_on_the_api_port(tmp_path: Path) -> None:
    text = firewall.render(["203.0.113.16/28", {"name": "mon", "cidr": "2001:db8::/48"}],
                           "production", 8000)
    assert "elements = { 203.0.113.16/28 }" in text and "elements = { 2001:db8::/48 }" in text
    assert "tcp dport 8000 counter reject with tcp reset" in text
    assert 'iifname "lo" accept' in text and "policy accept" in text
    nft = shutil.which("nft") or "/usr/sbin/nft"
    require(Path(nft).exists(), "nft: apt-get install nftables")
    path = tmp_path / "cesar-firewall.nft"
    for rules in (text, firewall.render(["10.1.2.0/24"], "staging", 8443)):
        path.write_text(rules)
        check = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a TCP port"):
        firewall.render(["10.1.2.0/24"], "staging", 70000)
