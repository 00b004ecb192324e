"""``/runs`` over real HTTP on a migrated PostgreSQL: a run's whole life on a dispatched task,
every illegal step refused with 409 and the current state (API and plain SQL), an audit row per
write, pages, and 422 naming the field."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors as pgerrors

from tests.api.helpers import ApiServer, active_agents, call, make_key, rows, serve, settings_for

RUN_FIELDS = {"id", "agent_id", "task_id", "status", "started_at", "finished_at", "tokens_in",
              "tokens_out", "cost_usd", "error"}
FINISH = {"status": "succeeded", "tokens_in": 1200, "tokens_out": 340, "cost_usd": "0.0125"}


@pytest.fixture(scope="module")
def work_api(migrated_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serve(settings_for(migrated_url, tmp_path_factory.mktemp("runs"))) as server:
        yield server


@pytest.fixture(scope="module")
def key(migrated_url: str) -> str:
    return make_key(migrated_url, "agents:read", "tasks:write", name="runner")


def assigned_task(api: ApiServer, key: str, agent: str) -> str:
    """A task created for ``agent`` and dispatched to it."""
    task = call(api.url, key, "POST", "/tasks", json={"title": "work", "priority": 1,
                                                      "agent_id": agent}).json()
    assigned = call(api.url, key, "POST", "/dispatch").json()["assigned"]
    assert {"task_id": task["id"], "agent_id": agent} in assigned
    return str(task["id"])


def test_a_run_on_a_task_from_start_to_finish(work_api: ApiServer, key: str,
                                              migrated_url: str) -> None:
    agent = active_agents(migrated_url)[0]
    task_id = assigned_task(work_api, key, agent)
    assert call(work_api.url, key, "GET", f"/tasks/{task_id}").json()["agent_id"] == agent
    r = call(work_api.url, key, "POST", "/runs", json={"agent_id": agent, "task_id": task_id})
    assert r.status_code == 201, r.text
    run = r.json()
    assert set(run) == RUN_FIELDS
    assert run["status"] == "running" and run["cost_usd"] == "0.000000"
    assert call(work_api.url, key, "GET", f"/tasks/{task_id}").json()["status"] == "running"
    for i, kind in enumerate(["message", "tool_call", "tool_result", "status"]):
        e = call(work_api.url, key, "POST", f"/runs/{run['id']}/events",
                 json={"kind": kind, "payload": {"step": i}})
        assert e.status_code == 201, e.text
        assert e.json()["run_id"] == run["id"] and e.json()["kind"] == kind
    done = call(work_api.url, key, "POST", f"/runs/{run['id']}/finish", json=FINISH)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["status"], body["tokens_in"], body["tokens_out"], body["cost_usd"]) == \
        ("succeeded", 1200, 340, "0.012500")
    assert body["finished_at"] is not None
    task = call(work_api.url, key, "GET", f"/tasks/{task_id}").json()
    assert task["status"] == "done"
    assert rows(migrated_url, "SELECT count(*) AS n FROM task_assignments WHERE task_id = %s "
                              "AND released_at IS NULL", (task_id,)) == [{"n": 0}]
    read = call(work_api.url, key, "GET", f"/runs/{run['id']}").json()
    assert [e["payload"]["step"] for e in read["events"]] == [0, 1, 2, 3]
    assert read["cost_usd"] == "0.012500"
    actions = [r["action"] for r in rows(
        migrated_url, "SELECT action FROM audit_log WHERE target_id = %s ORDER BY occurred_at",
        (run["id"],))]
    assert actions == ["run.start"] + ["run.event"] * 4 + ["run.finish"]
    assert {r["actor"] for r in rows(migrated_url, "SELECT actor FROM audit_log WHERE "
                                                   "target_id = %s", (run["id"],))} \
        == {task["requested_by"]}


def test_every_illegal_step_of_a_run_is_409_with_its_status(work_api: ApiServer, key: str,
                                                            migrated_url: str) -> None:
    agents = active_agents(migrated_url)
    # A queued task (not dispatched) cannot run.
    queued = call(work_api.url, key, "POST", "/tasks", json={"title": "q"}).json()["id"]
    r = call(work_api.url, key, "POST", "/runs", json={"agent_id": agents[1], "task_id": queued})
    assert r.status_code == 409 and r.json()["current_status"] == "queued"
    # A task assigned to another agent.
    task_id = assigned_task(work_api, key, agents[2])
    r = call(work_api.url, key, "POST", "/runs", json={"agent_id": agents[3], "task_id": task_id})
    assert r.status_code == 409 and r.json()["current_status"] == "assigned"
    # A finished run takes no events and cannot finish again, with any status.
    run = call(work_api.url, key, "POST", "/runs", json={"agent_id": agents[2],
                                                          "task_id": task_id}).json()
    assert call(work_api.url, key, "POST", f"/runs/{run['id']}/finish",
                json={**FINISH, "status": "failed", "error": "boom"}).status_code == 200
    for status in ("succeeded", "failed", "cancelled"):
        again = call(work_api.url, key, "POST", f"/runs/{run['id']}/finish",
                     json={**FINISH, "status": status})
        assert again.status_code == 409, again.text
        assert again.json()["current_status"] == "failed"
    late = call(work_api.url, key, "POST", f"/runs/{run['id']}/events", json={"kind": "message"})
    assert late.status_code == 409 and late.json()["current_status"] == "failed"
    # Its task failed with it: a new run on it is refused, and so is cancelling it.
    r = call(work_api.url, key, "POST", "/runs", json={"agent_id": agents[2], "task_id": task_id})
    assert r.status_code == 409 and r.json()["current_status"] == "failed"
    r = call(work_api.url, key, "POST", f"/tasks/{task_id}/cancel")
    assert r.status_code == 409 and r.json()["current_status"] == "failed"
    stored = rows(migrated_url, "SELECT status, error FROM agent_runs WHERE id = %s",
                  (run["id"],))
    assert stored == [{"status": "failed", "error": "boom"}]


def test_a_paused_agent_cannot_start_a_run(work_api: ApiServer, key: str,
                                           migrated_url: str) -> None:
    agent = active_agents(migrated_url)[-1]
    rows(migrated_url, "UPDATE agents SET status = 'paused' WHERE id = %s", (agent,))
    try:
        r = call(work_api.url, key, "POST", "/runs", json={"agent_id": agent})
        assert r.status_code == 409 and r.json()["current_status"] == "paused"
    finally:
        rows(migrated_url, "UPDATE agents SET status = 'active' WHERE id = %s", (agent,))


def test_unknown_runs_are_404(work_api: ApiServer, key: str) -> None:
    missing = uuid.uuid4()
    for method, path, body in (("GET", f"/runs/{missing}", None),
                               ("POST", f"/runs/{missing}/events", {"kind": "message"}),
                               ("POST", f"/runs/{missing}/finish", FINISH)):
        r = call(work_api.url, key, method, path, json=body)
        assert r.status_code == 404 and r.json()["detail"] == f"no run with id {missing}"


def test_the_database_refuses_to_change_a_finished_run(migrated_url: str) -> None:
    agent = active_agents(migrated_url)[0]
    for final in ("succeeded", "failed", "cancelled"):
        run_id = uuid.uuid4()
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            conn.execute("INSERT INTO agent_runs (id, agent_id) VALUES (%s, %s)",
                         (run_id, agent))
            conn.execute("UPDATE agent_runs SET status = %s, finished_at = now() WHERE id = %s",
                         (final, run_id))
            for change in ("status = 'running'", "status = 'succeeded'", "status = 'failed'",
                           "status = 'cancelled'", "tokens_in = 99", "cost_usd = 1",
                           "error = 'rewritten'", "finished_at = now() + interval '1 day'"):
                if change == f"status = '{final}'":
                    continue
                with pytest.raises(pgerrors.ObjectNotInPrerequisiteState) as caught:
                    conn.execute(f"UPDATE agent_runs SET {change} WHERE id = %s", (run_id,))
                assert caught.value.diag.message_detail == f"current_status={final}"


def test_run_pages_and_filters(work_api: ApiServer, key: str, migrated_url: str) -> None:
    agent = active_agents(migrated_url)[5]
    made = [call(work_api.url, key, "POST", "/runs", json={"agent_id": agent}).json()["id"]
            for _ in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"agent": agent, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = call(work_api.url, key, "GET", "/runs", params=params).json()
        seen.extend(r["id"] for r in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    running = call(work_api.url, key, "GET", "/runs",
                   params={"agent": agent, "status": "succeeded"}).json()
    assert running["items"] == []


@pytest.mark.parametrize(("body", "field"), [
    ({**FINISH, "status": "running"}, "status"), ({**FINISH, "status": "won"}, "status"),
    ({**FINISH, "tokens_in": -1}, "tokens_in"), ({**FINISH, "tokens_out": 2**63}, "tokens_out"),
    ({**FINISH, "cost_usd": "-0.01"}, "cost_usd"), ({**FINISH, "cost_usd": "0.0000001"},
                                                    "cost_usd"),
    ({**FINISH, "cost_usd": 1e20}, "cost_usd"), ({**FINISH, "cost_usd": "NaN"}, "cost_usd"),
    ({**FINISH, "cost_usd": "cheap"}, "cost_usd"), ({**FINISH, "error": "e\x00"}, "error"),
    ({k: v for k, v in FINISH.items() if k != "tokens_in"}, "tokens_in"),
])
def test_every_bad_finish_field_is_422(work_api: ApiServer, key: str, migrated_url: str,
                                       body: dict[str, object], field: str) -> None:
    agent = active_agents(migrated_url)[6]
    run = call(work_api.url, key, "POST", "/runs", json={"agent_id": agent}).json()
    r = call(work_api.url, key, "POST", f"/runs/{run['id']}/finish", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/runs", {}, "agent_id"), ("/runs", {"agent_id": "x"}, "agent_id"),
    ("/runs", {"agent_id": str(uuid.uuid4())}, "agent_id"),
    ("/runs", {"agent_id": "AGENT", "task_id": str(uuid.uuid4())}, "task_id"),
    ("/runs/RUN/events", {"kind": "shout"}, "kind"),
    ("/runs/RUN/events", {"kind": "message", "payload": "text"}, "payload"),
    ("/runs/RUN/events", {"kind": "message", "payload": {"k\x00": 1}}, "payload"),
])
def test_every_bad_run_field_is_422(work_api: ApiServer, key: str, migrated_url: str,
                                    path: str, body: dict[str, object], field: str) -> None:
    agent = active_agents(migrated_url)[7]
    run = call(work_api.url, key, "POST", "/runs", json={"agent_id": agent}).json()
    body = {k: (agent if v == "AGENT" else v) for k, v in body.items()}
    r = call(work_api.url, key, "POST", path.replace("RUN", run["id"]), json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]
