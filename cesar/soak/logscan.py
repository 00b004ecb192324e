"""Every error line of every log, matched to the fault that explains it.

Three log formats are read:

- PostgreSQL's (``log_line_prefix = '%m [%p] '``): ``2026-11-30 11:50:01.123 UTC [42] FATAL:  ...``;
  severities ERROR, FATAL and PANIC are errors; DETAIL/HINT/STATEMENT/CONTEXT lines belong to
  the entry before them.
- The API's (``cesar.api.server.log_config``): ``2026-11-30 11:50:01,123 ERROR name: ...``;
  ERROR and CRITICAL are errors, and so is an access line answering 5xx.
- The soak's own logs (the sync runs' output, the writers, the faults):
  ``2026-11-30T11:50:01.123456+00:00 ERROR source: ...``; a ``cesar: error:`` anywhere in the
  message is an error at any level.

A line without a timestamp continues the entry before it, except a ``Traceback`` that follows
no error: that is an error of its own (a crash printed straight to stderr).

An error is *explained* when it falls inside a fault's window and matches one of the patterns
that fault declares; anything else is unexplained and fails the soak.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

_PG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+) \[\d+\] ([A-Z]+):\s+(.*)$")
_API = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) ([A-Z]+) (\S+): (.*)$")
_OWN = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d:\d\d) ([A-Z]+) (\S+): (.*)$")
_ACCESS_5XX = re.compile(r'access: .*" 5\d\d\s*$')
_PG_ERRORS = frozenset({"ERROR", "FATAL", "PANIC"})
_PY_ERRORS = frozenset({"ERROR", "CRITICAL"})


@dataclass
class ErrorLine:
    source: str  # postgresql, api, or the soak's component (writer-local, sync-cron, ...)
    at: datetime  # UTC
    text: str  # the line (and its continuation lines, joined by " | ")
    explained_by: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"source": self.source, "at": self.at.isoformat(), "line": self.text[:500],
                "explained_by": self.explained_by}


@dataclass
class Window:
    """A fault's window and the error lines it explains: regular expressions searched in
    ``"<source>: <line>"``, so that a pattern can name the log it applies to."""

    name: str
    start: datetime
    end: datetime
    explains: Sequence[str] = field(default_factory=tuple)

    def covers(self, line: ErrorLine) -> bool:
        return (self.start <= line.at <= self.end
                and any(re.search(p, f"{line.source}: {line.text}") for p in self.explains))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _pg_time(stamp: str, zone: str) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
    naive = datetime.strptime(stamp, fmt)
    if zone.upper() in ("UTC", "GMT", "Z"):
        return naive.replace(tzinfo=UTC)
    return naive.astimezone(UTC)  # the machine's zone: the server logs in it by default


def parse(lines: Iterable[str], source: str) -> list[ErrorLine]:
    """The error entries of one log (any of the three formats, mixed lines allowed)."""
    errors: list[ErrorLine] = []
    last_at: datetime | None = None
    current: ErrorLine | None = None  # the error entry continuation lines belong to
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        at, is_error, new_entry, component = _classify(line)
        if new_entry:
            last_at = at or last_at
            if is_error and at is not None:
                current = ErrorLine(component or source, at, line)
                errors.append(current)
            elif current is not None and _is_pg_continuation(line):
                current.text += " | " + line
            else:
                current = None
            continue
        # No timestamp: a continuation, or a crash written straight to stderr.
        if current is not None:
            current.text += " | " + line.strip()
        elif line.startswith("Traceback") or line.startswith("cesar: error:"):
            current = ErrorLine(source, last_at or datetime.now(UTC), line)
            errors.append(current)
    return errors


def _is_pg_continuation(line: str) -> bool:
    m = _PG.match(line)
    return bool(m and m.group(3) in ("DETAIL", "HINT", "STATEMENT", "CONTEXT", "QUERY"))


def _classify(line: str) -> tuple[datetime | None, bool, bool, str | None]:
    """(timestamp, is an error, starts a new entry, the soak component that wrote it)."""
    m = _PG.match(line)
    if m:
        return _pg_time(m.group(1), m.group(2)), m.group(3) in _PG_ERRORS, True, None
    m = _API.match(line)
    if m:
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)
        is_error = m.group(2) in _PY_ERRORS or bool(_ACCESS_5XX.search(line))
        return at, is_error, True, None
    m = _OWN.match(line)
    if m:
        at = _utc(datetime.fromisoformat(m.group(1)))
        is_error = m.group(2) in _PY_ERRORS or "cesar: error:" in m.group(4)
        return at, is_error, True, m.group(3)
    return None, False, False, None


def scan(logs: dict[str, Path]) -> list[ErrorLine]:
    """The error entries of every log file (``source name -> path``); missing files: none."""
    out: list[ErrorLine] = []
    for source, path in logs.items():
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                out.extend(parse(f, source))
        except FileNotFoundError:
            continue
    return sorted(out, key=lambda e: e.at)


def match(errors: Iterable[ErrorLine], windows: Sequence[Window],
          slack: timedelta = timedelta(seconds=0)) -> list[ErrorLine]:
    """Mark each error with the first window explaining it; return the unexplained ones."""
    unexplained = []
    for error in errors:
        for window in windows:
            widened = Window(window.name, window.start - slack, window.end + slack,
                             window.explains)
            if widened.covers(error):
                error.explained_by = window.name
                break
        else:
            unexplained.append(error)
    return unexplained
