"""Drift, repair, mark-applied, and failing statements: recorded, refused, fixed, resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cesar import migrate
from tests.helpers import query
from tests.migrate.helpers import events, file_count

PARTIAL = """\
-- 900_partial: three steps; the third fails until fixed.
CREATE TABLE IF NOT EXISTS partial_steps (id UUID PRIMARY KEY, note TEXT NOT NULL);

INSERT INTO partial_steps (id, note) VALUES (gen_random_uuid(), 'second statement ran');

INSERT INTO no_such_table VALUES (1);
"""
PARTIAL_FIXED = PARTIAL.replace("INSERT INTO no_such_table VALUES (1);",
                                "CREATE INDEX IF NOT EXISTS partial_steps_note_idx "
                                "ON partial_steps (note);")


def _add(migrations: Path, name: str, up: str, down: str = "SELECT 1;\n") -> Path:
    path = migrations / f"{name}.up.sql"
    path.write_text(up)
    (migrations / f"{name}.down.sql").write_text(down)
    return path


# ------------------------------------------------------------------ drift
def test_drift_stops_before_applying_anything_and_names_both_checksums(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    runner_for(fresh_db).up()
    first = migrations / "001_agents.up.sql"
    applied_sum = migrate.sha256_file(first)
    first.write_text(first.read_text().replace("The Don", "Il Padrino"))
    new_sum = migrate.sha256_file(first)
    _add(migrations, "900_new", "CREATE TABLE IF NOT EXISTS drift_new (id UUID PRIMARY KEY);\n")

    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 1
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("cesar: error: ")
    assert str(first) in line and applied_sum in line and new_sum in line
    assert "repair 001_agents --reason" in line
    assert query(fresh_db, "SELECT to_regclass('drift_new')") == [(None,)]

    status = cli("status", "--url", fresh_db, "--migrations-dir", str(migrations),
                 "--json").json()
    assert {m["name"]: m["checksum"] for m in status["migrations"]}["001_agents"] == "drift"

    repaired = cli("repair", "001_agents", "--url", fresh_db, "--migrations-dir",
                   str(migrations), "--reason", "rename accepted by the team")
    assert repaired.code == 0, repaired.err
    assert query(fresh_db, "SELECT checksum FROM schema_migrations WHERE name = '001_agents'") \
        == [(new_sum,)]
    rows = query(fresh_db, "SELECT reason, detail->>'old_checksum', detail->>'new_checksum', "
                           "actor FROM schema_migration_events WHERE event = 'repair'")
    assert rows == [("rename accepted by the team", applied_sum, new_sum, rows[0][3])]
    assert rows[0][3].startswith("cesar_app_")

    again = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert again.code == 0, again.err
    assert query(fresh_db, "SELECT to_regclass('drift_new') IS NOT NULL") == [(True,)]


def test_repair_needs_a_reason(fresh_db: str, migrations: Path, cli) -> None:
    result = cli("repair", "001_agents", "--url", fresh_db, "--migrations-dir", str(migrations),
                 "--reason", " ")
    assert result.code == 2
    assert "needs --reason TEXT" in result.err


def test_an_applied_migration_without_its_file_stops_the_run(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    runner_for(fresh_db).up()
    last = migrate.migration_names(migrations)[-1]
    (migrations / f"{last}.up.sql").unlink()
    (migrations / f"{last}.down.sql").unlink()
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 1
    assert f"{last} is applied (succeeded) but has no file" in result.err


def test_a_new_migration_numbered_before_an_applied_one_is_refused(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    runner_for(fresh_db).up()
    _add(migrations, "001_zz_late_branch",
         "CREATE TABLE IF NOT EXISTS late (id UUID PRIMARY KEY);\n")
    # Same number as 001_agents: refused as ambiguous before anything else.
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 2 and "share the number 001" in result.err
    (migrations / "001_zz_late_branch.up.sql").rename(migrations / "0015_late_branch.up.sql")
    (migrations / "001_zz_late_branch.down.sql").rename(migrations / "0015_late_branch.down.sql")
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 1
    assert "0015_late_branch is new but sorts before the applied" in result.err
    assert query(fresh_db, "SELECT to_regclass('late')") == [(None,)]


# ------------------------------------------------------------------ failing statements
def test_per_statement_failure_is_recorded_then_fixed_and_resumed_at_that_statement(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    path = _add(migrations, "900_partial", PARTIAL, "DROP TABLE IF EXISTS partial_steps;\n")
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                 "--mode", "per-statement")
    assert result.code == 1
    assert f"900_partial failed at statement 3 ({path}:6) with SQLSTATE 42P01" in result.err
    row = query(fresh_db, "SELECT status, statements_done, error_sqlstate, error_statement, "
                          "error_line FROM schema_migrations WHERE name = '900_partial'")
    assert row == [("failed", 2, "42P01", 3, 6)]
    # Statements 1 and 2 stayed (that is what per-statement means).
    assert query(fresh_db, "SELECT count(*) FROM partial_steps") == [(1,)]

    # Unchanged file: refused, and nothing runs again.
    again = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                "--mode", "per-statement")
    assert again.code == 1
    assert "900_partial failed at statement 3" in again.err and "fix " in again.err
    assert query(fresh_db, "SELECT count(*) FROM partial_steps") == [(1,)]

    # Fixed: resumes at statement 3; statement 2 (an INSERT) does not run twice.
    path.write_text(PARTIAL_FIXED)
    fixed = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                "--mode", "per-statement")
    assert fixed.code == 0, fixed.err
    assert "resuming at statement 3 after a failed run" in fixed.out
    assert query(fresh_db, "SELECT count(*) FROM partial_steps") == [(1,)]
    assert query(fresh_db, "SELECT status, statements_done, error_sqlstate, checksum "
                           "FROM schema_migrations WHERE name = '900_partial'") == [
        ("succeeded", 3, None, migrate.sha256_file(path))]
    assert [e for m, e in events(fresh_db) if m == "900_partial"] == ["fail", "resume", "apply"]


def test_resume_refuses_when_statements_that_already_ran_changed(
    fresh_db: str, migrations: Path, cli
) -> None:
    path = _add(migrations, "900_partial", PARTIAL)
    assert cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
               "--mode", "per-statement").code == 1
    path.write_text(PARTIAL_FIXED.replace("'second statement ran'", "'edited'"))
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                 "--mode", "per-statement")
    assert result.code == 1
    assert "statements 1-2 of" in result.err and "already ran but the file changed" \
        in result.err
    assert query(fresh_db, "SELECT note FROM partial_steps") == [("second statement ran",)]


def test_repair_of_a_failed_migration_retries_it_without_a_file_change(
    fresh_db: str, migrations: Path, cli
) -> None:
    # Fails for a reason outside the file (a table created later by hand), like a lock timeout.
    _add(migrations, "900_needs", "INSERT INTO prerequisite VALUES (1);\n")
    args = ("--url", fresh_db, "--migrations-dir", str(migrations))
    assert cli("up", *args).code == 1
    query(fresh_db, "CREATE TABLE prerequisite (n INT)")
    assert cli("up", *args).code == 1  # same file: still refused
    assert cli("repair", "900_needs", *args, "--reason", "created prerequisite by hand").code == 0
    result = cli("up", *args)
    assert result.code == 0, result.err
    assert query(fresh_db, "SELECT n FROM prerequisite") == [(1,)]


def test_transactional_failure_leaves_nothing_behind_and_applies_once_fixed(
    fresh_db: str, migrations: Path, cli
) -> None:
    path = _add(migrations, "900_partial", PARTIAL, "DROP TABLE IF EXISTS partial_steps;\n")
    args = ("--url", fresh_db, "--migrations-dir", str(migrations), "--mode", "transactional")
    result = cli("up", *args)
    assert result.code == 1
    assert "nothing of it was applied" in result.err
    assert query(fresh_db, "SELECT to_regclass('partial_steps')") == [(None,)]
    assert query(fresh_db, "SELECT status, statements_done, error_statement FROM "
                           "schema_migrations WHERE name = '900_partial'") == [("failed", 0, 3)]
    n = file_count()
    assert f"{n}/{n + 1} applied, 1 pending, 1 failed" in cli("status", *args[:4]).out

    path.write_text(PARTIAL_FIXED)
    fixed = cli("up", *args)
    assert fixed.code == 0, fixed.err
    assert query(fresh_db, "SELECT count(*) FROM partial_steps") == [(1,)]


def test_a_failed_partial_migration_can_be_rolled_back_with_its_down_file(
    fresh_db: str, migrations: Path, cli
) -> None:
    _add(migrations, "900_partial", PARTIAL, "DROP TABLE IF EXISTS partial_steps;\n")
    args = ("--url", fresh_db, "--migrations-dir", str(migrations))
    assert cli("up", *args, "--mode", "per-statement").code == 1
    result = cli("down", *args, "--steps", "1")
    assert result.code == 0, result.err
    assert query(fresh_db, "SELECT to_regclass('partial_steps')") == [(None,)]
    assert query(fresh_db, "SELECT status FROM schema_migrations WHERE name = '900_partial'") \
        == [("rolled_back",)]


# ------------------------------------------------------------------ mark-applied
def test_mark_applied_baselines_a_migration_whose_objects_already_exist(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    """The old runbook's "Migrations fail with 'already exists'", without hand-written SQL."""
    args = ("--url", fresh_db, "--migrations-dir", str(migrations))
    runner_for(fresh_db).up()
    query(fresh_db, "CREATE TABLE existing_by_hand (id UUID PRIMARY KEY, legacy TEXT)")
    _add(migrations, "900_existing", "CREATE TABLE existing_by_hand (id UUID PRIMARY KEY);\n")
    failed = cli("up", *args)
    assert failed.code == 1 and "SQLSTATE 42P07" in failed.err
    assert "mark-applied 900_existing --reason TEXT" in failed.err

    result = cli("mark-applied", "900_existing", *args, "--reason", "created by the old script")
    assert result.code == 0, result.err
    assert query(fresh_db, "SELECT status, checksum FROM schema_migrations "
                           "WHERE name = '900_existing'") == [
        ("baselined", migrate.sha256_file(migrations / "900_existing.up.sql"))]
    n = file_count() + 1
    assert cli("up", *args).out.strip() == f"{n}/{n} applied, 0 pending"
    assert query(fresh_db, "SELECT count(*) FROM information_schema.columns "
                           "WHERE table_name = 'existing_by_hand'") == [(2,)]
    again = cli("mark-applied", "900_existing", *args, "--reason", "twice")
    assert again.code == 0 and "already applied" in again.out
    assert len(events(fresh_db, "mark-applied")) == 1


def test_unknown_migration_name_is_a_usage_error(fresh_db: str, migrations: Path, cli) -> None:
    result = cli("mark-applied", "999_nope", "--url", fresh_db, "--migrations-dir",
                 str(migrations), "--reason", "x")
    assert result.code == 2
    assert "no migration named 999_nope" in result.err


@pytest.mark.parametrize("keyword", ["BEGIN", "COMMIT"])
def test_transaction_control_in_a_file_is_refused_before_running(
    fresh_db: str, migrations: Path, cli, keyword: str
) -> None:
    _add(migrations, "900_txn", f"{keyword};\nCREATE TABLE IF NOT EXISTS t (id INT);\n")
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 2
    assert f"900_txn.up.sql:1: {keyword} found" in result.err
