"""A migration waiting for a lock must not stall the application: lock_timeout, rollback, retry.

A schema change queued for its table lock behind a long transaction makes every later query
of that table queue behind it. Here a real session holds a table (an open transaction that
read it) while `cesar migrate up` alters that table: readers must get their answers while the
holder still holds, the migration must apply once the holder lets go, and when the retries run
out nothing may be half applied or recorded.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from cesar import migrate
from cesar.db import engines
from cesar.errors import OperationFailed
from cesar.migrate import runner as runner_module
from cesar.migrate.sql import Statement
from tests.helpers import PgStack, child_env, make_settings, query
from tests.migrate.helpers import finish, wait_until

ALTER = "ALTER TABLE agents ADD COLUMN IF NOT EXISTS lock_note TEXT;\n"
SIDE = "CREATE TABLE IF NOT EXISTS lock_side (id INT PRIMARY KEY);\n"
DOWN = "ALTER TABLE agents DROP COLUMN IF EXISTS lock_note;\nDROP TABLE IF EXISTS lock_side;\n"
HOLDER_APP = "long-report"


def _add(migrations: Path, up: str, name: str = "900_lock_note") -> str:
    (migrations / f"{name}.up.sql").write_text(up)
    (migrations / f"{name}.down.sql").write_text(DOWN)
    return name


@contextmanager
def holding_agents(url: str, seconds: float, *, write: bool = False
                   ) -> Iterator[psycopg.Connection]:
    """An open transaction that read ``agents`` (ACCESS SHARE until it ends), or with ``write``
    also wrote to it (ROW EXCLUSIVE). Ended after ``seconds`` at the latest, so that a runner
    without a lock timeout still finishes."""
    conn = psycopg.connect(url, application_name=HOLDER_APP)
    conn.execute("SELECT count(*) FROM agents").fetchall()
    if write:
        conn.execute("UPDATE agents SET name = name WHERE false")
    lock = threading.Lock()

    def release() -> None:
        with lock:
            if not conn.closed:
                conn.rollback()

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield conn
    finally:
        timer.cancel()
        release()
        with lock:
            conn.close()


def _waiting_for_agents(pg: PgStack, url: str) -> bool:
    """Whether some session waits for a lock on ``agents`` (superuser: sees every session)."""
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    with pg.superuser(dbname) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted "
                           "AND relation = 'agents'::regclass").fetchone()
    return bool(row and row[0])


def _columns(url: str, table: str, column: str) -> int:
    return query(url, "SELECT count(*) FROM information_schema.columns "
                      "WHERE table_name = %s AND column_name = %s", [table, column])[0][0]


def _tracked(url: str, name: str) -> list[tuple[object, ...]]:
    return query(url, "SELECT status, statements_done, resumable FROM schema_migrations "
                      "WHERE name = %s", [name])


def test_readers_are_answered_while_a_long_transaction_holds_the_table_and_it_applies_after(
    fresh_db: str, migrations: Path, runner_for, pg_stack: PgStack, tmp_path: Path
) -> None:
    runner_for(fresh_db).up()
    name = _add(migrations, ALTER)
    hold = 10.0
    with holding_agents(fresh_db, hold) as holder:
        holder_pid = holder.info.backend_pid
        env = {**child_env(), "CESAR_MIGRATE_LOCK_TIMEOUT": "1",
               "CESAR_MIGRATE_LOCK_RETRIES": "40"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "cesar.cli", "migrate", "up", "--url", fresh_db,
             "--migrations-dir", str(migrations), "--json"],
            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: _waiting_for_agents(pg_stack, fresh_db), timeout=hold - 2,
                       what="the migration to wait for its lock on agents")
            # A reader arriving while the migration waits: on a server without lock_timeout
            # it queues behind the migration, which queues behind the holder.
            answered: list[float] = []

            def read() -> None:
                with psycopg.connect(fresh_db, autocommit=True) as conn:
                    conn.execute("SELECT count(*) FROM agents").fetchall()
                answered.append(time.monotonic())

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            reader.join(timeout=hold - 4)
            still_holding = not holder.closed and \
                holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert answered, "the reader was still waiting while the migration waited for a lock"
            assert still_holding, "the holder had already let go: the test proved nothing"
            holder.rollback()  # the holder lets go: the next retry applies the migration
            code, out, err = finish(proc, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, err
    report = json.loads(out)
    assert report["done"] == [name]
    assert report["lock_timeout_s"] == 1
    waits = report["lock_waits"]
    assert waits and all(w["migration"] == name and w["statement"] == 1 for w in waits)
    assert [w["attempt"] for w in waits] == list(range(1, len(waits) + 1))
    assert all(w["retry_in_s"] for w in waits)
    seen = [w["waited_for"] for w in waits if w["waited_for"]]
    assert seen, waits
    assert seen[0]["relation"] == "agents" and seen[0]["mode"] == "AccessExclusiveLock"
    blocker = seen[0]["blockers"][0]
    assert blocker["pid"] == holder_pid and blocker["application"] == HOLDER_APP
    assert blocker["state"] == "idle in transaction"
    assert "query" not in json.dumps(blocker)
    assert "gave up waiting for a lock" in err and f"pid {holder_pid}" in err
    # applied once: one column, one apply event, the row succeeded
    assert _columns(fresh_db, "agents", "lock_note") == 1
    assert _tracked(fresh_db, name) == [("succeeded", 1, False)]
    assert query(fresh_db, "SELECT count(*) FROM schema_migration_events "
                           "WHERE migration = %s AND event = 'apply'", [name]) == [(1,)]


@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_when_the_retries_run_out_nothing_is_applied_or_recorded(
    fresh_db: str, migrations: Path, runner_for, cli, mode: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_for(fresh_db).up()
    # the blocked statement first: nothing of the migration can have run
    name = _add(migrations, ALTER + SIDE)
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_TIMEOUT", "0.3")
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_RETRIES", "1")
    with holding_agents(fresh_db, 15) as holder:
        result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                     "--mode", mode)
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        holder_pid = holder.info.backend_pid
    assert result.code == 1, result.out + result.err
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("cesar: error: "), line
    assert f"migration {name} gave up at statement 1" in line
    assert "after 2 attempts" in line and "lock_timeout 0.3 s" in line
    assert "AccessExclusiveLock on agents" in line
    assert f"pid {holder_pid}" in line and HOLDER_APP in line
    assert "nothing of it was applied" in line and "`cesar migrate up` again" in line
    assert _columns(fresh_db, "agents", "lock_note") == 0
    assert query(fresh_db, "SELECT to_regclass('lock_side')") == [(None,)]
    assert _tracked(fresh_db, name) == []
    detail = query(fresh_db, "SELECT detail FROM schema_migration_events "
                             "WHERE migration = %s AND event = 'fail'", [name])
    assert [d[0]["sqlstate"] for d in detail] == ["55P03"]
    # the holder is gone: a plain run applies it, no repair needed
    again = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--mode", mode)
    assert again.code == 0, again.err
    assert _columns(fresh_db, "agents", "lock_note") == 1
    assert _tracked(fresh_db, name) == [("succeeded", 2, False)]


def test_per_statement_keeps_what_ran_and_resumes_at_the_blocked_statement(
    fresh_db: str, migrations: Path, runner_for, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_for(fresh_db).up()
    name = _add(migrations, SIDE + ALTER)
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_TIMEOUT", "0.3")
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_RETRIES", "0")
    with holding_agents(fresh_db, 15):
        result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                     "--mode", "per-statement")
    assert result.code == 1, result.out + result.err
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and "gave up at statement 2" in line
    assert "after 1 attempt," in line
    assert "statement 1 stays done and the next run resumes at statement 2" in line
    assert query(fresh_db, "SELECT to_regclass('lock_side') IS NOT NULL") == [(True,)]
    assert _columns(fresh_db, "agents", "lock_note") == 0
    assert _tracked(fresh_db, name) == [("failed", 1, True)]
    again = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                "--mode", "per-statement")
    assert again.code == 0, again.err
    assert "resuming at statement 2" in again.out
    assert _columns(fresh_db, "agents", "lock_note") == 1
    assert _tracked(fresh_db, name) == [("succeeded", 2, False)]


def test_a_files_own_lock_timeout_wins(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    runner_for(fresh_db).up()
    name = _add(migrations, "SET lock_timeout = '100ms';\n" + ALTER)
    with holding_agents(fresh_db, 20):
        started = time.monotonic()
        # The runner's own limit would let it wait 60 s; the file's gives up after 0.1 s.
        result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                     "--lock-timeout", "60", "--lock-retries", "0")
        took = time.monotonic() - started
    assert result.code == 1, result.out + result.err
    assert f"migration {name} gave up at statement 2" in result.err
    assert "the file's own lock_timeout" in result.err
    assert took < 20  # well before the holder's end (not a timing target: the holder's 20 s)


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--lock-timeout", "-1"], {}, "--lock-timeout -1 is not a number of seconds"),
    (["--lock-timeout", "nan"], {}, "--lock-timeout nan is not a number of seconds"),
    (["--lock-timeout", "inf"], {}, "--lock-timeout inf is not a number of seconds"),
    ([], {"CESAR_MIGRATE_LOCK_TIMEOUT": "nan"}, "CESAR_MIGRATE_LOCK_TIMEOUT"),
    (["--lock-retries", "-2"], {}, "--lock-retries -2 is negative"),
    ([], {"CESAR_MIGRATE_LOCK_TIMEOUT": "soon"}, "CESAR_MIGRATE_LOCK_TIMEOUT='soon'"),
    ([], {"CESAR_MIGRATE_LOCK_RETRIES": "-1"}, "CESAR_MIGRATE_LOCK_RETRIES='-1'"),
])
def test_bad_lock_settings_are_one_line_exit_2(
    fresh_db: str, migrations: Path, cli, monkeypatch: pytest.MonkeyPatch,
    args: list[str], env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations), *args)
    assert result.code == 2, result.out + result.err
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("cesar: error: ") and named in line
    assert "Traceback" not in result.err
    assert query(fresh_db, "SELECT to_regclass('schema_migrations')") == [(None,)]


@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_a_rollback_that_runs_out_of_retries_leaves_the_migration_applied(
    fresh_db: str, migrations: Path, runner_for, cli, mode: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _add(migrations, ALTER)
    runner_for(fresh_db).up()
    before = _tracked(fresh_db, name)
    assert before == [("succeeded", 1, False)]
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_TIMEOUT", "0.3")
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_RETRIES", "0")
    with holding_agents(fresh_db, 15) as holder:
        result = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations),
                     "--mode", mode)
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert result.code == 1, result.out + result.err
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and f"rollback {name} gave up at statement 1" in line
    assert f"nothing was rolled back and {name} stays applied" in line
    assert "`cesar migrate down` again" in line
    assert _columns(fresh_db, "agents", "lock_note") == 1
    assert _tracked(fresh_db, name) == before
    assert query(fresh_db, "SELECT holder FROM schema_migrations WHERE name = %s",
                 [name]) == [(None,)]
    again = cli("down", "--url", fresh_db, "--migrations-dir", str(migrations), "--mode", mode)
    assert again.code == 0, again.err
    assert _columns(fresh_db, "agents", "lock_note") == 0


class _NoLockView(migrate.Runner):
    """The runner on an engine that cannot say who holds a lock (CockroachDB's case), with
    PostgreSQL standing in for the rest."""

    def traits(self) -> engines.Engine:
        return dataclasses.replace(super().traits(), lock_waits_query=None)


def test_without_a_view_of_the_holder_the_give_up_still_says_what_to_do(
    fresh_db: str, migrations: Path, runner_for
) -> None:
    runner_for(fresh_db).up()
    name = _add(migrations, ALTER)
    settings = make_settings()
    with migrate.connect(fresh_db, settings) as conn:
        runner = _NoLockView(conn, connect=lambda: migrate.connect(fresh_db, settings),
                             migrations_dir=migrations, lock_timeout=0.3, lock_retries=1,
                             settings=settings)
        with holding_agents(fresh_db, 15), pytest.raises(migrate.MigrationFailed) as failed:
            runner.up()
    message = str(failed.value)
    assert f"migration {name} gave up at statement 1" in message
    assert "a lock whose holder was not seen" in message and "pid" not in message
    assert [w.waited for w in runner.lock_waits] == [None, None]
    assert _tracked(fresh_db, name) == []
    assert _columns(fresh_db, "agents", "lock_note") == 0


def test_an_online_index_build_waits_for_old_transactions_instead_of_giving_up(
    fresh_db: str, migrations: Path, runner_for, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CREATE INDEX CONCURRENTLY waits for the transactions that write the table without
    blocking anyone; one that gave up would leave an invalid index that IF NOT EXISTS skips."""
    runner_for(fresh_db).up()
    name = _add(migrations, "-- cesar:no-transaction\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS agents_lock_note_idx ON agents (name);\n")
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_TIMEOUT", "0.3")
    monkeypatch.setenv("CESAR_MIGRATE_LOCK_RETRIES", "0")
    with holding_agents(fresh_db, 3, write=True):
        result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations))
    assert result.code == 0, result.out + result.err
    assert query(fresh_db, "SELECT indisvalid FROM pg_index "
                           "WHERE indexrelid = 'agents_lock_note_idx'::regclass") == [(True,)]
    assert _tracked(fresh_db, name) == [("succeeded", 1, False)]



def test_a_runner_paused_inside_its_transaction_does_not_keep_the_tables_it_locked(
    fresh_db: str, migrations: Path, runner_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that stops between two statements of a transactional migration (a pause, a
    stall: to the server, a session idle in its transaction) holds the first statement's table
    lock; past its lease it can never commit, so that lock must not outlive the lease."""
    runner_for(fresh_db).up()
    query(fresh_db, SIDE)
    name = _add(migrations, "ALTER TABLE lock_side ADD COLUMN IF NOT EXISTS note TEXT;\n" + ALTER)
    pause = 8.0
    paused, resumed = threading.Event(), threading.Event()
    execute = runner_module.execute_statement

    def pausing(conn: psycopg.Connection, st: Statement) -> None:
        if st.index == 2 and not paused.is_set():
            paused.set()
            time.sleep(pause)  # the runner's process does nothing; its transaction stays open
            resumed.set()
        execute(conn, st)

    monkeypatch.setattr(runner_module, "execute_statement", pausing)
    runner = runner_for(fresh_db, lease_seconds=2, lock_timeout=1)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            runner.up()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert paused.wait(30)
    answered: list[bool] = []

    def read() -> None:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("SELECT count(*) FROM lock_side").fetchall()
        answered.append(not resumed.is_set())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=pause + 10)
    thread.join(timeout=60)
    assert answered == [True], "lock_side stayed locked for as long as the runner was paused"
    assert outcome and isinstance(outcome[0], OperationFailed), outcome
    assert "lost the connection" in str(outcome[0])
    monkeypatch.setattr(runner_module, "execute_statement", execute)
    runner_for(fresh_db).up()
    assert _columns(fresh_db, "agents", "lock_note") == 1
    assert _columns(fresh_db, "lock_side", "note") == 1
    assert _tracked(fresh_db, name) == [("succeeded", 2, False)]
