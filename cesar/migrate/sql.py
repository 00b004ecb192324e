"""Splitting a migration file into statements, and what the runner needs to know about each.

The runner executes one statement at a time (to report the failing statement's position, and
because CockroachDB wants each schema change in its own implicit transaction), so it needs the
statement boundaries exactly as the server reads them. They come from PostgreSQL's own code,
through pglast (libpg_query):

- the file is cut into tokens by PostgreSQL's lexer (``pglast.parser.scan``), so quotes,
  ``E''`` escapes, dollar quotes, nested comments and non-ASCII identifiers are PostgreSQL's;
- when PostgreSQL's parser accepts the whole file, its statement boundaries are used
  (``pglast.parser.split``);
- when it does not (CockroachDB-only statements such as ``ALTER TABLE ... SET LOCALITY``, or
  syntax newer than the bundled parser), the tokens are split the way psql splits a script:
  at a ``;`` outside parentheses and outside a ``CREATE FUNCTION/PROCEDURE ... BEGIN ATOMIC ...
  END`` body. ``tests/migrate/test_corpus.py`` checks that this agrees with the parser on
  the SQL scripts PostgreSQL installations ship.

What a server reads differently from a file, or what only psql understands, is refused before
anything runs, with the file, the line and the construct: psql meta-commands (``\\connect``),
``COPY ... FROM stdin`` (its data is not SQL), ``standard_conforming_strings`` turned off
(backslashes would change where strings end), and transaction control (the runner owns the
transactions). A header comment ``-- cesar:no-transaction`` lets a file run outside a
transaction; statements that can never run inside one (``CREATE INDEX CONCURRENTLY``,
``VACUUM``, ...) are refused in a file without it. A header comment ``-- cesar:postgresql-only``
marks a file whose statements exist on PostgreSQL alone (statement-level triggers): on
CockroachDB it is recorded as applied without running any of them.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from cesar.errors import ConfigError

if TYPE_CHECKING:
    from pglast import parser as pg

Kind = Literal["ddl", "dml"]

#: First keywords of schema changes: on CockroachDB each runs in its own implicit transaction.
DDL_KEYWORDS = frozenset({"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "TRUNCATE",
                          "REINDEX", "REFRESH"})
#: The header directive for a file that must run outside a transaction.
NO_TRANSACTION = "no-transaction"
#: The header directive for a file that runs on PostgreSQL only (nothing to do elsewhere).
POSTGRESQL_ONLY = "postgresql-only"
DIRECTIVES = (NO_TRANSACTION, POSTGRESQL_ONLY)

_WORD = re.compile(r"[A-Za-z_]+")
_DIRECTIVE = re.compile(r"^--\s*cesar:\s*(?P<name>.*?)\s*$")
_IDEMPOTENT = re.compile(
    r"^\s*(CREATE\s+(OR\s+REPLACE\s+|UNIQUE\s+)?\w+(\s+\w+)?\s+IF\s+NOT\s+EXISTS"
    r"|CREATE\s+OR\s+REPLACE\b|DROP\s+\w+(\s+\w+)?\s+IF\s+EXISTS"
    r"|ALTER\s+TABLE\s+(IF\s+EXISTS\s+)?\S+\s+(ADD|DROP)\s+(COLUMN\s+)?IF\s+(NOT\s+)?EXISTS"
    r"|COMMENT\s+ON\b)",
    re.IGNORECASE,
)
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_SEMI, _OPEN, _CLOSE, _BACKSLASH = "ASCII_59", "ASCII_40", "ASCII_41", "ASCII_92"
_ON_VALUES = frozenset({"on", "true", "yes", "1", "default"})


def _pg() -> ModuleType:
    """pglast's parser, imported on first use: importing pglast takes most of a second, and
    a run with nothing to do, ``status`` and the API never split a file."""
    from pglast import parser

    return parser


@dataclass(frozen=True)
class Statement:
    """One statement of a file: its 1-based position, the line it starts on, and its text.

    ``no_transaction`` names the construct when the statement can never run inside a
    transaction block (``CREATE INDEX CONCURRENTLY``); such a statement always runs alone."""

    index: int
    line: int
    sql: str
    no_transaction: str | None = None

    @property
    def keyword(self) -> str:
        m = _WORD.match(self.sql)
        return m.group(0).upper() if m else ""

    @property
    def kind(self) -> Kind:
        return "ddl" if self.keyword in DDL_KEYWORDS else "dml"

    @property
    def alone(self) -> bool:
        """Whether per-statement mode runs it in its own implicit transaction."""
        return self.kind == "ddl" or self.no_transaction is not None

    @property
    def idempotent(self) -> bool:
        """Whether running it twice is harmless (``IF [NOT] EXISTS``, ``OR REPLACE``); DML is
        judged by the runner's transaction, so only DDL is checked."""
        return self.kind == "dml" or bool(_IDEMPOTENT.match(self.sql))

    def summary(self, width: int = 60) -> str:
        """The statement on one line, shortened for progress output."""
        flat = " ".join(self.sql.split())
        return flat if len(flat) <= width else flat[: width - 1] + "…"


@dataclass(frozen=True)
class Script:
    """A whole file: its statements, whether it runs inside a transaction, and the one engine
    it is for (None: every engine)."""

    statements: list[Statement]
    transaction: bool = True
    engine: str | None = None

    def for_engine(self, engine: str) -> list[Statement]:
        """The statements to run on ``engine``: none when the file is for another engine."""
        return self.statements if self.engine in (None, engine) else []


def split(text: str, source: str = "<sql>") -> list[Statement]:
    """The statements of ``text``, without the comments and blank lines between them.

    Raises :class:`ConfigError` naming ``source``, the line and the construct for what the
    runner cannot run as the server would (see the module's documentation)."""
    return parse(text, source).statements


def parse(text: str, source: str = "<sql>") -> Script:
    """The statements of ``text`` and its header directives; refusals as :func:`split`."""
    nul = text.find("\x00")
    if nul >= 0:
        # PostgreSQL reads a query as a C string: it would stop there, and so would its lexer.
        raise ConfigError(f"{source}:{text.count(chr(10), 0, nul) + 1}: a NUL character (0x00) "
                          "found; the server cannot receive it in a statement: remove it")
    tokens = _scan(text, source)
    found = _header(text, tokens, source)
    transaction = NO_TRANSACTION not in found
    engine = "postgresql" if POSTGRESQL_ONLY in found else None
    groups = _groups(text, tokens)
    statements: list[Statement] = []
    for group, end in groups:
        first = group[0]
        body = text[first.start:end].strip()
        line = text.count("\n", 0, first.start) + 1
        _refuse(text, group, line, source)
        statements.append(Statement(len(statements) + 1, line, body,
                                    _no_transaction(text, group)))
    if transaction:
        for st in statements:
            if st.no_transaction:
                raise ConfigError(
                    f"{source}:{st.line}: {st.no_transaction} cannot run inside a transaction; "
                    f"add `-- cesar:{NO_TRANSACTION}` to the file's header comment to run it "
                    "statement by statement outside one (see docs/migrations.md, writing a "
                    "migration)"
                )
    return Script(statements, transaction, engine)


def lexer_split(text: str) -> list[str]:
    """The statements by psql's rule on PostgreSQL's tokens alone, never asking the parser:
    what the runner uses for a file the parser rejects (the corpus test compares the two)."""
    pg = _pg()
    significant = [t for t in pg.scan(text) if t.name not in _COMMENTS]
    return _texts(text, significant, _psql_ends(text, significant))


def parser_split(text: str) -> list[str] | None:
    """The statements as PostgreSQL's parser splits them; None when it rejects the text."""
    pg = _pg()
    significant = [t for t in pg.scan(text) if t.name not in _COMMENTS]
    ends = _parser_ends(text, significant)
    return None if ends is None else _texts(text, significant, ends)


def _texts(text: str, tokens: list[pg.Token], ends: set[int]) -> list[str]:
    return [text[group[0].start:end].strip() for group, end in _cut(text, tokens, ends)]


# ------------------------------------------------------------------ tokens
def _scan(text: str, source: str) -> list[pg.Token]:
    pg = _pg()
    try:
        return pg.scan(text)
    except pg.ParseError as exc:
        index = exc.args[1] if len(exc.args) > 1 and exc.args[1] is not None else 0
        # What comes before the error may explain it (COPY data after `FROM stdin`, a psql
        # meta-command): report that construct rather than the lexer's complaint.
        try:
            prefix = pg.scan(text[:index]) if index else []
        except pg.ParseError:
            prefix = []
        for group, _ in _groups(text, prefix):
            _refuse(text, group, text.count("\n", 0, group[0].start) + 1, source)
        line = text.count("\n", 0, index) + 1
        raise ConfigError(f"{source}:{line}: {_scan_problem(str(exc.args[0]))}") from None


def _scan_problem(message: str) -> str:
    for prefix, problem in (("unterminated quoted string", "unterminated string"),
                            ("unterminated quoted identifier", "unterminated quoted identifier"),
                            ("unterminated /* comment", "unterminated /* comment"),
                            ("unterminated dollar-quoted string", "unterminated $ quote")):
        if message.startswith(prefix):
            return problem + message[len(prefix):].replace(" at or near ", " starting ", 1)
    return f"PostgreSQL's lexer cannot read it: {message}"


def _word(text: str, token: pg.Token) -> str | None:
    """The lower-cased word of a keyword or unquoted identifier token, else None."""
    if token.kind != "NO_KEYWORD" or (token.name == "IDENT" and text[token.start] != '"'):
        return text[token.start:token.end + 1].lower()
    return None


def _header(text: str, tokens: list[pg.Token], source: str) -> set[str]:
    """Read ``-- cesar:...`` directives: the set of those found in the header comment."""
    found: set[str] = set()
    in_header = True
    for token in tokens:
        if token.name not in _COMMENTS:
            in_header = False
            continue
        m = _DIRECTIVE.match(text[token.start:token.end + 1].strip())
        if m is None:
            continue
        line = text.count("\n", 0, token.start) + 1
        if m["name"] not in DIRECTIVES:
            raise ConfigError(f"{source}:{line}: unknown directive `-- cesar:{m['name']}`; the "
                              f"known ones are `-- cesar:{NO_TRANSACTION}` and "
                              f"`-- cesar:{POSTGRESQL_ONLY}`")
        if not in_header:
            raise ConfigError(f"{source}:{line}: `-- cesar:{m['name']}` must come before the "
                              "first statement (in the file's header comment)")
        found.add(m["name"])
    return found


def _groups(text: str, tokens: list[pg.Token]) -> list[tuple[list[pg.Token], int]]:
    """The statements as (significant tokens, end offset of the text before its ``;``)."""
    significant = [t for t in tokens if t.name not in _COMMENTS]
    ends = _parser_ends(text, significant)
    if ends is None:
        ends = _psql_ends(text, significant)
    return _cut(text, significant, ends)


def _cut(text: str, significant: list[pg.Token], ends: set[int]
         ) -> list[tuple[list[pg.Token], int]]:
    out: list[tuple[list[pg.Token], int]] = []
    current: list[pg.Token] = []
    for i, token in enumerate(significant):
        if i in ends:
            if current:
                out.append((current, token.start))
            current = []
        else:
            current.append(token)
    if current:
        out.append((current, len(text)))
    return out


def _parser_ends(text: str, tokens: list[pg.Token]) -> set[int] | None:
    """Indexes of the ``;`` tokens that end statements for PostgreSQL's parser (those outside
    every statement it found); None when the parser rejects the file."""
    pg = _pg()
    try:
        slices = pg.split(text, with_parser=True, only_slices=True)
    except pg.ParseError:
        return None
    starts = [s.start for s in slices]
    ends: set[int] = set()
    for i, token in enumerate(tokens):
        if token.name != _SEMI:
            continue
        k = bisect.bisect_right(starts, token.start) - 1
        if k < 0 or token.start >= slices[k].stop:
            ends.add(i)
    return ends


def _psql_ends(text: str, tokens: list[pg.Token]) -> set[int]:
    """psql's rule on PostgreSQL's tokens: a ``;`` ends a statement unless it is inside
    parentheses or inside the ``BEGIN ... END`` of a statement that starts
    ``CREATE [OR REPLACE] FUNCTION|PROCEDURE`` (``CASE ... END`` nests inside it)."""
    ends: set[int] = set()
    depth = begin = 0
    words: list[str] = []
    for i, token in enumerate(tokens):
        name = token.name
        if name == _SEMI:
            if depth == 0 and begin == 0:
                ends.add(i)
                words = []
            continue
        if name == _OPEN:
            depth += 1
        elif name == _CLOSE:
            depth = max(0, depth - 1)
        word = _word(text, token)
        if word is None:
            continue
        words.append(word)
        head = words[:4]
        routine = head[:1] == ["create"] and (
            head[1:2] in (["function"], ["procedure"])
            or (head[1:3] == ["or", "replace"] and head[3:4] in (["function"], ["procedure"])))
        if routine and depth == 0:
            if word == "begin" or word == "case" and begin:
                begin += 1
            elif word == "end" and begin:
                begin -= 1
    return ends


# ------------------------------------------------------------------ what each statement is
def _words(text: str, group: list[pg.Token]) -> list[str | None]:
    return [_word(text, t) for t in group]


def _refuse(text: str, group: list[pg.Token], line: int, source: str) -> None:
    """Refuse what the runner cannot run as the server would, naming the construct."""
    for token in group:
        if token.name == _BACKSLASH:
            at = text.count("\n", 0, token.start) + 1
            command = re.match(r"\\\S*", text[token.start:])
            raise ConfigError(
                f"{source}:{at}: psql meta-command {command.group(0) if command else chr(92)} "
                "found; a migration is plain SQL sent to the server (psql's commands are not), "
                "write it as SQL"
            )
    words = _words(text, group)
    first = words[0] or ""
    second = words[1] if len(words) > 1 else None
    if first == "copy" and _copy_stdio(words):
        raise ConfigError(
            f"{source}:{line}: COPY ... {_copy_stdio(words)} found; its data would have to come "
            "from the client, which the runner does not send: load the rows with INSERT "
            "statements"
        )
    txn = _transaction_control(first, second, words)
    if txn:
        raise ConfigError(
            f"{source}:{line}: {txn} found; migrations must not control transactions (the "
            "runner does: see docs/migrations.md, execution modes)"
        )
    if "standard_conforming_strings" in _names(text, group) and not _scs_on(text, group):
        raise ConfigError(
            f"{source}:{line}: standard_conforming_strings turned off; backslashes in '...' "
            "strings would change where they end for the server but not for the runner, and "
            "CockroachDB supports only on: write E'...' strings instead"
        )


def _copy_stdio(words: list[str | None]) -> str | None:
    for a, b in zip(words, words[1:], strict=False):
        if a == "from" and b == "stdin":
            return "FROM stdin"
        if a == "to" and b == "stdout":
            return "TO stdout"
    return None


def _transaction_control(first: str, second: str | None, words: list[str | None]) -> str | None:
    if first in ("begin", "start", "commit", "end", "rollback", "savepoint", "release",
                 "abort"):
        return first.upper()
    if first == "prepare" and second == "transaction":
        return "PREPARE TRANSACTION"
    return None


def _names(text: str, group: list[pg.Token]) -> set[str]:
    """Identifiers and string constants of a statement, lower-cased and unquoted."""
    out = set()
    for t in group:
        raw = text[t.start:t.end + 1]
        if t.name == "SCONST" and raw.startswith("'"):
            out.add(raw[1:-1].lower())
        elif t.name == "IDENT":
            out.add(raw.strip('"').lower())
    return out


def _scs_on(text: str, group: list[pg.Token]) -> bool:
    """Whether a statement naming standard_conforming_strings leaves it on: ``SET ... = on``,
    ``RESET``, ``SHOW`` (what pg_dump writes); anything else is refused."""
    words = [text[t.start:t.end + 1].strip("'\"").lower() for t in group]
    if words[0] in ("reset", "show"):
        return True
    if words[0] == "set":
        rest = [w for w in words[1:] if w not in ("session", "local")]
        return (len(rest) == 3 and rest[0] == "standard_conforming_strings"
                and rest[1] in ("=", "to") and rest[2] in _ON_VALUES)
    return False


def _no_transaction(text: str, group: list[pg.Token]) -> str | None:
    """The construct's name when the statement can never run in a transaction block
    (PostgreSQL's PreventInTransactionBlock), else None."""
    words = [w or "" for w in _words(text, group)]
    head = " ".join(words[:4])
    if words[0] == "vacuum":
        return "VACUUM"
    if words[0] in ("create", "drop") and "concurrently" in words[:5] and "index" in words[:4]:
        return f"{words[0].upper()} INDEX CONCURRENTLY"
    if words[0] == "reindex" and ("concurrently" in words
                                  or words[1:2] in (["database"], ["system"])):
        return "REINDEX " + ("CONCURRENTLY" if "concurrently" in words else words[1].upper())
    if words[0] == "alter" and "detach" in words and "concurrently" in words:
        return "DETACH PARTITION CONCURRENTLY"
    for construct in ("create database", "drop database", "create tablespace",
                      "drop tablespace", "alter system", "create subscription",
                      "drop subscription", "discard all"):
        if head.startswith(construct):
            return construct.upper()
    if words[0] == "cluster" and all(w in ("cluster", "verbose") for w in words):
        return "CLUSTER (without a table)"
    return None


def prefix_checksum(statements: list[Statement], count: int) -> str:
    """SHA-256 over the text of the first ``count`` statements: what per-statement progress
    records, so that a resumed migration can prove the statements it skips did not change."""
    h = hashlib.sha256()
    for st in statements[:count]:
        h.update(st.sql.encode())
        h.update(b"\x00")
    return h.hexdigest()
