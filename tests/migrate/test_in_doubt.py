"""A statement whose commit is in doubt (SQLSTATE 40003, statement_completion_unknown).

CockroachDB answers 40003 when it cannot say whether a statement committed (an ambiguous
result). PostgreSQL never does on its own, so the tests inject it: a function the migration
calls raises it (``RAISE ... USING ERRCODE = '40003'``) while a marker table exists. On
PostgreSQL the failed statement is then rolled back; "it did commit" is what the test makes true
by creating the statement's object itself before the next run, as CockroachDB would have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PgStack, query

INJECT = """
CREATE FUNCTION public.maybe_ambiguous() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  IF to_regclass('public.inject_40003') IS NOT NULL THEN
    RAISE EXCEPTION 'result is ambiguous (injected by the test)' USING ERRCODE = '40003';
  END IF;
  RETURN 1;
END $$;
CREATE TABLE public.inject_40003 (on_ boolean);
"""

UP = """\
-- 900_doubt: the second statement's commit is in doubt.
CREATE TABLE IF NOT EXISTS doubt_a (id INT PRIMARY KEY);

CREATE TABLE doubt_b AS SELECT public.maybe_ambiguous() AS n;

CREATE INDEX doubt_b_n_idx ON doubt_b (n);
"""
DOWN = "DROP TABLE IF EXISTS doubt_b;\nDROP TABLE IF EXISTS doubt_a;\n"


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def _superuser(pg_stack: PgStack, url: str, sql: str) -> None:
    with pg_stack.superuser(_dbname(url)) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _row(url: str) -> tuple[Any, ...]:
    return query(url, "SELECT status, statements_done, error_sqlstate, error_statement, "
                      "resumable FROM schema_migrations WHERE name = '900_doubt'")[0]


def _setup(pg_stack: PgStack, url: str, migrations: Path) -> Path:
    _superuser(pg_stack, url, INJECT)
    path = migrations / "900_doubt.up.sql"
    path.write_text(UP)
    (migrations / "900_doubt.down.sql").write_text(DOWN)
    return path


@pytest.mark.parametrize("committed", [False, True], ids=["did-not-commit", "did-commit"])
def test_a_statement_in_doubt_is_recorded_as_such_and_the_next_run_settles_it(
    pg_stack: PgStack, fresh_db: str, migrations: Path, cli, committed: bool
) -> None:
    path = _setup(pg_stack, fresh_db, migrations)
    args = ("--url", fresh_db, "--migrations-dir", str(migrations), "--mode", "per-statement")
    first = cli("up", *args)
    assert first.code == 1
    assert first.err.count("\n") == 1 and "Traceback" not in first.err
    assert (f"migration 900_doubt: statement 2 ({path}:4) is in doubt: the server could not say "
            "whether it committed (SQLSTATE 40003: result is ambiguous (injected by the test)); "
            "statement 1 is done; `cesar migrate up` runs it again and accepts it as done if "
            "its effect is already there") in first.err
    assert _row(fresh_db) == ("failed", 1, "40003", 2, True)
    detail = query(fresh_db, "SELECT detail FROM schema_migration_events "
                             "WHERE migration = '900_doubt' AND event = 'fail'")[0][0]
    assert detail["in_doubt"] is True and detail["sqlstate"] == "40003"

    _superuser(pg_stack, fresh_db, "DROP TABLE public.inject_40003")
    if committed:  # what CockroachDB may have done although it answered 40003
        query(fresh_db, "CREATE TABLE doubt_b AS SELECT 7 AS n")
    second = cli("up", *args)
    assert second.code == 0, second.err
    assert "resuming at statement 2 after a statement whose commit was in doubt" in second.out
    assert (", already done by the run whose commit was in doubt: 42P07" in second.out) \
        == committed
    assert query(fresh_db, "SELECT n FROM doubt_b") == [(7 if committed else 1,)]
    assert query(fresh_db, "SELECT count(*) FROM pg_indexes WHERE indexname = "
                           "'doubt_b_n_idx'") == [(1,)]
    assert _row(fresh_db) == ("succeeded", 3, None, None, False)


def test_a_plain_failure_stays_a_failure_to_fix(
    pg_stack: PgStack, fresh_db: str, migrations: Path, cli
) -> None:
    """Only 40003 is in doubt: another error at the same statement still blocks the next run
    until the file is fixed or repaired."""
    _setup(pg_stack, fresh_db, migrations)
    _superuser(pg_stack, fresh_db, "DROP TABLE public.inject_40003")
    (migrations / "900_doubt.up.sql").write_text(UP.replace("public.maybe_ambiguous()",
                                                            "1 / 0"))
    args = ("--url", fresh_db, "--migrations-dir", str(migrations), "--mode", "per-statement")
    assert cli("up", *args).code == 1
    assert _row(fresh_db) == ("failed", 1, "22012", 2, False)
    again = cli("up", *args)
    assert again.code == 1 and "fix " in again.err and "in doubt" not in again.err


AT_COMMIT = """
CREATE FUNCTION public.ambiguous_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF to_regclass('public.inject_40003') IS NOT NULL THEN
    RAISE EXCEPTION 'result is ambiguous (injected at commit)' USING ERRCODE = '40003';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ambiguous_commit AFTER INSERT OR UPDATE ON public.schema_migrations
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.ambiguous_commit();
"""


def test_a_transactional_migration_whose_commit_is_in_doubt_is_checked_by_its_tracking_row(
    pg_stack: PgStack, fresh_db: str, migrations: Path, cli
) -> None:
    """40003 at COMMIT (a deferred trigger raises it there): the runner reads the tracking row,
    written in the same transaction, to say whether the migration committed."""
    args = ("--url", fresh_db, "--migrations-dir", str(migrations), "--mode", "transactional")
    assert cli("up", *args).code == 0  # the runner's tables exist
    _setup(pg_stack, fresh_db, migrations)
    (migrations / "900_doubt.up.sql").write_text(UP.replace("public.maybe_ambiguous()", "1"))
    _superuser(pg_stack, fresh_db, AT_COMMIT)
    first = cli("up", *args)
    assert first.code == 1
    assert first.err.count("\n") == 1 and "Traceback" not in first.err
    assert ("migration 900_doubt: its commit was in doubt (SQLSTATE 40003: result is ambiguous "
            "(injected at commit)) and its tracking row shows it did not commit, so nothing of "
            "it changed; run `cesar migrate up` again") in first.err
    assert query(fresh_db, "SELECT to_regclass('doubt_a')::text") == [(None,)]
    assert query(fresh_db, "SELECT count(*) FROM schema_migrations "
                           "WHERE name = '900_doubt'") == [(0,)]
    detail = query(fresh_db, "SELECT detail FROM schema_migration_events "
                             "WHERE migration = '900_doubt' AND event = 'fail'")[0][0]
    assert detail["in_doubt"] is True and detail["committed"] is False

    _superuser(pg_stack, fresh_db, "DROP TABLE public.inject_40003")
    second = cli("up", *args)
    assert second.code == 0, second.err
    assert query(fresh_db, "SELECT status FROM schema_migrations "
                           "WHERE name = '900_doubt'") == [("succeeded",)]


PROGRESS_AT_COMMIT = """
CREATE FUNCTION public.ambiguous_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF to_regclass('public.inject_40003') IS NOT NULL AND NEW.name = '900_doubt'
     AND NEW.statements_done = 2 THEN
    RAISE EXCEPTION 'result is ambiguous (injected at commit)' USING ERRCODE = '40003';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ambiguous_progress AFTER UPDATE ON public.schema_migrations
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.ambiguous_progress();
"""

DML_UP = """\
-- 900_doubt: the commit of the second statement (DML, with its progress record) is in doubt.
CREATE TABLE IF NOT EXISTS doubt_a (id INT PRIMARY KEY);

INSERT INTO doubt_a (id) VALUES (1);

CREATE INDEX IF NOT EXISTS doubt_a_idx ON doubt_a (id);
"""


def test_a_per_statement_dml_whose_commit_is_in_doubt_is_checked_by_its_progress_record(
    pg_stack: PgStack, fresh_db: str, migrations: Path, cli
) -> None:
    """A DML statement commits with its progress record: 40003 at that COMMIT is settled by
    reading the record, and a statement that did not commit runs again (once)."""
    args = ("--url", fresh_db, "--migrations-dir", str(migrations), "--mode", "per-statement")
    assert cli("up", *args).code == 0
    _setup(pg_stack, fresh_db, migrations)
    (migrations / "900_doubt.up.sql").write_text(DML_UP)
    _superuser(pg_stack, fresh_db, PROGRESS_AT_COMMIT)
    first = cli("up", *args)
    assert first.code == 1
    assert "statement 2 (" in first.err and "is in doubt" in first.err
    assert _row(fresh_db) == ("failed", 1, "40003", 2, True)
    assert query(fresh_db, "SELECT count(*) FROM doubt_a") == [(0,)]
    _superuser(pg_stack, fresh_db, "DROP TABLE public.inject_40003")
    second = cli("up", *args)
    assert second.code == 0, second.err
    assert query(fresh_db, "SELECT id FROM doubt_a") == [(1,)]
    assert _row(fresh_db) == ("succeeded", 3, None, None, False)
