"""``cesar backup ...``: take, list, restore, drill, status, setup. ``--json`` everywhere."""

from __future__ import annotations

import sys

import click

from cesar.console import emit_json as _emit
from cesar.console import fail
from cesar.errors import OperationFailed


def _server():  # noqa: ANN202
    from cesar.backup.settings import resolve
    from cesar.config import load_settings

    return resolve(load_settings())


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@click.group("backup")
def backup_group() -> None:
    """Backups of the local database's server, point-in-time restores and drills."""


@backup_group.command("take")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Then write the backup metrics to this Prometheus textfile.")
def take_command(as_json: bool, metrics_file: str | None) -> None:
    """Take a base backup now (the server archives its WAL continuously)."""
    from cesar.backup import base

    server = _server()
    backup = base.take(server)
    pruned = base.prune(server)
    _metrics(server, metrics_file)
    if as_json:
        _emit({**backup.as_dict(), "pruned": pruned})
        return
    click.echo(f"backup {backup.label}: {_human_bytes(backup.bytes)} in {backup.seconds:.2f} s, "
               f"WAL {backup.start_segment}..{backup.end_segment}, restorable from "
               f"{backup.finished_at}")
    if pruned:
        click.echo(f"pruned {len(pruned)} older backup(s): {', '.join(pruned)}")


@backup_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_command(as_json: bool) -> None:
    """The backups and the window of points in time that can be restored."""
    from datetime import UTC, datetime

    from cesar.backup import archive, base

    server = _server()
    found = base.backups(server.repo)
    segments = archive.archived(server.repo)
    newest_archived = next((s for s in reversed(segments) if archive.SEGMENT_RE.match(s)), None)
    window = {
        "from": found[0].finished_at if found else None,
        "to": datetime.now(UTC).isoformat() if found else None,
        "newest_archived_segment": newest_archived,
    }
    if as_json:
        _emit({"repo": str(server.repo), "backups": [b.as_dict() for b in found],
               "restorable": window, "archived_segments": len(segments)})
        return
    if not found:
        click.echo(f"no backups in {server.repo}: `invoke backup` takes one")
        return
    click.echo(f"{'label':<24} {'finished (restorable from)':<34} {'size':>10} {'WAL from':<24}")
    for b in found:
        click.echo(f"{b.label:<24} {b.finished_at:<34} {_human_bytes(b.bytes):>10} "
                   f"{b.start_segment:<24}")
    click.echo(f"restorable: any time from {window['from']} to the newest archived WAL "
               f"({newest_archived}; {len(segments)} files archived)")


@backup_group.command("restore")
@click.option("--to", "to", required=True, metavar="TIMESTAMP",
              help="ISO 8601 time with a zone, e.g. 2026-11-30T10:15:00Z.")
@click.option("--into", "into", required=True, metavar="NAME",
              help="The new database to restore into (beside the live one).")
@click.option("--force", is_flag=True, help="Replace NAME if it exists (it is kept, renamed).")
@click.option("--database", default=None, metavar="DB",
              help="Another database of the same server (default: the local database).")
@click.option("--dry-run", is_flag=True, help="Check the request and name the backup; change "
              "nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def restore_command(to: str, into: str, force: bool, database: str | None, dry_run: bool,
                    as_json: bool) -> None:
    """Restore the local database as it was at TIMESTAMP into a new database NAME."""
    from dataclasses import replace

    from cesar.backup import restore

    target = restore.parse_time(to)
    restore.check_name(into)
    server = _server()
    if database:
        server = replace(server, database=restore.check_name(database, target=False))
    if dry_run:
        restore.preflight(server, into, force)
        chosen = restore.choose_backup(server, target)
        plan = {"dry_run": True, "target": target.isoformat(), "into": into,
                "backup": chosen.label, "database": server.database}
        if as_json:
            _emit(plan)
        else:
            click.echo(f"would restore {server.database} as of {target.isoformat()} from backup "
                       f"{chosen.label} into {into}")
        return
    result = restore.restore(server, target, into, force=force)
    if as_json:
        _emit(result.as_dict())
        return
    click.echo(f"restored {server.database} as of {result.target} (last transaction replayed: "
               f"{result.recovered_to or 'none after the backup'}) into {result.database} "
               f"in {result.seconds:.2f} s")
    if result.replaced:
        click.echo(f"the previous {result.database} is kept as {result.replaced}")
    click.echo(f"url: {result.as_dict()['url']}")


@backup_group.command("drill")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Then write the backup metrics to this Prometheus textfile.")
def drill_command(as_json: bool, metrics_file: str | None) -> None:
    """Restore the newest backup on a scratch server to a fresh restore point and compare
    every table with the source. Exit 1 when anything differs or is missing."""
    from cesar.backup import drill

    server = _server()
    result = drill.run(server)
    _metrics(server, metrics_file)
    if as_json:
        _emit(result)
    else:
        for t in result["tables"]:
            src, got = t["source"] or {}, t["restored"] or {}
            click.echo(f"  {'match' if t['match'] else 'DIFFERS':<8} {t['table']:<40} "
                       f"rows {src.get('rows', '-')} / {got.get('rows', '-')}")
        for p in result["problems"]:
            click.echo(f"  problem: {p}")
        click.echo(f"drill {'ok' if result['ok'] else 'FAILED'}: backup {result['backup']}, "
                   f"RPO {result['rpo_seconds']} s, RTO {result['rto_seconds']} s, "
                   f"{len(result['tables'])} tables")
    if not result["ok"]:
        reasons = result["problems"] or [f"table {t['table']} differs"
                                         for t in result["tables"] if not t["match"]]
        fail(f"drill failed: {reasons[0] if reasons else 'no tables'}", 1)


@backup_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures to this Prometheus textfile.")
def status_command(as_json: bool, metrics_file: str | None) -> None:
    """Age of the newest backup, archive lag and gaps, the last drill. Exit 1 on a problem."""
    from cesar.backup import status

    server = _server()
    info = status.collect(server)
    if metrics_file:
        from pathlib import Path

        status.write_metrics(info, Path(metrics_file))
    if as_json:
        _emit(info)
    else:
        age = info["last_backup_age_seconds"]
        click.echo(f"newest backup  {info['last_backup'] or '-'}"
                   + (f" ({age:.0f} s ago; schedule {info['schedule_seconds']} s)" if age
                      is not None else ""))
        a = info["archive"] or {}
        click.echo(f"archive        mode {a.get('mode', '-')}, last {a.get('last_archived_wal')}"
                   f", lag {a.get('lag_seconds')} s, failures {a.get('failed_count')}, gaps "
                   f"{len(info['gaps'])}")
        d = info["last_drill"]
        click.echo("last drill     " + (f"{'ok' if d['ok'] else 'FAILED'} at {d['started_at']}, "
                                        f"RPO {d['rpo_seconds']} s, RTO {d['rto_seconds']} s"
                                        if d else "never"))
        for p in info["problems"]:
            click.echo(f"problem        {p}")
    if info["problems"]:
        sys.exit(1)


@backup_group.command("setup")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--force", is_flag=True,
              help="Replace an archive_command the server already has with a different one.")
def setup_command(as_json: bool, force: bool) -> None:
    """Prepare the repository and turn WAL archiving on (ALTER SYSTEM) for a server of your own;
    says when the server must restart. The embedded stack needs none: `invoke up` does it."""
    from cesar.backup import archive

    server = _server()
    archive.prepare_repo(server.repo, server.owner)
    with server.connect() as conn:
        changed = archive.enable(conn, server.repo, server.archive_timeout, force)
        # pg_reload_conf() only signals: pending_restart may not show this run's changes yet,
        # so a changed setting that only a restart applies counts by its context.
        pending = [n for (n,) in conn.execute(
            "SELECT name FROM pg_settings WHERE pending_restart "
            "OR (context = 'postmaster' AND name = ANY(%s)) ORDER BY name", [changed])]
    out = {"repo": str(server.repo), "changed": changed, "restart_required": bool(pending),
           "pending_restart": pending}
    if as_json:
        _emit(out)
    else:
        click.echo(f"repository {server.repo} ready; changed: {', '.join(changed) or 'nothing'}")
        if pending:
            click.echo(f"restart the server to apply: {', '.join(pending)}")


def _metrics(server, path: str | None) -> None:  # noqa: ANN001
    if not path:
        return
    from pathlib import Path

    from cesar.backup import status

    try:
        status.write_metrics(status.collect(server), Path(path))
    except OSError as exc:
        raise OperationFailed(f"cannot write the metrics file {path}: {exc}") from None


@backup_group.command("cockroach-sql")
@click.argument("what", type=click.Choice(["schedule", "show", "verify", "restore", "drill"]))
@click.option("--to", "to", default=None, metavar="TIMESTAMP",
              help="restore/drill: the point in time, ISO 8601 with a zone.")
@click.option("--into", "into", default=None, metavar="NAME",
              help="restore/drill: the new database (default: cesar_restored / cesar_drill).")
@click.option("--database", default="cesar", show_default=True, help="The cluster's database.")
@click.option("--table", "tables", multiple=True, help="drill: a table to fingerprint.")
@click.option("--subdir", default=None, metavar="PATH",
              help="restore: the backup collection from SHOW BACKUPS IN (default LATEST).")
def cockroach_sql_command(what: str, to: str | None, into: str | None, database: str,
                          tables: tuple[str, ...], subdir: str | None) -> None:
    """Print the CockroachDB SQL for the cluster's backups (run it with `cockroach sql`): the
    schedule (storage named by the external connection cesar_backups), SHOW BACKUP with
    check_files, the verification restore, a point-in-time restore, the drill."""
    from cesar.backup import cockroach, restore

    plan = cockroach.BackupPlan(database=database)
    if what in ("restore", "drill"):
        if not to:
            raise click.UsageError(f"cockroach-sql {what} needs --to TIMESTAMP")
        at = restore.parse_time(to)
        if what == "restore":
            click.echo(cockroach.restore_sql(plan, at, into or f"{database}_restored", subdir),
                       nl=False)
        else:
            click.echo(cockroach.drill_sql(plan, at, into or f"{database}_drill",
                                           list(tables) or ["agents"]), nl=False)
        return
    text = {"schedule": cockroach.schedule_sql, "show": cockroach.show_sql,
            "verify": cockroach.verify_sql}[what](plan)
    click.echo(text, nl=False)
