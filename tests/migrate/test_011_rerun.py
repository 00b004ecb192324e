"""Migration 011 (the sync's capture triggers) runs again on a database that has its triggers.

CockroachDB before v26.2 refuses ``CREATE OR REPLACE FUNCTION`` on a function that a trigger
uses (cockroachdb/cockroach#134575). PostgreSQL allows it, so each test database gets the same
rule from an event trigger that fails a ``CREATE [OR REPLACE] FUNCTION`` of a function some
trigger calls: with it, a file that replaces the function before dropping the triggers fails on
PostgreSQL exactly where it fails on CockroachDB.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cesar.migrate.files import EQUIVALENT_REVISIONS, load
from tests.helpers import PgStack, query

NAME = "011_sync_capture"

COCKROACH_RULE = """
CREATE FUNCTION public.no_replace_of_a_trigger_function() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE object_type = 'function' LOOP
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = r.objid) THEN
      RAISE EXCEPTION 'cannot replace a trigger function with an active trigger'
        USING ERRCODE = '0A000';
    END IF;
  END LOOP;
END $$;
CREATE EVENT TRIGGER no_replace_of_a_trigger_function ON ddl_command_end
  WHEN TAG IN ('CREATE FUNCTION') EXECUTE FUNCTION public.no_replace_of_a_trigger_function();
"""


def _with_cockroach_rule(pg_stack: PgStack, url: str) -> None:
    with pg_stack.superuser(url.rsplit("/", 1)[1].split("?", 1)[0]) as conn:
        conn.execute(COCKROACH_RULE)  # type: ignore[arg-type]


def _capture_triggers(url: str) -> int:
    return query(url, "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                      "WHERE p.proname = 'sync_capture' AND NOT t.tgisinternal")[0][0]


@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_011_runs_again_where_its_triggers_exist(
    pg_stack: PgStack, fresh_db: str, migrations: Path, cli, mode: str
) -> None:
    # 011 as the newest migration: the set as it stood when a cluster first applied it, so that
    # losing its tracking row makes it pending again rather than out of order.
    for later in migrations.glob("*.sql"):
        if later.name > NAME + "~":
            later.unlink()
    args = ("--url", fresh_db, "--migrations-dir", str(migrations), "--mode", mode)
    _with_cockroach_rule(pg_stack, fresh_db)
    assert cli("up", *args).code == 0
    assert _capture_triggers(fresh_db) == 8
    # the rule is in force: replacing the function while a trigger uses it fails
    with pytest.raises(Exception, match="cannot replace a trigger function"):
        query(fresh_db, "CREATE OR REPLACE FUNCTION sync_capture() RETURNS trigger "
                        "LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")

    # The tracking row is lost (a restore of the schema without it): 011 runs again in full.
    query(fresh_db, "DELETE FROM schema_migrations WHERE name = %s", [NAME])
    again = cli("up", *args)
    assert again.code == 0, again.err
    assert _capture_triggers(fresh_db) == 8
    # and the triggers capture
    query(fresh_db, "INSERT INTO agents (name, mob_alias, role) VALUES ('rerun-check', 'x', 'y')")
    assert query(fresh_db, "SELECT count(*) FROM sync_versions s JOIN agents a "
                           "ON s.pk = a.id::text WHERE s.table_name = 'agents' "
                           "AND a.name = 'rerun-check'") == [(1,)]

    # down, up, and up again after a repair of the applied row
    assert cli("down", "--steps", "1", *args).code == 0
    assert _capture_triggers(fresh_db) == 0
    assert cli("up", *args).code == 0
    assert _capture_triggers(fresh_db) == 8


def test_a_database_that_applied_the_earlier_revision_of_011_is_not_drifted(
    fresh_db: str, migrations: Path, cli
) -> None:
    """The revision that drops the triggers first leaves the same function and triggers, so a
    database whose row holds the earlier file's checksum runs on without `repair`."""
    args = ("--url", fresh_db, "--migrations-dir", str(migrations))
    assert cli("up", *args).code == 0
    (earlier,) = EQUIVALENT_REVISIONS[NAME]
    current = next(m for m in load(migrations) if m.name == NAME).checksum
    assert earlier != current
    query(fresh_db, "UPDATE schema_migrations SET checksum = %s WHERE name = %s",
          [earlier, NAME])
    dry = cli("up", *args, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["applied_checksums"][NAME] == "ok" and dry.json()["problems"] == []
    assert cli("up", *args).code == 0
    # another checksum is still drift
    query(fresh_db, "UPDATE schema_migrations SET checksum = %s WHERE name = %s",
          ["0" * 64, NAME])
    drifted = cli("up", *args)
    assert drifted.code == 1 and "changed after it was applied" in drifted.err
