"""`cesar migrate up --regional-by-row` (cesar/migrate/regions.py).

CockroachDB cannot run here, so the option is pinned three ways:

- the decision (which tables, which statements, the refusals) is pure and tested as such;
- PostgreSQL's behaviour (it does nothing, and says so) runs for real through the CLI;
- the runner's CockroachDB path (lease, one statement per implicit transaction, an event per
  table, resume after a failure, concurrent runners, an events table from an older runner)
  runs for real against PostgreSQL with a stand-in for the two engine-specific parts: the
  catalog read and the statements. The stand-in keeps a table's "locality" in its comment and
  converts a table in three statements shaped like CockroachDB's (add the region column,
  change its default, set the locality). What it cannot show is CockroachDB's own behaviour.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from cesar import migrate
from cesar.errors import ConfigError, OperationFailed
from cesar.migrate.regions import (
    REGIONAL_BY_ROW,
    REGIONAL_TABLES,
    Catalog,
    is_regional_by_row,
    plan,
    statements_for,
    validate_tables,
)
from cesar.migrate.sql import split
from cesar.migrate.store import EVENTS_TABLE, widen_events_check
from cesar.sync.tables import SYNCED_TABLES
from tests.helpers import PgStack, make_settings, query, schema_dump
from tests.migrate.helpers import events, file_count

TABLES = REGIONAL_TABLES
REGIONS = ("us-east1", "europe-west1", "us-central1")
LOCALITIES = (None, "REGIONAL BY TABLE IN PRIMARY REGION", 'REGIONAL BY TABLE IN "europe-west1"',
              "GLOBAL", "REGIONAL BY ROW", "REGIONAL BY ROW AS region")


def crdb(localities: dict[str, str | None], regions: tuple[str, ...] = REGIONS,
         primary: str | None = REGIONS[0]) -> Catalog:
    return Catalog("cockroachdb", "cesar", primary, regions, localities)


# ==================================================================== the decision (pure)
def test_the_tables_are_the_synced_tables_declared_once() -> None:
    assert REGIONAL_TABLES is SYNCED_TABLES
    assert validate_tables(REGIONAL_TABLES) == SYNCED_TABLES


@pytest.mark.parametrize("bad", [(), ("agents", "agents"), ("agents", "Tasks"),
                                 ("agents", "tasks; DROP TABLE agents"), ("",)])
def test_a_bad_table_list_is_refused_before_anything_runs(bad: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="cesar.schema.SYNCED_TABLES") as info:
        validate_tables(bad)
    assert "\n" not in str(info.value)


def test_postgresql_does_nothing_and_says_so() -> None:
    result = plan(Catalog("postgresql", "cesar"), TABLES)
    assert not result.applies and not result.changes and not result.already
    assert result.line() == ("regional-by-row: applies to CockroachDB only; cesar is postgresql, "
                             "nothing to do")


@pytest.mark.parametrize("regions,primary", [((), None), (REGIONS, None)])
def test_cockroachdb_without_regions_refuses_in_one_line(
        regions: tuple[str, ...], primary: str | None) -> None:
    everything = dict.fromkeys(TABLES)
    with pytest.raises(ConfigError) as info:
        plan(crdb(everything, regions, primary), TABLES)
    message = str(info.value)
    assert "\n" not in message
    assert "has no regions" in message and "cesar:regions" in message
    assert "docs/infra.md" in message


def test_only_the_tables_not_yet_regional_by_row_are_converted_in_declared_order() -> None:
    localities = {t: LOCALITIES[i % len(LOCALITIES)] for i, t in enumerate(TABLES)}
    result = plan(crdb(localities), TABLES)
    expected = [t for t in TABLES if not str(localities[t]).startswith("REGIONAL BY ROW")]
    assert [c.table for c in result.changes] == expected
    assert result.already == [t for t in TABLES if t not in expected]
    assert all(c.before == localities[c.table] and c.exists for c in result.changes)
    assert all(c.statements == statements_for(c.table, REGIONS[0]) for c in result.changes)


def test_a_second_run_finds_nothing_to_do() -> None:
    result = plan(crdb(dict.fromkeys(TABLES, REGIONAL_BY_ROW)), TABLES)
    assert result.changes == [] and result.already == list(TABLES)
    assert result.line().endswith(f"{len(TABLES)}/{len(TABLES)} tables REGIONAL BY ROW (regions "
                                  "us-east1 (primary), europe-west1, us-central1), nothing to do")


def test_a_missing_table_is_refused_unless_a_pending_migration_creates_it() -> None:
    localities = dict.fromkeys(TABLES[:-1])
    with pytest.raises(OperationFailed, match=f"table {TABLES[-1]} is declared") as info:
        plan(crdb(localities), TABLES)
    assert "\n" not in str(info.value)
    dry = plan(crdb(localities), TABLES, pending_migrations=True)
    assert [c.table for c in dry.changes] == list(TABLES)
    assert [c.exists for c in dry.changes] == [True] * (len(TABLES) - 1) + [False]


@given(st.lists(st.sampled_from(LOCALITIES + ("absent",)), min_size=len(TABLES),
                max_size=len(TABLES)))
def test_every_declared_table_is_either_converted_or_already_done(states: list[str]) -> None:
    localities = {t: s for t, s in zip(TABLES, states, strict=True) if s != "absent"}
    result = plan(crdb(localities), TABLES, pending_migrations=True)
    converted = [c.table for c in result.changes]
    assert sorted(converted + result.already) == sorted(TABLES)
    assert not set(converted) & set(result.already)
    assert all(is_regional_by_row(localities.get(t)) for t in result.already)
    assert converted == [t for t in TABLES if t in converted]  # declared order


def test_the_statements_unlock_then_convert_in_cockroachdbs_three_steps() -> None:
    unlock, add, default, locality = statements_for("agents", "us-east1")
    # v26.1 creates tables schema-locked; SET LOCALITY cannot unlock one by itself.
    assert unlock == 'ALTER TABLE "agents" SET (schema_locked = false)'
    assert add == ('ALTER TABLE "agents" ADD COLUMN IF NOT EXISTS crdb_region '
                   "public.crdb_internal_region NOT VISIBLE NOT NULL DEFAULT "
                   "'us-east1'::public.crdb_internal_region")
    assert default == ('ALTER TABLE "agents" ALTER COLUMN crdb_region SET DEFAULT '
                       "default_to_database_primary_region(gateway_region())"
                       "::public.crdb_internal_region")
    assert locality == 'ALTER TABLE "agents" SET LOCALITY REGIONAL BY ROW'


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s))
def test_a_region_name_cannot_break_out_of_its_statement(region: str) -> None:
    for text in statements_for("agents", region):
        statements = split(text + ";")
        assert len(statements) == 1 and statements[0].kind == "ddl"  # implicit transaction each


# ==================================================================== PostgreSQL, for real
def test_up_with_the_option_on_postgresql_applies_the_migrations_and_nothing_else(
        fresh_db: str, migrations: Path, cli, pg_stack: PgStack) -> None:
    n = file_count()
    first = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--regional-by-row")
    assert first.code == 0, first.err
    dbname = psycopg.conninfo.conninfo_to_dict(fresh_db)["dbname"]
    pg_line = f"regional-by-row: applies to CockroachDB only; {dbname} is postgresql, nothing to do"
    assert first.out.strip().splitlines()[-2:] == [f"{n}/{n} applied, 0 pending", pg_line]

    plain = pg_stack.create_database()
    try:
        assert cli("up", "--url", plain, "--migrations-dir", str(migrations)).code == 0
        assert schema_dump(pg_stack, fresh_db) == schema_dump(pg_stack, plain)
    finally:
        pg_stack.drop_database(psycopg.conninfo.conninfo_to_dict(plain)["dbname"])

    second = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--regional-by-row")
    assert second.code == 0, second.err
    assert second.out.strip().splitlines() == [f"{n}/{n} applied, 0 pending", pg_line]
    assert [e for _, e in events(fresh_db)] == ["apply"] * n


def test_the_setting_turns_it_on_and_the_flag_wins(
        fresh_db: str, migrations: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    monkeypatch.setenv("CESAR_REGIONAL_BY_ROW", "1")
    on = cli(*base)
    assert on.code == 0, on.err
    assert on.out.strip().splitlines()[-1].startswith("regional-by-row: applies to CockroachDB")
    off = cli(*base, "--no-regional-by-row")
    assert off.code == 0, off.err
    assert "regional-by-row" not in off.out
    monkeypatch.setenv("CESAR_REGIONAL_BY_ROW", "maybe")
    bad = cli(*base)
    assert bad.code == 2
    assert bad.err.startswith("cesar: error: CESAR_REGIONAL_BY_ROW='maybe' is not valid")
    assert len(bad.err.strip().splitlines()) == 1


def test_dry_run_json_on_postgresql_reports_it_and_creates_nothing(
        fresh_db: str, migrations: Path, cli) -> None:
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--dry-run",
                 "--json", "--regional-by-row")
    assert result.code == 0, result.err
    locality = result.json()["regional_by_row"]
    assert locality["applies"] is False and locality["engine"] == "postgresql"
    assert locality["changes"] == [] and locality["done"] == []
    assert query(fresh_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    without = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--dry-run",
                  "--json")
    assert without.json()["regional_by_row"] is None


# ============================================= the CockroachDB path, on PostgreSQL
class StandIn(migrate.Runner):
    """The runner with PostgreSQL standing in for CockroachDB's catalog and statements."""

    regions: tuple[str, ...] = REGIONS

    def _locality_catalog(self, tables: tuple[str, ...]) -> Catalog:
        rows = self.conn.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class AS c "
            "WHERE c.relnamespace = CAST(current_schema() AS REGNAMESPACE) AND c.relkind = 'r' "
            "AND c.relname = ANY(%s)", [list(tables)]).fetchall()
        primary = self.regions[0] if self.regions else None
        return Catalog("cockroachdb", self.conn.info.dbname, primary, self.regions,
                       {name: comment for name, comment in rows})

    def _locality_statements(self, table: str, primary_region: str) -> tuple[str, ...]:
        t = sql.Identifier(table).as_string(None)
        region = sql.Literal(primary_region).as_string(None)
        return (f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS crdb_region TEXT NOT NULL "
                f"DEFAULT {region}",
                f"ALTER TABLE {t} ALTER COLUMN crdb_region SET DEFAULT 'gateway'",
                f"COMMENT ON TABLE {t} IS '{REGIONAL_BY_ROW}'")


@pytest.fixture
def standin(migrations: Path):
    conns: list[psycopg.Connection] = []
    settings = make_settings()

    def make(url: str, **options: Any) -> StandIn:
        conn = migrate.connect(url, settings)
        conns.append(conn)
        return StandIn(conn, connect=lambda: migrate.connect(url, settings),
                       migrations_dir=migrations, settings=settings, **options)

    yield make
    for conn in conns:
        conn.close()


def converted(url: str) -> list[str]:
    rows = query(url, "SELECT c.relname FROM pg_class AS c JOIN information_schema.columns AS k "
                      "ON k.table_name = c.relname AND k.column_name = 'crdb_region' "
                      "AND k.table_schema = 'public' "
                      "WHERE obj_description(c.oid, 'pg_class') = %s", [REGIONAL_BY_ROW])
    return sorted(r[0] for r in rows)


def locality_events(url: str) -> list[tuple[str, Any]]:
    return [(r[0], r[1]) for r in query(
        url, f"SELECT event, detail FROM {EVENTS_TABLE} WHERE event IN ('set-locality', 'fail') "
             "ORDER BY occurred_at, id")]


def test_converts_every_table_once_recording_each_and_a_second_run_does_nothing(
        fresh_db: str, standin) -> None:
    report = standin(fresh_db).up(regional_by_row=True)
    assert report.done == migrate.migration_names(report.plan.migrations[0].up_path.parent)
    assert report.locality is not None and report.locality.done == list(TABLES)
    assert converted(fresh_db) == sorted(TABLES)
    assert query(fresh_db, "SELECT DISTINCT crdb_region FROM agents") == [(REGIONS[0],)]
    recorded = locality_events(fresh_db)
    assert [(e, d["table"]) for e, d in recorded] == [("set-locality", t) for t in TABLES]
    assert all(d["regions"] == list(REGIONS) and d["primary_region"] == REGIONS[0]
               and len(d["statements"]) == 3 for _, d in recorded)

    again = standin(fresh_db).up(regional_by_row=True)
    assert again.done == [] and again.locality is not None
    assert again.locality.changes == [] and again.locality.done == []
    assert again.locality.line().endswith("nothing to do")
    assert locality_events(fresh_db) == recorded
    assert query(fresh_db, "SELECT count(*) FROM schema_migration_lease") == [(0,)]


def test_without_regions_it_refuses_before_applying_any_migration(
        fresh_db: str, standin) -> None:
    runner = standin(fresh_db)
    runner.regions = ()
    with pytest.raises(ConfigError, match="has no regions"):
        runner.up(regional_by_row=True)
    assert query(fresh_db, "SELECT to_regclass('schema_migrations') IS NULL, "
                           "to_regclass('agents') IS NULL") == [(True, True)]


def test_dry_run_lists_the_statements_and_changes_nothing(
        fresh_db: str, standin) -> None:
    report = standin(fresh_db).up(dry_run=True, regional_by_row=True)
    assert report.locality is not None and report.locality.done == []
    assert [(c.table, c.exists) for c in report.locality.changes] == [(t, False) for t in TABLES]
    assert query(fresh_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_a_failed_statement_stops_names_the_table_and_the_next_run_finishes(
        fresh_db: str, standin) -> None:
    standin(fresh_db).up()
    victim = TABLES[2]
    # A crdb_region column of the wrong type: statement 1 (IF NOT EXISTS) passes, 2 fails.
    query(fresh_db, sql.SQL("ALTER TABLE {} ADD COLUMN crdb_region INT").format(
        sql.Identifier(victim)).as_string(None))
    with pytest.raises(OperationFailed) as info:
        standin(fresh_db).up(regional_by_row=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"setting {victim} REGIONAL BY ROW failed at statement 2/3")
    assert "SQLSTATE 22P02" in message
    assert f"{TABLES[0]}, {TABLES[1]} are REGIONAL BY ROW" in message
    assert converted(fresh_db) == sorted(TABLES[:2])
    assert [(e, d["table"]) for e, d in locality_events(fresh_db)] == [
        ("set-locality", TABLES[0]), ("set-locality", TABLES[1]), ("fail", victim)]
    assert query(fresh_db, "SELECT count(*) FROM schema_migration_lease") == [(0,)]

    query(fresh_db, sql.SQL("ALTER TABLE {} DROP COLUMN crdb_region").format(
        sql.Identifier(victim)).as_string(None))
    report = standin(fresh_db).up(regional_by_row=True)
    assert report.locality is not None and report.locality.done == list(TABLES[2:])
    assert report.locality.already == list(TABLES[:2])
    assert converted(fresh_db) == sorted(TABLES)
    assert [d["table"] for e, d in locality_events(fresh_db) if e == "set-locality"] == list(TABLES)


def test_concurrent_runners_convert_each_table_exactly_once(fresh_db: str, standin) -> None:
    standin(fresh_db).up()
    runners = [standin(fresh_db, wait_seconds=60) for _ in range(3)]
    results: list[Any] = [None] * len(runners)
    start = threading.Barrier(len(runners))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = runners[i].up(regional_by_row=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(runners))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, migrate.RunReport) for r in results), results
    done = sorted(t for r in results for t in r.locality.done)
    assert done == sorted(TABLES)
    assert sorted(d["table"] for _, d in locality_events(fresh_db)) == sorted(TABLES)
    assert converted(fresh_db) == sorted(TABLES)


def test_an_events_table_from_an_older_runner_accepts_the_new_event(
        fresh_db: str, standin) -> None:
    standin(fresh_db).up()
    old = ("apply", "fail", "rollback", "repair", "mark-applied", "lock-broken", "lease-takeover",
           "resume")
    check = "schema_migration_events_event_check"
    query(fresh_db, f"ALTER TABLE {EVENTS_TABLE} DROP CONSTRAINT {check}, "
                    f"ADD CONSTRAINT {check} CHECK (event IN {old!r})")
    with pytest.raises(psycopg.errors.CheckViolation):
        query(fresh_db, f"INSERT INTO {EVENTS_TABLE} (event, actor, host) "
                        "VALUES ('set-locality', 'x', 'y')")

    report = standin(fresh_db).up(regional_by_row=True)
    assert report.locality is not None and report.locality.done == list(TABLES)
    assert [d["table"] for _, d in locality_events(fresh_db)] == list(TABLES)
    assert len(events(fresh_db, "apply")) == file_count()  # the old events are all kept
    with pytest.raises(psycopg.errors.CheckViolation):  # and unknown events are still refused
        query(fresh_db, f"INSERT INTO {EVENTS_TABLE} (event, actor, host) "
                        "VALUES ('made-up', 'x', 'y')")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        widen_events_check(conn)  # idempotent
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = CAST(%s AS REGCLASS) "
            "AND contype = 'c'", [EVENTS_TABLE]).fetchone() == (1,)
