"""Parents and children written while a run is moving them: no foreign-key violation.

A run moves inserts parents first and deletes children first, table by table. A writer that
commits a parent and its child after the parent table's pass has read, but before the child
table's pass reads, hands the run a child whose parent is not on the target yet (and, for
deletes, a parent whose child is still there). Before, the target's write failed with a
foreign-key violation: an ERROR line in the server's log per attempt, the key recorded as
``failed`` in ``sync_conflicts``. Now such a key waits (stays pending) for the next run, without
an error anywhere; the next run moves both and the sides are identical.

The writer is placed at that exact moment by a hook on the run's read of the child's (or the
parent's) pending changes; a second test runs a free writer beside many runs.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from cesar.sync import capture
from cesar.sync.tables import validate
from tests.sync.helpers import Pair

FK_ERROR = "violates foreign key constraint"


@pytest.fixture
def server_log(pair: Pair) -> Iterator[Callable[[], list[str]]]:
    """The server log lines written since the fixture started that report an FK violation."""
    path: Path = pair.pg.pg.log_file
    start = path.stat().st_size

    def lines() -> list[str]:
        with path.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
        return [ln for ln in text.splitlines() if FK_ERROR in ln]

    yield lines


def new_agent(pair: Pair, side: str) -> str:
    agent = str(uuid.uuid4())
    pair.sql(side, "INSERT INTO agents (id, name, mob_alias, role) "
                   "VALUES (%s, 'fk', 'fk', 'test')", [agent])
    return agent


def new_capability(pair: Pair, side: str, agent: str) -> str:
    cap = str(uuid.uuid4())
    pair.sql(side, "INSERT INTO agent_capabilities (id, agent_id, capability) "
                   "VALUES (%s, %s, 'c')", [cap, agent])
    return cap


def hook_read(monkeypatch: pytest.MonkeyPatch, table: str, deleted: bool,
              action: Callable[[], None]) -> list[int]:
    """Run ``action`` once, just before the run's first read of ``table``'s pending changes
    of that kind; returns a list that holds 1 once it ran."""
    real = capture.read_pending
    done: list[int] = []

    def read(conn: Any, spec: Any, **kw: Any) -> list[capture.Change]:
        if spec.name == table and kw["deleted"] is deleted and not done:
            done.append(1)
            action()
        return real(conn, spec, **kw)

    monkeypatch.setattr(capture, "read_pending", read)
    return done


def failed_conflicts(pair: Pair) -> list[dict[str, Any]]:
    return [c for side in ("local", "cluster") for c in pair.conflicts(side)
            if c["resolution"] == "failed"]


def child_written_with_its_parent_during_a_run(
        pair: Pair, server_log: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch,
        child: tuple[str, str] = ("agent_capabilities", "agent_id"),
        new_parent: Callable[[Pair, str], str] | None = None,
        new_child: Callable[[Pair, str, str], str] | None = None,
        pending_parent: str = "a9e5c0de-0001-4000-8000-000000000001") -> None:
    """A parent and its child committed on the local side after the run's parent pass has
    read: the child waits for its parent, no write fails, the next run moves both.
    ``child``: the child table and its key column (agent_capabilities.agent_id unless told)."""
    new_parent = new_parent or new_agent
    new_child = new_child or new_capability
    # Something of the child table is pending when the run starts, so its pass runs.
    new_child(pair, "local", pending_parent)
    written: dict[str, str] = {}

    def writer() -> None:  # after the parent's pass has read: parent and child, committed
        written["parent"] = new_parent(pair, "local")
        written["child"] = new_child(pair, "local", written["parent"])

    ran = hook_read(monkeypatch, child[0], False, writer)
    report = pair.sync()
    assert ran == [1]

    assert server_log() == [], "the run's write failed on the target's foreign key"
    assert report.failed == 0 and failed_conflicts(pair) == []
    monkeypatch.undo()
    pair.sync()
    pair.assert_identical()
    assert pair.pending("local") == 0 and pair.pending("cluster") == 0
    assert pair.sql("cluster", sql.SQL("SELECT {}::TEXT FROM {} WHERE id = %s").format(
        sql.Identifier(child[1]), sql.Identifier(child[0])),
        [written["child"]]) == [(written["parent"],)]
    assert server_log() == []


def test_a_child_written_with_its_parent_during_a_run_waits_for_it(
        synced: Pair, server_log: Callable[[], list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    child_written_with_its_parent_during_a_run(synced, server_log, monkeypatch)


def test_a_foreign_key_only_the_target_has_is_waited_for_too(
        synced: Pair, server_log: Callable[[], list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The foreign keys a run holds rows back for are both sides': here only the cluster (the
    target) has the constraint, the source has lost it."""
    [(constraint,)] = synced.sql(
        "local", "SELECT conname FROM pg_constraint WHERE contype = 'f' "
                 "AND conrelid = 'agent_capabilities'::regclass")
    synced.sql("local", f"ALTER TABLE agent_capabilities DROP CONSTRAINT {constraint}")
    child_written_with_its_parent_during_a_run(synced, server_log, monkeypatch)


def test_a_parent_deleted_with_its_child_during_a_run_waits_for_it(
        synced: Pair, server_log: Callable[[], list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    pair = synced
    agent = new_agent(pair, "local")
    cap = new_capability(pair, "local", agent)
    pair.sync()
    assert pair.sql("cluster", "SELECT count(*) FROM agent_capabilities WHERE id = %s",
                    [cap]) == [(1,)]
    # A delete of another agent is pending when the run starts, so the agents' delete pass runs.
    pair.sql("local", "DELETE FROM agents WHERE id = %s", [new_agent(pair, "local")])

    def writer() -> None:  # after the children's delete pass has read: child, then parent
        pair.sql("local", "DELETE FROM agent_capabilities WHERE id = %s", [cap])
        pair.sql("local", "DELETE FROM agents WHERE id = %s", [agent])

    ran = hook_read(monkeypatch, "agents", True, writer)
    report = pair.sync()
    assert ran == [1]

    assert server_log() == [], "the run's delete failed on the target's foreign key"
    assert report.failed == 0 and failed_conflicts(pair) == []
    monkeypatch.undo()
    pair.sync()
    pair.assert_identical()
    assert pair.pending("local") == 0 and pair.pending("cluster") == 0
    assert pair.sql("cluster", "SELECT count(*) FROM agents WHERE id = %s", [agent]) == [(0,)]
    assert server_log() == []


def test_a_free_writer_of_parents_and_children_beside_runs(
        synced: Pair, server_log: Callable[[], list[str]]) -> None:
    """Two writers (one per side) create and delete agents with capabilities, each pair in
    one transaction, while runs follow each other: no FK error, nothing failed, and the sides
    end identical."""
    pair = synced
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(side: str) -> None:
        try:
            with pair.connect(side, autocommit=False) as conn:
                made: list[tuple[str, str]] = []
                while not stop.is_set():
                    agent, cap = str(uuid.uuid4()), str(uuid.uuid4())
                    conn.execute("INSERT INTO agents (id, name, mob_alias, role) "
                                 "VALUES (%s, 'w', 'w', 'w')", [agent])
                    conn.execute("INSERT INTO agent_capabilities (id, agent_id, capability) "
                                 "VALUES (%s, %s, 'c')", [cap, agent])
                    conn.commit()
                    made.append((agent, cap))
                    if len(made) > 3:
                        old_agent, old_cap = made.pop(0)
                        conn.execute("DELETE FROM agent_capabilities WHERE id = %s", [old_cap])
                        conn.execute("DELETE FROM agents WHERE id = %s", [old_agent])
                        conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(side,)) for side in ("local", "cluster")]
    for t in threads:
        t.start()
    failed = 0
    try:
        for _ in range(25):
            failed += pair.sync().failed
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    for _ in range(3):  # what the last runs left pending (their parents came after them)
        failed += pair.sync().failed
    assert server_log() == [], "a run's write failed on the target's foreign key"
    assert failed == 0 and failed_conflicts(pair) == []
    pair.assert_identical()
    assert pair.pending("local") == 0 and pair.pending("cluster") == 0


def test_the_bulk_path_leaves_a_child_without_its_parent_to_the_next_run(
        synced: Pair, server_log: Callable[[], list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race on the bulk path (COPY and set-based statements): the chunk does not fail
    on the constraint; the child without its parent waits, everything else moves."""
    bulk_child_written_with_its_parent_during_a_run(synced, server_log, monkeypatch)


def bulk_child_written_with_its_parent_during_a_run(
        pair: Pair, server_log: Callable[[], list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cesar.sync import bulk

    pair.settings = pair.settings.model_copy(update={"bulk_threshold": 1})
    old = new_capability(pair, "local", "a9e5c0de-0002-4000-8000-000000000002")
    real = bulk.move
    written: dict[str, str] = {}

    def move(source: Any, target: Any, spec: Any, **kw: Any) -> Any:
        if spec.name == "agent_capabilities" and not written:
            written["agent"] = new_agent(pair, "local")
            written["cap"] = new_capability(pair, "local", written["agent"])
        return real(source, target, spec, **kw)

    monkeypatch.setattr(bulk, "move", move)
    report = pair.sync()
    assert written

    assert server_log() == [], "the bulk chunk failed on the target's foreign key"
    assert report.failed == 0 and failed_conflicts(pair) == []
    caps = next(t for t in report.tables
                if t.table == "agent_capabilities" and t.direction == "local_to_cluster")
    assert caps.bulk_applied == 1  # the other key of the chunk moved
    assert pair.sql("cluster", "SELECT count(*) FROM agent_capabilities WHERE id = %s",
                    [old]) == [(1,)]
    monkeypatch.undo()
    pair.sync()
    pair.assert_identical()
    assert pair.pending("local") == 0 and pair.pending("cluster") == 0
    assert server_log() == []


def test_a_real_conflict_is_recorded_as_failed_without_an_error_in_the_log(
        synced: Pair, server_log: Callable[[], list[str]]) -> None:
    """A child written on one side under a parent deleted on the other is not a race: it can
    never be applied. It is recorded (SQLSTATE 23503) each way, as before, but found by a query
    instead of a failing statement; and it stays recorded, not held, on the next run."""
    pair = synced
    agent = new_agent(pair, "local")
    pair.sync()
    pair.sql("cluster", "DELETE FROM agents WHERE id = %s", [agent])
    cap = new_capability(pair, "local", agent)

    report = pair.sync()

    assert report.failed == 2  # the child cannot reach the cluster, the delete cannot reach local
    failed = failed_conflicts(pair)
    assert {(c["table_name"], c["pk"], c["sqlstate"]) for c in failed} == {
        ("agent_capabilities", cap, "23503"), ("agents", agent, "23503")}
    assert server_log() == []
    again = pair.sync()
    assert again.failed == 2 and len(failed_conflicts(pair)) == 2  # recorded once
    assert server_log() == []


def test_a_full_reconcile_deletes_a_parent_and_its_child_in_one_run(synced: Pair,
                                                                    server_log) -> None:
    """The reconcile repairs table after table, parents first: a parent's delete is held while
    its child is still there (and the child's delete comes after). A run that held a key goes
    over the tables once more, children first, so one --full leaves nothing behind; it used to
    report the parent as "deferred, next run" though no run but another --full would move it
    (nothing about it was pending)."""
    agent = new_agent(synced, "local")
    new_capability(synced, "local", agent)
    synced.sync()
    synced.assert_identical()
    # Deleted on the cluster with the pending flags lost: only a reconcile can see it.
    synced.sql("cluster", "DELETE FROM agent_capabilities WHERE agent_id = %s", [agent])
    synced.sql("cluster", "DELETE FROM agents WHERE id = %s", [agent])
    synced.sql("cluster", "UPDATE sync_versions SET pending = false WHERE pending")
    assert synced.sync().moved == 0

    synced.sync(full=True)

    assert synced.sql("local", "SELECT count(*) FROM agents WHERE id = %s", [agent]) == [(0,)]
    synced.assert_identical()
    assert server_log() == [] and failed_conflicts(synced) == []


# ------------------------------------------------ foreign keys that share a name
SEEDED_AGENT = "a9e5c0de-0001-4000-8000-000000000001"


def name_alike(pair: Pair, keys: list[tuple[str, str]], name: str = "fk_parent") -> None:
    """On both sides, rename each table's foreign key to ``parent`` to ``name``: legal, as a
    constraint's name is unique only per table."""
    for side in ("local", "cluster"):
        for table, parent in keys:
            [(old,)] = pair.sql(
                side, "SELECT conname FROM pg_constraint WHERE contype = 'f' "
                      "AND conrelid = %s::regclass AND confrelid = %s::regclass", [table, parent])
            pair.sql(side, f"ALTER TABLE {table} RENAME CONSTRAINT {old} TO {name}")


def new_task(pair: Pair, side: str) -> str:
    task = str(uuid.uuid4())
    pair.sql(side, "INSERT INTO tasks (id, title, requested_by) VALUES (%s, 'fk', 'fk')",
             [task])
    return task


def new_assignment(pair: Pair, side: str, task: str) -> str:
    assignment = str(uuid.uuid4())
    pair.sql(side, "INSERT INTO task_assignments (id, task_id, agent_id) VALUES (%s, %s, %s)",
             [assignment, task, SEEDED_AGENT])
    return assignment


def test_a_child_waits_for_its_parent_when_two_foreign_keys_share_a_name(
        synced: Pair, server_log: Callable[[], list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """task_assignments -> tasks and agent_runs -> agents, both named fk_parent on both sides:
    each key is still read as the single-column key it is, so an assignment written with its
    task during a run waits for the task (read by constraint name alone, each looked like a
    key of two columns to two tables, and the assignment's write failed on the constraint)."""
    name_alike(synced, [("task_assignments", "tasks"), ("agent_runs", "agents")])
    child_written_with_its_parent_during_a_run(
        synced, server_log, monkeypatch, ("task_assignments", "task_id"), new_task,
        new_assignment, pending_parent=new_task(synced, "local"))


def test_same_named_foreign_keys_add_no_edge_between_tables(synced: Pair) -> None:
    """agent_capabilities -> agents and task_assignments -> tasks renamed alike on both sides:
    validation finds exactly the foreign keys it found before the rename. (Read by name alone,
    agent_capabilities seemed to reference tasks, which comes after it, and every run was
    refused.)"""
    pair = synced
    names = pair.settings.tables

    def edges() -> set[tuple[str, str, str]]:
        with pair.connect("local") as local, pair.connect("cluster") as cluster:
            specs = validate(local, cluster, names)
        return {(fk.child, fk.column, fk.parent) for s in specs for fk in s.parents}

    before = edges()
    assert ("agent_capabilities", "agent_id", "agents") in before
    assert ("task_assignments", "task_id", "tasks") in before
    name_alike(pair, [("agent_capabilities", "agents"), ("task_assignments", "tasks")])

    assert edges() == before
    assert pair.sync().failed == 0


def test_the_bulk_path_respects_a_foreign_key_only_the_target_has(
        synced: Pair, server_log: Callable[[], list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path's staging filter uses both sides' foreign keys too: the source has lost
    the constraint, the target (the cluster) has it; the child written with its parent during
    the run is left to the next run instead of failing the chunk on the target."""
    [(constraint,)] = synced.sql(
        "local", "SELECT conname FROM pg_constraint WHERE contype = 'f' "
                 "AND conrelid = 'agent_capabilities'::regclass")
    synced.sql("local", f"ALTER TABLE agent_capabilities DROP CONSTRAINT {constraint}")
    bulk_child_written_with_its_parent_during_a_run(synced, server_log, monkeypatch)
