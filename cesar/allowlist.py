"""Who may open a connection to the cluster: the IP allowlist, validated and rendered.

One list, from the Pulumi stack config, becomes either CockroachDB Cloud allow list entries or,
on a self-hosted cluster, the ``server.host_based_authentication.configuration`` setting. The
old advice "remove ``0.0.0.0/0`` if present" is enforced here: in staging and production an
entry for the whole Internet, or any entry wider than the configured limit, is refused with an
error naming the entry; development may be as open as it likes.

Pure logic, no Pulumi: the tests exercise it directly and a check can compare a live cluster's
setting with :func:`hba_configuration`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cesar.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Environments in which the width limit applies and the whole Internet is refused.
STRICT_ENVIRONMENTS = frozenset({"staging", "production"})
#: Default widest prefix accepted in strict environments: a /24 (256 addresses) for IPv4,
#: a /48 for IPv6. Stack config overrides them (``allowlistWidestPrefix``).
DEFAULT_WIDEST_PREFIX = {4: 24, 6: 48}

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Entry:
    """One allowlist entry: a named network and what it may reach."""

    name: str
    network: Network
    sql: bool = True
    ui: bool = False

    @property
    def cidr(self) -> str:
        return str(self.network)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cidr": self.cidr, "sql": self.sql, "ui": self.ui}


@dataclass(frozen=True)
class Policy:
    """How wide an entry may be. ``strict`` refuses the Internet and anything wider than the
    limits; otherwise every well-formed entry is accepted."""

    strict: bool
    widest_prefix_v4: int = DEFAULT_WIDEST_PREFIX[4]
    widest_prefix_v6: int = DEFAULT_WIDEST_PREFIX[6]
    ipv6_allowed: bool = True

    @classmethod
    def for_environment(
        cls,
        environment: str,
        *,
        widest_prefix_v4: int | None = None,
        widest_prefix_v6: int | None = None,
        ipv6_allowed: bool = True,
    ) -> Policy:
        v4 = DEFAULT_WIDEST_PREFIX[4] if widest_prefix_v4 is None else widest_prefix_v4
        v6 = DEFAULT_WIDEST_PREFIX[6] if widest_prefix_v6 is None else widest_prefix_v6
        if not 1 <= v4 <= 32:
            raise ConfigError(
                f"allowlistWidestPrefix={v4} is out of range; use 1..32 (e.g. 24 for a /24)")
        if not 1 <= v6 <= 128:
            raise ConfigError(
                f"allowlistWidestPrefixV6={v6} is out of range; use 1..128 (e.g. 48)")
        return cls(environment in STRICT_ENVIRONMENTS, v4, v6, ipv6_allowed)

    def widest(self, version: int) -> int:
        return self.widest_prefix_v4 if version == 4 else self.widest_prefix_v6


def parse(raw: Sequence[Mapping[str, Any] | str], policy: Policy) -> list[Entry]:
    """Validate the stack config's allowlist and return its entries, in order.

    Each item is either ``"203.0.113.0/28"`` or ``{name, cidr, sql, ui}``. Refused, with an
    error naming the entry and the fix: a malformed CIDR, host bits set (``10.0.0.5/24``), a
    duplicate name or network, an entry that allows nothing, and under a strict policy the whole
    Internet or anything wider than the limit.
    """
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ConfigError("cesar:allowlist must be a list of entries like "
                          "{name: office, cidr: 203.0.113.0/28}")
    entries: list[Entry] = []
    seen_names: dict[str, str] = {}
    seen_networks: dict[Network, str] = {}
    for index, item in enumerate(raw):
        entry = _entry(item, index)
        _check_width(entry, policy)
        if entry.name in seen_names:
            raise ConfigError(f"allowlist entry {entry.name!r} is listed twice; "
                              "give each entry its own name")
        if entry.network in seen_networks:
            raise ConfigError(f"allowlist entry {entry.name!r} ({entry.cidr}) duplicates "
                              f"{seen_networks[entry.network]!r}; remove one of them")
        seen_names[entry.name] = entry.cidr
        seen_networks[entry.network] = entry.name
        entries.append(entry)
    return entries


def _entry(item: Mapping[str, Any] | str, index: int) -> Entry:
    if isinstance(item, str):
        item = {"cidr": item}
    if not isinstance(item, Mapping) or "cidr" not in item:
        raise ConfigError(f"allowlist entry #{index + 1} ({item!r}) has no cidr; "
                          "write it as {name: office, cidr: 203.0.113.0/28}")
    cidr = str(item["cidr"]).strip()
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.ip_network(cidr, strict=False)}?"
        except ValueError:
            hint = "; write it as ADDRESS/PREFIX, e.g. 203.0.113.0/28"
        raise ConfigError(f"allowlist entry {item.get('name', cidr)!r}: {cidr!r} is not a "
                          f"network ({exc}){hint}") from None
    name = str(item.get("name") or default_name(network))
    if not _NAME.match(name):
        raise ConfigError(f"allowlist entry name {name!r} is not valid; use lowercase letters, "
                          "digits and '-' (at most 63 characters)")
    sql, ui = item.get("sql", True), item.get("ui", False)
    if not isinstance(sql, bool) or not isinstance(ui, bool):
        raise ConfigError(f"allowlist entry {name!r}: sql and ui must be true or false")
    if not (sql or ui):
        raise ConfigError(f"allowlist entry {name!r} ({cidr}) allows neither sql nor ui; "
                          "remove it or set sql: true")
    return Entry(name, network, sql, ui)


def _check_width(entry: Entry, policy: Policy) -> None:
    network = entry.network
    if network.version == 6 and not policy.ipv6_allowed:
        raise ConfigError(f"allowlist entry {entry.name!r} ({entry.cidr}) is IPv6, which this "
                          "cluster's allow list does not accept; list the IPv4 networks instead")
    if not policy.strict:
        return
    if network.prefixlen == 0:
        raise ConfigError(f"allowlist entry {entry.name!r} ({entry.cidr}) opens the cluster to "
                          "the whole Internet and is refused outside development; list the "
                          "networks of the API hosts and operators instead")
    widest = policy.widest(network.version)
    if network.prefixlen < widest:
        raise ConfigError(f"allowlist entry {entry.name!r} ({entry.cidr}) is wider than the "
                          f"limit /{widest} ({network.num_addresses} addresses); split it into "
                          f"narrower entries or raise cesar:allowlistWidestPrefix deliberately")


def default_name(network: Network) -> str:
    """A stable name for an unnamed entry: ``net-203-0-113-0-28``."""
    address = str(network.network_address).replace(".", "-").replace(":", "-")
    return re.sub(r"-+", "-", f"net-{address}-{network.prefixlen}").strip("-")[:63]


# ----------------------------------------------------------------- rendering
def hba_configuration(
    entries: Iterable[Entry], *, extra_sql_networks: Iterable[tuple[str, Network]] = (),
    method: str = "cert-password",
) -> str:
    """The value of CockroachDB's ``server.host_based_authentication.configuration``.

    One ``host all all CIDR METHOD`` line per entry that allows SQL (and per extra network,
    e.g. the Docker gateway through which loopback-published ports arrive), then a final
    ``reject`` so that every other address is refused. CockroachDB always prepends its own
    mandatory rule for ``root`` (certificate or password, from anywhere), which no setting can
    remove: root's client certificate is therefore kept secret.
    """
    if method not in {"cert-password", "cert-scram-sha-256", "password", "scram-sha-256"}:
        raise ConfigError(f"HBA method {method!r} is not one this project uses")
    lines = ["# TYPE DATABASE USER ADDRESS METHOD   (generated by cesar.allowlist; do not edit)"]
    for name, network in extra_sql_networks:
        lines.append(f"host all all {network} {method} # {name}")
    for entry in entries:
        if entry.sql:
            lines.append(f"host all all {entry.network} {method} # {entry.name}")
    lines.append("host all all all reject")
    return "\n".join(lines) + "\n"


def cloud_entries(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Arguments for CockroachDB Cloud allow list entries (IPv4 only, address and mask apart)."""
    out = []
    for entry in entries:
        if entry.network.version != 4:
            raise ConfigError(f"allowlist entry {entry.name!r} ({entry.cidr}) is IPv6; "
                              "CockroachDB Cloud allow lists take IPv4 networks only")
        out.append({
            "name": entry.name, "cidr_ip": str(entry.network.network_address),
            "cidr_mask": entry.network.prefixlen, "sql": entry.sql, "ui": entry.ui,
        })
    return out
