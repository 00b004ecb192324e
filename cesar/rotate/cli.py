"""``cesar rotate-password``: build the stores for the configured environment and rotate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from cesar import db, rotate
from cesar.config import Settings, load_settings
from cesar.errors import ConfigError
from cesar.rotate.stores import (
    AnsibleVaultStore,
    EmbeddedStore,
    EnvFileStore,
    PrimaryStore,
    PulumiStore,
    SecondaryStore,
)

ENV_FILE = Path(".env.cockroach")
REPO_ANSIBLE = Path("ansible")


def build(settings: Settings, *, skip: set[str], grace: float, max_attempts: int,
          progress=click.echo) -> rotate.Rotator:  # noqa: ANN001
    """The stores that apply to the configured environment (see docs/rotation.md)."""
    primary: PrimaryStore | None = None
    if settings.environment == "development" and not settings.cockroach_db_url:
        # Only development has an embedded stack; elsewhere its code is never loaded.
        from cesar.dev.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(settings.state_dir, bindir=settings.pg_bindir)
        if pg.load_state() is not None:
            primary = EmbeddedStore(pg)
    if primary is None:
        if settings.admin_db_url:  # the same TLS rule as every other URL a command opens
            db.require_tls(settings.admin_db_url, "CESAR_ADMIN_DB_URL", settings.environment)
        primary = EnvFileStore(ENV_FILE, settings.admin_db_url)
    secondaries: list[SecondaryStore] = []
    if settings.environment in ("staging", "production"):
        env = settings.environment
        if "ansible-vault" in skip:
            # The hosts read their credential from the vault only: leaving it out would switch
            # everything but them, and the retire would then lock them out.
            raise ConfigError(f"--skip-store ansible-vault is refused in {env}: the hosts' "
                              "credential lives in the Ansible Vault and the retire would lock "
                              "them out; set CESAR_VAULT_PASSWORD_FILE and run without it")
        vault = settings.vault_file or REPO_ANSIBLE / "inventories" / env / "group_vars" \
            / "all" / "vault.yml"
        if settings.vault_password_file is None:
            raise ConfigError("CESAR_VAULT_PASSWORD_FILE is not set: the hosts' credential "
                              "lives in Ansible Vault; point it at the vault password file")
        secondaries.append(AnsibleVaultStore(
            vault.absolute(), settings.vault_password_file.absolute(),
            inventory=(REPO_ANSIBLE / "inventories" / env / "hosts.yml").absolute(),
            environment=env))
        if "pulumi" not in skip:
            secondaries.append(PulumiStore(settings.pulumi_stack or env, Path.cwd()))
    return rotate.Rotator(primary, secondaries, state_dir=settings.state_dir,
                          environment=settings.environment, grace_seconds=grace,
                          max_attempts=max_attempts, progress=progress)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.command("rotate-password")
@click.option("--grace", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds the previous login stays valid after the switch.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait out the grace period and retire now, or leave the retire to a later run.")
@click.option("--retire-now", is_flag=True, help="End the grace period of a finished rotation.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Attempts (each with a new password) before giving up.")
@click.option("--skip-store", "skip", multiple=True, type=click.Choice(["ansible-vault", "pulumi"]),
              help="Leave a secondary store out (pulumi; ansible-vault is refused in staging "
              "and production, where the hosts read it).")
@click.option("--status", "show_status", is_flag=True, help="Show the active login, the last "
              "rotation and any pending one; change nothing.")
@click.option("--dry-run", is_flag=True, help="Print what a run would do; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def rotate_password(grace: float, wait: bool, retire_now: bool, max_attempts: int,
                    skip: tuple[str, ...], show_status: bool, dry_run: bool,
                    as_json: bool) -> None:
    """Rotate the application's database password with no downtime."""
    from cesar.console import emit_json

    quiet = as_json or show_status or dry_run
    rotator = build(load_settings(), skip=set(skip), grace=grace, max_attempts=max_attempts,
                    progress=(lambda _: None) if quiet else click.echo)
    if show_status:
        info = rotator.status()
        if as_json:
            emit_json(info)
            return
        click.echo(f"active login     {info['active_login']} ({info['store']} store)")
        last = info["last_rotation"]
        click.echo("last rotation    " + (
            f"{last['id']} {last['from_login']} -> {last['to_login']} {last['outcome']} "
            f"at {_when(last.get('retired_at') or last.get('finished_at'))}" if last else "none"))
        pend = info["pending"]
        click.echo("pending          " + (
            f"{pend['id']} {pend['from_login']} -> {pend['to_login']} after step {pend['step']}"
            + (f", retire due {_when(pend['retire_after'])}" if pend["retire_after"] else "")
            if pend else "none"))
        click.echo(f"audit log        {info['audit_log']}")
        return
    if dry_run:
        plan = rotator.plan()
        if as_json:
            emit_json(plan)
            return
        head = f"resume {plan['resume']}" if plan["resume"] else "new rotation"
        click.echo(f"{head}: {plan['from_login']} -> {plan['to_login']}; "
                   f"steps: {', '.join(plan['steps'])}")
        return
    if retire_now:
        rotator.retire_now()
        click.echo("retired the previous login")
        return
    report = rotator.run(wait=wait)
    if as_json:
        emit_json(report.as_dict())
        return
    state = "retired the previous login" if report.retired else \
        f"previous login valid until {_when(report.retire_after)}"
    click.echo(f"rotation {report.rotation_id}: {report.from_login} -> {report.to_login}; {state}")
