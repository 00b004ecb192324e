"""``/events`` against a real PostgreSQL: every change, once, in id order, across forced
disconnects, open transactions, slow clients, retention and both sources (notify, poll)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from cesar.db import engines
from cesar.events import log as elog
from tests.api.helpers import ApiServer, make_key, serve_events
from tests.api.sse import SseStream

AGENT = "a9e5c0de-0001-4000-8000-000000000001"


def hub_of(api: ApiServer) -> Any:
    return api.server.config.app.state.events


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def new_task(conn: psycopg.Connection, title: str = "t") -> str:
    row = conn.execute("INSERT INTO tasks (title, requested_by) VALUES (%s, 'tests') "
                       "RETURNING id", (title,)).fetchone()
    assert row is not None
    return str(row[0])


def log_ids(url: str, after: int = 0) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [int(r[0]) for r in conn.execute(
            "SELECT id FROM event_log WHERE id > %s ORDER BY id", (after,)).fetchall()]


def last_id(url: str) -> int:
    ids = log_ids(url)
    return ids[-1] if ids else 0


@pytest.fixture
def source() -> str:
    """The reader's source; the tests of ordering and loss run with both (BOTH)."""
    return "notify"


#: Overrides the ``source`` fixture: the test runs once with LISTEN/NOTIFY, once polling.
BOTH = pytest.mark.parametrize("source", ["notify", "poll"])


@pytest.fixture
def events_api(migrated_db: str, tmp_path: Path, source: str) -> Iterator[ApiServer]:
    with serve_events(migrated_db, tmp_path, source=source) as api:
        yield api


# ----------------------------------------------------------------------------- contract
@BOTH
def test_each_event_names_its_table_and_key_and_resumes_by_id(events_api: ApiServer,
                                                              migrated_db: str) -> None:
    key = make_key(migrated_db, "agents:read", "tasks:write")
    with SseStream(events_api.url, key) as stream, \
            psycopg.connect(migrated_db, autocommit=True) as conn:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        task = new_task(conn, "first")
        conn.execute("UPDATE tasks SET status = 'assigned' WHERE id = %s", (task,))
        conn.execute("UPDATE agents SET status = 'paused' WHERE id = %s", (AGENT,))
        got = stream.events(3)
    bodies = [m.json for m in got]
    assert [(b["table"], b["op"], b["pk"]) for b in bodies] == [
        ("tasks", "insert", task), ("tasks", "update", task), ("agents", "update", AGENT)]
    assert [m.id for m in got] == [b["id"] for b in bodies]
    assert got[0].id < got[1].id < got[2].id
    assert bodies[1]["row"]["status"] == "assigned" and bodies[0]["row"]["title"] == "first"
    # Resume after the first, by header and by query: exactly the two after it.
    for kwargs in ({"last_id": got[0].id}, {"query": f"?after={got[0].id}"}):
        with SseStream(events_api.url, key, **kwargs) as again:
            assert [m.id for m in again.events(2)] == [got[1].id, got[2].id]
    page = httpx.get(f"{events_api.url}/events", params={"after": got[0].id},
                     headers={"Authorization": f"Bearer {key}"}).json()
    assert [e["id"] for e in page["items"]] == [got[1].id, got[2].id]
    assert page["next_after"] == got[2].id and page["reset"] is False


def test_no_key_is_401_and_a_key_without_the_scope_is_403(events_api: ApiServer,
                                                          migrated_db: str) -> None:
    with SseStream(events_api.url, None) as stream:
        assert stream.status == 401
        assert "needs an API key" in json.loads(stream.body())["detail"]
    with SseStream(events_api.url, "cesar_0123456789ab_" + "x" * 43) as stream:
        assert stream.status == 401
    metrics_only = make_key(migrated_db, "metrics:read")
    with SseStream(events_api.url, metrics_only) as stream:
        assert stream.status == 403
    ws_url = events_api.url.replace("http://", "ws://") + "/events"
    with ws_connect(ws_url) as ws:  # no header: the first message must authenticate
        ws.send(json.dumps({"type": "auth", "key": "cesar_0123456789ab_" + "x" * 43}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    with ws_connect(ws_url) as ws:
        ws.send(json.dumps({"type": "auth", "key": metrics_only}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


def test_a_websocket_whose_first_message_is_not_a_text_auth_message_is_closed_4401(
        events_api: ApiServer) -> None:
    ws_url = events_api.url.replace("http://", "ws://") + "/events"
    for first in (b'{"type": "auth", "key": "x"}', "not json", '["auth"]',
                  '{"type": "auth", "key": 5}'):
        with ws_connect(ws_url) as ws:
            ws.send(first)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None, first
            assert closed.value.rcvd.code == 4401, (first, closed.value.rcvd)


def test_websocket_delivers_the_same_events_and_resumes_with_after(events_api: ApiServer,
                                                                   migrated_db: str) -> None:
    key = make_key(migrated_db, "agents:read")
    ws_url = events_api.url.replace("http://", "ws://") + "/events"
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        start = last_id(migrated_db)
        with ws_connect(f"{ws_url}?after={start}",
                        additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            tasks = [new_task(conn, f"ws {i}") for i in range(3)]
            got = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
        assert [(m["type"], m["table"], m["pk"]) for m in got] == [
            ("event", "tasks", t) for t in tasks]
        # A browser: no header, the key in the first message, resuming with ?after=.
        with ws_connect(f"{ws_url}?after={start}") as ws:
            ws.send(json.dumps({"type": "auth", "key": key}))
            again = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
        assert [m["id"] for m in again] == [m["id"] for m in got]


# ----------------------------------------------------------------------------- commit order
@BOTH
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_transaction_left_open_holds_later_commits_back_until_it_ends(
        events_api: ApiServer, migrated_db: str, outcome: str) -> None:
    """Ids are taken at write time: B (a later id) commits while A (an earlier one) is open.
    Delivering B first would move every reader past A's id, losing A for good."""
    key = make_key(migrated_db, "agents:read")
    with SseStream(events_api.url, key) as stream, \
            psycopg.connect(migrated_db) as a, psycopg.connect(migrated_db, autocommit=True) as b:
        task_a = new_task(a, "open")  # holds its id, uncommitted
        task_b = new_task(b, "committed")
        stream.sock.settimeout(1.5)
        with pytest.raises(TimeoutError):  # B must not arrive while A is open
            stream.events(1)
        stream.sock.settimeout(10)
        if outcome == "commit":
            a.commit()
            got = stream.events(2)
            assert [m.json["pk"] for m in got] == [task_a, task_b]
            assert got[0].id < got[1].id
        else:
            a.rollback()
            got = stream.events(1)
            assert [m.json["pk"] for m in got] == [task_b]
    assert [m.id for m in got] == log_ids(migrated_db)[-len(got):]


# ----------------------------------------------------------------------------- 1,000 changes
def _writer(url: str, seed: int, changes: int, made: list[tuple[str, str, str]],
            errors: list[BaseException]) -> None:
    rnd = random.Random(seed)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            tasks: list[str] = []
            done = 0
            while done < changes:
                kind = rnd.random()
                if kind < 0.35 or not tasks:
                    task = new_task(conn, f"w{seed}")
                    tasks.append(task)
                    made.append(("tasks", "insert", task))
                    done += 1
                elif kind < 0.6:
                    task = rnd.choice(tasks)
                    conn.execute("UPDATE tasks SET priority = %s WHERE id = %s",
                                 (rnd.randint(1, 5), task))
                    made.append(("tasks", "update", task))
                    done += 1
                elif kind < 0.8:  # one transaction, several changes
                    with conn.transaction():
                        run = conn.execute(
                            "INSERT INTO agent_runs (agent_id, task_id) VALUES (%s, %s) "
                            "RETURNING id", (AGENT, rnd.choice(tasks))).fetchone()
                        assert run is not None
                        made.append(("agent_runs", "insert", str(run[0])))
                        ev = conn.execute(
                            "INSERT INTO agent_run_events (run_id, kind) VALUES (%s, 'status') "
                            "RETURNING id", (run[0],)).fetchone()
                        assert ev is not None
                        made.append(("agent_run_events", "insert", str(ev[0])))
                    done += 2
                elif kind < 0.9:  # rolled back: its ids leave gaps that must not stall
                    with pytest.raises(ZeroDivisionError), conn.transaction():
                        new_task(conn, "rolled back")
                        raise ZeroDivisionError
                else:  # an operator's plain SQL, deleting
                    task = new_task(conn, "short-lived")
                    conn.execute("DELETE FROM tasks WHERE id = %s", (task,))
                    made.extend([("tasks", "insert", task), ("tasks", "delete", task)])
                    done += 2
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _api_writer(url: str, key: str, seed: int, changes: int,
                made: list[tuple[str, str, str]], errors: list[BaseException]) -> None:
    """Changes through the API's work routes: tasks created and cancelled, runs started, with
    progress events, finished."""
    rnd = random.Random(seed)
    auth = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
            def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                response = http.post(path, json=body)
                assert response.status_code in (200, 201), (path, response.text)
                return dict(response.json())

            done = 0
            while done < changes:
                task = post("/tasks", {"title": f"api {seed}", "priority": rnd.randint(1, 5)})
                made.append(("tasks", "insert", task["id"]))
                done += 1
                if rnd.random() < 0.3:
                    post(f"/tasks/{task['id']}/cancel", {})
                    made.append(("tasks", "update", task["id"]))
                    done += 1
                    continue
                run = post("/runs", {"agent_id": AGENT})
                made.append(("agent_runs", "insert", run["id"]))
                event = post(f"/runs/{run['id']}/events",
                             {"kind": "message", "payload": {"n": done}})
                made.append(("agent_run_events", "insert", event["id"]))
                post(f"/runs/{run['id']}/finish", {"status": "succeeded", "tokens_in": 10,
                                                   "tokens_out": 20, "cost_usd": "0.001"})
                made.append(("agent_runs", "update", run["id"]))
                done += 3
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


@BOTH
def test_a_thousand_changes_through_a_hundred_forced_disconnects_lose_and_repeat_none(
        events_api: ApiServer, migrated_db: str) -> None:
    key = make_key(migrated_db, "agents:read")
    writer_key = make_key(migrated_db, "agents:read", "tasks:write")
    start = last_id(migrated_db)
    made: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []
    # Two writers through the API, two with plain SQL, at once.
    writers = [threading.Thread(target=_api_writer,
                                args=(events_api.url, writer_key, seed, 250, made, errors))
               for seed in range(2)]
    writers += [threading.Thread(target=_writer, args=(migrated_db, seed, 250, made, errors))
                for seed in range(2, 4)]
    for w in writers:
        w.start()
    received: list[tuple[int, dict[str, Any]]] = []
    disconnects = 0
    rnd = random.Random(7)
    position = start
    deadline = time.monotonic() + 90
    while True:
        writing = any(w.is_alive() for w in writers)
        wanted = rnd.randint(1, 15)
        with SseStream(events_api.url, key, last_id=position) as stream:
            stream.sock.settimeout(0.5)
            for _ in range(wanted):
                try:
                    msg = stream.events(1)[0]
                except (TimeoutError, AssertionError):
                    break
                assert msg.id is not None
                received.append((msg.id, msg.json))
                position = msg.id
            stream.reset()  # a TCP reset mid-stream
            disconnects += 1
        if not writing and position >= (log_ids(migrated_db) or [0])[-1]:
            break
        assert time.monotonic() < deadline, "the stream did not catch up"
    for w in writers:
        w.join()
    assert not errors, errors
    ids = [i for i, _ in received]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert ids == sorted(ids), "events out of order"
    assert ids == log_ids(migrated_db, start), "an event was lost"
    seen = {(b["table"], b["op"], b["pk"]) for _, b in received}
    assert set(made) <= seen
    assert len(made) >= 1000
    assert disconnects >= 100


# ----------------------------------------------------------------------------- slow client
def test_a_client_that_stops_reading_is_dropped_not_buffered(migrated_db: str,
                                                             tmp_path: Path) -> None:
    with serve_events(migrated_db, tmp_path, queue_size=50) as api:
        key = make_key(migrated_db, "agents:read")
        hub = hub_of(api)
        start = last_id(migrated_db)
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            run = conn.execute("INSERT INTO agent_runs (agent_id) VALUES (%s) RETURNING id",
                               (AGENT,)).fetchone()
            assert run is not None
            stalled = SseStream(api.url, key, rcvbuf=4096)  # reads nothing from here on
            reader = SseStream(api.url, key)  # a healthy client alongside
            wait_for(lambda: len(hub.subscribers) == 2, "both subscribers")
            blob = json.dumps({"text": "x" * 32_000})
            peak = 0
            for _ in range(12):  # 12 x 25 events of 32 kB: far more than socket buffers hold
                with conn.transaction():
                    for _ in range(25):
                        conn.execute("INSERT INTO agent_run_events (run_id, kind, payload) "
                                     "VALUES (%s, 'message', %s)", (run[0], blob))
                peak = max([peak, *(len(s.queue) for s in list(hub.subscribers))])
                got = reader.events(25)
                assert got[-1].id is not None
            wait_for(lambda: hub.dropped_total == 1, "the stalled client to be dropped")
        assert len(hub.subscribers) == 1  # the healthy reader only
        assert peak <= 50 + 25  # never more than the queue plus one publication
        reader.close()
        # The dropped client finds its stream ended (after what was in flight), and resumes.
        stalled.sock.settimeout(10)
        last = start
        while (msg := stalled.next()) is not None:
            if msg.id is not None:
                last = msg.id
            elif msg.comment and msg.comment.startswith("dropped"):
                break
        stalled.close()
        with SseStream(api.url, key, last_id=last) as resumed:
            rest = resumed.events(len(log_ids(migrated_db, last)))
        assert [m.id for m in rest] == log_ids(migrated_db, last)


# ----------------------------------------------------------------------------- retention
@BOTH
def test_resuming_from_before_the_retention_is_told_to_reset(events_api: ApiServer,
                                                             migrated_db: str) -> None:
    key = make_key(migrated_db, "agents:read")
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        for i in range(5):
            new_task(conn, f"old {i}")
        old = log_ids(migrated_db)
        hub = hub_of(events_api)
        wait_for(lambda: hub.position == old[-1], "the reader to reach the newest id")
        pruned = elog.prune(conn, 0)  # everything is older than 0 s
        assert pruned.deleted == len(old) and pruned.pruned_through == old[-1]
        assert log_ids(migrated_db) == []
        with SseStream(events_api.url, key, last_id=old[1]) as stream:
            first = stream.events(1)[0]
            assert first.event == "reset" and first.id == old[-1]
            task = new_task(conn, "after the reset")
            after = stream.events(1)[0]
            assert after.json["pk"] == task and after.id is not None and after.id > old[-1]
        page = httpx.get(f"{events_api.url}/events", params={"after": old[0]},
                         headers={"Authorization": f"Bearer {key}"}).json()
        assert page["reset"] is True
        # An id this database never issued (another database's, a restore): reset too.
        with SseStream(events_api.url, key, last_id=after.id + 1000) as stream:
            assert stream.events(1)[0].event == "reset"
        # Resuming from the newest pruned id itself is complete: nothing after it was pruned.
        with SseStream(events_api.url, key, last_id=old[-1]) as stream:
            assert stream.events(1)[0].json["pk"] == task


def test_a_prune_during_a_resumed_backlog_is_a_reset_not_a_silent_gap(migrated_db: str,
                                                                      tmp_path: Path) -> None:
    """The client resumes, its backlog is read page by page as it reads; a prune commits while
    it is stalled: it must get every event or a reset, never a silent hole."""
    with serve_events(migrated_db, tmp_path, heartbeat_seconds=0.5) as api:
        key = make_key(migrated_db, "agents:read")
        hub = hub_of(api)
        start = last_id(migrated_db)
        blob = json.dumps({"text": "x" * 16_000})
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            run = conn.execute("INSERT INTO agent_runs (agent_id) VALUES (%s) RETURNING id",
                               (AGENT,)).fetchone()
            assert run is not None
            with conn.transaction():  # far more than one backlog page and the socket buffers
                for _ in range(1200):
                    conn.execute("INSERT INTO agent_run_events (run_id, kind, payload) "
                                 "VALUES (%s, 'message', %s)", (run[0], blob))
            wanted = log_ids(migrated_db, start)
            wait_for(lambda: hub.position == wanted[-1], "the reader to reach the newest id")
            stalled = SseStream(api.url, key, last_id=start, rcvbuf=4096)
            wait_for(lambda: len(hub.subscribers) == 1, "the subscriber")
            time.sleep(0.5)  # the stream blocks on its full socket within its first page
            assert elog.prune(conn, 0).pruned_through == wanted[-1]
        got: list[int] = []
        reset = False
        with stalled:
            while (msg := stalled.next()) is not None:
                if msg.event == "reset":
                    reset = True
                    break
                if msg.comment == "ping":
                    break  # idle: the backlog is over
                if msg.id is not None:
                    got.append(msg.id)
        assert reset or got == wanted, (len(got), len(wanted), got[-1:] if got else None)
        assert got == wanted[:len(got)]


def test_a_revoked_key_loses_its_open_streams(migrated_db: str, tmp_path: Path) -> None:
    """Revoking a key ends the streams already open with it (SSE and WebSocket), as it ends its
    requests: a stream lives for hours, it must not outlive the key."""
    from cesar import keys

    with serve_events(migrated_db, tmp_path, heartbeat_seconds=0.2) as api:
        key = make_key(migrated_db, "agents:read")
        hub = hub_of(api)
        ws_url = api.url.replace("http://", "ws://") + "/events"
        with SseStream(api.url, key, timeout=20) as stream, ws_connect(ws_url) as ws:
            ws.send(json.dumps({"type": "auth", "key": key}))
            wait_for(lambda: len(hub.subscribers) == 2, "both subscribers")
            with psycopg.connect(migrated_db, autocommit=True) as conn:
                keys.revoke(conn, keys.prefix_of(key), actor="tests")
            comments: list[str | None] = []
            deadline = time.monotonic() + 20  # pings go on forever if the stream outlives it
            while time.monotonic() < deadline and (msg := stream.next()) is not None:
                comments.append(msg.comment)
            assert any(c and "revoked" in c for c in comments), comments[-3:]
            with pytest.raises(ConnectionClosed) as closed:
                while time.monotonic() < deadline + 20:
                    ws.recv(timeout=20)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        wait_for(lambda: not hub.subscribers, "the subscribers to be gone")


def test_a_bad_last_event_id_is_422_not_500(events_api: ApiServer, migrated_db: str) -> None:
    key = make_key(migrated_db, "agents:read")
    # b"\xb2" reads as "²" (latin-1): str.isdigit() says yes, int() says no.
    for bad in ("abc", "-1", "9" * 30, b"\xb2", b"1\xb3", "\u0663".encode("utf-8")):
        response = httpx.get(f"{events_api.url}/events", headers={
            "Authorization": f"Bearer {key}", "Accept": "text/event-stream",
            "Last-Event-ID": bad})
        assert response.status_code == 422, (bad, response.text)


def test_every_worker_delivers_every_event(migrated_db: str, tmp_path: Path) -> None:
    import subprocess

    from cesar.dev.embedded import free_port
    from tests.api.helpers import cesar_api, wait_healthy

    key = make_key(migrated_db, "agents:read")
    port = free_port()
    env = {"LOCAL_DB_URL": migrated_db, "CESAR_STATE_DIR": str(tmp_path / "none"),
           "CESAR_EVENTS_POLL_SECONDS": "0.05"}
    with cesar_api("--port", str(port), "--workers", "2", "--no-access-log", env=env) as proc:
        assert isinstance(proc, subprocess.Popen)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, seconds=90)
        streams: dict[str, SseStream] = {}
        deadline = time.monotonic() + 90  # the kernel, not the test, picks the worker
        while len(streams) < 2 and time.monotonic() < deadline:
            stream = SseStream(url, key)
            assert stream.status == 200
            hello = stream.next()
            assert hello is not None and hello.comment is not None
            worker = hello.comment.rsplit(" ", 1)[-1].rstrip(")")
            if worker in streams:
                stream.close()
                time.sleep(0.02)
            else:
                streams[worker] = stream
        assert len(streams) == 2, "both workers should serve /events"
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            tasks = [new_task(conn, f"both {i}") for i in range(20)]
        for stream in streams.values():
            got = stream.events(20)
            assert [m.json["pk"] for m in got] == tasks
            stream.close()


def test_prune_keeps_what_is_younger_than_the_retention(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        new_task(conn, "young")
        before = log_ids(migrated_db)
        assert elog.prune(conn, 3600).deleted == 0
        assert log_ids(migrated_db) == before
        dry = elog.prune(conn, 0, dry_run=True)
        assert dry.deleted == len(before) and log_ids(migrated_db) == before
        assert elog.bounds(conn).pruned_through == 0
        assert uuid.UUID(conn.execute("SELECT pk FROM event_log ORDER BY id DESC LIMIT 1")
                         .fetchone()[0])  # type: ignore[index]


def test_cesar_events_prune_and_status(migrated_db: str) -> None:
    from tests.api.helpers import run_cesar

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        new_task(conn, "to prune")
    ids = log_ids(migrated_db)
    env = {"LOCAL_DB_URL": migrated_db}
    dry = run_cesar("events", "prune", "--older-than", "0", "--dry-run", "--json",
                    "--url", migrated_db, env=env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["deleted"] == len(ids) and log_ids(migrated_db) == ids
    done = run_cesar("events", "prune", "--older-than", "0", "--json", "--url", migrated_db,
                     env=env)
    assert json.loads(done.stdout) == {"deleted": len(ids), "pruned_through": ids[-1],
                                       "older_than_hours": 0.0, "dry_run": False}
    status = run_cesar("events", "status", "--json", "--url", migrated_db, env=env)
    assert json.loads(status.stdout)["pruned_through"] == ids[-1]
    bad = run_cesar("events", "prune", "--older-than", "-1", "--url", migrated_db, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("cesar: error:")


@BOTH
def test_resuming_from_an_id_this_worker_has_not_reached_repeats_nothing(
        events_api: ApiServer, migrated_db: str) -> None:
    """Another worker may be ahead: a client it served resumes here with an id this worker's
    reader has not published yet. It must get only what follows that id."""
    key = make_key(migrated_db, "agents:read")
    hub = hub_of(events_api)
    with psycopg.connect(migrated_db) as a, psycopg.connect(migrated_db, autocommit=True) as b:
        new_task(a, "held open")  # the reader stops before this id
        seen_elsewhere = new_task(b, "committed")
        ahead = log_ids(migrated_db)[-1]
        assert hub.position is not None and hub.position < ahead
        with SseStream(events_api.url, key, last_id=ahead) as stream:
            wait_for(lambda: len(hub.subscribers) == 1, "the subscriber")
            a.commit()  # both ids are published now, then a new one
            fresh = new_task(b, "after")
            got = stream.events(1)
        assert seen_elsewhere != fresh
        assert [m.json["pk"] for m in got] == [fresh]


def test_the_reader_reconnects_when_its_connection_is_killed(events_api: ApiServer,
                                                             migrated_db: str,
                                                             pg_stack: Any) -> None:
    key = make_key(migrated_db, "agents:read")
    dbname = migrated_db.rsplit("/", 1)[1].split("?")[0]
    with SseStream(events_api.url, key) as stream, \
            psycopg.connect(migrated_db, autocommit=True) as conn, pg_stack.superuser() as su:
        before = new_task(conn, "before")
        assert stream.events(1)[0].json["pk"] == before
        killed = su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND application_name = 'cesar-events'",
                            (dbname,)).fetchall()
        assert killed == [(True,)]
        during = new_task(conn, "while the reader is away")
        got = stream.events(1)
        assert got[0].json["pk"] == during  # nothing lost, nothing repeated


def test_the_cockroachdb_rule_settles_a_gap_after_its_window_only(migrated_db: str) -> None:
    """CockroachDB has no xids to wait on: a missing id is settled after gap_seconds. The rule
    itself, run here on PostgreSQL (the SQL it issues is the same on both engines)."""
    with psycopg.connect(migrated_db) as a, psycopg.connect(migrated_db, autocommit=True) as b, \
            psycopg.connect(migrated_db, autocommit=True) as reader:
        tail = elog.Tail(engines.COCKROACHDB, gap_seconds=1.5)
        tail.read(reader)  # the start: nothing open, so it starts at the newest id
        assert tail.position == last_id(migrated_db)
        new_task(a, "open")
        committed = new_task(b, "committed")
        assert tail.read(reader) == []  # the gap is seen: its window starts
        assert tail.read(reader) == []  # held back while the window runs
        assert tail.waiting
        time.sleep(1.6)
        got = tail.read(reader)
        assert [e.pk for e in got] == [committed]  # the open one's id is given up
        a.commit()
        assert tail.read(reader) == []  # and is not delivered late, out of order


def test_the_reader_starts_only_once_writers_open_at_its_start_have_ended(
        migrated_db: str, tmp_path: Path) -> None:
    """A writer holds an id while a later one commits, and the API starts between the two:
    starting at the newest id would leave the held one below the reader's position forever."""
    key = make_key(migrated_db, "agents:read")
    with psycopg.connect(migrated_db) as a, psycopg.connect(migrated_db, autocommit=True) as b:
        before = last_id(migrated_db)
        held = new_task(a, "open across the start")
        later = new_task(b, "committed before the start")
        with serve_events(migrated_db, tmp_path) as api:
            got: list[Any] = []

            def subscribe() -> None:
                with SseStream(api.url, key, last_id=before, timeout=20) as stream:
                    got.extend(stream.events(2))

            client = threading.Thread(target=subscribe)
            client.start()
            time.sleep(1.0)
            assert hub_of(api).position is None  # not ready while the writer is open
            a.commit()
            client.join(timeout=30)
        assert [m.json["pk"] for m in got] == [held, later]
