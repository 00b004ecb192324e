"""`cesar migrate down`: every migration's down file undoes exactly its up file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cesar import migrate
from tests.helpers import PgStack, query, schema_dump
from tests.migrate.helpers import events

RUNNER_TABLES = ("-T", "schema_migrations", "-T", "schema_migration_events",
                 "-T", "schema_migration_lease")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_up_down_up_round_trip_of_every_migration(
    fresh_db: str, migrations: Path, tmp_path: Path, runner_for, pg_stack: PgStack, mode: str
) -> None:
    names = migrate.migration_names(migrations)
    growing = tmp_path / "growing"
    growing.mkdir()
    # Schema after applying the first k migrations, k = 0..n (runner tables left out).
    shapes = [schema_dump(pg_stack, fresh_db, *RUNNER_TABLES)]
    for name in names:
        for suffix in (".up.sql", ".down.sql"):
            shutil.copy(migrations / f"{name}{suffix}", growing / f"{name}{suffix}")
        assert runner_for(fresh_db, migrations_dir=growing, mode=mode).up().done == [name]
        shapes.append(schema_dump(pg_stack, fresh_db, *RUNNER_TABLES))
    assert len(set(shapes)) == len(shapes), "every migration must change the schema"

    for k in range(len(names), 0, -1):
        report = runner_for(fresh_db, mode=mode).down(steps=1)
        assert report.done == [names[k - 1]]
        assert schema_dump(pg_stack, fresh_db, *RUNNER_TABLES) == shapes[k - 1], names[k - 1]
    statuses = query(fresh_db, "SELECT DISTINCT status FROM schema_migrations")
    assert statuses == [("rolled_back",)]

    assert runner_for(fresh_db, mode=mode).up().done == names
    assert schema_dump(pg_stack, fresh_db, *RUNNER_TABLES) == shapes[-1]
    assert query(fresh_db, "SELECT count(*) FROM agents") == [(24,)]
    kinds = [e for _, e in events(fresh_db)]
    assert kinds.count("apply") == 2 * len(names) and kinds.count("rollback") == len(names)


def test_down_to_name_keeps_name_and_rolls_back_the_rest_newest_first(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    names = migrate.migration_names(migrations)
    runner_for(fresh_db).up()
    keep = names[1]
    result = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations), "--to", keep)
    assert result.code == 0, result.err
    rolled = [m for m, e in events(fresh_db, "rollback")]
    assert rolled == list(reversed(names[2:]))
    applied = query(fresh_db, "SELECT name FROM schema_migrations WHERE status = 'succeeded' "
                              "ORDER BY name")
    assert [n for (n,) in applied] == names[:2]
    n = len(names)
    assert result.out.strip().splitlines()[-1] == f"2/{n} applied, {n - 2} pending"


def test_down_dry_run_lists_down_statements_and_changes_nothing(
    fresh_db: str, migrations: Path, runner_for, cli, pg_stack: PgStack
) -> None:
    names = migrate.migration_names(migrations)
    runner_for(fresh_db).up()
    before = schema_dump(pg_stack, fresh_db)
    result = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations), "--steps", "2",
                 "--dry-run")
    assert result.code == 0, result.err
    assert f"would roll back {names[-1]}" in result.out
    assert f"would roll back {names[-2]}" in result.out
    assert result.out.index(names[-1]) < result.out.index(names[-2])
    assert schema_dump(pg_stack, fresh_db) == before


def test_down_refuses_a_missing_down_file_and_rolls_back_nothing(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    names = migrate.migration_names(migrations)
    runner_for(fresh_db).up()
    (migrations / f"{names[-2]}.down.sql").unlink()
    result = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations), "--steps", "2")
    assert result.code == 1
    assert result.err.startswith("cesar: error: cannot roll back")
    assert f"{names[-2]}.down.sql is missing" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert events(fresh_db, "rollback") == []


def test_down_refuses_when_the_up_file_drifted(fresh_db: str, migrations: Path, runner_for,
                                               cli) -> None:
    names = migrate.migration_names(migrations)
    runner_for(fresh_db).up()
    up = migrations / f"{names[-1]}.up.sql"
    up.write_text(up.read_text() + "\n-- edited after it was applied\n")
    result = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 1
    assert "changed after it was applied" in result.err
    assert events(fresh_db, "rollback") == []


def test_down_with_nothing_applied_says_so(fresh_db: str, migrations: Path, cli) -> None:
    result = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 0, result.err
    assert "nothing to roll back" in result.out
    assert query(fresh_db, "SELECT to_regclass('schema_migrations')") == [(None,)]


def test_steps_and_to_together_is_a_usage_error(fresh_db: str, migrations: Path, cli) -> None:
    result = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations), "--steps", "1",
                 "--to", "001_agents")
    assert result.code == 2
    assert "either --steps N or --to NAME" in result.err
