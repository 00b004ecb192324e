"""The stack's configuration, read once, typed and checked before any resource exists.

Every refusal the program makes happens here, synchronously, with a message naming the config
key and the fix: an unpinned image, an insecure cluster outside development, a published port
on every interface outside development, an allowlist entry too wide for staging or production.

:func:`from_values` is pure (a mapping of ``cesar:*`` config values in, settings out), so the
tests exercise every rule without Pulumi; :func:`load` reads the mapping from ``pulumi.Config``.
Secrets are not part of the mapping: the program reads them as ``Output`` secrets and only asks
here whether the required ones are present (:func:`check_secrets`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cesar import cockroach
from cesar.allowlist import Entry, Policy
from cesar.allowlist import parse as parse_allowlist
from cesar.credentials import APP_ROLE, LOGINS
from cesar.errors import ConfigError
from infra.images import Images
from infra.naming import Names

Environment = Literal["development", "staging", "production"]
Flavour = Literal["self-hosted", "cloud"]
ENVIRONMENTS: tuple[str, ...] = ("development", "staging", "production")
FLAVOURS: tuple[str, ...] = ("self-hosted", "cloud")
RECEIVER_KINDS = ("none", "webhook", "slack")

# Config keys read by `load` (namespace `cesar`). Secrets are listed apart: never in stack files.
KEYS = ("environment", "flavour", "clusterName", "database", "regions", "allowlist",
        "allowlistWidestPrefix", "allowlistWidestPrefixV6", "cluster", "cloud", "images",
        "monitoring", "activeLogin", "sslRootCert", "backups", "logExport")
SECRET_KEYS = ("cesarAppAPassword", "cesarAppBPassword", "grafanaAdminPassword",
               "cloudMetricsApiKey", "criticalReceiverSecret", "warningReceiverSecret",
               "cockroachLicense", "backupBucketUri")
LICENSE_KEY = "cockroachLicense"
LICENSE_DOC = "https://www.cockroachlabs.com/docs/stable/licensing-faqs"


def password_key(login: str) -> str:
    """The secret config key that overrides a login's generated password (set by rotation)."""
    return {"cesar_app_a": "cesarAppAPassword", "cesar_app_b": "cesarAppBPassword"}[login]


@dataclass(frozen=True)
class SelfHosted:
    """A secure CockroachDB cluster in Docker containers (dev and any self-hosted stack)."""

    nodes: int = 3
    insecure: bool = False
    bind_address: str = "127.0.0.1"
    sql_port: int = 26257   # published port of node 1; node i publishes sql_port + i - 1
    http_port: int = 8080   # the same for the DB Console
    subnet: str = "172.28.0.0/24"
    protect_volumes: bool = True
    docker_host: str | None = None
    # Fractions of the memory the node's container sees (the Docker host's, without a limit).
    # Every self-hosted stack runs all its nodes on one Docker engine, so the default splits
    # CockroachDB's rule "--cache plus --max-sql-memory at most 75% of the memory" over them:
    # .125 each for three nodes (see memory_share).
    cache: str = ".125"
    max_sql_memory: str = ".125"

    @property
    def gateway(self) -> str:
        """The private network's gateway: loopback-published ports arrive from it."""
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.bind_address).is_loopback


@dataclass(frozen=True)
class Cloud:
    """A CockroachDB Cloud cluster through the pulumiverse_cockroach provider."""

    plan: Literal["ADVANCED", "STANDARD"] = "ADVANCED"
    provider: Literal["GCP", "AWS", "AZURE"] = "GCP"
    version: str = cockroach.PINNED_SERIES  # the one pin (cesar/cockroach.py)
    nodes_per_region: int = 3
    storage_gib: int = 35
    num_virtual_cpus: int = 4
    provisioned_virtual_cpus: int = 2
    delete_protection: bool = True
    admin_user: str = "cesar_admin"


@dataclass(frozen=True)
class Receiver:
    """Where Alertmanager sends one severity. Its secret (a Slack webhook URL, or a generic
    webhook's bearer token) is the stack secret ``cesar:<severity>ReceiverSecret``."""

    kind: Literal["none", "webhook", "slack"] = "none"
    url: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class Monitoring:
    bind_address: str = "127.0.0.1"
    public_host: str | None = None
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    grafana_port: int = 3000
    api_targets: tuple[str, ...] = ("host.docker.internal:8000",)
    retention: str = "15d"
    docker_host: str | None = None
    critical: Receiver = field(default_factory=Receiver)
    warning: Receiver = field(default_factory=Receiver)

    @property
    def host(self) -> str:
        return self.public_host or self.bind_address

    def url(self, port: int) -> str:
        host = self.host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{port}"


@dataclass(frozen=True)
class StackSettings:
    stack: str
    environment: Environment
    flavour: Flavour
    cluster_name: str
    database: str
    regions: tuple[str, ...]
    allowlist: tuple[Entry, ...]
    images: Images
    monitoring: Monitoring
    self_hosted: SelfHosted | None = None
    cloud: Cloud | None = None
    active_login: str = LOGINS[0]
    ssl_root_cert: str | None = None
    app_role: str = APP_ROLE
    logins: tuple[str, ...] = LOGINS

    @property
    def names(self) -> Names:
        return Names(self.stack)

    @property
    def node_count(self) -> int:
        if self.self_hosted is not None:
            return self.self_hosted.nodes
        assert self.cloud is not None
        if self.cloud.plan == "STANDARD":
            return 0  # serverless: no nodes to count
        return self.cloud.nodes_per_region * max(1, len(self.regions))


# ------------------------------------------------------------------ parsing
def from_values(values: Mapping[str, Any], *, stack: str) -> StackSettings:
    """Build and check the settings from the ``cesar:*`` config values (no secrets)."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join('cesar:' + k for k in unknown)}; "
                          f"known: {', '.join(KEYS)}")
    names = Names(stack)
    environment = _choice(values, "environment", ENVIRONMENTS, None)
    flavour = _choice(values, "flavour", FLAVOURS, None)
    dev = environment == "development"
    regions = tuple(str(r) for r in _list(values, "regions"))
    database = str(values.get("database", "cesar"))
    images = Images.from_config(_mapping(values, "images"))
    self_hosted = cloud = None
    if flavour == "self-hosted":
        self_hosted = _self_hosted(_mapping(values, "cluster"), dev=dev, regions=regions)
        if values.get("cloud"):
            raise ConfigError("cesar:cloud is set on a self-hosted stack; remove it or set "
                              "cesar:flavour: cloud")
    else:
        cloud = _cloud(_mapping(values, "cloud"), regions=regions)
        if values.get("cluster"):
            raise ConfigError("cesar:cluster describes a self-hosted cluster; remove it from this "
                              "cloud stack (cloud settings go under cesar:cloud)")
    policy = Policy.for_environment(
        environment,
        widest_prefix_v4=_int_or_none(values, "allowlistWidestPrefix"),
        widest_prefix_v6=_int_or_none(values, "allowlistWidestPrefixV6"),
        ipv6_allowed=flavour == "self-hosted",
    )
    allowlist = tuple(parse_allowlist(_list(values, "allowlist"), policy))
    if not dev and not any(e.sql for e in allowlist):
        raise ConfigError(f"cesar:allowlist is empty in {environment}: no API host could connect; "
                          "list the API hosts' and operators' networks")
    active = str(values.get("activeLogin", LOGINS[0]))
    if active not in LOGINS:
        raise ConfigError(f"cesar:activeLogin={active!r} is not one of {', '.join(LOGINS)}")
    return StackSettings(
        stack=stack, environment=environment, flavour=flavour,  # type: ignore[arg-type]
        cluster_name=str(values.get("clusterName", names.prefix)),
        database=database, regions=regions, allowlist=allowlist, images=images,
        monitoring=_monitoring(_mapping(values, "monitoring"), dev=dev),
        self_hosted=self_hosted, cloud=cloud, active_login=active,
        ssl_root_cert=values.get("sslRootCert"),
    )


def check_secrets(settings: StackSettings, has_secret: Callable[[str], bool]) -> None:
    """Refuse a stack whose required secrets are missing, naming the command that sets each."""
    required: list[str] = []
    if settings.flavour == "cloud":
        required.append("cloudMetricsApiKey")
    if (needs_license(settings) and settings.environment != "development"
            and not has_secret(LICENSE_KEY)):
        raise ConfigError(
            f"the secret cesar:{LICENSE_KEY} is not set for stack {settings.stack!r}: a "
            "self-hosted CockroachDB cluster of several nodes without a license is throttled "
            "7 days after it starts; get an Enterprise (Free) license "
            f"({LICENSE_DOC}) and run `pulumi config set --secret cesar:{LICENSE_KEY} "
            f"LICENSE --stack {settings.stack}`")
    if settings.monitoring.critical.kind == "slack":
        required.append("criticalReceiverSecret")
    if settings.monitoring.warning.kind == "slack":
        required.append("warningReceiverSecret")
    for key in required:
        if not has_secret(key):
            raise ConfigError(f"the secret cesar:{key} is not set for stack {settings.stack!r}; "
                              f"run `pulumi config set --secret cesar:{key} VALUE --stack "
                              f"{settings.stack}`")


def needs_license(settings: StackSettings) -> bool:
    """A self-hosted secure cluster of several nodes needs a license key (CockroachDB v24.3 and
    later: 7 days of grace after it starts, then throttled; a single node needs none; Cloud
    clusters carry their own)."""
    spec = settings.self_hosted
    return spec is not None and spec.nodes > 1


def license_warning(settings: StackSettings, has_license: bool) -> str | None:
    """What ``pulumi up`` warns in development when the license is missing (elsewhere the
    program refuses, see :func:`check_secrets`)."""
    if has_license or not needs_license(settings):
        return None
    return (f"cesar:{LICENSE_KEY} is not set: this {settings.self_hosted.nodes}-node "  # type: ignore[union-attr]
            "CockroachDB cluster runs without a license and is throttled 7 days after it starts "
            f"(fine for a short-lived dev cluster); set one with `pulumi config set --secret "
            f"cesar:{LICENSE_KEY} LICENSE --stack {settings.stack}` ({LICENSE_DOC})")


def _self_hosted(raw: Mapping[str, Any], *, dev: bool, regions: Sequence[str]) -> SelfHosted:
    allowed = {"nodes", "insecure", "bindAddress", "sqlPort", "httpPort", "subnet",
               "protectVolumes", "dockerHost", "cache", "maxSqlMemory"}
    _no_unknown("cluster", raw, allowed)
    nodes = _int(raw, "nodes", 3, "cluster")
    spec = SelfHosted(
        nodes=nodes, insecure=_bool(raw, "insecure", False, "cluster"),
        bind_address=str(raw.get("bindAddress", "127.0.0.1")),
        sql_port=_int(raw, "sqlPort", 26257, "cluster"),
        http_port=_int(raw, "httpPort", 8080, "cluster"),
        subnet=str(raw.get("subnet", "172.28.0.0/24")),
        protect_volumes=_bool(raw, "protectVolumes", True, "cluster"),
        docker_host=raw.get("dockerHost"),
        cache=str(raw.get("cache", memory_share(nodes))),
        max_sql_memory=str(raw.get("maxSqlMemory", memory_share(nodes))),
    )
    _check_memory(spec)
    if spec.insecure and not dev:
        raise ConfigError("cesar:cluster.insecure is true outside development: an insecure "
                          "cluster has no TLS and no passwords; remove it (certificates are "
                          "generated by the program)")
    _check_bind("cluster.bindAddress", spec.bind_address, dev)
    if not 1 <= spec.nodes <= 9:
        raise ConfigError(f"cesar:cluster.nodes={spec.nodes}: use 1 to 9 nodes")
    if not dev and spec.nodes < 3:
        raise ConfigError(f"cesar:cluster.nodes={spec.nodes} outside development: a cluster "
                          "survives a node failure only with 3 or more nodes")
    if regions and spec.nodes < len(regions):
        raise ConfigError(f"{spec.nodes} node(s) cannot cover {len(regions)} regions; add nodes "
                          "or remove regions")
    try:
        subnet = ipaddress.ip_network(spec.subnet)
    except ValueError:
        raise ConfigError(f"cesar:cluster.subnet={spec.subnet!r} is not a network; "
                          "e.g. 172.28.0.0/24") from None
    if not subnet.is_private or subnet.num_addresses < 16:
        raise ConfigError(f"cesar:cluster.subnet={spec.subnet} must be a private network of at "
                          "least 16 addresses")
    for key, port in (("sqlPort", spec.sql_port), ("httpPort", spec.http_port)):
        if not 1 <= port <= 65535 - spec.nodes:
            raise ConfigError(f"cesar:cluster.{key}={port} is not a usable port")
    return spec


#: CockroachDB's production checklist: "--cache" plus "--max-sql-memory" on a machine at most
#: 75% of its memory (https://www.cockroachlabs.com/docs/stable/recommended-production-settings
#: #cache-and-sql-memory-size), the rest for the Go runtime, Pebble's own buffers and the OS.
MEMORY_BUDGET = 0.75


def memory_share(nodes: int) -> str:
    """The default ``--cache`` and ``--max-sql-memory`` of each of ``nodes`` nodes sharing one
    host: together at most :data:`MEMORY_BUDGET` of it, rounded down to a thousandth."""
    share = int(MEMORY_BUDGET / (2 * max(nodes, 1)) * 1000) / 1000
    return f"{share:.3f}".rstrip("0") if share < 1 else "0.375"


def _fraction(value: str) -> float | None:
    """A ``--cache``-style value as a fraction of memory (``.25``, ``25%``); None for an
    absolute size (``2GiB``), which cannot be checked without knowing the host."""
    text = value.strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None
    return share if 0 < share < 1 else None


def _check_memory(spec: SelfHosted) -> None:
    shares = [_fraction(spec.cache), _fraction(spec.max_sql_memory)]
    for key, value, share in (("cache", spec.cache, shares[0]),
                              ("maxSqlMemory", spec.max_sql_memory, shares[1])):
        if share is None and not _is_size(value):
            raise ConfigError(f"cesar:cluster.{key}={value!r} is neither a fraction of memory "
                              "(.125, 12.5%) nor a size (2GiB)")
    if None in shares:
        return
    total = spec.nodes * (shares[0] + shares[1])  # type: ignore[operator]
    if total > MEMORY_BUDGET + 1e-9:
        raise ConfigError(
            f"cesar:cluster cache={spec.cache} + maxSqlMemory={spec.max_sql_memory} on "
            f"{spec.nodes} nodes sharing one host claims {total:.0%} of its memory; CockroachDB "
            f"asks for at most {MEMORY_BUDGET:.0%} in total: use {memory_share(spec.nodes)} each "
            "(the default) or less")


def _is_size(value: str) -> bool:
    import re

    return re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?", value.strip(),
                        re.IGNORECASE) is not None


def _cloud(raw: Mapping[str, Any], *, regions: Sequence[str]) -> Cloud:
    allowed = {"plan", "provider", "version", "nodesPerRegion", "storageGib", "numVirtualCpus",
               "provisionedVirtualCpus", "deleteProtection", "adminUser"}
    _no_unknown("cloud", raw, allowed)
    if not regions:
        raise ConfigError("cesar:regions is empty: a cloud cluster needs at least one region "
                          "(the first is the primary), e.g. [us-east1]")
    spec = Cloud(
        plan=_choice(raw, "plan", ("ADVANCED", "STANDARD"), "ADVANCED", "cloud"),  # type: ignore[arg-type]
        provider=_choice(raw, "provider", ("GCP", "AWS", "AZURE"), "GCP", "cloud"),  # type: ignore[arg-type]
        version=_cloud_version(raw.get("version")),
        nodes_per_region=_int(raw, "nodesPerRegion", 3, "cloud"),
        storage_gib=_int(raw, "storageGib", 35, "cloud"),
        num_virtual_cpus=_int(raw, "numVirtualCpus", 4, "cloud"),
        provisioned_virtual_cpus=_int(raw, "provisionedVirtualCpus", 2, "cloud"),
        delete_protection=_bool(raw, "deleteProtection", True, "cloud"),
        admin_user=str(raw.get("adminUser", "cesar_admin")),
    )
    if spec.plan == "STANDARD" and raw.get("version") is not None:
        raise ConfigError("cesar:cloud.version applies to ADVANCED clusters only: a STANDARD "
                          "cluster keeps Cloud's automatic major upgrades (docs/cockroachdb.md); "
                          "remove cesar:cloud.version")
    if spec.plan == "ADVANCED" and spec.nodes_per_region < 1:
        raise ConfigError("cesar:cloud.nodesPerRegion must be at least 1")
    if spec.admin_user in LOGINS or spec.admin_user == APP_ROLE:
        raise ConfigError(f"cesar:cloud.adminUser={spec.admin_user!r} collides with the "
                          "application's roles; choose another name")
    return spec


def _cloud_version(value: object) -> str:
    """The Cloud cluster's major version: the pinned series unless a stack overrides it with
    one at least as new (an older one would lack what the sync and the runner rely on)."""
    if value is None:
        return cockroach.PINNED_SERIES
    text = str(value).strip()
    try:
        version = cockroach.Version.parse(text)
    except ValueError:
        raise ConfigError(f"cesar:cloud.version={text!r} is not a CockroachDB major version; "
                          f"use e.g. {cockroach.PINNED_SERIES} (or remove it: the default is "
                          "the pinned release)") from None
    if not version.at_least(cockroach.MINIMUM):
        raise ConfigError(f"cesar:cloud.version={text} is older than {cockroach.MINIMUM.series}, "
                          "the oldest release this project supports (docs/cockroachdb.md); "
                          f"remove it to use the pinned {cockroach.PINNED_SERIES}")
    return version.series


def _monitoring(raw: Mapping[str, Any], *, dev: bool) -> Monitoring:
    allowed = {"bindAddress", "publicHost", "prometheusPort", "alertmanagerPort", "grafanaPort",
               "apiTargets", "retention", "dockerHost", "critical", "warning"}
    _no_unknown("monitoring", raw, allowed)
    spec = Monitoring(
        bind_address=str(raw.get("bindAddress", "127.0.0.1")),
        public_host=raw.get("publicHost"),
        prometheus_port=_int(raw, "prometheusPort", 9090, "monitoring"),
        alertmanager_port=_int(raw, "alertmanagerPort", 9093, "monitoring"),
        grafana_port=_int(raw, "grafanaPort", 3000, "monitoring"),
        api_targets=tuple(str(t) for t in raw.get("apiTargets", Monitoring.api_targets)),
        retention=str(raw.get("retention", "15d")),
        docker_host=raw.get("dockerHost"),
        critical=_receiver(raw.get("critical"), "critical"),
        warning=_receiver(raw.get("warning"), "warning"),
    )
    _check_bind("monitoring.bindAddress", spec.bind_address, dev)
    for target in spec.api_targets:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"cesar:monitoring.apiTargets entry {target!r} is not HOST:PORT")
    return spec


def _receiver(raw: Any, severity: str) -> Receiver:
    if raw is None:
        return Receiver()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"cesar:monitoring.{severity} must be an object like {{kind: webhook}}")
    _no_unknown(f"monitoring.{severity}", raw, {"kind", "url", "channel"})
    kind = _choice(raw, "kind", RECEIVER_KINDS, "none", f"monitoring.{severity}")
    url, channel = raw.get("url"), raw.get("channel")
    if kind == "slack" and not channel:
        raise ConfigError(f"cesar:monitoring.{severity}.channel is required for a slack receiver")
    if kind == "webhook" and not str(url or "").startswith(("https://", "http://")):
        raise ConfigError(f"cesar:monitoring.{severity}.url must be the webhook's http(s) URL")
    if kind == "webhook" and str(url).startswith("http://") and not _is_private_url(str(url)):
        raise ConfigError(f"cesar:monitoring.{severity}.url={url} is plain http to a public "
                          "host; use https")
    return Receiver(kind, url, channel)  # type: ignore[arg-type]


def _is_private_url(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_private
    except ValueError:
        return host == "localhost" or host.endswith((".internal", ".local"))


def _check_bind(key: str, address: str, dev: bool) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"cesar:{key}={address!r} is not an IP address") from None
    if ip.is_unspecified and not dev:
        raise ConfigError(f"cesar:{key}={address} publishes on every interface outside "
                          "development; bind to the host's private address instead")


# ------------------------------------------------------------------ helpers
def _choice(raw: Mapping[str, Any], key: str, allowed: Sequence[str], default: str | None,
            where: str | None = None) -> str:
    name = f"cesar:{where}.{key}" if where else f"cesar:{key}"
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"{name} is not set; use one of {', '.join(allowed)}")
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid; use one of {', '.join(allowed)}")
    return str(value)


def _mapping(values: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = values.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"cesar:{key} must be an object")
    return value


def _list(values: Mapping[str, Any], key: str) -> list[Any]:
    value = values.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"cesar:{key} must be a list")
    return value


def _int(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"cesar:{where}.{key}={value!r} is not a whole number")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"cesar:{where}.{key}={value!r} is not a whole number") from None


def _int_or_none(values: Mapping[str, Any], key: str) -> int | None:
    if values.get(key) is None:
        return None
    try:
        return int(values[key])
    except (TypeError, ValueError):
        raise ConfigError(f"cesar:{key}={values[key]!r} is not a whole number") from None


def _bool(raw: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"cesar:{where}.{key}={value!r} must be true or false")
    return value


def _no_unknown(where: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"cesar:{where} has unknown key(s) {unknown}; known: {sorted(allowed)}")


# ------------------------------------------------------------------ pulumi
def load() -> StackSettings:
    """Read the settings of the running stack from ``pulumi.Config('cesar')``."""
    import json

    import pulumi

    config = pulumi.Config("cesar")
    values: dict[str, Any] = {}
    for key in KEYS:
        raw = config.get(key)
        if raw is None:
            continue
        try:
            values[key] = json.loads(raw) if raw[:1] in ("[", "{") else _scalar(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"cesar:{key} is not valid JSON/YAML ({exc.msg})") from None
    settings = from_values(values, stack=pulumi.get_stack())
    check_secrets(settings, lambda key: config.get_secret(key) is not None)
    return settings


def _scalar(raw: str) -> Any:
    if raw in ("true", "false"):
        return raw == "true"
    if raw.isdigit():
        return int(raw)
    return raw
