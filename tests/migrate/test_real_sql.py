"""Migrations written by others: SQL the way pg_dump and other tools write it, against a real
PostgreSQL, in both execution modes, each refusal with its exact message."""

from __future__ import annotations

import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from cesar.dev.embedded import pg_bindir
from tests.helpers import PgStack, child_env, full_dump, query, schema_dump

SET = Path(__file__).parent / "corpus" / "pg_dump_style"
MODES = ["transactional", "per-statement"]
RUNNER_TABLES = "public.schema_migration*"


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    """An empty migrations directory of the test's own."""
    target = tmp_path / "m"
    target.mkdir()
    return target


def _add(directory: Path, name: str, up: str, down: str = "SELECT 1;\n") -> Path:
    path = directory / f"{name}.up.sql"
    path.write_text(up, encoding="utf-8")
    (directory / f"{name}.down.sql").write_text(down, encoding="utf-8")
    return path


def _schema(pg: PgStack, url: str) -> str:
    """The schema without the runner's own tables (psql has none)."""
    return schema_dump(pg, url, "-T", RUNNER_TABLES)


def _psql_files(url: str, files: list[Path]) -> None:
    """What psql makes of the same files, one after the other: the reference."""
    for path in files:
        subprocess.run([str(pg_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-f", str(path), url], env=child_env(), check=True,
                       capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------ a pg_dump-style set
@pytest.mark.parametrize("mode", MODES)
def test_a_pg_dump_style_set_applies_rolls_back_and_applies_again_like_psql(
    pg_stack: PgStack, fresh_db: str, mdir: Path, cli, mode: str
) -> None:
    """Header with set_config('search_path', '', false), BEGIN ATOMIC bodies, a rule with two
    actions, a non-ASCII table, a trigger, an enum, PREPARE, a no-transaction file: the
    runner's schema is psql's, going up, down and up again."""
    for path in SET.iterdir():
        shutil.copy(path, mdir)
    args = ("--url", fresh_db, "--migrations-dir", str(mdir), "--mode", mode)
    empty = _schema(pg_stack, fresh_db)

    first = cli("up", *args)
    assert first.code == 0, first.err
    assert "4/4 applied, 0 pending" in first.out
    applied = _schema(pg_stack, fresh_db)
    # 003 set search_path to shop; 004, in the same run, still lands in public
    assert query(fresh_db, "SELECT to_regclass('public.where_am_i') IS NOT NULL, "
                           "to_regclass('shop.where_am_i')") == [(True, None)]
    assert query(fresh_db, "SELECT id, body FROM shop.notes ORDER BY id") == \
        [(1, "first; with a semicolon"), (2, "second's")]
    assert query(fresh_db, "SELECT count(*) FROM shop.notes_log") == [(6,)]  # rule x2, CALL
    assert query(fresh_db, "SELECT name, mode, statements_done FROM schema_migrations "
                           "ORDER BY name") == [
        ("001_baseline", mode, 27), ("002_notes_body_index", "no-transaction", 2),
        ("003_seed_notes", mode, 5), ("004_unqualified", mode, 1)]

    down = cli("down", "--steps", "4", *args)
    assert down.code == 0, down.err
    assert _schema(pg_stack, fresh_db) == empty
    again = cli("up", *args)
    assert again.code == 0, again.err
    assert _schema(pg_stack, fresh_db) == applied

    name = f"t_{uuid.uuid4().hex[:12]}"
    reference = pg_stack.create_database(name)
    try:
        _psql_files(reference, sorted(SET.glob("*.up.sql")))
        assert _schema(pg_stack, reference) == applied
    finally:
        pg_stack.drop_database(name)


# ------------------------------------------------------------------ search_path, settings
@pytest.mark.parametrize("mode", MODES)
def test_a_migration_emptying_search_path_leaves_the_runner_its_tables(
    fresh_db: str, mdir: Path, cli, mode: str
) -> None:
    _add(mdir, "001_dump_header", "SELECT pg_catalog.set_config('search_path', '', false);\n"
                                  "CREATE TABLE public.t1 (id integer);\n"
                                  "CREATE TABLE public.t2 (id integer);\n")
    _add(mdir, "002_next", "CREATE TABLE t3 (id integer);\n")
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(mdir), "--mode", mode)
    assert result.code == 0, result.err
    assert query(fresh_db, "SELECT name, status FROM schema_migrations ORDER BY name") == \
        [("001_dump_header", "succeeded"), ("002_next", "succeeded")]
    assert query(fresh_db, "SELECT to_regclass('public.t3') IS NOT NULL") == [(True,)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("together", [True, False])
def test_settings_of_one_migration_never_reach_the_next(
    fresh_db: str, mdir: Path, cli, mode: str, together: bool
) -> None:
    """search_path, statement_timeout, a role, a prepared statement: applied together or
    apart, the second migration runs as if the first had set nothing."""
    _add(mdir, "001_sets", "CREATE SCHEMA elsewhere;\n"
                           "SET search_path TO elsewhere;\n"
                           "SET statement_timeout = '50ms';\n"
                           "SET ROLE NONE;\n"
                           "PREPARE probe AS SELECT 1;\n")
    args = ("--url", fresh_db, "--migrations-dir", str(mdir), "--mode", mode)
    if not together:
        assert cli("up", *args).code == 0
    _add(mdir, "002_plain", "CREATE TABLE where_am_i (who text DEFAULT current_user);\n"
                            "SELECT pg_sleep(0.2);\n"
                            "PREPARE probe AS SELECT 2;\n"
                            "INSERT INTO where_am_i DEFAULT VALUES;\n")
    result = cli("up", *args)
    assert result.code == 0, result.err
    assert query(fresh_db, "SELECT to_regclass('public.where_am_i') IS NOT NULL") == [(True,)]
    assert query(fresh_db, "SELECT who FROM where_am_i") == [("cesar_app",)]


# ------------------------------------------------------------------ refusals before anything
REFUSED = {
    "copy": ("-- rows from the old system\nCOPY t (a) FROM stdin;\nit's the first\n\\.\n",
             "{path}:2: COPY ... FROM stdin found; its data would have to come from the client, "
             "which the runner does not send: load the rows with INSERT statements"),
    "meta": ("\\connect other\nCREATE TABLE x (id integer);\n",
             "{path}:1: psql meta-command \\connect found; a migration is plain SQL sent to the "
             "server (psql's commands are not), write it as SQL"),
    "scs": ("SET standard_conforming_strings = off;\nINSERT INTO t (a) VALUES ('a\\';b');\n",
            "{path}:1: standard_conforming_strings turned off; backslashes in '...' strings "
            "would change where they end for the server but not for the runner, and "
            "CockroachDB supports only on: write E'...' strings instead"),
    "concurrently": ("CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\n",
                     "{path}:1: CREATE INDEX CONCURRENTLY cannot run inside a transaction; add "
                     "`-- cesar:no-transaction` to the file's header comment to run it statement "
                     "by statement outside one (see docs/migrations.md, writing a migration)"),
    "vacuum": ("VACUUM t;\n",
               "{path}:1: VACUUM cannot run inside a transaction; add `-- cesar:no-transaction` "
               "to the file's header comment to run it statement by statement outside one (see "
               "docs/migrations.md, writing a migration)"),
    "nul": ("INSERT INTO t VALUES ('a');\nINSERT INTO t VALUES ('b\x00c');\n",
            "{path}:2: a NUL character (0x00) found; the server cannot receive it in a "
            "statement: remove it"),
    "transaction": ("INSERT INTO t VALUES ('x');\nCOMMIT;\n",
                    "{path}:2: COMMIT found; migrations must not control transactions (the "
                    "runner does: see docs/migrations.md, execution modes)"),
    "prepare-transaction": ("PREPARE TRANSACTION 'x';\n",
                            "{path}:1: PREPARE TRANSACTION found; migrations must not control "
                            "transactions (the runner does: see docs/migrations.md, execution "
                            "modes)"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_server_would_read_otherwise_is_refused_before_anything_runs(
    fresh_db: str, mdir: Path, cli, mode: str, case: str
) -> None:
    text, message = REFUSED[case]
    _add(mdir, "001_table", "CREATE TABLE t (a text);\n")
    path = _add(mdir, "002_bad", text)
    args = ("--url", fresh_db, "--migrations-dir", str(mdir), "--mode", mode)
    result = cli("up", *args)
    assert (result.code, result.err) == (2, f"cesar: error: {message.format(path=path)}\n")
    # nothing ran, not even the migration before it; no lease, no `running` row
    assert query(fresh_db, "SELECT to_regclass('public.t'), "
                           "to_regclass('public.schema_migration_lease')") == [(None, None)]

    dry = cli("up", *args, "--dry-run")
    assert dry.code == 1
    assert f"problem: {message.format(path=path)}" in dry.out
    assert "would apply 002_bad: refused, see the problem below" in dry.out
    assert "would apply 001_table (1 statement):" in dry.out


def test_a_dry_run_reports_every_refusal_and_the_no_transaction_files_without_a_trace(
    pg_stack: PgStack, fresh_db: str, mdir: Path, cli
) -> None:
    _add(mdir, "001_table", "CREATE TABLE t (a text);\n")
    _add(mdir, "002_index",
         "-- cesar:no-transaction\nCREATE INDEX CONCURRENTLY t_a_idx ON t (a);\n")
    copy = _add(mdir, "003_copy", "COPY t FROM stdin;\n")
    meta = _add(mdir, "004_meta", "\\set x 1\n")
    before = full_dump(pg_stack, fresh_db)
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(mdir), "--dry-run", "--json")
    assert result.code == 1
    plan = result.json()
    assert [(s["name"], s["mode"], s["refused"] is None) for s in plan["steps"]] == [
        ("001_table", "transactional", True), ("002_index", "no-transaction", True),
        ("003_copy", None, False), ("004_meta", None, False)]
    assert plan["steps"][1]["statements"][0]["no_transaction"] == "CREATE INDEX CONCURRENTLY"
    assert [p.split(":")[0] for p in plan["problems"]] == [str(copy), str(meta)]
    assert full_dump(pg_stack, fresh_db) == before


# ------------------------------------------------------------------ outside a transaction
@pytest.mark.parametrize("mode", MODES)
def test_a_no_transaction_file_runs_statement_by_statement_and_resumes(
    fresh_db: str, mdir: Path, cli, mode: str
) -> None:
    _add(mdir, "001_table", "CREATE TABLE t (a text);\nINSERT INTO t VALUES ('x');\n")
    path = _add(mdir, "002_index",
                "-- cesar:no-transaction\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON t (a);\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_b_idx ON t (b);\n"
                "VACUUM t;\n")
    args = ("--url", fresh_db, "--migrations-dir", str(mdir), "--mode", mode)
    failed = cli("up", *args)
    assert failed.code == 1
    assert (f"migration 002_index failed at statement 2 ({path}:3) with SQLSTATE 42703: column "
            "\"b\" does not exist; statement 1 stays done and the next run resumes at statement "
            "2") in failed.err
    assert query(fresh_db, "SELECT status, mode, statements_done FROM schema_migrations "
                           "WHERE name = '002_index'") == [("failed", "no-transaction", 1)]
    assert query(fresh_db, "SELECT indisvalid FROM pg_index "
                           "WHERE indexrelid = 't_a_idx'::regclass") == [(True,)]

    path.write_text(path.read_text().replace("(b)", "(a, a)"))
    fixed = cli("up", *args)
    assert fixed.code == 0, fixed.err
    assert "applying 002_index (no-transaction, 3 statements, resuming at statement 2" in fixed.out
    assert query(fresh_db, "SELECT status, mode, statements_done FROM schema_migrations "
                           "WHERE name = '002_index'") == [("succeeded", "no-transaction", 3)]


# ------------------------------------------------------------------ a failed rollback
def test_a_rollback_failing_at_its_first_statement_leaves_the_migration_applied(
    fresh_db: str, mdir: Path, cli
) -> None:
    down = "DROP TABLE no_such_table;\nDROP TABLE kept;\n"
    _add(mdir, "001_kept", "CREATE TABLE kept (id integer);\n", down)
    args = ("--url", fresh_db, "--migrations-dir", str(mdir), "--mode", "per-statement")
    assert cli("up", *args).code == 0
    result = cli("down", *args)
    assert result.code == 1
    path = mdir / "001_kept.down.sql"
    assert result.err == (
        f"cesar: error: rollback 001_kept failed at statement 1 ({path}:1) with SQLSTATE 42P01: "
        "table \"no_such_table\" does not exist; nothing was rolled back and 001_kept stays "
        "applied; fix the file and run `cesar migrate down` again, or `cesar migrate repair "
        "001_kept --reason TEXT`\n")
    assert query(fresh_db, "SELECT status, direction, statements_done, holder "
                           "FROM schema_migrations") == [("succeeded", "up", 1, None)]
    # nothing blocks: a later migration applies
    _add(mdir, "002_next", "CREATE TABLE next (id integer);\n")
    assert cli("up", *args).code == 0


@pytest.mark.parametrize("way_out", ["mark-applied", "repair"])
def test_a_partly_done_rollback_names_every_way_out_and_each_works(
    fresh_db: str, mdir: Path, cli, way_out: str
) -> None:
    """The second statement of the rollback fails because of something outside the file (a
    table renamed by hand): `mark-applied` keeps the migration (once what was dropped is back),
    `repair` runs the unchanged file again (once the cause is gone)."""
    down = "DROP TABLE two;\nDROP TABLE one;\n"
    _add(mdir, "001_two", "CREATE TABLE one (id integer);\nCREATE TABLE two (id integer);\n", down)
    args = ("--url", fresh_db, "--migrations-dir", str(mdir), "--mode", "per-statement")
    assert cli("up", *args).code == 0
    query(fresh_db, "ALTER TABLE one RENAME TO one_aside")
    assert cli("down", *args).code == 1
    path = mdir / "001_two.down.sql"
    blocked = cli("up", *args)
    assert blocked.code == 1
    assert blocked.err == (
        "cesar: error: the rollback of 001_two is failed at statement 2 (line 2, SQLSTATE "
        "42P01: table \"one\" does not exist); fix "
        f"{path} and finish it with `cesar migrate down --steps 1` (it resumes at statement 2), "
        "or run the unchanged file again with `cesar migrate repair 001_two --reason TEXT` "
        "then `cesar migrate down --steps 1`; or, to keep 001_two applied, restore what the "
        "rollback removed and record it with `cesar migrate mark-applied 001_two --reason "
        "TEXT`\n")
    assert cli("down", *args).code == 1  # the unchanged file: refused, with the same advice
    query(fresh_db, "ALTER TABLE one_aside RENAME TO one")
    if way_out == "mark-applied":
        query(fresh_db, "CREATE TABLE two (id integer)")
        marked = cli("mark-applied", "001_two", *args[:4], "--reason", "recreated by hand")
        assert marked.code == 0, marked.err
        assert cli("up", *args).code == 0
        assert query(fresh_db, "SELECT status FROM schema_migrations") == [("baselined",)]
    else:
        assert cli("repair", "001_two", *args[:4], "--reason", "table put back").code == 0
        finished = cli("down", "--steps", "1", *args)
        assert finished.code == 0, finished.err
        assert query(fresh_db, "SELECT status FROM schema_migrations") == [("rolled_back",)]
        assert query(fresh_db, "SELECT to_regclass('one'), to_regclass('two')") == [(None, None)]


def test_a_server_with_standard_conforming_strings_off_is_refused(
    pg_stack: PgStack, fresh_db: str, mdir: Path, cli
) -> None:
    """The statements were split with backslashes as plain characters in '...' strings; a
    session where they are escapes would read some of them differently."""
    _add(mdir, "001_escape", "CREATE TABLE t (a text);\nINSERT INTO t VALUES ('a\\'';b');\n")
    dbname = fresh_db.rsplit("/", 1)[1].split("?")[0]
    with pg_stack.superuser() as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" SET standard_conforming_strings = off')
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(mdir))
    assert (result.code, result.err) == (2, (
        "cesar: error: the server runs with standard_conforming_strings = off, so backslashes "
        "in '...' strings would end them elsewhere than the runner read them; set it to on for "
        "the runner's login (ALTER ROLE ... SET standard_conforming_strings = on)\n"))
    assert query(fresh_db, "SELECT to_regclass('public.t'), "
                           "to_regclass('public.schema_migrations')") == [(None, None)]
    dry = cli("up", "--url", fresh_db, "--migrations-dir", str(mdir), "--dry-run")
    assert dry.code == 1
    assert "problem: the server runs with standard_conforming_strings = off" in dry.out


# ------------------------------------------------------------------ several runners at once
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_three_runners_at_once_apply_the_pg_dump_style_set_once(
    fresh_db: str, mdir: Path, spawn, mode: str
) -> None:
    """The no-transaction file and the session reset under the lease: separate processes, one
    database; each migration applied exactly once and the rule fired exactly twice per row."""
    for path in SET.iterdir():
        shutil.copy(path, mdir)
    procs = [spawn("up", "--url", fresh_db, "--migrations-dir", str(mdir), "--mode", mode,
                   "--lease-seconds", "5", "--wait-seconds", "120") for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "4/4 applied, 0 pending" in out
    assert query(fresh_db, "SELECT migration, count(*) FROM schema_migration_events "
                           "WHERE event = 'apply' GROUP BY migration ORDER BY migration") == [
        ("001_baseline", 1), ("002_notes_body_index", 1), ("003_seed_notes", 1),
        ("004_unqualified", 1)]
    assert query(fresh_db, "SELECT count(*) FROM shop.notes_log") == [(6,)]
    assert query(fresh_db, "SELECT to_regclass('public.where_am_i') IS NOT NULL") == [(True,)]


def test_a_database_without_the_public_schema_is_read_and_refused_in_one_line(
    fresh_db: str, mdir: Path, cli
) -> None:
    _add(mdir, "001_table", "CREATE TABLE app_t (a text);\n")
    query(fresh_db, "DROP SCHEMA public")
    args = ("--url", fresh_db, "--migrations-dir", str(mdir))
    status = cli("status", *args, "--json")
    assert status.code == 0, status.err
    assert status.json()["summary"] == "0/1 applied, 1 pending"
    result = cli("up", *args)
    assert (result.code, result.err) == (1, (
        "cesar: error: the runner keeps its tables in the schema public, which this database "
        "does not have; create it (CREATE SCHEMA public) and run again\n"))


@pytest.mark.slow
def test_a_no_transaction_file_killed_mid_way_resumes_where_its_progress_says(
    pg_stack: PgStack, fresh_db: str, mdir: Path, spawn
) -> None:
    """SIGKILL during statement 2 of a no-transaction file: statement 1 is recorded, so the
    next run (once the lease expires) resumes at 2 and never builds the first index again."""
    from tests.migrate.helpers import finish, sleeping_in_migration, wait_until

    _add(mdir, "001_table", "CREATE TABLE t (a text, b text);\n")
    _add(mdir, "002_index",
         "-- cesar:no-transaction\n"
         "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\n"
         "SELECT pg_sleep(CASE WHEN to_regclass('kill_switch') IS NULL THEN 0 ELSE 60 END);\n"
         "CREATE INDEX CONCURRENTLY t_b_idx ON t (b);\n"
         "VACUUM t;\n")
    query(fresh_db, "CREATE TABLE kill_switch (armed boolean)")
    args = ("up", "--url", fresh_db, "--migrations-dir", str(mdir), "--lease-seconds", "3")
    victim = spawn(*args)
    wait_until(lambda: sleeping_in_migration(pg_stack, fresh_db), what="the sleep statement")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    query(fresh_db, "DROP TABLE kill_switch")
    assert query(fresh_db, "SELECT status, mode, statements_done FROM schema_migrations "
                           "WHERE name = '002_index'") == [("running", "no-transaction", 1)]

    code, out, err = finish(spawn(*args, "--wait-seconds", "30"))
    assert code == 0, err
    assert "resuming at statement 2 after an interrupted run" in out
    assert query(fresh_db, "SELECT status, statements_done FROM schema_migrations "
                           "WHERE name = '002_index'") == [("succeeded", 4)]
    assert query(fresh_db, "SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass "
                           "AND indisvalid") == [(2,)]
