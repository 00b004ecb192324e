"""``cesar infra ...`` (``invoke infra.*``): run the Pulumi program for the configured environment.

The stack follows ``ENVIRONMENT`` (development -> ``dev``, staging -> ``staging``, production ->
``production``) unless ``--stack`` names another. ``up``, ``preview`` and ``outputs`` call the
real ``pulumi`` CLI and refuse, in one line with exit code 2, when it or the Docker engine a
self-hosted stack needs is missing. ``plan`` and ``render`` need neither: they run the program
under Pulumi's mocks (``infra.offline``) and write the generated monitoring files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from cesar.config import load_settings
from cesar.console import emit_json
from cesar.errors import ConfigError, OperationFailed

STACKS = {"development": "dev", "staging": "staging", "production": "production"}
INSTALL_PULUMI = ("install it with `curl -fsSL https://get.pulumi.com | sh` "
                  "(https://www.pulumi.com/docs/install/), then `pulumi login`")
INSTALL_DOCKER = ("install Docker Engine (https://docs.docker.com/engine/install/) and start it, "
                  "or set DOCKER_HOST to a reachable engine")
DOCKER_SOCKET = Path("/var/run/docker.sock")

Which = Callable[[str], str | None]


def stack_for(environment: str) -> str:
    try:
        return STACKS[environment]
    except KeyError:
        raise ConfigError(f"ENVIRONMENT={environment!r} has no Pulumi stack; use one of "
                          f"{', '.join(STACKS)}") from None


def project_root(start: Path | None = None) -> Path:
    """The directory holding ``Pulumi.yaml`` (the current one or a parent)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").exists():
            return candidate
    raise ConfigError(f"no Pulumi.yaml in {here} or its parents; run from the repository checkout")


def stack_file_config(root: Path, stack: str) -> Mapping[str, Any]:
    """The stack file's ``config`` mapping (plain YAML; secrets stay encrypted and unread)."""
    import yaml

    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
        raise ConfigError(f"no stack file {path.name}; known stacks: {', '.join(known)}")
    return (yaml.safe_load(path.read_text()) or {}).get("config") or {}


def preflight(stack: str, root: Path, *, which: Which | None = None,
              environ: Mapping[str, str] | None = None,
              docker_socket: Path = DOCKER_SOCKET) -> str:
    """Return the ``pulumi`` executable, or raise ConfigError naming what to install."""
    environ = os.environ if environ is None else environ
    pulumi = (which or shutil.which)("pulumi")
    if pulumi is None:
        raise ConfigError("the Pulumi CLI is not installed (no `pulumi` on PATH): "
                          + INSTALL_PULUMI)
    config = stack_file_config(root, stack)
    self_hosted = config.get("cesar:flavour") == "self-hosted"
    remote = (config.get("cesar:cluster") or {}).get("dockerHost")
    if self_hosted and not remote and not environ.get("DOCKER_HOST") \
            and not docker_socket.exists():
        raise ConfigError(f"stack {stack} runs its cluster in the local Docker engine, and none "
                          f"is reachable (no {docker_socket}, no DOCKER_HOST): {INSTALL_DOCKER}")
    if config.get("cesar:flavour") == "cloud" and not environ.get("COCKROACH_API_KEY"):
        click.echo(f"note: COCKROACH_API_KEY is not set; stack {stack} needs a CockroachDB Cloud "
                   "API key there or in `pulumi config set --secret cockroach:apikey`", err=True)
    return pulumi


def pulumi_args(action: str, stack: str, root: Path, *, yes: bool = False, diff: bool = False,
                show_secrets: bool = False) -> list[str]:
    """The ``pulumi`` arguments for one action (without the executable)."""
    base = ["--stack", stack, "--cwd", str(root)]
    if action == "up":
        return ["up", *base, *(["--yes"] if yes else []), *(["--diff"] if diff else [])]
    if action == "preview":
        return ["preview", *base, *(["--diff"] if diff else [])]
    if action == "outputs":
        return ["stack", "output", "--json", *base,
                *(["--show-secrets"] if show_secrets else [])]
    raise ValueError(f"unknown action {action!r}")


def run_pulumi(executable: str, args: Sequence[str]) -> None:
    """Run pulumi with the terminal attached; a non-zero exit becomes OperationFailed."""
    code = subprocess.run([executable, *args], check=False).returncode
    if code:
        raise OperationFailed(f"`pulumi {' '.join(args[:1])}` exited with code {code}; its "
                              "output above says why")


def write_ca(outputs: Mapping[str, Any], root: Path) -> Path | None:
    """Write the cluster's CA (``ca_cert_pem``) where the connection URL expects it
    (``ssl_root_cert``), when that is a path inside this checkout (the dev stack)."""
    pem, target = outputs.get("ca_cert_pem"), outputs.get("ssl_root_cert")
    if not pem or not target or Path(target).is_absolute():
        return None
    path = root / target
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pem)
    path.chmod(0o644)
    return path


# ------------------------------------------------------------------ the `cesar infra` group
def _stack(option: str | None) -> str:
    return option or stack_for(load_settings().environment)


stack_option = click.option("--stack", default=None,
                            help="Pulumi stack (default: from ENVIRONMENT: dev, staging, "
                                 "production).")


@click.group("infra")
def infra() -> None:
    """Provision clusters, allowlists and monitoring with Pulumi (docs/infra.md)."""


@infra.command()
@stack_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (pulumi up --yes).")
@click.option("--diff", is_flag=True, help="Show a detailed diff of every change.")
def up(stack: str | None, yes: bool, diff: bool) -> None:
    """`pulumi up` for the environment's stack, then write the dev CA where clients find it."""
    root, name = project_root(), _stack(stack)
    pulumi = preflight(name, root)
    click.echo(f"infra: stack {name} (ENVIRONMENT={load_settings().environment})")
    run_pulumi(pulumi, pulumi_args("up", name, root, yes=yes, diff=diff))
    out = subprocess.run([pulumi, *pulumi_args("outputs", name, root)], capture_output=True,
                         text=True, check=False)
    if out.returncode == 0:
        written = write_ca(json.loads(out.stdout or "{}"), root)
        if written:
            click.echo(f"infra: wrote the cluster CA to {written.relative_to(root)}")


@infra.command()
@stack_option
@click.option("--diff", is_flag=True, help="Show a detailed diff of every change.")
def preview(stack: str | None, diff: bool) -> None:
    """`pulumi preview` for the environment's stack: what `up` would change."""
    root, name = project_root(), _stack(stack)
    pulumi = preflight(name, root)
    click.echo(f"infra: stack {name} (ENVIRONMENT={load_settings().environment})")
    run_pulumi(pulumi, pulumi_args("preview", name, root, diff=diff))


@infra.command()
@stack_option
@click.option("--show-secrets", is_flag=True, help="Print secret outputs in clear.")
def outputs(stack: str | None, show_secrets: bool) -> None:
    """The stack's outputs as JSON (`pulumi stack output --json`)."""
    root, name = project_root(), _stack(stack)
    pulumi = preflight(name, root)
    run_pulumi(pulumi, pulumi_args("outputs", name, root, show_secrets=show_secrets))


def _offline() -> Any:
    try:
        from infra import offline
    except ImportError:
        raise ConfigError("this command needs the repository checkout (the infra/ package); "
                          "run it from there with `uv run`") from None
    return offline


@infra.command()
@stack_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan(stack: str | None, as_json: bool) -> None:
    """What the program would create, run under Pulumi's mocks (no CLI, engine or cloud)."""
    offline = _offline()
    project_root()
    name = _stack(stack)
    run = offline.run(name)
    resources = sorted(({"type": r.type, "name": r.name} for r in run.resources),
                       key=lambda r: (r["name"], r["type"]))
    if as_json:
        emit_json({"stack": name, "resources": resources, "outputs": sorted(run.outputs),
                   "secret_outputs": sorted(run.secret_outputs)})
        return
    click.echo(f"stack {name}: {len(resources)} resources (Pulumi mocks; nothing was created)")
    width = max(len(r["name"]) for r in resources)
    for r in resources:
        click.echo(f"  {r['name']:<{width}}  {r['type']}")
    shown = ", ".join(f"{k}{' (secret)' if k in run.secret_outputs else ''}"
                      for k in run.outputs)
    click.echo(f"outputs: {shown}")


@infra.command()
@stack_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Directory to write prometheus/, alertmanager/ and grafana/ into.")
def render(stack: str | None, out_dir: Path) -> None:
    """Write the monitoring configuration a stack generates (for reading or promtool)."""
    _offline()
    from infra import offline, settings
    from infra.monitoring import files as monitoring_files

    root = project_root()
    name = _stack(stack)
    values = {k.split(":", 1)[1]: offline.decode_value(v)
              for k, v in offline.stack_config(name, root).items() if k.startswith("cesar:")}
    spec = settings.from_values(values, stack=name)
    targets = monitoring_files.placeholder_cloud_targets(spec) if spec.flavour == "cloud" else None
    bundle = monitoring_files.build(spec, cloud_targets=targets)
    for path in monitoring_files.write(bundle, out_dir):
        click.echo(str(path))
    if targets:
        click.echo("note: the Cloud scrape paths use a placeholder cluster id; `pulumi up` "
                   "writes the metrics export's real targets")

