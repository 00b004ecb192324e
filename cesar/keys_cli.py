"""``cesar keys create|list|revoke`` (registered in ``cesar.cli``); the logic is ``cesar.keys``.

The keys live in the database the API serves (``--url`` to choose another, e.g. the other side
of the sync): in development the local database, in staging and production the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import psycopg
from psycopg import errors as pgerrors

from cesar.console import emit_json as _emit
from cesar.errors import OperationFailed

_URL_HELP = ("Database holding the keys (default: the one the API serves: "
             "COCKROACH_DB_URL outside development, the local database in development).")


@contextmanager
def _connection(url: str | None) -> Iterator[psycopg.Connection[Any]]:
    from cesar import db
    from cesar.config import load_settings

    settings = load_settings()
    endpoint = db.command_target(settings, url)
    conn = db.connect(endpoint, settings, autocommit=True)
    try:
        yield conn
    except pgerrors.UndefinedTable:
        raise OperationFailed(f"the {endpoint.name} database {endpoint.masked} has no api_keys "
                              "or api_key_usage table; run `invoke migrate`") from None
    finally:
        conn.close()



@click.group("keys")
def keys_group() -> None:
    """API keys: create (shown once), list (never the secrets), revoke."""


@keys_group.command("create")
@click.option("--name", required=True, help="What the key is for (e.g. prometheus, smoke).")
@click.option("--scopes", required=True, metavar="S1,S2",
              help="Comma-separated: agents:read, agents:write, tasks:read, tasks:write, "
                   "health:detail, metrics:read.")
@click.option("--expires-in", default=None, metavar="DURATION",
              help="e.g. 90d, 12h, 1w2d (default: never expires).")
@click.option("--url", default=None, metavar="URL", help=_URL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with `key`).")
def create_cmd(name: str, scopes: str, expires_in: str | None, url: str | None,
               as_json: bool) -> None:
    """Create a key and print it once; only its SHA-256 is stored."""
    from cesar import keys

    chosen = keys.parse_scopes(scopes)
    expiry = keys.parse_duration(expires_in) if expires_in else None
    with _connection(url) as conn:
        created = keys.create(conn, name, chosen, expiry)
    if as_json:
        _emit(created.as_dict())
        return
    expires = created.expires_at.isoformat() if created.expires_at else "never"
    click.echo(f"created key {created.prefix} ({created.name}; scopes "
               f"{', '.join(created.scopes)}; expires {expires})")
    click.echo(created.key)
    click.echo("this is the only time the key is shown; send it as `Authorization: Bearer KEY`",
               err=True)


@keys_group.command("list")
@click.option("--url", default=None, metavar="URL", help=_URL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_cmd(url: str | None, as_json: bool) -> None:
    """Every key: prefix, name, scopes, created, expires, last used, revoked (no secrets)."""
    from cesar import keys

    with _connection(url) as conn:
        rows = keys.list_keys(conn)
    if as_json:
        _emit(rows)
        return
    if not rows:
        click.echo("no keys; `cesar keys create --name NAME --scopes agents:read` makes one")
        return
    click.echo(f"{'prefix':<18} {'state':<8} {'name':<16} {'created':<20} {'expires':<20} "
               f"{'last used':<20} scopes")
    for r in rows:
        def day(value: str | None) -> str:
            return value[:19].replace("T", " ") if value else "-"
        click.echo(f"{r['prefix']:<18} {r['state']:<8} {r['name'][:16]:<16} "
                   f"{day(r['created_at']):<20} {day(r['expires_at']):<20} "
                   f"{day(r['last_used_at']):<20} {','.join(r['scopes'])}")


@keys_group.command("revoke")
@click.argument("prefix")
@click.option("--url", default=None, metavar="URL", help=_URL_HELP)
@click.option("--dry-run", is_flag=True, help="Say which key would be revoked; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def revoke_cmd(prefix: str, url: str | None, dry_run: bool, as_json: bool) -> None:
    """Revoke the key with PREFIX (cesar_0123456789ab); every API worker refuses it within
    CESAR_API_KEY_CACHE_SECONDS (default 2 s). Idempotent."""
    from cesar import keys

    prefix = keys.parse_prefix(prefix)  # bad usage is refused before any connection
    with _connection(url) as conn:
        revoked = keys.revoke(conn, prefix, dry_run=dry_run)
    if as_json:
        _emit({**revoked.as_dict(), "dry_run": dry_run})
        return
    if revoked.already:
        click.echo(f"{revoked.prefix} ({revoked.name}) was already revoked at "
                   f"{revoked.revoked_at.isoformat()}")
    elif dry_run:
        click.echo(f"would revoke {revoked.prefix} ({revoked.name})")
    else:
        click.echo(f"revoked {revoked.prefix} ({revoked.name}) at "
                   f"{revoked.revoked_at.isoformat()}")
