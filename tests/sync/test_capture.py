"""The capture (migration 011): plain SQL on a synced table leaves versions and tombstones."""

from __future__ import annotations

from tests.sync.helpers import Pair

CESAR = "a9e5c0de-0001-4000-8000-000000000001"
NEW = "00000000-0000-4000-8000-00000000beef"


def versions(pair: Pair, side: str, table: str = "agents") -> dict[str, tuple]:
    return {pk: (v, o, d, p) for pk, v, o, d, p in pair.sql(
        side, "SELECT pk, version, origin, deleted, pending FROM sync_versions "
              "WHERE table_name = %s", [table])}


def test_insert_update_delete_with_plain_sql_are_captured(pair: Pair) -> None:
    origin = pair.sql("local", "SELECT origin FROM sync_node")[0][0]
    pair.sql("local", "INSERT INTO agents (id, name, mob_alias, role) "
                      "VALUES (%s, 'Zed', 'The New Guy', 'testing')", [NEW])
    inserted = versions(pair, "local")[NEW]
    pair.sql("local", "UPDATE agents SET mob_alias = 'Big Zed' WHERE id = %s", [NEW])
    updated = versions(pair, "local")[NEW]
    pair.sql("local", "DELETE FROM agents WHERE id = %s", [NEW])
    deleted = versions(pair, "local")[NEW]

    assert inserted[1:] == (origin, False, True)
    assert updated[1:] == (origin, False, True) and updated[0] > inserted[0]
    assert deleted[1:] == (origin, True, True) and deleted[0] > updated[0]  # a tombstone
    assert versions(pair, "cluster") == {}  # nothing written there


def test_versions_increase_within_one_transaction_and_past_a_future_version(pair: Pair) -> None:
    with pair.connect("local", autocommit=False) as conn:
        conn.execute("UPDATE agents SET status = 'paused' WHERE id = %s", [CESAR])
        conn.execute("UPDATE agents SET status = 'active' WHERE id = %s", [CESAR])
        conn.execute("UPDATE agents SET status = 'paused' WHERE id = %s", [CESAR])
        conn.commit()
    first = versions(pair, "local")[CESAR][0]
    # A version from a clock far ahead (the other side's, applied by the sync): the next local
    # write must still come after it, or it would lose to a write it has already seen.
    pair.sql("local", "UPDATE sync_versions SET version = version + INTERVAL '1 hour' "
                      "WHERE pk = %s", [CESAR])
    pair.sql("local", "UPDATE agents SET status = 'active' WHERE id = %s", [CESAR])
    after = versions(pair, "local")[CESAR][0]
    assert first is not None
    assert after.timestamp() > first.timestamp() + 3599  # type: ignore[union-attr]


def test_a_primary_key_change_is_a_delete_and_an_insert(pair: Pair) -> None:
    pair.sql("local", "UPDATE agents SET id = %s WHERE id = %s", [NEW, CESAR])
    v = versions(pair, "local")
    assert v[CESAR][2] is True and v[NEW][2] is False


def test_writes_of_the_sync_itself_are_not_captured(pair: Pair) -> None:
    with pair.connect("local", autocommit=False) as conn:
        conn.execute("SELECT set_config('cesar.sync_apply', 'on', true)")
        conn.execute("UPDATE agents SET mob_alias = 'quiet' WHERE id = %s", [CESAR])
        conn.commit()
    assert versions(pair, "local") == {}
    # The setting ends with that transaction: the next write is captured again.
    pair.sql("local", "UPDATE agents SET mob_alias = 'loud' WHERE id = %s", [CESAR])
    assert CESAR in versions(pair, "local")
