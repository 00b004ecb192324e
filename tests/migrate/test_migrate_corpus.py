"""The splitter against PostgreSQL's parser, on PostgreSQL's own regression scripts.

The runner takes statement boundaries from PostgreSQL's parser when it accepts a file, and from
psql's rule applied to PostgreSQL's tokens when it does not (CockroachDB-only statements). This
test shows the second agrees with the first on real SQL: every statement of the corpus
(``corpus/postgres_regress``, PostgreSQL License) cut by the lexer-only rule must be exactly one
statement for the parser, neither two glued together nor one cut in two.

The regression scripts are psql scripts, and deliberately contain statements that do not parse:
psql meta-commands and the data of ``COPY ... FROM stdin`` are removed first (the runner refuses
both), and a statement the parser rejects counts as agreeing only if it does not become a valid
statement when joined with the next one (which would mean it had been cut too early).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pglast import parser as pg

from cesar.migrate_sql import lexer_split, parser_split, split

CORPUS = Path(__file__).parent / "corpus" / "postgres_regress"
FILES = sorted(CORPUS.glob("*.sql"))

_COPY_STDIN = re.compile(r"^\s*copy\b.*\bfrom\s+stdin\b.*;\s*(--.*)?$", re.IGNORECASE)
_TRAILING_META = re.compile(r"\s\\(g\w*|crosstabview)(\s.*)?$")


def psql_free(text: str) -> str:
    """The script without psql's own input (meta-command lines, COPY data) and without the
    lines the lexer rejects (line numbers stay those of the file)."""
    out: list[str] = []
    in_copy = False
    for line in text.splitlines():
        if in_copy:
            in_copy = line != "\\."
            out.append("")
        elif line.lstrip().startswith("\\"):
            out.append("")
        else:
            in_copy = bool(_COPY_STDIN.match(line))
            # `SELECT ... \gset` ends the query like a `;` would
            out.append(_TRAILING_META.sub(";", line))
    return lexable("\n".join(out) + "\n")


def lexable(text: str) -> str:
    """Blank each line PostgreSQL's lexer stops at (a few scripts test the lexer's own errors,
    such as an invalid Unicode escape), so the rest can be compared."""
    for _ in range(50):
        try:
            pg.scan(text)
            return text
        except pg.ParseError as exc:
            index = exc.args[1] or 0
            start = text.rfind("\n", 0, index) + 1
            end = text.find("\n", index)
            text = text[:start] + text[end:]  # the line goes, its newline stays
    raise AssertionError("too many lexer errors: the preprocessing is wrong")


def _parses_as(text: str) -> int | None:
    try:
        return len(pg.split(text, with_parser=True, only_slices=True))
    except pg.ParseError:
        return None


def compare(text: str) -> tuple[int, int, list[str]]:
    """(statements the parser confirms, statements it rejects on their own, disagreements)."""
    pieces = lexer_split(text)
    confirmed = rejected = 0
    wrong: list[str] = []
    for i, piece in enumerate(pieces):
        n = _parses_as(piece)
        if n == 1:
            confirmed += 1
        elif n is not None:
            wrong.append(f"{n} statements glued together: {piece[:200]!r}")
        elif i + 1 < len(pieces) and _parses_as(f"{piece};{pieces[i + 1]}") == 1:
            wrong.append(f"cut in two: {piece[:120]!r} / {pieces[i + 1][:80]!r}")
        else:
            rejected += 1
    return confirmed, rejected, wrong


def test_the_corpus_is_there() -> None:
    assert len(FILES) == 11
    assert (CORPUS / "COPYRIGHT").is_file()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_lexer_split_agrees_with_the_parser_on_postgresql_regression_scripts(path: Path) -> None:
    text = psql_free(path.read_text(encoding="utf-8"))
    confirmed, rejected, wrong = compare(text)
    assert wrong == []
    # most of each script is valid SQL: the comparison must have had something to compare
    assert confirmed > 4 * rejected, (confirmed, rejected)


def test_the_corpus_in_figures() -> None:
    """The whole corpus: how many statements were compared (a floor, so that a broken
    preprocessing cannot make the comparison vacuous)."""
    totals = [compare(psql_free(p.read_text(encoding="utf-8"))) for p in FILES]
    confirmed = sum(t[0] for t in totals)
    assert sum(len(t[2]) for t in totals) == 0
    assert confirmed > 3500, confirmed


def test_where_the_parser_accepts_a_whole_file_both_splits_are_equal() -> None:
    """The parser path and the lexer path give the same statements for every construct the
    issue lists, in one file the parser accepts."""
    text = (CORPUS.parent / "pg_dump_style" / "001_baseline.up.sql").read_text(encoding="utf-8")
    assert parser_split(text) is not None
    assert lexer_split(text) == parser_split(text) == [s.sql for s in split(text)]
