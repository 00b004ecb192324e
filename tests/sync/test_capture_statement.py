"""The statement-level capture of PostgreSQL (migration 017): one set-based write per statement
that records exactly the versions the row-level capture of 011 recorded, row for row."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from tests.sync.helpers import Pair, function_calls, superuser

CESAR = "a9e5c0de-0001-4000-8000-000000000001"


def versions(pair: Pair, side: str = "local", table: str = "agents") -> dict[str, tuple]:
    return {pk: (v, o, d, p) for pk, v, o, d, p in pair.sql(
        side, "SELECT pk, version, origin, deleted, pending FROM sync_versions "
              "WHERE table_name = %s", [table])}


def _calls(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> int:
    return function_calls(conn, ('sync_capture', 'sync_capture_statement'), statement, params)


def test_a_bulk_statement_runs_the_capture_once_not_once_per_row(pair: Pair) -> None:
    with superuser(pair) as conn:
        insert = _calls(conn, "INSERT INTO agents (id, name, mob_alias, role) "
                              "SELECT gen_random_uuid(), 'a' || g, 'alias', 'bulk' "
                              "FROM generate_series(1, 500) AS g")
        update = _calls(conn, "UPDATE agents SET status = 'paused' WHERE role = 'bulk'")
        delete = _calls(conn, "DELETE FROM agents WHERE role = 'bulk'")
    assert (insert, update, delete) == (1, 1, 1)
    v = versions(pair)
    assert sum(1 for x in v.values() if x[2]) == 500  # every deleted row left a tombstone


def test_every_row_of_multi_row_statements_gets_its_exact_version(pair: Pair) -> None:
    origin = pair.sql("local", "SELECT origin FROM sync_node")[0][0]
    ids = [str(uuid.uuid4()) for _ in range(300)]
    pair.sql("local", "INSERT INTO agents (id, name, mob_alias, role) "
                      "SELECT i, 'n' || i::TEXT, 'alias', 'multi' FROM unnest(%s::uuid[]) AS i",
             [ids])
    inserted = versions(pair)
    assert {k for k in inserted if k in ids} == set(ids)
    assert all(inserted[k][1:] == (origin, False, True) for k in ids)

    # Half of them updated in one statement: exactly those get a later version.
    changed = ids[:150]
    pair.sql("local", "UPDATE agents SET mob_alias = 'changed' WHERE id = ANY(%s::uuid[])",
             [changed])
    updated = versions(pair)
    assert all(updated[k][0] > inserted[k][0] for k in changed)
    assert all(updated[k] == inserted[k] for k in ids[150:])  # untouched: unchanged

    # A statement whose rows already hold a version from the future still moves past it.
    pair.sql("local", "UPDATE sync_versions SET version = version + INTERVAL '1 hour' "
                      "WHERE pk = ANY(%s)", [ids[:10]])
    ahead = versions(pair)
    pair.sql("local", "UPDATE agents SET status = 'paused' WHERE id = ANY(%s::uuid[])",
             [ids[:20]])
    later = versions(pair)
    assert all(later[k][0] > ahead[k][0] for k in ids[:20])

    # Deleting them all in one statement: a tombstone per row, pending.
    pair.sql("local", "DELETE FROM agents WHERE role = 'multi'")
    gone = versions(pair)
    assert all(gone[k][1:] == (origin, True, True) and gone[k][0] > later[k][0] for k in ids)


def test_a_multi_row_key_change_tombstones_each_old_key_and_creates_each_new(pair: Pair
                                                                            ) -> None:
    old = [str(uuid.uuid4()) for _ in range(20)]
    pair.sql("local", "INSERT INTO agents (id, name, mob_alias, role) "
                      "SELECT i, 'k' || i::TEXT, 'alias', 'rekey' FROM unnest(%s::uuid[]) AS i",
             [old])
    # Ten rows get a new key, ten keep theirs (a changed name only), in one statement.
    mapping = {k: str(uuid.uuid4()) for k in old[:10]}
    pair.sql("local", "UPDATE agents AS a SET id = coalesce(m.new_id, a.id), "
                      "name = a.name || '!' FROM (SELECT unnest(%s::uuid[]) AS id) AS s "
                      "LEFT JOIN (SELECT unnest(%s::uuid[]) AS old_id, "
                      "unnest(%s::uuid[]) AS new_id) AS m ON m.old_id = s.id "
                      "WHERE a.id = s.id",
             [old, list(mapping), list(mapping.values())])
    v = versions(pair)
    assert all(v[k][2] is True for k in mapping)               # old keys: tombstones
    assert all(v[n][2] is False for n in mapping.values())     # new keys: live
    assert all(v[k][2] is False for k in old[10:])             # same keys: live, updated


def test_upsert_captures_both_its_inserted_and_its_updated_rows(pair: Pair) -> None:
    new = str(uuid.uuid4())
    before = versions(pair)
    pair.sql("local", "INSERT INTO agents (id, name, mob_alias, role) VALUES "
                      "(%s, 'Upserted', 'u', 'x'), (%s, 'Cesar', 'again', 'x') "
                      "ON CONFLICT (id) DO UPDATE SET mob_alias = excluded.mob_alias",
             [new, CESAR])
    after = versions(pair)
    assert after[new][2] is False and after[new][3] is True
    assert after[CESAR][2] is False and after[CESAR][3] is True
    assert CESAR not in before or after[CESAR][0] > before[CESAR][0]


def test_a_statement_that_writes_nothing_records_nothing(pair: Pair) -> None:
    before = versions(pair)
    pair.sql("local", "UPDATE agents SET status = 'paused' WHERE false")
    pair.sql("local", "DELETE FROM agents WHERE false")
    assert versions(pair) == before


def test_statement_capture_moves_through_the_sync_like_the_row_capture(synced: Pair) -> None:
    """End to end: bulk writes of every kind on one side arrive exactly on the other."""
    ids = [str(uuid.uuid4()) for _ in range(200)]
    synced.sql("local", "INSERT INTO agents (id, name, mob_alias, role) "
                        "SELECT i, 'e' || i::TEXT, 'alias', 'e2e' FROM unnest(%s::uuid[]) AS i",
               [ids])
    synced.sql("local", "UPDATE agents SET mob_alias = 'moved' WHERE id = ANY(%s::uuid[])",
               [ids[:100]])
    synced.sql("local", "DELETE FROM agents WHERE id = ANY(%s::uuid[])", [ids[100:150]])
    report = synced.sync()
    assert report.failed == 0
    synced.assert_identical(("agents",))
    assert synced.pending("local") == 0 and synced.pending("cluster") == 0
    got = synced.sql("cluster", sql.SQL("SELECT count(*) FILTER (WHERE mob_alias = 'moved'), "
                                        "count(*) FROM agents WHERE role = 'e2e'").as_string())
    assert got == [(100, 150)]


def test_a_run_refuses_a_statement_capture_missing_a_companion(pair: Pair) -> None:
    import pytest

    from cesar.errors import ConfigError

    with superuser(pair) as conn:
        conn.execute("ALTER TABLE agents DISABLE TRIGGER sync_capture_update")
    with pytest.raises(ConfigError, match="sync_capture_update on 'agents' is missing or "
                                          "disabled in the local database"):
        pair.sync()
