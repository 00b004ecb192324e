"""``cesar web``: build the dashboard's static export, regenerate its typed API client."""

from __future__ import annotations

from pathlib import Path

import click

from cesar.console import emit_json


@click.group("web")
def web_group() -> None:
    """The dashboard in web/ (Next.js static export)."""


@web_group.command("build")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to put the export in (default: <state dir>/web, what the "
                   "development API serves under /ui/).")
@click.option("--force", is_flag=True, help="Build even when the sources did not change.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def build(out: Path | None, force: bool, as_json: bool) -> None:
    """npm ci (when the lock file changed) and next build (when a source changed)."""
    from cesar import web
    from cesar.config import load_settings

    target = (out or load_settings().state_dir / "web").absolute()
    actions = web.build(target, force=force)
    if as_json:
        emit_json({"out": str(target), "actions": actions, "sources_hash": web.sources_hash()})
        return
    for line in actions or [f"the dashboard in {target} is up to date"]:
        click.echo(line)


@web_group.command("client")
def client() -> None:
    """Regenerate web/src/lib/api-schema.ts from the API's OpenAPI document."""
    from cesar import web

    click.echo(f"wrote {web.generate_client()}")
