"""``cesar events prune`` and ``cesar events status`` (registered in ``cesar.cli``)."""

from __future__ import annotations

import click

from cesar.config import load_settings


def _connect(url: str | None):  # type: ignore[no-untyped-def]
    from cesar import db

    settings = load_settings()
    endpoint = db.command_target(settings, url)
    return db.connect(endpoint, settings, autocommit=True)


@click.group("events")
def events_group() -> None:
    """The durable log behind the API's live stream /events."""


@events_group.command("prune")
@click.option("--older-than", "hours", type=click.FloatRange(min=0), default=None,
              metavar="HOURS", help="Delete events older than this many hours "
                                    "(default: CESAR_EVENTS_RETENTION_HOURS, 24).")
@click.option("--url", metavar="URL", help="The database (default: the one the API serves).")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prune_command(hours: float | None, url: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete old events; a client resuming from before them is told to reload (reset)."""
    from cesar.events import log as elog
    from cesar.events.settings import load_event_settings

    hours = load_event_settings().retention_hours if hours is None else hours
    with _connect(url) as conn:
        pruned = elog.prune(conn, hours * 3600, dry_run=dry_run)
    if as_json:
        from cesar.console import emit_json

        emit_json({"deleted": pruned.deleted, "pruned_through": pruned.pruned_through,
                   "older_than_hours": hours, "dry_run": dry_run})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {pruned.deleted} events older than {hours:g} h; clients resuming from "
               f"id {pruned.pruned_through} or earlier are told to reload")


@events_group.command("status")
@click.option("--url", metavar="URL", help="The database (default: the one the API serves).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_command(url: str | None, as_json: bool) -> None:
    """The log's size, its id range and its oldest event."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), min(id), max(id), min(occurred_at), "
            "(SELECT pruned_through FROM event_log_state WHERE singleton) FROM event_log"
        ).fetchone()
    assert row is not None
    info = {"events": int(row[0]), "first_id": row[1], "last_id": row[2],
            "oldest_at": row[3].isoformat() if row[3] else None, "pruned_through": row[4]}
    if as_json:
        from cesar.console import emit_json

        emit_json(info)
        return
    click.echo(f"{info['events']} events, ids {info['first_id']}..{info['last_id']}, oldest "
               f"{info['oldest_at']}, pruned through id {info['pruned_through']}")
