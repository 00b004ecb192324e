"""The ``cesar`` command. Every subcommand reports failures as one line and an exit code:
0 success, 1 the operation failed, 2 bad usage or configuration. No tracebacks, unless
``CESAR_DEBUG=1`` asks for them."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
import psycopg

from cesar import __version__
from cesar.config import load_settings
from cesar.console import emit_json, fail
from cesar.errors import CesarError, describe


class LazyGroup(click.Group):
    """A click group whose subcommands in ``SUBCOMMANDS`` are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *filter(_installed, SUBCOMMANDS)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in SUBCOMMANDS and _installed(cmd_name):
            module, _, attribute = SUBCOMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
        return command


def _installed(cmd_name: str) -> bool:
    """Whether the package of a subcommand is here: ``infra`` (the Pulumi program) lives in the
    checkout, not in the wheel the hosts install, so on a host ``cesar infra`` does not exist."""
    top = SUBCOMMANDS[cmd_name].partition(".")[0]
    return top == "cesar" or importlib.util.find_spec(top) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cesar")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Operate the CESAR API: its databases, schema, sync and service."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def up(as_json: bool) -> None:
    """Start the development stack (embedded PostgreSQL unless URLs are set) and seed it."""
    from cesar.dev import stack

    settings = load_settings()
    result = stack.up(settings)
    if as_json:
        emit_json({
            "seconds": round(result.seconds, 3), "actions": result.actions,
            "embedded": result.embedded,
            "databases": {d.name: d.as_dict() for d in result.databases},
            "sync": result.sync,
            **(result.api or {}),
        })
        return
    for action in result.actions:
        click.echo(f"  {action}")
    click.echo(f"development stack ready in {result.seconds:.2f} s")
    for d in result.databases:
        click.echo(f"  {d.name:<8} {d.engine:<11} agents={d.agents:<4} "
                   f"migrations={d.migrations_line:<6} {stack.urls.mask(d.url)}")
    if result.sync:
        click.echo(f"  sync     {result.sync['summary']}")
    if result.api:
        click.echo(f"  api      {result.api['api']['database'] or '-':<11} "
                   f"health={result.api['api']['health_status']}  {result.api['api_url']}")
        if result.api.get("dashboard_url"):
            click.echo(f"  web      dashboard  {result.api['dashboard_url']}")
    click.echo("next: `uv run invoke status --json`, `uv run invoke test`")


@cli.command()
def down() -> None:
    """Stop what `up` started. No data is lost."""
    from cesar.dev import stack

    for line in stack.down(load_settings()):
        click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Show the environment, the database URLs (passwords masked) and what is reachable.

    Exits 2 (after the report) when the configuration is invalid."""
    from cesar.dev import stack

    info = stack.status(load_settings())
    if as_json:
        emit_json(info)
    else:
        _print_status(info)
    if info["config_error"]:
        fail(info["config_error"], 2)


def _print_status(info: dict[str, Any]) -> None:
    click.echo(f"environment      {info['environment']} (target {info['database_target']}, "
               f"serving {info['serving'] or '-'})")
    emb = info["embedded"]
    if emb:
        state = f"running, pid {emb['pid']}" if emb["running"] else "stopped"
        click.echo(f"embedded         {state}, {emb['host']}:{emb['port']}, {emb['data_dir']}")
    for name, d in info["databases"].items():
        if d["reachable"]:
            m = d.get("migrations")
            done = f"{m['applied']}/{m['total']}" if m else "-"
            detail = f"{d['engine']}, {d['latency_ms']} ms, agents={d['agents']}, migrations={done}"
        else:
            detail = f"unreachable: {d['error']}"
        click.echo(f"{name:<16} {d['url']}\n{'':<16} {detail}")
    sync = info.get("sync")
    if sync and sync.get("tables"):
        lag = sync.get("max_lag_seconds")
        shown = "-" if lag is None else f"{lag:.0f} s"
        click.echo(f"sync             max lag {shown} over {len(sync['tables'])} tables and "
                   f"directions (limit {sync['lag_limit_seconds']:.0f} s)")
    elif sync and sync.get("error"):
        click.echo(f"sync             unknown: {sync['error']}")
    api = info.get("api")
    if api:
        state = (f"answers, /health {api['health_status']}" if api["answers"]
                 else "not answering")
        pid = f", pid {api['pid']}" if api["pid"] else ""
        click.echo(f"api              {info['api_url']}  {state}{pid}")
    if info.get("dashboard_url"):
        click.echo(f"dashboard        {info['dashboard_url']}")


# Subcommands are imported only when used, so `cesar sync run` (cron, every 5 minutes) does not
# pay for FastAPI, Pulumi or Ansible imports. Add a command here: "name": "module:attribute".
SUBCOMMANDS: dict[str, str] = {
    "api": "cesar.api.server:api",
    "smoke": "cesar.smoke:smoke",
    "migrate": "cesar.migrate.cli:migrate_group",
    "config": "cesar.deploy.configcheck:config_group",
    "deploy": "cesar.deploy:deploy_command",
    "wheelhouse": "cesar.deploy.wheelhouse:wheelhouse_group",
    "rotate-password": "cesar.rotate.cli:rotate_password",
    "infra": "infra.cli:infra",  # the checkout only (see _installed)
    "sync": "cesar.sync.cli:sync_group",
    "doctor": "cesar.doctor:doctor_command",
    "backup": "cesar.backup.cli:backup_group",
    "keys": "cesar.keys_cli:keys_group",
    "events": "cesar.events.cli:events_group",
    "dispatch": "cesar.work_cli:dispatch_command",
    "demo": "cesar.demo:demo_command",
    "web": "cesar.web_cli:web_group",
    "soak": "cesar.soak.cli:soak_command",
}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: the error boundary that turns exceptions into one line and an exit code."""
    debug = os.environ.get("CESAR_DEBUG") == "1"
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="cesar",
                      standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: exit 2
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
        fail(exc.format_message(), exc.exit_code)
    except click.Abort as exc:
        # Ctrl-C inside a command reaches here as click's Abort: say what it was, with the
        # shell's exit code for SIGINT, as a --json report of the same run says.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):  # Terminated (SIGTERM) too
            fail(*describe(cause))
        fail("aborted", 1)
    except (CesarError, psycopg.Error) as exc:
        if debug:
            raise
        fail(*describe(exc))
    except KeyboardInterrupt as exc:
        fail(*describe(exc))
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # the last line of defence: still one line, still an exit code
        if debug:
            raise
        fail(*describe(exc))


def ready() -> NoReturn:
    """``python -m cesar.cli --ready``: a process started ahead of its turn. It imports what a
    sync run needs (a process start costs 1-2 s idle, far more on a loaded machine), then waits
    for one line on stdin, the command's arguments, and runs it exactly as ``cesar ARGS`` would
    (settings and credentials are read only then); an empty line or a closed stdin ends it
    without running anything. The soak keeps one ready so that ``--compress`` does not multiply
    a start-up cost that, on the hosts' 5-minute cycle, is negligible."""
    import shlex

    import cesar.sync.cli
    import cesar.sync.run  # noqa: F401 - imported ahead of the go, which is the point

    args = shlex.split(sys.stdin.readline())
    if not args:
        sys.exit(0)
    main(args)


if __name__ == "__main__":
    if sys.argv[1:] == ["--ready"]:
        ready()
    main()
