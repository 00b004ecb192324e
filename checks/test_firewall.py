"""The host firewall (cesar_firewall) and the failed-login counter (cesar_log_metrics)."""

from __future__ import annotations

import ipaddress
import shlex

from conftest import run_json

from cesar import firewall

PROBE = ("import sys, urllib.request\n"
         "print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n")


def _elements(entries: list) -> set:
    out = set()
    for item in entries:
        if isinstance(item, dict) and "prefix" in item:
            out.add(ipaddress.ip_network(f"{item['prefix']['addr']}/{item['prefix']['len']}"))
        elif isinstance(item, str):
            out.add(ipaddress.ip_network(item))
        else:
            raise AssertionError(f"unexpected set element {item!r}")
    return out


def test_firewall_unit_is_active_and_enabled(host, api_host) -> None:
    service = host.service(f"{api_host.cesar_firewall_service_name}.service")
    assert service.is_enabled
    assert host.run(f"systemctl is-active {api_host.cesar_firewall_service_name}").stdout.strip() \
        == "active"


def test_ruleset_admits_exactly_the_configured_networks(host, api_host) -> None:
    wanted = firewall.networks(api_host.cesar_firewall_api_allowed_cidrs,
                               api_host.cesar_firewall_environment)
    listed = run_json(host, f"nft -j list table inet {firewall.TABLE}")["nftables"]
    sets = {o["set"]["name"]: _elements(o["set"].get("elem", [])) for o in listed if "set" in o}
    assert sets["api_allowed_v4"] | sets["api_allowed_v6"] == {e.network for e in wanted}
    rules = [o["rule"] for o in listed if "rule" in o]
    port = int(api_host.cesar_firewall_api_port)
    rejects = [r for r in rules if any("reject" in x for x in r["expr"])
               and any(x.get("match", {}).get("right") == port for x in r["expr"])]
    assert len(rejects) == 1, rules  # everything else on the API port is refused
    [chain] = [o["chain"] for o in listed if "chain" in o]
    assert (chain["hook"], chain["policy"]) == ("input", "accept")  # no other port touched


def test_mtail_serves_metrics_where_configured(host, api_host) -> None:
    assert host.service("mtail").is_running
    assert host.file("/etc/mtail/cesar_db_auth.mtail").exists
    address = api_host.cesar_log_metrics_address
    address = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    url = f"http://{address}:{api_host.cesar_log_metrics_port}/metrics"
    result = host.run(f"python3 -c {shlex.quote(PROBE)} {shlex.quote(url)}")
    assert result.rc == 0 and result.stdout.strip() == "200", result.stderr
