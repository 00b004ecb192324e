"""Run the Pulumi program without an engine, a cloud or a Docker daemon.

Pulumi's own unit-testing mechanism (``pulumi.runtime.set_mocks``), with a stack file's config
supplied through ``PULUMI_CONFIG`` exactly as the CLI supplies it: every resource the program
would register is recorded with its inputs, and the stack outputs are resolved. The tests use
it for every stack file; ``invoke infra.plan`` prints what ``pulumi up`` would create.

Provider-computed values (certificate PEMs, image ids, a Cloud cluster's DNS names, generated
passwords) are stand-ins made here; nothing real is created, contacted or checked by a provider.
Secrets that a stack file cannot hold (``pulumi config set --secret``) are given as stand-ins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pulumi
import yaml

from cesar.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PROJECT = "cesar"

FAKE_PEM = {
    "key": "-----BEGIN PRIVATE KEY-----\nbW9jaw==\n-----END PRIVATE KEY-----\n",
    "cert": "-----BEGIN CERTIFICATE-----\nbW9jaw==\n-----END CERTIFICATE-----\n",
    "csr": "-----BEGIN CERTIFICATE REQUEST-----\nbW9jaw==\n-----END CERTIFICATE REQUEST-----\n",
}


@dataclass(frozen=True)
class Registered:
    """One resource the program registered: its type token, logical name and inputs (wire
    names, secrets still wrapped; see :func:`plain` and :func:`is_secret`)."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider: str | None = None
    urn: str = ""
    protect: bool = False
    dependencies: tuple[str, ...] = ()
    additional_secret_outputs: tuple[str, ...] = ()  # wire names

    @property
    def plain_inputs(self) -> dict[str, Any]:
        return plain(self.inputs)


@dataclass
class OfflineRun:
    stack: str
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    #: Secret values in play: generated passwords and keys, and the secret config given.
    secret_values: set[str] = field(default_factory=set)

    def of_type(self, token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == token]

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}")
        return found[0]


# --------------------------------------------------------------- secrets on the wire
def is_secret(value: Any) -> bool:
    from pulumi.runtime import rpc

    return rpc.is_rpc_secret(value)


def plain(value: Any) -> Any:
    """``value`` with every secret wrapper removed (recursively)."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --------------------------------------------------------------- mocks
def stand_in(name: str, n: int = 24) -> str:
    """The stable hex value the mocks give ``name`` (an id, a password): the same every run."""
    return hashlib.sha256(name.encode()).hexdigest()[:n]


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """The SDK's mock monitor, also noting what the mocks do not see: URN, protect, depends_on."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.options: dict[str, tuple[str, bool, tuple[str, ...], tuple[str, ...]]] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        response = super().RegisterResource(request)
        self.options[request.name] = (response.urn, bool(request.protect),
                                      tuple(request.dependencies),
                                      tuple(request.additionalSecretOutputs))
        return response


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every registration and answers with plausible provider outputs."""

    def __init__(self, exit_codes: Mapping[str, int] | None = None) -> None:
        self.registered: list[Registered] = []
        #: Every secret value the mocks made up (generated passwords, private keys).
        self.secret_values: set[str] = {FAKE_PEM["key"]}
        #: Exit codes of one-shot containers, by name (default: none recorded, as in a preview).
        self.exit_codes = dict(exit_codes or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.registered.append(Registered(args.typ, args.name, dict(args.inputs), args.provider))
        out = dict(args.inputs)
        token = args.typ
        if token == "tls:index/privateKey:PrivateKey":
            out.update(privateKeyPem=FAKE_PEM["key"], privateKeyPemPkcs8=FAKE_PEM["key"])
        elif token in ("tls:index/selfSignedCert:SelfSignedCert",
                       "tls:index/locallySignedCert:LocallySignedCert"):
            out["certPem"] = FAKE_PEM["cert"]
        elif token == "tls:index/certRequest:CertRequest":
            out["certRequestPem"] = FAKE_PEM["csr"]
        elif token == "random:index/randomPassword:RandomPassword":
            out["result"] = "Mk" + stand_in(args.name, int(args.inputs.get("length", 24)) - 2)
            self.secret_values.add(out["result"])
        elif token == "random:index/randomBytes:RandomBytes":
            raw = bytes.fromhex(stand_in(args.name, int(args.inputs.get("length", 16)) * 2))
            out.update(hex=raw.hex(), base64=base64.b64encode(raw).decode())
        elif token == "docker:index/container:Container" and args.name in self.exit_codes:
            out["exitCode"] = self.exit_codes[args.name]
        elif token == "docker:index/remoteImage:RemoteImage":
            out["imageId"] = "sha256:" + stand_in(str(args.inputs.get("name")), 64)
        elif token == "cockroach:index/cluster:Cluster":
            cluster_id = stand_in(args.name, 8) + "-0000-4000-8000-" + stand_in(args.name, 12)
            out["regions"] = [
                {**region, "sqlDns": f"{args.inputs['name']}-{region['name']}.mock.crdb.io",
                 "uiDns": f"admin-{args.inputs['name']}-{region['name']}.mock.crdb.io"}
                for region in plain(args.inputs.get("regions", []))
            ]
            out["state"] = "CREATED"
            return cluster_id, out
        elif token == "cockroach:index/metricExportPrometheusConfig:MetricExportPrometheusConfig":
            cluster_id = plain(args.inputs["clusterId"])
            regions = self._cluster_regions()
            out["targets"] = {r: (f"https://cockroachlabs.cloud/api/v1/clusters/{cluster_id}"
                                  f"/metricexport/prometheus/{r}/scrape") for r in regions}
            out["status"] = "ENABLED"
        return f"{args.name}-id", out

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:  # type: ignore[override]
        # A plain dict: the SDK's mock monitor iterates the failures of a tuple, even None.
        if args.token == "cockroach:index/getClusterCert:getClusterCert":
            return {"id": args.args.get("id"), "cert": FAKE_PEM["cert"]}
        return {}

    def _cluster_regions(self) -> list[str]:
        for r in self.registered:
            if r.type == "cockroach:index/cluster:Cluster":
                return [region["name"] for region in plain(r.inputs.get("regions", []))]
        return []


# --------------------------------------------------------------- stack config
def stack_file(stack: str, root: Path = REPO) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def stack_config(stack: str, root: Path = REPO) -> dict[str, str]:
    """The stack file's config as the CLI passes it in ``PULUMI_CONFIG``: ``ns:key`` -> string
    (objects and lists JSON-encoded). Encrypted values cannot be read here and are refused."""
    path = stack_file(stack, root)
    if not path.exists():
        raise ConfigError(f"no stack file {path.name}; stacks: "
                          + ", ".join(sorted(p.name[7:-5] for p in root.glob("Pulumi.*.yaml"))))
    doc = yaml.safe_load(path.read_text()) or {}
    config: dict[str, str] = {}
    for key, value in (doc.get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            raise ConfigError(f"{path.name}: {key} is an encrypted secret; the offline run takes "
                              "secrets as stand-ins instead (they never belong in stack files)")
        if isinstance(value, str):
            config[key] = value
        elif isinstance(value, bool):
            config[key] = "true" if value else "false"
        else:
            config[key] = json.dumps(value)
    return config


def required_secret_stand_ins(stack: str, root: Path = REPO) -> dict[str, str]:
    """Stand-ins for the secrets this stack needs (those ``check_secrets`` would ask for)."""
    from infra import settings as stack_settings

    values = {k.split(":", 1)[1]: decode_value(v) for k, v in stack_config(stack, root).items()
              if k.startswith("cesar:")}
    spec = stack_settings.from_values(values, stack=stack)
    needed: list[str] = []
    stack_settings.check_secrets(spec, lambda key: needed.append(key) or True)
    return {f"cesar:{key}": f"offline-stand-in-{key}" for key in needed}


def decode_value(raw: str) -> Any:
    """A config string as the program reads it (JSON objects/lists, booleans, integers)."""
    if raw[:1] in ("[", "{"):
        return json.loads(raw)
    if raw in ("true", "false"):
        return raw == "true"
    return int(raw) if raw.isdigit() else raw


@contextmanager
def _environment(config: Mapping[str, str], secret_keys: list[str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS")}
    os.environ["PULUMI_CONFIG"] = json.dumps(dict(config))
    os.environ["PULUMI_CONFIG_SECRET_KEYS"] = json.dumps(secret_keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------- running
def run(stack: str, *, root: Path = REPO, config: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None, preview: bool = False,
        exit_codes: Mapping[str, int] | None = None) -> OfflineRun:
    """Run the program for ``stack`` under mocks and return what it registered and exported.

    ``config`` replaces the stack file's values key by key (``cesar:...`` -> string, as the
    CLI passes them); ``secrets`` are secret config values (default: stand-ins for the
    secrets the stack requires); ``exit_codes`` are the exit codes the one-shot containers
    report. Refusals raise :class:`cesar.errors.ConfigError`.
    """
    from pulumi.runtime import config as runtime_config

    from infra.program import define_stack

    values = stack_config(stack, root)
    values.update(config or {})
    secret_values = dict(secrets) if secrets is not None else required_secret_stand_ins(stack, root)
    values.update(secret_values)

    mocks = RecordingMocks(exit_codes)
    monitor = RecordingMonitor(mocks)
    result = OfflineRun(stack)
    with _environment(values, sorted(secret_values)):
        runtime_config.set_all_config({}, [])  # nothing left over from a previous run
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=preview,
                                 monitor=monitor)

        @pulumi.runtime.test
        def program() -> pulumi.Output[Any]:
            exported = {k: pulumi.Output.from_input(v) for k, v in define_stack().items()}

            async def secretness() -> list[str]:
                return [k for k, o in exported.items() if await o.is_secret()]

            def keep(args: list[Any]) -> None:
                values_, secret_names = args
                result.outputs.update(dict(zip(exported, values_, strict=True)))
                result.secret_outputs.update(secret_names)

            return pulumi.Output.all(pulumi.Output.all(*exported.values()),
                                     pulumi.Output.from_input(secretness())).apply(keep)

        program()
    for r in mocks.registered:
        urn, protect, deps, secret = monitor.options.get(r.name, ("", False, (), ()))
        result.resources.append(replace(r, urn=urn, protect=protect, dependencies=deps,
                                        additional_secret_outputs=secret))
    result.secret_values = mocks.secret_values | set(secret_values.values())
    return result
