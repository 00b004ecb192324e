"""The capture (migration 011): plain SQL on a synced table leaves versions and tombstones."""

from __future__ import annotations

import time

import psycopg

from cesar.db import engines
from cesar.sync import capture
from cesar.sync.tables import validate
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


def index_entries_read(conn: psycopg.Connection) -> int:
    """The index entries this server's scans have returned from sync_versions' indexes, with
    this session's own counts published first (at the end of the flush request's statement)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT sum(idx_tup_read) FROM pg_stat_user_indexes "
                       "WHERE relname = 'sync_versions'").fetchone()
    assert row is not None
    return int(row[0])


def test_an_acknowledgement_reads_its_batch_not_the_backlog(synced: Pair) -> None:
    """A backlog that arrived after the last ANALYZE, which saw nothing pending: each
    acknowledgement of a batch reads its own keys' index entries, never every pending row of
    the table, on each of 30 calls on one connection (past the eleventh, from which a prepared
    statement is planned generically), and also the careful way, taken when a writer holds one
    of the batch's rows (the 15th call). Before, every call read the whole backlog (3,000,
    3,000, 2,900, ...)."""
    pair, backlog, batch = synced, 3000, 100
    pair.sql("local", "INSERT INTO agents (id, name, mob_alias, role) SELECT gen_random_uuid(), "
                      "'agent ' || g, 'alias ' || g, 'ack' FROM generate_series(1, %s) AS g",
             [backlog])
    assert pair.sync().moved == backlog
    pair.sql("local", "ANALYZE sync_versions")
    pair.sql("local", "UPDATE agents SET mob_alias = mob_alias || ' (changed)' WHERE role = 'ack'")
    with pair.connect("local") as conn, pair.connect("cluster") as cluster:
        [spec] = validate(conn, cluster, ("agents",))
        for setting in engines.of(conn).sync_session_settings:  # as the sync's sessions are
            conn.execute(setting)  # type: ignore[arg-type]
        changes = capture.read_pending(conn, spec, deleted=False, after="", limit=backlog)
        assert len(changes) == backlog
        # The counts of the sessions closed above are published as their backends exit.
        deadline, last = time.monotonic() + 10, -1
        while (now := index_entries_read(conn)) != last and time.monotonic() < deadline:
            last = now
            time.sleep(0.2)
        assert now == last, "sync_versions' index reads still changed after 10 s"
        read, careful = [], 14 * batch
        for start in range(0, backlog, batch):
            part = changes[start:start + batch]
            before = index_entries_read(conn)
            if start == careful:
                with pair.connect("local", autocommit=False) as writer:
                    writer.execute("SELECT 1 FROM sync_versions WHERE table_name = 'agents' "
                                   "AND pk = %s FOR UPDATE", [part[0].pk])
                    assert capture.acknowledge(conn, spec, part) == batch - 1
            else:
                assert capture.acknowledge(conn, spec, part) == batch
            read.append(index_entries_read(conn) - before)
    # Each key has a few entries (its superseded versions stay in the indexes until a vacuum);
    # the careful way reads them twice (its SELECT, then its UPDATE). At least one per key:
    # the counts were published (they are only when the session is idle, outside a transaction).
    assert min(read) >= batch - 1, read
    assert max(read[:careful // batch] + read[careful // batch + 1:]) <= 5 * batch, read
    assert read[careful // batch] <= 10 * batch, read
    with pair.connect("local") as conn:
        assert list(capture.pending_summary(conn)) == ["agents"]  # the held key
