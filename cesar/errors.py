"""Errors an operator can act on.

Every failure that reaches the command line is one of these, turned by ``cesar.cli`` into one
line naming the problem and the fix, and an exit code: 2 for bad usage or configuration, 1 for an
operation that failed. Nothing else prints a traceback to an operator.
"""

from __future__ import annotations


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
