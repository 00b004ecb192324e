"""The incremental pass: each hole of `updated_at > last_sync_at`, closed, on real databases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cesar.sync import capture
from tests.helpers import full_dump
from tests.sync.helpers import Pair

SIDES = ("local", "cluster")


def other(side: str) -> str:
    return "cluster" if side == "local" else "local"


def key() -> str:
    return str(uuid.uuid4())


def put(pair: Pair, side: str, k: str, val: str) -> None:
    pair.sql(side, "INSERT INTO items (id, val) VALUES (%s, %s) ON CONFLICT (id) "
                   "DO UPDATE SET val = excluded.val, updated_at = now()", [k, val])


def val(pair: Pair, side: str, k: str) -> str | None:
    rows = pair.sql(side, "SELECT val FROM items WHERE id = %s", [k])
    return rows[0][0] if rows else None


def version(pair: Pair, side: str, k: str) -> tuple:
    return tuple(pair.sql(side, "SELECT version, origin, deleted FROM sync_versions "
                                "WHERE table_name = 'items' AND pk = %s", [k])[0])


def origin(pair: Pair, side: str) -> str:
    return str(pair.sql(side, "SELECT origin FROM sync_node")[0][0])


def all_conflicts(pair: Pair) -> list[dict]:
    return pair.conflicts("local") + pair.conflicts("cluster")


# ------------------------------------------------------------------------- basics
def test_changes_move_both_ways_without_echo(synced: Pair) -> None:
    a, b, gone = key(), key(), key()
    put(synced, "local", gone, "doomed")
    synced.sync()
    put(synced, "local", a, "from local")
    put(synced, "cluster", b, "from cluster")
    synced.sql("cluster", "DELETE FROM items WHERE id = %s", [gone])

    report = synced.sync()

    assert report.moved == 3
    assert val(synced, "cluster", a) == "from local" and val(synced, "local", b) == "from cluster"
    assert val(synced, "local", gone) is None  # the delete travelled as a tombstone
    synced.assert_identical()
    # The applied rows carry the writer's version on both sides and are not pending anywhere:
    # nothing travels back.
    for k in (a, b, gone):
        assert version(synced, "local", k) == version(synced, "cluster", k)
    assert synced.pending("local") == synced.pending("cluster") == 0
    assert synced.sync().moved == 0


def test_the_agents_table_syncs_with_plain_sql(synced: Pair) -> None:
    new = key()
    synced.sql("local", "INSERT INTO agents (id, name, mob_alias, role) "
                        "VALUES (%s, 'Zed', 'The New Guy', 'testing')", [new])
    synced.sql("cluster", "UPDATE agents SET mob_alias = 'Don Cesar' WHERE name = 'CESAR'")
    synced.sql("cluster", "DELETE FROM agents WHERE name = 'Onyx'")
    synced.sync()
    synced.assert_identical(("agents",))
    assert synced.sql("local", "SELECT mob_alias FROM agents WHERE name = 'CESAR'") == [
        ("Don Cesar",)]
    assert synced.sql("cluster", "SELECT count(*) FROM agents") == [(24,)]


# ------------------------------------------------------------------------- late commits
@pytest.mark.parametrize("side", SIDES)
def test_a_transaction_that_commits_after_a_run_still_moves(synced: Pair, side: str) -> None:
    k, early = key(), key()
    with synced.connect(side, autocommit=False) as late:
        # Written (and stamped, updated_at = now()) before the run, committed after it.
        late.execute("INSERT INTO items (id, val) VALUES (%s, 'late')", [k])
        put(synced, side, early, "committed before the run")
        report = synced.sync()
        assert report.moved == 1 and val(synced, other(side), k) is None
        late.commit()
    assert synced.sync().moved == 1
    assert val(synced, other(side), k) == "late"
    synced.assert_identical()


@pytest.mark.parametrize("side", SIDES)
def test_a_transaction_held_open_across_several_runs(synced: Pair, side: str) -> None:
    existing, new = key(), key()
    put(synced, side, existing, "v1")
    synced.sync()
    with synced.connect(side, autocommit=False) as long:
        long.execute("UPDATE items SET val = 'v2' WHERE id = %s", [existing])
        long.execute("INSERT INTO items (id, val) VALUES (%s, 'new')", [new])
        for i in range(3):  # other traffic keeps flowing meanwhile, both ways
            put(synced, "local", key(), f"local {i}")
            put(synced, "cluster", key(), f"cluster {i}")
            assert synced.sync().moved == 2
        assert val(synced, other(side), existing) == "v1"
        long.commit()
    assert synced.sync().moved == 2
    assert val(synced, other(side), existing) == "v2" and val(synced, other(side), new) == "new"
    synced.assert_identical()


def test_a_row_locked_on_the_target_is_deferred_not_waited_for(synced: Pair) -> None:
    k = key()
    put(synced, "local", k, "v1")
    synced.sync()
    with synced.connect("cluster", autocommit=False) as holder:
        holder.execute("UPDATE items SET val = 'cluster, written first' WHERE id = %s", [k])
        put(synced, "local", k, "local, written last")
        for _ in range(2):
            report = synced.sync()
            assert report.deferred == 1 and report.moved == 0
        holder.commit()
    synced.sync()
    # The local write is the later one: it wins on both sides, and the cluster's lost version
    # is recorded with both images.
    assert val(synced, "cluster", k) == val(synced, "local", k) == "local, written last"
    [conflict] = all_conflicts(synced)
    assert conflict["resolution"] == "incoming_won"
    assert conflict["existing_row"]["val"] == "cluster, written first"
    assert conflict["incoming_row"]["val"] == "local, written last"
    synced.assert_identical()


def test_a_write_committed_between_the_read_and_the_acknowledgement_stays_pending(
        synced: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    k = key()
    put(synced, "local", k, "v1")
    real = capture.acknowledge

    def racing(*args: Any, **kwargs: Any) -> int:
        monkeypatch.setattr(capture, "acknowledge", real)
        put(synced, "local", k, "v2, committed while the run was applying v1")
        return real(*args, **kwargs)

    monkeypatch.setattr(capture, "acknowledge", racing)
    synced.sync()
    assert val(synced, "cluster", k) == "v1"  # what the run read
    assert synced.pending("local") == 1  # the newer write was not acknowledged with it
    synced.sync()
    assert val(synced, "cluster", k) == "v2, committed while the run was applying v1"
    synced.assert_identical()


# ------------------------------------------------------------------------- equal timestamps
def test_equal_versions_are_broken_by_origin_the_same_way_on_both_sides(synced: Pair) -> None:
    k = key()
    put(synced, "local", k, "base")
    synced.sync()
    put(synced, "local", k, "local")
    put(synced, "cluster", k, "cluster")
    for side in SIDES:  # both written in the same microsecond
        synced.sql(side, "UPDATE sync_versions SET version = '2031-01-01 00:00:00+00' "
                         "WHERE table_name = 'items' AND pk = %s", [k])
    winner = max(SIDES, key=lambda s: origin(synced, s))

    synced.sync()

    assert val(synced, "local", k) == val(synced, "cluster", k) == winner
    assert version(synced, "local", k) == version(synced, "cluster", k)
    [conflict] = all_conflicts(synced)
    assert conflict["incoming_version"] == conflict["existing_version"]
    assert {conflict["incoming_origin"], conflict["existing_origin"]} == {
        origin(synced, "local"), origin(synced, "cluster")}
    assert synced.sync().moved == 0


def test_many_rows_with_the_same_version_all_move_across_batches(synced: Pair) -> None:
    keys = [key() for _ in range(30)]
    for k in keys:
        put(synced, "local", k, "same time")
    synced.sql("local", "UPDATE sync_versions SET version = '2031-01-01 00:00:00+00' "
                        "WHERE table_name = 'items'")
    report = synced.sync(batch_size=7)
    assert report.moved == 30
    assert all(val(synced, "cluster", k) == "same time" for k in keys)
    assert synced.sync(batch_size=7).moved == 0


# ------------------------------------------------------------------------- deletes
@pytest.mark.parametrize("first", ["update", "delete"])
def test_update_against_delete(synced: Pair, first: str) -> None:
    k = key()
    put(synced, "local", k, "v1")
    synced.sync()
    if first == "update":
        put(synced, "local", k, "v2")
        synced.sql("cluster", "DELETE FROM items WHERE id = %s", [k])
        expected = None  # the delete came last
    else:
        synced.sql("cluster", "DELETE FROM items WHERE id = %s", [k])
        put(synced, "local", k, "v2")
        expected = "v2"  # the update came last: the row comes back
    synced.sync()
    assert val(synced, "local", k) == val(synced, "cluster", k) == expected
    assert len(all_conflicts(synced)) == 1
    synced.assert_identical()
    assert synced.sync().moved == 0


def test_delete_against_delete(synced: Pair) -> None:
    k = key()
    put(synced, "cluster", k, "v1")
    synced.sync()
    synced.sql("local", "DELETE FROM items WHERE id = %s", [k])
    synced.sql("cluster", "DELETE FROM items WHERE id = %s", [k])
    synced.sync()
    assert val(synced, "local", k) is None and val(synced, "cluster", k) is None
    assert version(synced, "local", k) == version(synced, "cluster", k)
    assert all_conflicts(synced) == []  # nothing was lost
    assert synced.sync().moved == 0


@pytest.mark.parametrize("where", ["other side", "same side"])
def test_reinsert_after_delete(synced: Pair, where: str) -> None:
    k = key()
    put(synced, "local", k, "first life")
    synced.sync()
    synced.sql("local", "DELETE FROM items WHERE id = %s", [k])
    if where == "other side":
        synced.sync()
        put(synced, "cluster", k, "second life")
    else:
        put(synced, "local", k, "second life")
    synced.sync()
    assert val(synced, "local", k) == val(synced, "cluster", k) == "second life"
    synced.assert_identical()


# ------------------------------------------------------------------------- rows that cannot apply
def test_a_unique_clash_goes_to_the_conflicts_table_and_the_run_goes_on(synced: Pair) -> None:
    a, b = key(), key()
    bystanders = [key() for _ in range(5)]
    synced.sql("local", "INSERT INTO named_items (id, name) VALUES (%s, 'x')", [a])
    synced.sql("cluster", "INSERT INTO named_items (id, name) VALUES (%s, 'x')", [b])
    for i, k in enumerate(bystanders):
        synced.sql("local" if i % 2 else "cluster",
                   "INSERT INTO named_items (id, name) VALUES (%s, %s)", [k, f"n{i}"])

    report = synced.sync()

    assert report.failed == 2 and report.moved == 5  # each side refuses the other's 'x'
    failed = [c for c in all_conflicts(synced) if c["resolution"] == "failed"]
    assert sorted(c["pk"] for c in failed) == sorted([a, b])
    assert {c["sqlstate"] for c in failed} == {"23505"}
    assert all("duplicate key" in c["reason"] for c in failed)
    # Still pending: retried every run, recorded once (attempts counted).
    assert synced.sync().failed == 2
    assert len([c for c in all_conflicts(synced) if c["resolution"] == "failed"]) == 2
    assert {c["attempts"] for c in all_conflicts(synced) if c["resolution"] == "failed"} == {2}
    # Someone fixes the data; the next run completes the pair.
    synced.sql("cluster", "UPDATE named_items SET name = 'y' WHERE id = %s", [b])
    assert synced.sync().failed == 0
    synced.assert_identical(("named_items",))
    assert synced.pending("local") == synced.pending("cluster") == 0


def test_a_child_whose_parent_was_deleted_on_the_other_side_fails_alone(synced: Pair) -> None:
    task = key()
    synced.sql("local", "INSERT INTO tasks (id, title, requested_by) VALUES (%s, 't', 'me')",
               [task])
    synced.sync()
    synced.sql("cluster", "DELETE FROM tasks WHERE id = %s", [task])
    synced.sql("local", "INSERT INTO task_assignments (task_id, agent_id) SELECT %s, id "
                        "FROM agents WHERE name = 'CESAR'", [task])
    report = synced.sync()
    assert report.failed == 2  # the child cannot reach the cluster, the delete cannot reach local
    assert {c["sqlstate"] for c in all_conflicts(synced)} == {"23503"}


# ------------------------------------------------------------------------- dry run
def test_dry_run_reports_and_changes_nothing(synced: Pair) -> None:
    a, b, c = key(), key(), key()
    put(synced, "local", c, "base")
    synced.sync()
    put(synced, "local", a, "a")
    put(synced, "cluster", b, "b")
    put(synced, "cluster", c, "cluster")
    put(synced, "local", c, "local")  # later: wins, and the cluster's version is recorded
    before = {s: full_dump(synced.pg, synced.url(s)) for s in SIDES}

    report = synced.sync(dry_run=True)

    assert {s: full_dump(synced.pg, synced.url(s)) for s in SIDES} == before
    assert (report.dry_run, report.moved, report.conflicts) == (True, 3, 1)
    real = synced.sync()
    assert (real.moved, real.conflicts) == (3, 1)
    synced.assert_identical()
