"""``cesar migrate ...``: the command line of the migration runner (``cesar.migrate``).

Every subcommand takes ``--url`` (default: the configured environment's target, as routed by
``cesar.db``) and ``--migrations-dir`` (default ``sql/migrations``, else the copy in the wheel).
Progress goes to stdout, or to stderr when ``--json`` makes stdout one JSON object.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from cesar import db, migrate
from cesar.config import load_settings
from cesar.console import emit_json as _emit
from cesar.migrate.lease import DEFAULT_LEASE_SECONDS, DEFAULT_WAIT_SECONDS, LeaseInfo
from cesar.migrate.store import Identity

F = TypeVar("F", bound=Callable[..., Any])


def _common(fn: F) -> F:
    """``--url`` and ``--migrations-dir``, on every subcommand."""
    fn = click.option(
        "--migrations-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
        help="Directory of NNN_name.up.sql/.down.sql files. Default: sql/migrations, else the "
             "copy packaged with cesar.",
    )(fn)
    fn = click.option(
        "--url", default=None, metavar="URL",
        help="Database URL. Default: the configured environment's target (see `cesar status`).",
    )(fn)
    return fn


def _lease_options(fn: F) -> F:
    fn = click.option(
        "--wait-seconds", type=float, default=DEFAULT_WAIT_SECONDS, show_default=True,
        help="How long to wait for another runner's lease before giving up.",
    )(fn)
    fn = click.option(
        "--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS, show_default=True,
        help="Lease length: a runner killed outright blocks others for at most this long.",
    )(fn)
    return fn


def _lock_options(fn: F) -> F:
    fn = click.option(
        "--lock-retries", type=int, default=None, metavar="N",
        help="How many times a migration that gave up waiting for a lock is rolled back and "
             "tried again. Default: CESAR_MIGRATE_LOCK_RETRIES, else 5.",
    )(fn)
    fn = click.option(
        "--lock-timeout", type=float, default=None, metavar="SECONDS",
        help="How long one statement may wait for a lock (a table a long transaction holds) "
             "before its attempt is rolled back, so the application's queries do not queue "
             "behind it; 0 waits forever. Default: CESAR_MIGRATE_LOCK_TIMEOUT, else 3.",
    )(fn)
    return fn


def _mode_option(fn: F) -> F:
    return click.option(
        "--mode", type=click.Choice(migrate.MODES), default="auto", show_default=True,
        help="transactional (one transaction per migration, PostgreSQL's default) or "
             "per-statement (CockroachDB's default: each DDL on its own, progress per statement).",
    )(fn)


@contextmanager
def _runner(url: str | None, migrations_dir: Path | None, command: str,
            as_json: bool = False, **options: Any) -> Iterator[migrate.Runner]:
    settings = load_settings()
    target = db.command_target(settings, url)
    out = functools.partial(click.echo, err=as_json)
    conn, runner = migrate.open_runner(
        target, settings, migrations_dir=migrations_dir, progress=out,
        identity=Identity(command=f"migrate {command}"), **options,
    )
    with conn:
        yield runner



@click.group("migrate")
def migrate_group() -> None:
    """Apply, roll back and inspect the schema migrations (sql/migrations)."""


@migrate_group.command("up")
@_common
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing (not even the "
              "tracking tables).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_mode_option
@_lease_options
@_lock_options
@click.option("--reason", default=None, help="Recorded with each migration's event.")
@click.option("--regional-by-row/--no-regional-by-row", default=None,
              help="Then make the synced tables REGIONAL BY ROW (CockroachDB with regions only; "
                   "nothing on PostgreSQL). Default: CESAR_REGIONAL_BY_ROW, else off.")
def up_cmd(url: str | None, migrations_dir: Path | None, dry_run: bool, as_json: bool,
           mode: str, lease_seconds: float, wait_seconds: float, lock_timeout: float | None,
           lock_retries: int | None, reason: str | None, regional_by_row: bool | None) -> int:
    """Apply every pending migration, in order."""
    if regional_by_row is None:
        regional_by_row = load_settings().regional_by_row
    with _runner(url, migrations_dir, "up", as_json, mode=mode, lease_seconds=lease_seconds,
                 wait_seconds=wait_seconds, reason=reason, lock_timeout=lock_timeout,
                 lock_retries=lock_retries) as runner:
        report = runner.up(dry_run=dry_run, regional_by_row=regional_by_row)
    return _finish_run(report, as_json)


@migrate_group.command("down")
@_common
@click.option("--steps", type=int, default=None, help="Roll back the last N applied "
              "migrations (default 1).")
@click.option("--to", "to", default=None, metavar="NAME",
              help="Roll back every migration after NAME (NAME stays applied).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_mode_option
@_lease_options
@_lock_options
@click.option("--reason", default=None, help="Recorded with each rollback's event.")
def down_cmd(url: str | None, migrations_dir: Path | None, steps: int | None, to: str | None,
             dry_run: bool, as_json: bool, mode: str, lease_seconds: float, wait_seconds: float,
             lock_timeout: float | None, lock_retries: int | None, reason: str | None) -> int:
    """Roll back migrations with their down files, newest first."""
    with _runner(url, migrations_dir, "down", as_json, mode=mode, lease_seconds=lease_seconds,
                 wait_seconds=wait_seconds, reason=reason, lock_timeout=lock_timeout,
                 lock_retries=lock_retries) as runner:
        report = runner.down(steps=steps, to=to, dry_run=dry_run)
    return _finish_run(report, as_json)


def _finish_run(report: migrate.RunReport, as_json: bool) -> int:
    code = 1 if report.dry_run and report.plan.problems else 0
    if as_json:
        _emit(report.as_dict())
        return code
    if report.dry_run:
        _print_plan(report)
    elif not report.done and report.direction == "down":
        click.echo("nothing to roll back")
    click.echo(report.plan.line())
    if report.locality is not None:
        _print_locality(report.locality, report.dry_run)
    return code


def _print_locality(locality: migrate.LocalityPlan, dry_run: bool) -> None:
    if dry_run and locality.changes:
        count = migrate.plural(len(locality.changes), "table")
        click.echo(f"regional-by-row: would convert {count} (regions {locality.regions_text()}):")
        for change in locality.changes:
            was = ((change.before or "no locality") if change.exists
                   else "created by a pending migration")
            click.echo(f"  {change.table} ({was}):")
            for index, text in enumerate(change.statements, 1):
                click.echo(f"    [{index}] {text}")
    click.echo(locality.line())


def _print_plan(report: migrate.RunReport) -> None:
    plan = report.plan
    verb = "apply" if report.direction == "up" else "roll back"
    click.echo(f"dry run: nothing will be changed (mode {report.mode})")
    click.echo(f"lease: {report.lease.describe() if report.lease else 'free'}")
    applied = [(n, plan.checksum_status(n)) for n, t in sorted(plan.tracked.items()) if t.applied]
    if applied:
        bad = [f"{n} ({s})" for n, s in applied if s != "ok"]
        click.echo(f"applied: {len(applied)}, checksums "
                   + ("all match" if not bad else "differ: " + ", ".join(bad)))
    if not report.steps:
        click.echo(f"nothing to {verb}")
    for step in report.steps:
        if step.refused is not None:
            click.echo(f"would {verb} {step.name}: refused, see the problem below")
            continue
        script = step.migration.script(step.direction)
        statements = script.statements
        resume = f", resuming at statement {step.start + 1}" if step.start else ""
        count = migrate.plural(len(statements), "statement")
        header = "" if script.transaction else ", no-transaction: its header says so"
        click.echo(f"would {verb} {step.name} ({count}{resume}{header}):")
        for st in statements[step.start:]:
            note = "" if st.idempotent else "  [not idempotent: unsafe to re-run after a crash]"
            if st.no_transaction:
                note += f"  [{st.no_transaction}: runs outside a transaction]"
            click.echo(f"  [{st.index}] line {st.line} {st.kind}: {st.summary(90)}{note}")
    for problem in plan.problems:
        click.echo(f"problem: {problem}")


@migrate_group.command("status")
@_common
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_cmd(url: str | None, migrations_dir: Path | None, as_json: bool) -> None:
    """List every migration with its state, checksum match and duration."""
    with _runner(url, migrations_dir, "status", as_json) as runner:
        plan = runner.plan()
        lease = runner.lease_info() if plan.tables_exist else None
    rows = _status_rows(plan)
    if as_json:
        _emit({**plan.counts, "summary": plan.line(), "migrations": rows,
               "problems": plan.problems, "lease": lease.as_dict() if lease else None})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("name", "status", "checksum", "mode", "duration", "finished", "by"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        duration = "-" if r["duration_ms"] is None else f"{r['duration_ms']} ms"
        finished = r["finished_at"][:19].replace("T", " ") if r["finished_at"] else "-"
        who = f"{r['applied_by']}@{r['applied_from']}" if r["applied_by"] else "-"
        status = r["status"]
        if r["error"]:
            status += f" at {r['error']['statement']}"
        table.add_row(r["name"], status, r["checksum"], r["mode"] or "-", duration, finished, who)
    console = Console(width=200 if not sys.stdout.isatty() else None, highlight=False)
    console.print(table)
    for problem in plan.problems:
        click.echo(f"problem: {problem}")
    click.echo(f"lease: {_describe(lease)}")
    click.echo(plan.line())


def _status_rows(plan: migrate.Plan) -> list[dict[str, Any]]:
    names = sorted(set(plan.by_name) | set(plan.tracked))
    out = []
    for name in names:
        t = plan.tracked.get(name)
        status = t.status if t else "pending"
        if t is not None and t.direction == "down" and t.status in ("running", "failed"):
            status = f"{t.status} (rollback)"
        error = None
        if t is not None and t.error_sqlstate and t.status == "failed":
            error = {"sqlstate": t.error_sqlstate, "message": t.error_message,
                     "statement": t.error_statement, "line": t.error_line}
        out.append({
            "name": name, "status": status, "checksum": plan.checksum_status(name),
            "mode": t.mode if t else None,
            "statements_done": t.statements_done if t else 0,
            "statements_total": t.statements_total if t else None,
            "duration_ms": t.duration_ms if t else None,
            "started_at": t.started_at.isoformat() if t and t.started_at else None,
            "finished_at": t.finished_at.isoformat() if t and t.finished_at else None,
            "applied_by": t.applied_by if t else None,
            "applied_from": t.applied_from if t else None,
            "runner_version": t.runner_version if t else None,
            "error": error,
        })
    return out


def _describe(lease: LeaseInfo | None) -> str:
    return lease.describe() if lease else "free"


@migrate_group.command("repair")
@_common
@click.argument("name")
@click.option("--reason", required=True, help="Why the change is accepted (recorded).")
def repair_cmd(url: str | None, migrations_dir: Path | None, name: str, reason: str) -> None:
    """Accept NAME's file as it is now: a changed checksum, or a failed run to retry."""
    with _runner(url, migrations_dir, "repair") as runner:
        click.echo(runner.repair(name, reason))


@migrate_group.command("mark-applied")
@_common
@click.argument("name")
@click.option("--reason", required=True, help="Why it is skipped (recorded).")
def mark_applied_cmd(url: str | None, migrations_dir: Path | None, name: str,
                     reason: str) -> None:
    """Record NAME as applied without running it (its objects already exist: a baseline)."""
    with _runner(url, migrations_dir, "mark-applied") as runner:
        click.echo(runner.mark_applied(name, reason))


@migrate_group.group("lock")
def lock_group() -> None:
    """Inspect or break the migration lease."""


@lock_group.command("status")
@_common
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lock_status_cmd(url: str | None, migrations_dir: Path | None, as_json: bool) -> None:
    """Show who holds the migration lease, and until when."""
    with _runner(url, migrations_dir, "lock status", as_json) as runner:
        lease = runner.lease_info()
    if as_json:
        _emit({"held": lease is not None and not lease.expired,
               "lease": lease.as_dict() if lease else None})
        return
    click.echo(f"lease: {_describe(lease)}")


@lock_group.command("break")
@_common
@click.option("--force", is_flag=True, help="Break a lease that has not expired (needs --reason).")
@click.option("--reason", default=None, help="Why (recorded; required with --force).")
def lock_break_cmd(url: str | None, migrations_dir: Path | None, force: bool,
                   reason: str | None) -> None:
    """Remove the lease: an expired one, or a live one with --force --reason."""
    with _runner(url, migrations_dir, "lock break") as runner:
        broken = runner.break_lease(force=force, reason=reason)
    click.echo(f"broke the lease of {broken.describe()}" if broken else "no lease is held")
