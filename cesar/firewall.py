"""The API hosts' firewall: which networks may reach the API port, as an nftables ruleset.

The ``cesar_firewall`` role renders :func:`ruleset` on the controller (its filter plugin calls
this module) and loads it with ``nft -f`` from a systemd unit of its own. The networks are
checked as the cluster's allowlist checks its entries (:mod:`cesar.allowlist`): in staging and
production the whole Internet (``0.0.0.0/0``, ``::/0``) and anything wider than a /24 (IPv6:
/48) are refused, and the list may not be empty; development accepts any network.

Only the API port is filtered; loopback always passes (the play's own health check, a local
proxy), and every other port is left to the host's own rules, so a wrong list can never cut off
SSH. The table is replaced atomically: ``nft -f`` applies the whole file as one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cesar import allowlist
from cesar.errors import ConfigError

TABLE = "cesar_firewall"
VARIABLE = "cesar_firewall_api_allowed_cidrs"


def networks(raw: Sequence[Mapping[str, Any] | str] | None,
             environment: str) -> list[allowlist.Entry]:
    """The checked networks (named ``{name, cidr}`` or bare CIDR strings)."""
    raw = list(raw or [])
    strict = environment in allowlist.STRICT_ENVIRONMENTS
    if strict and not raw:
        raise ConfigError(f"{VARIABLE} is empty in {environment}: nothing could reach the API; "
                          "list the load balancer's (and monitoring's) networks")
    try:
        return allowlist.parse(raw, allowlist.Policy.for_environment(environment))
    except ConfigError as exc:
        text = str(exc).replace("allowlist entry", f"{VARIABLE} entry").replace(
            "opens the cluster to", "opens the API to")
        raise ConfigError(text) from None


def ruleset(port: int, entries: Sequence[allowlist.Entry]) -> str:
    """The nftables file: admit ``port`` from ``entries`` (and loopback), refuse it otherwise."""
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"cesar_firewall_api_port {port} is not a TCP port")
    v4 = [e for e in entries if e.network.version == 4]
    v6 = [e for e in entries if e.network.version == 6]

    def element_set(name: str, kind: str, items: Sequence[allowlist.Entry]) -> list[str]:
        lines = [f"  set {name} {{", f"    type {kind}", "    flags interval"]
        if items:
            lines.append("    elements = { " + ", ".join(e.cidr for e in items) + " }")
        return [*lines, "  }"]

    lines = [
        "#!/usr/sbin/nft -f",
        "# Written by the cesar_firewall role (cesar.firewall); edits are overwritten.",
        "# Allowed: " + (", ".join(f"{e.name}={e.cidr}" for e in entries) or "loopback only"),
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        *element_set("api_allowed_v4", "ipv4_addr", v4),
        *element_set("api_allowed_v6", "ipv6_addr", v6),
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        '    iifname "lo" accept',
        f"    tcp dport {int(port)} ip saddr @api_allowed_v4 accept",
        f"    tcp dport {int(port)} ip6 saddr @api_allowed_v6 accept",
        f"    tcp dport {int(port)} counter reject with tcp reset",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render(raw: Sequence[Mapping[str, Any] | str] | None, environment: str, port: int) -> str:
    return ruleset(port, networks(raw, environment))
