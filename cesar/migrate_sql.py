"""Splitting a migration file into statements, and what the runner needs to know about each.

The runner executes one statement at a time (to report the failing statement's position, and
because CockroachDB wants each schema change in its own implicit transaction), so it needs the
statement boundaries. This is a small lexer rather than ``sqlparse``: it only has to find the
semicolons outside quotes, dollar quotes and comments, and the first keyword of each statement,
and it must agree with PostgreSQL and CockroachDB on exactly those (nested block comments,
``E''`` escapes, ``$tag$`` bodies), which a general-purpose formatter does not promise.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from cesar.errors import ConfigError

Kind = Literal["ddl", "dml"]

#: First keywords of schema changes: on CockroachDB each runs in its own implicit transaction.
DDL_KEYWORDS = frozenset({"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "TRUNCATE",
                          "REINDEX", "REFRESH"})
#: Transaction control belongs to the runner; a migration file must not contain it.
TXN_KEYWORDS = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE",
                          "ABORT", "PREPARE"})

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_]+")
_IDEMPOTENT = re.compile(
    r"^\s*(CREATE\s+(OR\s+REPLACE\s+|UNIQUE\s+)?\w+(\s+\w+)?\s+IF\s+NOT\s+EXISTS"
    r"|CREATE\s+OR\s+REPLACE\b|DROP\s+\w+(\s+\w+)?\s+IF\s+EXISTS"
    r"|ALTER\s+TABLE\s+(IF\s+EXISTS\s+)?\S+\s+(ADD|DROP)\s+(COLUMN\s+)?IF\s+(NOT\s+)?EXISTS"
    r"|COMMENT\s+ON\b)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Statement:
    """One statement of a file: its 1-based position, the line it starts on, and its text."""

    index: int
    line: int
    sql: str

    @property
    def keyword(self) -> str:
        m = _WORD.match(self.sql)
        return m.group(0).upper() if m else ""

    @property
    def kind(self) -> Kind:
        return "ddl" if self.keyword in DDL_KEYWORDS else "dml"

    @property
    def idempotent(self) -> bool:
        """Whether running it twice is harmless (``IF [NOT] EXISTS``, ``OR REPLACE``); DML is
        judged by the runner's transaction, so only DDL is checked."""
        return self.kind == "dml" or bool(_IDEMPOTENT.match(self.sql))

    def summary(self, width: int = 60) -> str:
        """The statement on one line, shortened for progress output."""
        flat = " ".join(self.sql.split())
        return flat if len(flat) <= width else flat[: width - 1] + "…"


def split(text: str, source: str = "<sql>") -> list[Statement]:
    """The statements of ``text``, without the comments and blank lines between them.

    Raises :class:`ConfigError` naming ``source`` and the line for an unterminated quote or
    comment, and for transaction control (the runner owns the transactions).
    """
    statements: list[Statement] = []
    i, n, line = 0, len(text), 1
    start: int | None = None  # offset of the current statement's first significant character
    start_line = 1

    def flush(end: int) -> None:
        nonlocal start
        if start is not None:
            body = text[start:end].strip()
            if body:
                statements.append(Statement(len(statements) + 1, start_line, body))
        start = None

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
            continue
        if text.startswith("/*", i):
            i, line = _skip_block_comment(text, i, line, source)
            continue
        if c == ";":
            flush(i)
            i += 1
            continue
        if start is None:
            start, start_line = i, line
        if c == "'" or (c in "eE" and text.startswith("'", i + 1)):
            escapes = c != "'"
            i, line = _skip_quoted(text, i + (1 if escapes else 0), line, "'", escapes, source)
            continue
        if c == '"':
            i, line = _skip_quoted(text, i, line, '"', False, source)
            continue
        if c == "$":
            m = _DOLLAR_TAG.match(text, i)
            if m and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                tag = m.group(0)
                end = text.find(tag, m.end())
                if end == -1:
                    raise ConfigError(f"{source}:{line}: unterminated {tag} quote")
                line += text.count("\n", i, end + len(tag))
                i = end + len(tag)
                continue
        if c.isalpha() or c == "_":
            m = _WORD.match(text, i)
            assert m is not None
            i = m.end()
            continue
        i += 1
    flush(n)
    for st in statements:
        if st.keyword in TXN_KEYWORDS:
            raise ConfigError(
                f"{source}:{st.line}: {st.keyword} found; migrations must not control "
                "transactions (the runner does: see docs/migrations.md, execution modes)"
            )
    return statements


def _skip_block_comment(text: str, i: int, line: int, source: str) -> tuple[int, int]:
    depth, start_line, n = 0, line, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i, line
        else:
            if text[i] == "\n":
                line += 1
            i += 1
    raise ConfigError(f"{source}:{start_line}: unterminated /* comment")


def _skip_quoted(
    text: str, i: int, line: int, quote: str, escapes: bool, source: str
) -> tuple[int, int]:
    """Skip from the opening quote at ``i`` past its closing quote (doubled quotes escape)."""
    start_line, n = line, len(text)
    i += 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif escapes and c == "\\":
            i += 2
            continue
        elif c == quote:
            if text.startswith(quote, i + 1):
                i += 2
                continue
            return i + 1, line
        i += 1
    what = "string" if quote == "'" else "quoted identifier"
    raise ConfigError(f"{source}:{start_line}: unterminated {what}")


def prefix_checksum(statements: list[Statement], count: int) -> str:
    """SHA-256 over the text of the first ``count`` statements: what per-statement progress
    records, so that a resumed migration can prove the statements it skips did not change."""
    h = hashlib.sha256()
    for st in statements[:count]:
        h.update(st.sql.encode())
        h.update(b"\x00")
    return h.hexdigest()
