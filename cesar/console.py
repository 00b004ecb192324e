"""What every command prints: JSON for machines, one-line errors for people.

Commands import this module downward; nothing here imports another part of cesar, so the root
command (``cesar.cli``) and every subcommand share it without importing each other.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click


def emit_json(obj: Any) -> None:
    """One JSON document on stdout (``--json``); values JSON lacks are written as strings."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def fail(message: str, code: int) -> NoReturn:
    """``cesar: error: <message>`` on stderr, then exit with ``code``."""
    click.echo(f"cesar: error: {message}", err=True)
    sys.exit(code)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a
    one-line report shows of a multi-line server error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
