"""The writers' ledger against a real database: what a writer saw acknowledged is found, and
a write lost or changed behind its back is reported (the soak's `lost_rows`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from cesar import migrate
from cesar.soak.load import Ledger, Log, SqlWriter, missing_or_stale
from tests.helpers import REPO, make_settings


def test_acknowledged_writes_are_found_and_a_dropped_or_changed_one_is_reported(
        fresh_db: str, tmp_path: Path) -> None:
    migrate.apply_all(fresh_db, make_settings(), migrations_dir=REPO / "sql" / "migrations")
    ledger, stop = Ledger(), threading.Event()
    log = Log(tmp_path / "soak.log")
    writer = SqlWriter("local", lambda: fresh_db, ledger, log, stop, rate=200.0, seed=3)
    writer.start()
    deadline = time.monotonic() + 30
    while (len({t for t, _ in ledger.rows}) < 3 or ledger.acknowledged < 60) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.paused.set()
    time.sleep(0.1)
    stop.set()
    writer.join()
    log.close()
    rows = ledger.snapshot()
    assert writer.failures == 0
    assert {t for t, _ in rows} == {"tasks", "agent_runs", "agent_run_events"}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert missing_or_stale(conn, rows) == []
        # Break the promise twice behind the writer's back: a dropped write, a changed one.
        dropped = next(k for (t, k) in rows if t == "agent_run_events")
        changed = next(k for (t, k) in rows if t == "tasks")
        conn.execute("DELETE FROM agent_run_events WHERE id = %s", [dropped])
        conn.execute("UPDATE tasks SET priority = CASE WHEN priority = 5 THEN 1 ELSE 5 END "
                     "WHERE id = %s", [changed])
        lost = missing_or_stale(conn, rows)
    assert sorted((x["table"], x["id"], x["found"] is None) for x in lost) == sorted([
        ("agent_run_events", dropped, True), ("tasks", changed, False)])


def test_a_write_in_doubt_accepts_either_state() -> None:
    ledger = Ledger()
    ledger.acked("tasks", "k", ("t", "queued", 3))
    ledger.doubtful("tasks", "k", ("t", "done", 1))
    assert ledger.snapshot()[("tasks", "k")] == {("t", "queued", 3), ("t", "done", 1)}
    ledger.acked("tasks", "k", ("t", "running", 2))  # a later acknowledged write decides
    assert ledger.snapshot()[("tasks", "k")] == {("t", "running", 2)}
    ledger.doubtful("tasks", "never-acked", ("t", "done", 1))  # an insert in doubt: not owed
    assert ("tasks", "never-acked") not in ledger.snapshot()
