"""``--full`` settles the version rows that still say "live" for keys neither side has a row
of (rows deleted behind the capture on both sides alike): they become tombstones, so the
divergence check stops reporting them; what is in flight or written meanwhile keeps its version."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from tests.sync.helpers import BYPASS, Pair, superuser


def _items(pair: Pair, n: int) -> list[str]:
    keys = [str(uuid.uuid4()) for _ in range(n)]
    pair.sql("local", "INSERT INTO items (id, val) SELECT CAST(k AS UUID), 'v' FROM "
                      "unnest(CAST(%s AS TEXT[])) AS k", [keys])
    return sorted(keys)


def _delete_behind_capture(pair: Pair, side: str, keys: list[str]) -> None:
    with pair.connect(side) as conn:
        conn.execute(BYPASS)
        conn.execute("DELETE FROM items WHERE id = ANY(CAST(%s AS UUID[]))", [keys])


def _versions(pair: Pair, side: str, keys: list[str]) -> dict[str, tuple[Any, ...]]:
    return {r[0]: tuple(r[1:]) for r in pair.sql(
        side, "SELECT pk, version, origin, deleted, pending FROM sync_versions "
              "WHERE table_name = 'items' AND pk = ANY(%s)", [keys])}


def _divergent(report: Any) -> int:
    return next(d.divergent_rows for d in report.divergence if d.table == "items")


def _settled(report: Any) -> int:
    return sum(r.orphans_settled for r in report.reconcile if r.table == "items")


def test_a_full_run_makes_tombstones_of_keys_gone_on_both_sides(synced: Pair) -> None:
    keys = _items(synced, 6)
    synced.sync()
    gone, kept = keys[:2], keys[2:]
    for side in ("local", "cluster"):
        _delete_behind_capture(synced, side, gone)
    before = {side: _versions(synced, side, keys) for side in ("local", "cluster")}
    assert _divergent(synced.sync(orphan_check_seconds=0)) == 4  # 2 orphans on each side

    dry = synced.sync(full=True, dry_run=True, orphan_check_seconds=0)
    assert _settled(dry) == 4
    assert {side: _versions(synced, side, keys) for side in ("local", "cluster")} == before

    report = synced.sync(full=True, orphan_check_seconds=0)
    assert _settled(report) == 4
    assert _divergent(report) == 0
    for side in ("local", "cluster"):
        now = _versions(synced, side, keys)
        for key in gone:  # the same version, now a tombstone, nothing pending
            assert now[key] == (*before[side][key][:2], True, False), (side, key)
        for key in kept:
            assert now[key] == before[side][key], (side, key)
        assert sorted(str(r[0]) for r in synced.sql(side, "SELECT id FROM items WHERE "
                                                    "id = ANY(CAST(%s AS UUID[]))", [keys])
                      ) == kept
    assert _divergent(synced.sync(orphan_check_seconds=0)) == 0
    assert _settled(synced.sync(full=True)) == 0  # nothing left: a second --full does nothing


def test_a_key_gone_on_one_side_only_is_copied_back_not_settled(synced: Pair) -> None:
    """No row is dropped on a guess: a key the other side still has is repaired, as before."""
    keys = _items(synced, 3)
    synced.sync()
    _delete_behind_capture(synced, "local", keys[:1])
    report = synced.sync(full=True, orphan_check_seconds=0)
    assert _settled(report) == 0
    assert synced.sql("local", "SELECT count(*) FROM items WHERE id = CAST(%s AS UUID)",
                      [keys[0]])[0][0] == 1
    assert _divergent(report) == 0


def test_a_writer_inserting_a_settled_key_meanwhile_keeps_its_version(synced: Pair) -> None:
    """The key is inserted again (captured) by a transaction still open while the --full
    settles: the settle waits at most the lock timeout and leaves it; the writer's version
    wins and the row moves on the next run."""
    keys = _items(synced, 3)
    synced.sync()
    for side in ("local", "cluster"):
        _delete_behind_capture(synced, side, keys)
    with synced.connect("local", autocommit=False) as writer:
        writer.execute("INSERT INTO items (id, val) VALUES (CAST(%s AS UUID), 'again')",
                       [keys[0]])
        report = synced.sync(full=True, orphan_check_seconds=0, lock_timeout_ms=200)
        writer.commit()
    # The local side's update met the writer's lock and gave up whole (the next --full
    # settles the rest there); the cluster side, which has no writer, settled all three.
    assert _settled(report) == 3
    local = _versions(synced, "local", keys)
    assert local[keys[0]][2:] == (False, True)  # the writer's live, pending version
    synced.sync()
    for side in ("local", "cluster"):
        assert synced.sql(side, "SELECT val FROM items WHERE id = CAST(%s AS UUID)",
                          [keys[0]]) == [("again",)], side
    final = synced.sync(full=True, orphan_check_seconds=0)
    assert _divergent(final) == 0
    for side in ("local", "cluster"):
        now = _versions(synced, side, keys)
        assert [now[k][2] for k in keys[1:]] == [True, True], side
        assert now[keys[0]][2] is False, side


def test_a_writer_committing_while_the_settle_waits_for_it_keeps_its_version(
        synced: Pair) -> None:
    """The settle's update waits for the writer's lock on the version row, the writer commits
    its insert of the key, and the update, re-checking the row it waited for, leaves it: the
    key stays live (a tombstone over it would delete the row on the next runs)."""
    keys = _items(synced, 3)
    synced.sync()
    for side in ("local", "cluster"):
        _delete_behind_capture(synced, side, keys)
    errors: list[BaseException] = []
    with synced.connect("local", autocommit=False) as writer:
        writer.execute("INSERT INTO items (id, val) VALUES (CAST(%s AS UUID), 'again')",
                       [keys[0]])

        def commit_once_the_settle_waits() -> None:
            try:
                deadline = time.monotonic() + 60
                with superuser(synced, "local") as su:  # sees other roles' queries
                    su.autocommit = True
                    while not su.execute(
                            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE 'UPDATE sync_versions AS v SET deleted%'").fetchall():
                        assert time.monotonic() < deadline, "the settle never waited for it"
                        time.sleep(0.02)
                writer.commit()
            except BaseException as exc:  # reported by the test's thread
                errors.append(exc)

        committer = threading.Thread(target=commit_once_the_settle_waits)
        committer.start()
        report = synced.sync(full=True, orphan_check_seconds=0, lock_timeout_ms=30_000)
        committer.join()
    assert not errors, errors
    # The other two on each side: by the cluster's turn the writer's row is committed locally.
    assert _settled(report) == 4
    assert _versions(synced, "local", keys)[keys[0]][2:] == (False, True)
    synced.sync()
    for side in ("local", "cluster"):
        assert synced.sql(side, "SELECT val FROM items WHERE id = CAST(%s AS UUID)",
                          [keys[0]]) == [("again",)], side
