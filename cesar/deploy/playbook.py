"""``invoke deploy``: ``ansible-playbook site.yml`` for the configured environment.

The inventory follows ``ENVIRONMENT`` (``ansible/inventories/<environment>/hosts.yml``) unless one
is named (e.g. the file ``invoke testhosts.up`` printed). When the inventory holds Ansible Vault
files, the vault password comes from ``--vault-password-file``, else ``CESAR_VAULT_PASSWORD_FILE``
or ``ANSIBLE_VAULT_PASSWORD_FILE``, else a prompt. The wheelhouse the hosts install is built first
(``cesar.deploy.wheelhouse``) and handed to the play, so what is deployed is this checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from cesar.errors import ConfigError, OperationFailed

ANSIBLE_DIR = Path("ansible")
PLAYBOOK = "site.yml"
VAULT_HEADER = "$ANSIBLE_VAULT;"
_PASSWORD_IN_URL = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@")
_RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


@dataclass(frozen=True)
class Plan:
    """One ansible-playbook invocation, fully decided before anything runs."""

    argv: list[str]
    cwd: Path
    inventory: Path
    environment: str
    env: dict[str, str] = field(default_factory=dict)

    def display(self) -> str:
        """The command line, any password in a URL among the -e values masked."""
        return " ".join(_PASSWORD_IN_URL.sub(r"\1***@", arg) for arg in self.argv)


def inventory_for(environment: str, inventory: str | Path | None = None,
                  ansible_dir: Path = ANSIBLE_DIR) -> Path:
    """The inventory to deploy to: the one named, else the environment's."""
    if inventory:
        path = Path(inventory).expanduser().absolute()
        if not path.exists():
            raise ConfigError(f"inventory {path} does not exist")
        return path
    if environment == "development":
        raise ConfigError(
            "ENVIRONMENT=development has no inventory to deploy to; set ENVIRONMENT=staging or "
            "production, or pass --inventory (e.g. the file `invoke testhosts.up` printed)"
        )
    path = (ansible_dir / "inventories" / environment / "hosts.yml").absolute()
    if not path.exists():
        raise ConfigError(f"{path} is missing: ENVIRONMENT={environment} has no inventory")
    return path


def vault_files(inventory: Path) -> list[Path]:
    """The vault-encrypted files Ansible reads with this inventory (its group/host vars)."""
    root = inventory if inventory.is_dir() else inventory.parent
    found = []
    for sub in ("group_vars", "host_vars"):
        for path in sorted((root / sub).rglob("*")) if (root / sub).is_dir() else []:
            if path.is_file() and path.read_bytes()[:len(VAULT_HEADER)] == VAULT_HEADER.encode():
                found.append(path)
    return found


def vault_args(inventory: Path, password_file: str | None, environ: dict[str, str]) -> list[str]:
    """How ansible-playbook gets the vault password, if the inventory needs one."""
    if not vault_files(inventory):
        return []
    chosen = password_file or environ.get("CESAR_VAULT_PASSWORD_FILE")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise ConfigError(f"vault password file {path} does not exist; create it (mode 0600) "
                              "or leave it out to be prompted")
        return [f"--vault-password-file={path.absolute()}"]
    if environ.get("ANSIBLE_VAULT_PASSWORD_FILE"):
        return []  # ansible-playbook reads it itself
    return ["--ask-vault-pass"]


def plan(
    environment: str,
    *,
    inventory: str | Path | None = None,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    vault_password_file: str | None = None,
    wheelhouse: Path | None = None,
    extra_vars: Sequence[str] = (),
    ansible_dir: Path = ANSIBLE_DIR,
    environ: dict[str, str] | None = None,
) -> Plan:
    environ = dict(os.environ if environ is None else environ)
    ansible_dir = ansible_dir.absolute()
    if not (ansible_dir / PLAYBOOK).exists():
        raise ConfigError(f"{ansible_dir / PLAYBOOK} is missing; run from the repository root")
    inv = inventory_for(environment, inventory, ansible_dir)
    executable = _ansible_playbook()
    argv = [executable, "-i", str(inv), PLAYBOOK, *vault_args(inv, vault_password_file, environ)]
    if check:
        argv.append("--check")
    if diff or check:
        argv.append("--diff")
    if limit:
        argv.append(f"--limit={limit}")
    if tags:
        argv.append(f"--tags={tags}")
    if wheelhouse is not None:
        argv += ["-e", f"cesar_release_wheelhouse={wheelhouse.absolute()}"]
    for item in extra_vars:
        argv += ["-e", item]
    env = {"ANSIBLE_CONFIG": str(ansible_dir / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"}
    return Plan(argv=argv, cwd=ansible_dir, inventory=inv, environment=environment, env=env)


def run(plan_: Plan, echo: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Run the playbook; each output line goes to ``echo`` as it comes. Returns (rc, output)."""
    lines: list[str] = []
    proc = subprocess.Popen(
        plan_.argv, cwd=plan_.cwd, env={**os.environ, **plan_.env}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=sys.stdin if echo else None,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if echo:
                echo(line.rstrip("\n"))
    except BaseException:  # interrupted: do not leave ansible-playbook running on its own
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return proc.wait(), "".join(lines)


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP counts per host (ok, changed, failed, unreachable, ...)."""
    counts: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = _RECAP.match(line.strip()) if in_recap else None
        if match:
            counts[match["host"]] = {
                k: int(v) for k, v in (kv.split("=") for kv in match["counts"].split())
            }
    return counts


def changed_tasks(output: str) -> list[str]:
    """``TASK name -> host`` for every task that reported a change (for failure messages)."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK ["):line.rfind("]")]
        elif line.startswith("changed: ["):
            found.append(f"{task} -> {line[len('changed: ['):line.index(']')]}")
    return found


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if not found:
        raise ConfigError("ansible-playbook is not installed: run `uv sync` "
                          "(it is in the dev group)")
    return found


def require_success(rc: int, output: str) -> None:
    if rc:
        failed = [h for h, c in recap(output).items() if c.get("failed") or c.get("unreachable")]
        where = f" on {', '.join(failed)}" if failed else ""
        raise OperationFailed(f"ansible-playbook failed{where} (exit {rc}); see its output above")


# -------------------------------------------------------------------- command line
def _summary(output: str) -> str:
    counts = recap(output)
    return "; ".join(
        f"{host} ok={c.get('ok', 0)} changed={c.get('changed', 0)} failed={c.get('failed', 0)} "
        f"unreachable={c.get('unreachable', 0)}" for host, c in counts.items()
    )


@click.command("deploy")
@click.option("--check", is_flag=True,
              help="Ask the hosts what would change (ansible --check --diff); change nothing.")
@click.option("--diff", is_flag=True, help="Show the changes made to files.")
@click.option("--limit", default=None, help="Only these hosts or groups (ansible --limit).")
@click.option("--tags", default=None, help="Only the tasks with these tags.")
@click.option("--inventory", default=None, type=click.Path(dir_okay=False),
              help="An inventory instead of ENVIRONMENT's, e.g. the one `invoke testhosts.up` "
                   "printed.")
@click.option("--vault-password-file", default=None, type=click.Path(dir_okay=False),
              help="The vault password (default: CESAR_VAULT_PASSWORD_FILE, else a prompt).")
@click.option("--wheelhouse", "wheelhouse_dir", default="dist/wheelhouse", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the wheelhouse the hosts install is built.")
@click.option("--no-build", is_flag=True,
              help="Deploy the wheelhouse already there instead of building it from this checkout.")
@click.option("-e", "--extra-vars", multiple=True, help="More ansible-playbook -e values.")
@click.option("--dry-run", is_flag=True,
              help="Print the inventory, the release and the ansible-playbook command; "
                   "run nothing.")
def deploy_command(check: bool, diff: bool, limit: str | None, tags: str | None,
                   inventory: str | None, vault_password_file: str | None, wheelhouse_dir: Path,
                   no_build: bool, extra_vars: tuple[str, ...], dry_run: bool) -> None:
    """Deploy the API and the sync to ENVIRONMENT's hosts (ansible-playbook site.yml)."""
    from cesar.config import load_settings
    from cesar.deploy import wheelhouse

    settings = load_settings()
    password_file = vault_password_file or (
        str(settings.vault_password_file) if settings.vault_password_file else None)
    the_plan = plan(settings.environment, inventory=inventory, check=check, diff=diff,
                    limit=limit, tags=tags, vault_password_file=password_file,
                    wheelhouse=wheelhouse_dir, extra_vars=extra_vars)
    source = "--inventory" if inventory else f"ENVIRONMENT={settings.environment}"
    click.echo(f"inventory {the_plan.inventory} ({source})")
    if dry_run:
        built = wheelhouse.load(wheelhouse_dir).id if (wheelhouse_dir / "release.json").exists() \
            else "(not built yet)"
        click.echo(f"release {built} from {wheelhouse_dir}")
        click.echo(f"would run (in {the_plan.cwd}): {the_plan.display()}")
        return
    if no_build:
        release = wheelhouse.load(wheelhouse_dir)
    else:
        release = wheelhouse.build(wheelhouse_dir, progress=lambda m: click.echo(f"  {m}"))
    click.echo(f"deploying release {release.id} (cesar {release.version}): {the_plan.display()}")
    rc, output = run(the_plan, echo=click.echo)
    require_success(rc, output)
    verb = "checked" if check else "deployed"
    click.echo(f"{verb} release {release.id}: {_summary(output)}")
