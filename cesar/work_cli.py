"""``cesar dispatch`` (registered in ``cesar.cli``): assign queued tasks to agents, the same
transaction as ``POST /dispatch`` (``cesar.work.dispatch``), run against the database directly.

Both exist on purpose: the endpoint lets a client that holds only an API key (the dashboard, an
agent runner, ``cesar demo``) ask for work without database credentials; the command lets cron or
an operator on a host dispatch while the API is down, and in one place for a whole fleet of API
workers. Any number of either may run at once: ``FOR UPDATE SKIP LOCKED`` gives each task to
exactly one of them.
"""

from __future__ import annotations

from typing import Any

import click
import psycopg
from psycopg import errors as pgerrors

from cesar.console import first_line
from cesar.errors import OperationFailed


@click.command("dispatch")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="Most tasks to assign in this run.")
@click.option("--url", default=None, metavar="URL",
              help="Database to dispatch in (default: the one the API serves).")
@click.option("--dry-run", is_flag=True, help="Say what would be assigned; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def dispatch_command(limit: int, url: str | None, dry_run: bool, as_json: bool) -> None:
    """Assign queued tasks to agents: priority 1 first, then the oldest; the preferred agent if
    active, else the least loaded active agent. Safe to run concurrently and repeatedly."""
    from cesar import db, keys, work
    from cesar.config import load_settings
    from cesar.console import emit_json

    settings = load_settings()
    endpoint = db.command_target(settings, url)
    actor = f"cli:{keys.operator()} (cesar dispatch)"
    conn = db.connect(endpoint, settings)
    try:
        if dry_run:
            with conn.transaction(force_rollback=True):
                done = work.dispatch(conn, actor=actor, limit=limit)
        else:
            done = db.run_transaction(
                conn, lambda c: work.dispatch(c, actor=actor, limit=limit),
                max_attempts=settings.retry_max_attempts, base_delay=settings.retry_base_delay,
                max_delay=settings.retry_max_delay)
    except (pgerrors.UndefinedTable, pgerrors.UndefinedColumn):
        raise OperationFailed(f"the {endpoint.name} database {endpoint.masked} lacks the tasks "
                              "schema (migration 015); run `invoke migrate`") from None
    except psycopg.OperationalError as exc:
        raise OperationFailed(f"dispatch on the {endpoint.name} database {endpoint.masked} "
                              f"failed: {first_line(exc)}") from None
    finally:
        conn.close()
    summary: dict[str, Any] = {"assigned": [a.as_dict() for a in done], "dry_run": dry_run}
    if as_json:
        emit_json(summary)
        return
    verb = "would assign" if dry_run else "assigned"
    if not done:
        click.echo("no queued task to assign (or no active agent)")
        return
    click.echo(f"{verb} {len(done)} task(s)")
    for a in done:
        click.echo(f"  task {a.task_id} -> agent {a.agent_id}")
