"""``/tasks`` over real HTTP on a migrated PostgreSQL: create (idempotent, also under concurrent
retries), read, list with filters and keyset pages, cancel, the state machine (through the API
and with plain SQL), an audit row per write, and 422 naming the field for every bad input."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pgerrors

from cesar import keys
from tests.api.helpers import ApiServer, call, make_key, rows, serve, settings_for

TASK_FIELDS = {"id", "title", "description", "status", "priority", "requested_by", "payload",
               "agent_id", "preferred_agent_id", "created_at", "updated_at"}
STATUSES = ("queued", "assigned", "running", "done", "failed", "cancelled")
ALLOWED = {("queued", "assigned"), ("queued", "cancelled"), ("assigned", "running"),
           ("assigned", "queued"), ("assigned", "cancelled"), ("running", "done"),
           ("running", "failed"), ("running", "cancelled")}


@pytest.fixture(scope="module")
def work_api(migrated_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API on a database these tests write tasks into (their own module database)."""
    with serve(settings_for(migrated_url, tmp_path_factory.mktemp("tasks"))) as server:
        yield server


@pytest.fixture(scope="module")
def writer(migrated_url: str) -> str:
    """The contract's key: agents:read and tasks:write, nothing else."""
    return make_key(migrated_url, "agents:read", "tasks:write", name="writer")


def post_task(api: ApiServer, key: str, body: dict[str, object],
              idem: str | None = None) -> object:
    headers = {"Idempotency-Key": idem} if idem is not None else None
    return call(api.url, key, "POST", "/tasks", json=body, headers=headers)


def insert_task(url: str, status: str) -> str:
    """A task in ``status``, written with the sync's flag so the guard lets any state in."""
    task_id = str(uuid.uuid4())
    with psycopg.connect(url) as conn:
        conn.execute("SELECT set_config('cesar.sync_apply', 'on', true)")
        conn.execute("INSERT INTO tasks (id, title, status, requested_by) "
                     "VALUES (%s, 'fixture', %s, 'tests')", (task_id, status))
    return task_id


# ------------------------------------------------------------------------------ create / read
def test_create_then_read_with_the_contract_key(work_api: ApiServer, writer: str,
                                                migrated_url: str) -> None:
    r = post_task(work_api, writer, {"title": "write the report", "priority": 2,
                                     "payload": {"pages": 3}})
    assert r.status_code == 201, r.text
    task = r.json()
    assert set(task) == TASK_FIELDS
    assert task["status"] == "queued" and task["priority"] == 2 and task["agent_id"] is None
    assert task["payload"] == {"pages": 3}
    prefix = keys.prefix_of(writer)
    assert prefix in task["requested_by"]
    assert "Idempotent-Replayed" not in r.headers
    got = call(work_api.url, writer, "GET", f"/tasks/{task['id']}")
    assert got.status_code == 200 and got.json() == task
    audit = rows(migrated_url, "SELECT actor, action FROM audit_log WHERE target_id = %s",
                 (task["id"],))
    assert audit == [{"actor": task["requested_by"], "action": "task.create"}]


def test_an_unknown_task_is_404(work_api: ApiServer, writer: str) -> None:
    r = call(work_api.url, writer, "GET", f"/tasks/{uuid.uuid4()}")
    assert r.status_code == 404 and "no task" in r.json()["detail"]


def test_a_read_only_key_cannot_create(work_api: ApiServer, migrated_url: str) -> None:
    reader = make_key(migrated_url, "agents:read", name="reader")
    assert post_task(work_api, reader, {"title": "x"}).status_code == 403


# ------------------------------------------------------------------------------ idempotency
def test_the_same_idempotency_key_replays_the_first_task(work_api: ApiServer, writer: str,
                                                         migrated_url: str) -> None:
    idem = f"retry-{uuid.uuid4()}"
    first = post_task(work_api, writer, {"title": "once"}, idem)
    again = post_task(work_api, writer, {"title": "once"}, idem)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert rows(migrated_url, "SELECT count(*) AS n FROM tasks WHERE idempotency_key = %s",
                (idem,)) == [{"n": 1}]
    assert rows(migrated_url, "SELECT count(*) AS n FROM audit_log WHERE target_id = %s",
                (first.json()["id"],)) == [{"n": 1}]
    other = post_task(work_api, writer, {"title": "not once"}, idem)
    assert other.status_code == 422
    assert "different request body" in str(other.json()["detail"])
    # The key is per API key: another key with the same Idempotency-Key makes its own task.
    second_key = make_key(migrated_url, "tasks:write", name="second")
    theirs = post_task(work_api, second_key, {"title": "once"}, idem)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


def test_concurrent_retries_with_one_key_make_one_task(work_api: ApiServer, writer: str,
                                                       migrated_url: str) -> None:
    idem = f"storm-{uuid.uuid4()}"
    barrier = threading.Barrier(16)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def fire() -> None:
        barrier.wait()
        r = post_task(work_api, writer, {"title": "storm", "priority": 1}, idem)
        with lock:
            answers.append((r.status_code, r.json().get("id", r.text)))

    threads = [threading.Thread(target=fire) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {code for code, _ in answers} == {201}, answers
    assert len({task_id for _, task_id in answers}) == 1
    assert rows(migrated_url, "SELECT count(*) AS n FROM tasks WHERE idempotency_key = %s",
                (idem,)) == [{"n": 1}]
    assert rows(migrated_url, "SELECT count(*) AS n FROM audit_log WHERE request_id = %s",
                (idem,)) == [{"n": 1}]


# ------------------------------------------------------------------------------ list
def test_pages_cover_every_task_once_newest_first(tmp_path: Path, migrated_db: str) -> None:
    key = make_key(migrated_db, "agents:read", "tasks:write")
    with serve(settings_for(migrated_db, tmp_path)) as api:
        made = [post_task(api, key, {"title": f"t{i}", "priority": 1 + i % 5}).json()["id"]
                for i in range(23)]
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
            page = call(api.url, key, "GET", "/tasks", params=params).json()
            assert len(page["items"]) <= 5
            seen.extend(t["id"] for t in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(made))
        urgent = call(api.url, key, "GET", "/tasks", params={"status": "queued",
                                                             "limit": 200}).json()
        assert len(urgent["items"]) == 23
        assert call(api.url, key, "GET", "/tasks",
                    params={"status": "done"}).json() == {"items": [], "next_cursor": None}
        future = call(api.url, key, "GET", "/tasks",
                      params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future["items"] == []


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 201}, {"limit": "x"}, {"status": "lost"}, {"agent": "nope"},
    {"since": "yesterday"}, {"cursor": "not-a-cursor"}, {"cursor": "1_" + "0" * 33},
])
def test_bad_list_parameters_are_422_naming_the_field(work_api: ApiServer, writer: str,
                                                      params: dict[str, object]) -> None:
    r = call(work_api.url, writer, "GET", "/tasks", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", next(iter(params))]


# ------------------------------------------------------------------------------ bad bodies
@pytest.mark.parametrize(("body", "field"), [
    ({}, "title"), ({"title": ""}, "title"), ({"title": "x" * 201}, "title"),
    ({"title": 5}, "title"), ({"title": "nul\x00"}, "title"),
    ({"title": "t", "priority": 0}, "priority"), ({"title": "t", "priority": 6}, "priority"),
    ({"title": "t", "priority": "high"}, "priority"),
    ({"title": "t", "payload": [1]}, "payload"),
    ({"title": "t", "payload": {"a": "b\x00"}}, "payload"),
    ({"title": "t", "payload": {"big": "x" * 70_000}}, "payload"),
    ({"title": "t", "agent_id": "nobody"}, "agent_id"),
    ({"title": "t", "agent_id": str(uuid.uuid4())}, "agent_id"),
    ({"title": "t", "description": "d\x00"}, "description"),
    ({"title": "t", "colour": "red"}, "colour"),
])
def test_every_bad_field_is_422_naming_it(work_api: ApiServer, writer: str,
                                          body: dict[str, object], field: str) -> None:
    r = post_task(work_api, writer, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]


@pytest.mark.parametrize("idem", ["", "x" * 256, "tab\there"])
def test_a_bad_idempotency_key_is_422(work_api: ApiServer, writer: str, idem: str) -> None:
    r = post_task(work_api, writer, {"title": "t"}, idem)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_a_body_that_is_not_json_is_422(work_api: ApiServer, writer: str) -> None:
    r = call(work_api.url, writer, "POST", "/tasks", content=b"{not json",
             headers={"Content-Type": "application/json"})
    assert r.status_code == 422


# ------------------------------------------------------------------------------ cancel
def test_cancel_a_queued_task_and_again(work_api: ApiServer, writer: str,
                                        migrated_url: str) -> None:
    task = post_task(work_api, writer, {"title": "to cancel"}).json()
    r = call(work_api.url, writer, "POST", f"/tasks/{task['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = call(work_api.url, writer, "POST", f"/tasks/{task['id']}/cancel")
    assert again.status_code == 200 and again.json() == r.json()
    actions = rows(migrated_url, "SELECT action FROM audit_log WHERE target_id = %s "
                                 "ORDER BY occurred_at", (task["id"],))
    assert [a["action"] for a in actions] == ["task.create", "task.cancel"]


@pytest.mark.parametrize("status", ["done", "failed"])
def test_cancelling_a_finished_task_is_409_with_its_status(work_api: ApiServer, writer: str,
                                                           migrated_url: str,
                                                           status: str) -> None:
    task_id = insert_task(migrated_url, status)
    r = call(work_api.url, writer, "POST", f"/tasks/{task_id}/cancel")
    assert r.status_code == 409, r.text
    assert r.json()["current_status"] == status
    assert rows(migrated_url, "SELECT status FROM tasks WHERE id = %s",
                (task_id,)) == [{"status": status}]
    assert rows(migrated_url, "SELECT count(*) AS n FROM audit_log WHERE target_id = %s",
                (task_id,)) == [{"n": 0}]


def test_cancelling_an_unknown_task_is_404(work_api: ApiServer, writer: str) -> None:
    r = call(work_api.url, writer, "POST", f"/tasks/{uuid.uuid4()}/cancel")
    assert r.status_code == 404 and r.json()["detail"].startswith("no task with id")


# ------------------------------------------------------------------------------ the guard
def test_the_database_refuses_every_illegal_task_transition(migrated_url: str) -> None:
    """All 30 changes of status with plain SQL: the 8 legal ones pass, the others are refused
    with SQLSTATE 55000 naming the current status; the sync's own writes are let through."""
    refused = set()
    for old in STATUSES:
        for new in STATUSES:
            if old == new:
                continue
            task_id = insert_task(migrated_url, old)
            with psycopg.connect(migrated_url, autocommit=True) as conn:
                try:
                    conn.execute("UPDATE tasks SET status = %s WHERE id = %s", (new, task_id))
                except pgerrors.ObjectNotInPrerequisiteState as exc:
                    assert exc.diag.message_detail == f"current_status={old}"
                    refused.add((old, new))
    every = {(o, n) for o in STATUSES for n in STATUSES if o != n}
    assert refused == every - ALLOWED
    # The sync applies the other side's later version whatever the transition.
    task_id = insert_task(migrated_url, "done")
    with psycopg.connect(migrated_url) as conn:
        conn.execute("SELECT set_config('cesar.sync_apply', 'on', true)")
        conn.execute("UPDATE tasks SET status = 'queued' WHERE id = %s", (task_id,))
    assert rows(migrated_url, "SELECT status FROM tasks WHERE id = %s",
                (task_id,)) == [{"status": "queued"}]


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"title": "a\\ud800"}', "title"),
    (b'{"title": "t", "description": "\\udfff"}', "description"),
    (b'{"title": "t", "payload": {"k": "x\\ud83d"}}', "payload"),
    (b'{"title": "t", "payload": {"\\ud800": 1}}', "payload"),
])
def test_a_lone_surrogate_escape_is_422_not_500(work_api: ApiServer, writer: str, raw: bytes,
                                               field: str) -> None:
    # Valid JSON syntax (Python's json reads it) but no UTF-8 text: neither engine can store it.
    r = call(work_api.url, writer, "POST", "/tasks", content=raw,
             headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field], r.text
