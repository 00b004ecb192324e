"""Errors an operator can act on.

Every failure that reaches the command line is one of these, turned by ``cesar.cli`` into one
line naming the problem and the fix, and an exit code: 2 for bad usage or configuration, 1 for an
operation that failed. Nothing else prints a traceback to an operator.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class CesarError(Exception):
    """Base of all operator-facing errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(CesarError):
    """Bad usage or configuration: a missing or unsafe URL, an unknown setting value."""

    exit_code = 2


class OperationFailed(CesarError):
    """The operation was valid but failed: a database unreachable, a command that did not work."""

    exit_code = 1


class RetryExhausted(OperationFailed):
    """A transaction kept failing with SQLSTATE 40001 past the retry bound."""


class Terminated(KeyboardInterrupt):
    """SIGTERM inside :func:`sigterm_unwinds`. A KeyboardInterrupt, so that it unwinds as
    Ctrl-C does: psycopg cancels the query in progress, transactions roll back, leases are
    released in their ``finally``."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside, SIGTERM (``timeout``, ``systemctl stop``) raises :class:`Terminated` in the main
    thread instead of ending the process where it stands: the command cleans up as on Ctrl-C,
    prints what it prints for a failure (a ``--json`` report too) and exits 143. Further
    SIGTERMs are ignored while it cleans up: coreutils' ``timeout`` sends two (to the child,
    then to its process group), and the second must not end the clean-up half-way; SIGKILL
    (``timeout --kill-after``) still ends it. Outside the main thread (where no handler can be
    set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    terminated = False

    def terminate(signum: int, frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        if not terminated:  # terminated: still ignored while the command reports and exits
            signal.signal(signal.SIGTERM, previous)


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line (without ``cesar: error:``) and the exit code the command line gives
    ``exc``: what ``cesar.cli.main`` prints, and what a command's ``--json`` report repeats
    in its ``error`` field, so the two never differ."""
    import psycopg

    from cesar.console import first_line

    if isinstance(exc, CesarError):
        return str(exc), exc.exit_code
    if isinstance(exc, psycopg.Error):
        return f"database error: {first_line(exc)} (SQLSTATE {exc.sqlstate or '?'})", 1
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)", 128 + signal.SIGTERM
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    return (f"internal error: {type(exc).__name__}: {exc} (rerun with CESAR_DEBUG=1 for the "
            "traceback and report it)", 1)
