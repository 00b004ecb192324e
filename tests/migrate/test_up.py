"""`cesar migrate up`: idempotency, dry run, status, and what the tracking rows record."""

from __future__ import annotations

from pathlib import Path

import pytest

from cesar import __version__, migrate
from tests.helpers import PgStack, full_dump, query
from tests.migrate.helpers import events, file_count


@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_up_applies_everything_once_and_a_second_run_is_a_no_op(
    fresh_db: str, migrations: Path, cli, mode: str
) -> None:
    n = file_count()
    first = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--mode", mode)
    assert first.code == 0, first.err
    assert first.out.strip().splitlines()[-1] == f"{n}/{n} applied, 0 pending"
    assert query(fresh_db, "SELECT count(*) FROM agents") == [(24,)]

    before = query(fresh_db, "SELECT name, status, checksum, finished_at FROM schema_migrations "
                             "ORDER BY name")
    second = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--mode", mode)
    assert second.code == 0, second.err
    assert second.out.strip() == f"{n}/{n} applied, 0 pending"
    assert query(fresh_db, "SELECT name, status, checksum, finished_at FROM schema_migrations "
                           "ORDER BY name") == before
    assert [e for _, e in events(fresh_db)] == ["apply"] * n


def test_tracking_row_records_checksum_login_host_and_mode(
    fresh_db: str, migrations: Path, runner_for, pg_stack: PgStack
) -> None:
    report = runner_for(fresh_db, mode="per-statement").up()
    assert report.done == migrate.migration_names(migrations)
    rows = query(fresh_db, "SELECT name, checksum, status, mode, applied_by, applied_from, "
                           "runner_version, duration_ms, statements_done, statements_total "
                           "FROM schema_migrations ORDER BY name")
    first = rows[0]
    assert first[0] == "001_agents"
    assert first[1] == migrate.sha256_file(migrations / "001_agents.up.sql")
    assert first[2:4] == ("succeeded", "per-statement")
    # session_user is the login, although objects belong to the role it switched to.
    assert first[4] == pg_stack.state.active_login
    assert first[5]  # the client's host name
    assert first[6] == __version__
    assert all(r[7] is not None and r[7] >= 0 for r in rows)
    assert all(r[8] == r[9] and r[9] > 0 for r in rows)
    owners = query(fresh_db, "SELECT DISTINCT tableowner FROM pg_tables "
                             "WHERE schemaname = 'public'")
    assert owners == [("cesar_app",)]


def test_dry_run_changes_nothing_not_even_the_tracking_tables(
    fresh_db: str, migrations: Path, cli, pg_stack: PgStack
) -> None:
    before = full_dump(pg_stack, fresh_db)
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--dry-run")
    assert result.code == 0, result.err
    assert full_dump(pg_stack, fresh_db) == before
    assert query(fresh_db, "SELECT to_regclass('schema_migrations'), to_regclass('agents')") \
        == [(None, None)]
    names = migrate.migration_names(migrations)
    for name in names:
        assert f"would apply {name} (" in result.out
    assert "CREATE TABLE IF NOT EXISTS agents" in result.out
    assert "lease: free" in result.out


def test_dry_run_json_lists_pending_steps_with_statements(
    fresh_db: str, migrations: Path, cli, runner_for
) -> None:
    runner_for(fresh_db).up()
    extra = migrations / "900_extra.up.sql"
    extra.write_text("CREATE TABLE IF NOT EXISTS extra (id UUID PRIMARY KEY);\n"
                     "INSERT INTO extra VALUES (gen_random_uuid());\n")
    (migrations / "900_extra.down.sql").write_text("DROP TABLE IF EXISTS extra;\n")
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--dry-run",
                 "--json")
    assert result.code == 0, result.err
    plan = result.json()
    assert plan["dry_run"] is True
    assert [s["name"] for s in plan["steps"]] == ["900_extra"]
    assert [(s["index"], s["line"], s["kind"]) for s in plan["steps"][0]["statements"]] == [
        (1, 1, "ddl"), (2, 2, "dml")]
    assert set(plan["applied_checksums"].values()) == {"ok"}
    assert plan["pending"] == 1 and plan["applied"] == plan["total"] - 1
    assert query(fresh_db, "SELECT to_regclass('extra')") == [(None,)]


def test_status_json_contract(fresh_db: str, migrations: Path, cli, runner_for) -> None:
    before = cli("status", "--url", fresh_db, "--migrations-dir", str(migrations), "--json")
    assert before.code == 0, before.err
    doc = before.json()
    assert {m["status"] for m in doc["migrations"]} == {"pending"}
    assert query(fresh_db, "SELECT to_regclass('schema_migrations')") == [(None,)]

    runner_for(fresh_db).up()
    doc = cli("status", "--url", fresh_db, "--migrations-dir", str(migrations), "--json").json()
    assert [m["name"] for m in doc["migrations"]] == migrate.migration_names(migrations)
    for item in doc["migrations"]:
        assert item["status"] == "succeeded"
        assert item["checksum"] == "ok"
        assert item["duration_ms"] is not None
    assert doc["applied"] == doc["total"] == file_count()
    assert doc["lease"] is None


def test_human_status_names_every_migration(fresh_db: str, migrations: Path, cli,
                                            runner_for) -> None:
    runner_for(fresh_db).up()
    out = cli("status", "--url", fresh_db, "--migrations-dir", str(migrations)).out
    for name in migrate.migration_names(migrations):
        assert name in out
    assert out.strip().endswith(f"{file_count()}/{file_count()} applied, 0 pending")


def test_summary_after_a_run_and_with_a_failure(fresh_db: str, migrations: Path,
                                                runner_for) -> None:
    import psycopg

    runner_for(fresh_db).up()
    (migrations / "900_broken.up.sql").write_text("SELECT * FROM no_such_table;\n")
    (migrations / "900_broken.down.sql").write_text("SELECT 1;\n")
    with pytest.raises(migrate.MigrationFailed):
        runner_for(fresh_db).up()
    n = file_count()
    with psycopg.connect(fresh_db) as conn:
        assert migrate.summary(conn, migrations) == {
            "applied": n, "total": n + 1, "failed": 1, "pending": 1}


@pytest.mark.parametrize("extra", [0, 60])
def test_a_no_op_run_is_one_round_trip_whatever_the_number_of_migrations(
    fresh_db: str, migrations: Path, runner_for, extra: int
) -> None:
    """Counted from libpq's protocol trace: the no-op reads the tracking table once."""
    import tempfile

    import psycopg

    from cesar.bench.migrate import count_round_trips, synthetic_dir

    directory = synthetic_dir(migrations.parent / "many", file_count() + extra)
    runner = runner_for(fresh_db, migrations_dir=directory)
    runner.up()
    with tempfile.TemporaryFile("w+") as trace:
        runner.conn.pgconn.trace(trace.fileno())
        runner.conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        report = runner.up()
        runner.conn.pgconn.untrace()
        trace.seek(0)
        text = trace.read()
    assert report.done == [] and report.plan.counts["applied"] == file_count() + extra
    assert count_round_trips(text) == 1, text
