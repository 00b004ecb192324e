"""The splitter against PostgreSQL's parser, on the SQL PostgreSQL installations ship.

The runner takes statement boundaries from PostgreSQL's parser when it accepts a file, and from
psql's rule applied to PostgreSQL's tokens when it does not (CockroachDB-only statements). This
test shows the second agrees with the first on real SQL nobody here wrote: every statement cut
by the lexer-only rule must be exactly one statement for the parser, neither two glued together
nor one cut in two.

The corpus is read at run time from the PostgreSQL installations on the machine, nothing of it is
kept in the repository: the share directory of the embedded server (the ``pgserver`` package:
``system_functions.sql`` with its ``BEGIN ATOMIC`` bodies, ``system_views.sql`` with rules,
``information_schema.sql``, ``snowball_create.sql``, and the extension scripts) and, when
present, Debian's ``/usr/share/postgresql/<version>/`` (CI installs Debian's ``postgresql``),
deduplicated by content.

Two things are done to a file before comparing, both what PostgreSQL itself does before it runs
one: extension scripts start with a psql guard (``\\echo Use "CREATE EXTENSION ..." \\quit``,
so that a file fed to psql by mistake stops there); the server never sees those lines, and the
runner refuses them, so meta-command lines are blanked. ``CREATE EXTENSION`` replaces
``@extschema@``-style placeholders before running a script; they are replaced by a schema name.
A statement the parser rejects on its own (none is expected) counts as agreeing only if it does
not become one valid statement when joined with the next (which would mean it was cut too early).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from pglast import parser as pg

from cesar.migrate.sql import lexer_split, parser_split, split
from tests.helpers import require

#: Below this many statements a source is not what this test was written against (a missing
#: directory, a glob that matches nothing, a preprocessing that blanks everything): fail rather
#: than compare too little. Measured: 888 (pgserver's PostgreSQL 16), 3,836 (Debian's 15).
MIN_STATEMENTS = {"embedded": 700, "debian": 3000}

_PLACEHOLDER = re.compile(r"@(extschema(:\w+)?|extowner)@")


def embedded_share() -> list[Path]:
    """The embedded server's share directory (the ``pgserver`` package)."""
    import pgserver

    d = Path(pgserver.__file__).parent / "pginstall" / "share" / "postgresql"
    return [d] if (d / "system_views.sql").is_file() else []


def debian_shares() -> list[Path]:
    """Debian's ``/usr/share/postgresql/<version>/``."""
    return [d for d in sorted(Path("/usr/share/postgresql").glob("[0-9]*"))
            if (d / "system_views.sql").is_file()]


def share_dirs() -> list[Path]:
    return embedded_share() + debian_shares()


def corpus_files(dirs: list[Path] | None = None) -> list[Path]:
    """Every SQL script of those installations, each distinct content once."""
    seen: set[str] = set()
    files: list[Path] = []
    for d in share_dirs() if dirs is None else dirs:
        for path in sorted(d.glob("*.sql")) + sorted((d / "extension").glob("*.sql")):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                files.append(path)
    return files


def as_the_server_reads_it(text: str) -> str:
    """The script as ``CREATE EXTENSION`` hands it to the server: psql meta-command lines
    blanked (line numbers stay those of the file), placeholders replaced."""
    lines = ["" if line.lstrip().startswith("\\") else line for line in text.splitlines()]
    return _PLACEHOLDER.sub("public", "\n".join(lines) + "\n")


def _parses_as(text: str) -> int | None:
    try:
        return len(pg.split(text, with_parser=True, only_slices=True))
    except pg.ParseError:
        return None


def compare(text: str, pieces: list[str] | None = None) -> tuple[int, int, list[str]]:
    """(statements the parser confirms, statements it rejects on their own, disagreements), for
    the lexer-only split or for the given pieces."""
    pieces = lexer_split(text) if pieces is None else pieces
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


@pytest.mark.parametrize("source", ["embedded", "debian"])
def test_lexer_split_agrees_with_the_parser_on_the_sql_postgresql_ships(source: str) -> None:
    dirs = embedded_share() if source == "embedded" else debian_shares()
    require(bool(dirs), f"no {source} PostgreSQL share directory (pgserver's, or Debian's "
            "/usr/share/postgresql/N from the postgresql package)")
    files = corpus_files(dirs)
    confirmed = rejected = 0
    wrong: list[str] = []
    for path in files:
        c, r, w = compare(as_the_server_reads_it(path.read_text(encoding="utf-8")))
        confirmed += c
        rejected += r
        wrong.extend(f"{path}: {line}" for line in w)
    assert wrong == []
    assert rejected == 0, rejected
    assert confirmed >= MIN_STATEMENTS[source], (confirmed, len(files))
    # the construct a splitter looking only for semicolons outside quotes gets wrong is in it
    assert any("BEGIN ATOMIC" in p.read_text(encoding="utf-8") for p in files)


def test_meta_commands_are_what_the_preprocessing_removes() -> None:
    """Blanking psql's lines is needed (the parser rejects them) and removes nothing else."""
    files = [p for p in corpus_files() if "\\quit" in p.read_text(encoding="utf-8")]
    require(bool(files), "no extension script with a psql guard in the PostgreSQL share dirs")
    text = files[0].read_text(encoding="utf-8")
    assert _parses_as(text) is None
    cleaned = as_the_server_reads_it(text)
    assert cleaned.count("\n") == text.count("\n") + (not text.endswith("\n"))
    assert [ln for ln in cleaned.splitlines() if ln] == [
        _PLACEHOLDER.sub("public", ln) for ln in text.splitlines()
        if ln and not ln.lstrip().startswith("\\")]


def test_where_the_parser_accepts_a_whole_file_both_splits_are_equal() -> None:
    """The parser path and the lexer path give the same statements for every construct the
    pg_dump-style set has, in one file the parser accepts."""
    text = (Path(__file__).parent / "corpus" / "pg_dump_style" / "001_baseline.up.sql").read_text(
        encoding="utf-8")
    assert parser_split(text) is not None
    assert lexer_split(text) == parser_split(text) == [s.sql for s in split(text)]


@pytest.mark.parametrize("name", ["system_functions.sql", "system_views.sql"])
def test_the_corpus_has_what_a_hand_written_splitter_gets_wrong(name: str) -> None:
    """``BEGIN ATOMIC`` bodies and rules with several actions are where a splitter that only
    looks for semicolons outside quotes cuts too early."""
    paths = [d / name for d in share_dirs()]
    require(bool(paths), "no PostgreSQL share directory (pgserver's or Debian's)")
    text = paths[0].read_text(encoding="utf-8")
    assert re.search(r"BEGIN ATOMIC|DO\s+(ALSO|INSTEAD)", text, re.IGNORECASE)
    assert compare(as_the_server_reads_it(text))[2] == []
