"""The statement splitter: boundaries, lines and kinds, checked against PostgreSQL itself."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cesar.errors import ConfigError
from cesar.migrate.sql import prefix_checksum, split


def test_semicolons_inside_quotes_comments_and_dollar_bodies_do_not_split() -> None:
    text = """-- a comment; with a semicolon
CREATE TABLE t (a TEXT DEFAULT 'x;y', "odd;name" INT);  /* block; /* nested; */ still */
INSERT INTO t (a) VALUES (E'it\\'s; fine'), ('it''s; fine');
CREATE FUNCTION f() RETURNS INT AS $body$ SELECT 1; $body$ LANGUAGE sql;
DO $$ BEGIN PERFORM 1; END $$;
SELECT $1
"""
    statements = split(text)
    assert [s.sql.split()[0] for s in statements] == ["CREATE", "INSERT", "CREATE", "DO", "SELECT"]
    assert [s.line for s in statements] == [2, 3, 4, 5, 6]
    assert [s.index for s in statements] == [1, 2, 3, 4, 5]
    assert statements[0].sql.endswith('"odd;name" INT)')
    assert [s.kind for s in statements] == ["ddl", "dml", "ddl", "dml", "dml"]


def test_blank_and_comment_only_segments_are_not_statements() -> None:
    assert split("-- nothing\n;;\n/* at all */\n  ;\n") == []


@pytest.mark.parametrize(("text", "problem"), [
    ("SELECT 'open", "unterminated string starting \"'open\""),
    ('SELECT "open', "unterminated quoted identifier starting \"\"open\""),
    ("SELECT 1; /* open", "unterminated /* comment starting \"/* open\""),
    ("SELECT $q$ open", "unterminated $ quote starting \"$q$ open\""),
])
def test_unterminated_constructs_name_the_file_and_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        split(text, "f.sql")
    assert str(info.value) == f"f.sql:1: {problem}"


@pytest.mark.parametrize("keyword", ["BEGIN", "commit", "ROLLBACK", "START TRANSACTION",
                                     "SAVEPOINT s"])
def test_transaction_control_is_refused(keyword: str) -> None:
    with pytest.raises(ConfigError) as info:
        split(f"SELECT 1;\n{keyword};\n", "f.sql")
    assert str(info.value).startswith(f"f.sql:2: {keyword.split()[0].upper()} found")


@pytest.mark.parametrize(("sql", "idempotent"), [
    ("CREATE TABLE IF NOT EXISTS t (id INT)", True),
    ("CREATE TABLE t (id INT)", False),
    ("CREATE UNIQUE INDEX IF NOT EXISTS i ON t (id)", True),
    ("CREATE INDEX i ON t (id)", False),
    ("CREATE OR REPLACE VIEW v AS SELECT 1", True),
    ("DROP TABLE IF EXISTS t", True),
    ("DROP VIEW v", False),
    ("ALTER TABLE t ADD COLUMN IF NOT EXISTS c INT", True),
    ("ALTER TABLE t ADD COLUMN c INT", False),
    ("INSERT INTO t VALUES (1)", True),  # DML: its transaction makes it atomic
])
def test_idempotency_of_ddl(sql: str, idempotent: bool) -> None:
    assert split(sql)[0].idempotent is idempotent


def test_prefix_checksum_covers_exactly_the_first_statements() -> None:
    a = split("SELECT 1; SELECT 2; SELECT 3;")
    b = split("SELECT 1; SELECT 2; SELECT 4;")
    assert prefix_checksum(a, 2) == prefix_checksum(b, 2)
    assert prefix_checksum(a, 3) != prefix_checksum(b, 3)
    assert prefix_checksum(a, 0) == prefix_checksum([], 0)


# Statement bodies that hide semicolons from a naive split, each valid SQL on its own.
_atoms = st.sampled_from([
    "SELECT 1", "SELECT 'a;b'", "SELECT 'it''s;'", 'SELECT 1 AS "x;y"', "SELECT $$;$$",
    "SELECT $t$ a;b $t$", "SELECT E'\\';'", "SELECT /* ; */ 2", "SELECT 3 -- ;\n",
    "SELECT length('--;')",
])


@settings(max_examples=40, deadline=None)
@given(st.lists(_atoms, min_size=1, max_size=6),
       st.lists(st.sampled_from(["\n", " ", "\n\n", "\n-- note;\n", "/* ; */"]), min_size=6,
                max_size=6))
def test_split_agrees_with_postgresql_on_random_scripts(
    pg_url_for_splitter: str, bodies: list[str], gaps: list[str]
) -> None:
    """Each piece the splitter returns is one statement for the server, with the same result
    as the whole script run at once."""
    script = "".join(f"{gaps[i]}{body};" for i, body in enumerate(bodies))
    statements = split(script)
    assert len(statements) == len(bodies)
    with psycopg.connect(pg_url_for_splitter, autocommit=True) as conn:
        for statement, body in zip(statements, bodies, strict=True):
            assert conn.execute(statement.sql).fetchall() == conn.execute(body).fetchall()


@pytest.fixture(scope="module")
def pg_url_for_splitter(pg_stack) -> str:  # type: ignore[no-untyped-def]
    return pg_stack.local_url


def test_cockroachdb_only_statements_split_with_postgresql_tokens() -> None:
    """PostgreSQL's parser rejects these, so the split falls back to psql's rule on
    PostgreSQL's tokens, which still keeps BEGIN ATOMIC bodies and rule actions whole."""
    text = """CREATE TABLE IF NOT EXISTS pings (id UUID PRIMARY KEY, note STRING[])
  LOCALITY REGIONAL BY ROW;
ALTER TABLE agents SET LOCALITY REGIONAL BY ROW;
SELECT * FROM agents@agents_pkey WHERE note = 'a;b';
CREATE FUNCTION f(a INT) RETURNS INT LANGUAGE SQL
  BEGIN ATOMIC SELECT a; SELECT CASE WHEN a > 0 THEN 1 END; END;
CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO l VALUES (1); INSERT INTO l VALUES (2));
CREATE TABLE café (crème TEXT DEFAULT 'brûlée');
"""
    from cesar.migrate.sql import parser_split

    assert parser_split(text) is None
    statements = split(text)
    assert [s.line for s in statements] == [1, 3, 4, 5, 7, 8]
    assert statements[3].sql.endswith("SELECT CASE WHEN a > 0 THEN 1 END; END")
    assert statements[4].sql.endswith("INSERT INTO l VALUES (2))")
    assert statements[5].sql == "CREATE TABLE café (crème TEXT DEFAULT 'brûlée')"


@pytest.mark.parametrize("statement", [
    "PREPARE add_note (int) AS SELECT $1", "CREATE TABLE ñandú (id INT)", "SELECT 'é' AS café",
])
def test_statements_the_old_splitter_refused_or_crashed_on_are_one_statement(
    statement: str
) -> None:
    assert [s.sql for s in split(f"{statement};\n")] == [statement]


@pytest.mark.parametrize(("header", "transaction"), [
    ("-- cesar:no-transaction\n", False),
    ("--\n-- Built concurrently.\n-- cesar: no-transaction\n/* more */\n", False),
    ("-- no-transaction, said in prose only\n", True),
])
def test_the_no_transaction_header(header: str, transaction: bool) -> None:
    from cesar.migrate.sql import parse

    script = parse(f"{header}CREATE INDEX IF NOT EXISTS i ON t (a);\n")
    assert script.transaction is transaction


@pytest.mark.parametrize(("text", "message"), [
    ("-- cesar:notransaction\nSELECT 1;", "f.sql:1: unknown directive `-- cesar:notransaction`; "
     "the known ones are `-- cesar:no-transaction` and `-- cesar:postgresql-only`"),
    ("-- cesar: no-transaction, please\nSELECT 1;", "f.sql:1: unknown directive `-- "
     "cesar:no-transaction, please`; the known ones are `-- cesar:no-transaction` and "
     "`-- cesar:postgresql-only`"),
    ("SELECT 1;\n-- cesar:no-transaction\nSELECT 2;", "f.sql:2: `-- cesar:no-transaction` must "
     "come before the first statement (in the file's header comment)"),
    ("SELECT 1;\nSELECT E'\\u00';", "f.sql:2: PostgreSQL's lexer cannot read it: invalid "
     "Unicode escape"),
])
def test_misplaced_or_unknown_directives_and_lexer_errors_are_refused(text: str,
                                                                      message: str) -> None:
    with pytest.raises(ConfigError) as info:
        split(text, "f.sql")
    assert str(info.value) == message


@pytest.mark.parametrize(("sql", "construct"), [
    ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", "CREATE INDEX CONCURRENTLY"),
    ("DROP INDEX CONCURRENTLY IF EXISTS i", "DROP INDEX CONCURRENTLY"),
    ("REINDEX (VERBOSE) TABLE CONCURRENTLY t", "REINDEX CONCURRENTLY"),
    ("VACUUM (ANALYZE) t", "VACUUM"),
    ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", "DETACH PARTITION CONCURRENTLY"),
    ("CREATE DATABASE other", "CREATE DATABASE"),
    ("ALTER SYSTEM SET work_mem = '8MB'", "ALTER SYSTEM"),
    ("CLUSTER", "CLUSTER (without a table)"),
    ("CREATE INDEX i ON t (a)", None),
    ("CLUSTER t USING i", None),
    ("ANALYZE t", None),
])
def test_statements_that_can_never_run_in_a_transaction_are_recognised(
    sql: str, construct: str | None
) -> None:
    from cesar.migrate.sql import parse

    assert parse(f"-- cesar:no-transaction\n{sql};\n").statements[0].no_transaction == construct


def test_a_postgresql_only_file_runs_nothing_on_cockroachdb() -> None:
    from cesar.migrate.sql import parse

    script = parse("-- cesar:postgresql-only\n-- statement-level triggers\n"
                   "CREATE TABLE IF NOT EXISTS t (id INT);\nSELECT 1;\n", "f.sql")
    assert script.engine == "postgresql" and script.transaction is True
    assert [s.sql for s in script.for_engine("postgresql")] == [
        "CREATE TABLE IF NOT EXISTS t (id INT)", "SELECT 1"]
    assert script.for_engine("cockroachdb") == []
    assert parse("SELECT 1;\n").for_engine("cockroachdb")[0].sql == "SELECT 1"
