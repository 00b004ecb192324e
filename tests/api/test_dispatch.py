"""Dispatch (``POST /dispatch`` and ``cesar dispatch``) on a real PostgreSQL: priority then age,
the preferred agent, the least loaded one, and every task to exactly one agent while several
dispatchers (threads through the API and separate ``cesar dispatch`` processes) run at once."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cesar.cli import main
from tests.api.helpers import active_agents, call, closed_port, make_key, rows, serve, settings_for


def cli_env(url: str, tmp: Path) -> dict[str, str]:
    return {"ENVIRONMENT": "development", "LOCAL_DB_URL": url, "CESAR_STATE_DIR": str(tmp)}


def test_priority_then_age_and_the_preferred_agent(migrated_db: str, tmp_path: Path) -> None:
    key = make_key(migrated_db, "agents:read", "tasks:write")
    agents = active_agents(migrated_db)
    with serve(settings_for(migrated_db, tmp_path)) as api:
        def make(title: str, priority: int, agent: str | None = None) -> str:
            body = {"title": title, "priority": priority,
                    **({"agent_id": agent} if agent else {})}
            return str(call(api.url, key, "POST", "/tasks", json=body).json()["id"])

        old_low = make("old low", 5)
        urgent_late = make("urgent late", 1)
        mid_first = make("mid first", 3, agents[4])
        mid_second = make("mid second", 3)
        order = []
        for _ in range(4):
            got = call(api.url, key, "POST", "/dispatch", params={"limit": 1}).json()
            order.append(got["assigned"][0]["task_id"])
            if got["assigned"][0]["task_id"] == mid_first:
                assert got["assigned"][0]["agent_id"] == agents[4]
        assert order == [urgent_late, mid_first, mid_second, old_low]
        owned = call(api.url, key, "GET", "/tasks", params={"agent": agents[4]}).json()
        assert [t["id"] for t in owned["items"]] == [mid_first]
        assert call(api.url, key, "POST", "/dispatch").json() == {"assigned": []}
        # Least loaded: 23 more tasks go to the 23 agents that had none (the preferred agent
        # is paused now, so its task goes elsewhere too).
        rows(migrated_db, "UPDATE agents SET status = 'paused' WHERE id = %s", (agents[0],))
        made = [make(f"spread {i}", 3, agents[0] if i == 0 else None) for i in range(20)]
        spread = call(api.url, key, "POST", "/dispatch").json()["assigned"]
        assert {a["task_id"] for a in spread} == set(made)
        targets = Counter(a["agent_id"] for a in spread)
        assert max(targets.values()) == 1 and agents[0] not in targets
        busy = {call(api.url, key, "GET", f"/tasks/{t}").json()["agent_id"]
                for t in (old_low, urgent_late, mid_first, mid_second)}
        assert not busy & set(targets)  # the four busy agents were skipped
        actions = rows(migrated_db, "SELECT count(*) AS n FROM audit_log "
                                    "WHERE action = 'task.assign'")
        assert actions == [{"n": 24}]


def _dispatcher_process(url: str, barrier: Any, out: Any) -> None:
    """A dispatcher in its own process, on its own connection: the code `cesar dispatch` runs."""
    import psycopg

    from cesar import db, work

    got: list[dict[str, str]] = []
    with psycopg.connect(url) as conn:
        barrier.wait(timeout=60)
        while True:
            done = db.run_transaction(conn, lambda c: work.dispatch(c, actor="cli:proc",
                                                                    limit=2))
            got.extend(a.as_dict() for a in done)
            if not done:
                break
    out.put(got)


def test_concurrent_dispatchers_assign_each_task_once(migrated_db: str, tmp_path: Path) -> None:
    key = make_key(migrated_db, "tasks:write")
    ctx = multiprocessing.get_context("fork")
    with serve(settings_for(migrated_db, tmp_path)) as api:
        made = {r["id"] for r in rows(
            migrated_db, "INSERT INTO tasks (title, requested_by) SELECT 't' || i, 'tests' "
                         "FROM generate_series(1, 80) AS i RETURNING id::text AS id")}
        barrier, out = ctx.Barrier(3 + 4), ctx.Queue()
        procs = [ctx.Process(target=_dispatcher_process, args=(migrated_db, barrier, out))
                 for _ in range(3)]
        for p in procs:
            p.start()
        reported: list[dict[str, str]] = []
        lock = threading.Lock()
        errors: list[str] = []

        def through_api() -> None:
            barrier.wait(timeout=60)
            while True:
                r = call(api.url, key, "POST", "/dispatch", params={"limit": 2})
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                got = r.json()["assigned"]
                with lock:
                    reported.extend(got)
                if not got:
                    return

        threads = [threading.Thread(target=through_api) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shares = [out.get(timeout=60) for _ in procs]
        for share in shares:
            reported.extend(share)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    assert errors == []
    tasks = [a["task_id"] for a in reported]
    assert sorted(tasks) == sorted(made)  # every task reported once, by one dispatcher
    stored = rows(migrated_db, "SELECT task_id::text AS task_id, count(*) AS n "
                               "FROM task_assignments GROUP BY task_id")
    assert {r["task_id"] for r in stored} == made and {r["n"] for r in stored} == {1}
    assert rows(migrated_db, "SELECT DISTINCT status FROM tasks") == [{"status": "assigned"}]
    # They really ran at once: more than one process got a share of the tasks.
    assert sum(1 for share in shares if share) >= 2, [len(share) for share in shares]


def cesar_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``cesar ARGS`` in this process (its error boundary included): code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_dispatch_command_dry_run_and_errors(migrated_db: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in cli_env(migrated_db, tmp_path).items():
        monkeypatch.setenv(name, value)
    task = "00000000-0000-4000-8000-00000000d15a"
    rows(migrated_db, "INSERT INTO tasks (id, title, requested_by) VALUES (%s, 'x', 'tests')",
         (task,))
    code, out, err = cesar_main(["dispatch", "--dry-run", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["assigned"][0]["task_id"] == task
    assert json.loads(out)["dry_run"] is True
    assert rows(migrated_db, "SELECT status FROM tasks WHERE id = %s",
                (task,)) == [{"status": "queued"}]
    code, out, _ = cesar_main(["dispatch"], capsys)
    assert code == 0 and out.startswith("assigned 1 task(s)")
    assert rows(migrated_db, "SELECT actor FROM audit_log WHERE target_id = %s",
                (task,))[0]["actor"].startswith("cli:")
    assert cesar_main(["dispatch"], capsys)[1].startswith("no queued task")
    code, _, err = cesar_main(["dispatch", "--limit", "0"], capsys)
    assert code == 2 and "Traceback" not in err
    monkeypatch.setenv("LOCAL_DB_URL", f"postgresql://u:secretpw@127.0.0.1:{closed_port()}/x")
    monkeypatch.setenv("CESAR_CONNECT_TIMEOUT", "2")
    code, _, err = cesar_main(["dispatch"], capsys)
    assert code == 1, err
    assert err.startswith("cesar: error: ") and "secretpw" not in err
    assert len(err.strip().splitlines()) == 1
