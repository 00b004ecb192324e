"""``cesar sync run`` and ``cesar sync status`` (registered in ``cesar.cli``)."""

from __future__ import annotations

from typing import Any

import click

from cesar.config import load_settings
from cesar.console import emit_json as _emit
from cesar.console import fail
from cesar.errors import ConfigError, describe, sigterm_unwinds
from cesar.sync.tables import load_sync_settings


def _url_options(fn: Any) -> Any:
    fn = click.option("--remote-url", metavar="URL",
                      help="The cluster (default: COCKROACH_DB_URL, or the embedded "
                           "cesar_cluster in development).")(fn)
    fn = click.option("--local-url", metavar="URL",
                      help="The local PostgreSQL (default: LOCAL_DB_URL, or the embedded "
                           "cesar_local in development).")(fn)
    return fn


@click.group("sync")
def sync_group() -> None:
    """Two-way sync of the synced tables between the local database and the cluster."""


@sync_group.command("run")
@_url_options
@click.option("--full", is_flag=True,
              help="Also compare every table by key and row hash and repair what differs.")
@click.option("--dry-run", is_flag=True,
              help="Report what would move and conflict; change nothing.")
@click.option("--wait", "wait", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="If another run holds the lease, wait up to this long (0: exit 0 at once).")
@click.option("--tables", metavar="T1,T2",
              help="Only these synced tables (default: CESAR_SYNC_TABLES, else all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary line (for cron).")
def run_cmd(local_url: str | None, remote_url: str | None, full: bool, dry_run: bool,
            wait: float, tables: str | None, as_json: bool, quiet: bool) -> None:
    """One complete pass in both directions, then exit: 0 done, 1 failed, 2 bad usage.

    Rows that cannot be applied are recorded in sync_conflicts and do not fail the run. With
    --json a failed run (exit 1) still prints its report, with ok false and the error."""
    from cesar.sync import run

    if wait < 0:
        raise ConfigError("--wait must be 0 or more seconds")
    chosen = tuple(t.strip() for t in tables.split(",") if t.strip()) if tables else None

    def progress(line: str) -> None:
        if not as_json and not quiet:
            click.echo(line, err=True)

    runner = run.Run(load_settings(), load_sync_settings(),
                     run.Options(local_url, remote_url, full, dry_run, wait, chosen), progress)
    try:
        # The cron wrapper's ``timeout`` ends a pass with SIGTERM: the run releases its lease
        # (the next pass need not wait for it to expire) and says so, instead of vanishing.
        with sigterm_unwinds():
            report = runner.execute()
    except BaseException as exc:
        if as_json:
            _emit_failed(runner.report, exc)
        raise  # the one line on stderr and the exit code, as without --json
    if as_json:
        _emit(report.as_dict())
        return
    if report.in_progress is not None:
        h = report.in_progress
        click.echo(f"another sync run is in progress ({h['holder']}, since "
                   f"{h['acquired_at']}); nothing done")
        return
    if not quiet:
        _print_tables(report)
    click.echo(report.summary())


def _emit_failed(report: Any, exc: BaseException) -> None:
    """The report of a run that failed: what it had committed, ``ok`` false and the line the
    command prints on stderr. Bad usage or configuration (exit 2) is not a run: no report."""
    message, code = describe(exc)
    if code == ConfigError.exit_code or isinstance(exc, BrokenPipeError):
        return
    report.error = message
    _emit(report.as_dict())


def _print_tables(report: Any) -> None:
    verb = "would move" if report.dry_run else "moved"
    for t in report.tables:
        if not (t.applied or t.unchanged or t.discarded or t.deferred or t.failed):
            continue
        click.echo(f"  {t.direction:<17} {t.table:<20} {verb} {t.applied:<7} "
                   f"conflicts {t.conflicts:<4} deferred {t.deferred:<4} failed {t.failed}")
    for r in report.reconcile:
        if r.keys_differing:
            click.echo(f"  reconcile         {r.table:<20} repaired "
                       f"{r.repaired_local + r.repaired_cluster:<5} (local {r.repaired_local}, "
                       f"cluster {r.repaired_cluster}) conflicts {r.conflicts} "
                       f"in {r.ranges_differing}/{r.ranges} ranges")
        if r.orphans_settled:
            click.echo(f"  reconcile         {r.table:<20} {r.orphans_settled} version rows of "
                       "keys gone on both sides made tombstones")


@sync_group.command("status")
@_url_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_cmd(local_url: str | None, remote_url: str | None, as_json: bool) -> None:
    """The pair, the lease, and per table and direction: last sync, lag, pending, conflicts.

    Exits 1 (after the report) when neither database could be read."""
    from cesar.sync import status

    info = status.collect(load_settings(), load_sync_settings(), local_url, remote_url)
    if as_json:
        _emit(info)
    else:
        _print_status(info)
    if not (info["local"]["reachable"] or info["cluster"]["reachable"]):
        fail("neither database could be read", 1)


def _fmt_lag(lag: float | None) -> str:
    if lag is None:
        return "-"
    return f"{lag:.0f} s" if lag < 120 else f"{lag / 60:.0f} min"


def _print_status(info: dict[str, Any]) -> None:
    for role in ("local", "cluster"):
        s = info[role]
        if s["error"] or not s["reachable"]:
            click.echo(f"{role:<8} {s['url']}\n{'':<8} {s['error']}")
        else:
            click.echo(f"{role:<8} {s['url']} ({s['engine']}, origin {s['origin']})")
    click.echo(f"pair     {'paired' if info['paired'] else 'not paired yet (the first run pairs)'}")
    lease_ = info["lease"]
    click.echo("lease    " + (f"held by {lease_['holder']} since {lease_['acquired_at']}"
                              if lease_ else "free (no run in progress)"))
    rows = info["tables"]
    if not rows:
        click.echo("no sync run recorded yet: `cesar sync run`")
        return
    click.echo(f"{'table':<20} {'direction':<17} {'last sync':<20} {'lag':>8} {'pending':>8} "
               f"{'rows total':>11} {'conflicts':>9}")
    for r in rows:
        last = (r["last_sync_at"] or "never")[:19].replace("T", " ")
        click.echo(f"{r['table_name']:<20} {r['direction']:<17} {last:<20} "
                   f"{_fmt_lag(r['lag_seconds']):>8} {r['pending']:>8} {r['rows_total']:>11} "
                   f"{r['conflicts_total']:>9}")
    for r in rows:
        if r["last_error"]:
            click.echo(f"last run failed for {r['table_name']} {r['direction']}: "
                       f"{r['last_error']}")
    limit = info["lag_limit_seconds"]
    worst = info["max_lag_seconds"]
    if worst is not None and worst > limit:
        click.echo(f"lag {worst:.0f} s is over the {limit:.0f} s limit: is the cron job running "
                   "(`cesar sync run`)? rows held by a failed apply show in sync_conflicts")
    differ = [d for d in info.get("divergence", []) if d["divergent_rows"]]
    for d in differ:
        click.echo(f"DIVERGED {d['table']}: the two sides differ by {d['divergent_rows']} rows "
                   f"(local {d['local_rows']}, cluster {d['cluster_rows']}; {d['method']} check "
                   f"at {d['checked_at'][:19]}): run `cesar sync run --full`")
    if info.get("divergence") and not differ:
        click.echo("divergence: none found by the last run's check")
    for role in ("local", "cluster"):
        counts = info[role]["conflicts"]
        total = sum(sum(c.values()) for c in counts.values())
        if total:
            click.echo(f"{total} conflict{'' if total == 1 else 's'} recorded in the {role} "
                       "database: SELECT * FROM sync_conflicts ORDER BY detected_at DESC")
