"""Fencing: a runner paused past its lease (SIGSTOP) runs nothing once another took over.

Each runner is its own `cesar migrate` process; the pause is a SIGSTOP the process sends itself
at one chosen point (a function replaced in the child only, no hook in the code under test),
and it resumes with SIGCONT after a second runner has taken the lease over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg

from tests.helpers import child_env, query, wait_stopped

#: `cesar migrate ARGS` that stops itself right after its Nth lease renewal by the runner
#: (not the heartbeat's): the first is "applying <migration>", the second the one just before
#: the migration's first DDL statement in per-statement mode.
PAUSER = """
import os, signal, sys
from cesar.migrate import lease as migrate_lease
stop_at = int(sys.argv[1])
real = migrate_lease.Lease.renew
calls = 0

def renew(self, conn=None, migration=None):
    global calls
    real(self, conn, migration)
    if conn is None:
        calls += 1
        if calls == stop_at:
            os.kill(os.getpid(), signal.SIGSTOP)

migrate_lease.Lease.renew = renew
from cesar.cli import main
main(["migrate", *sys.argv[2:]])
"""

TWO_TABLES = "CREATE TABLE paused_a (id INT);\n\nCREATE TABLE paused_b (id INT);\n"



def test_a_runner_paused_between_renewal_and_ddl_runs_no_statement_after_a_takeover(
        fresh_db: str, migrations: Path, runner_for, tmp_path: Path) -> None:
    runner_for(fresh_db).up()
    (migrations / "900_paused.up.sql").write_text(TWO_TABLES)
    (migrations / "900_paused.down.sql").write_text("SELECT 1;\n")
    args = ["up", "--url", fresh_db, "--migrations-dir", str(migrations),
            "--mode", "per-statement"]
    procs: list[subprocess.Popen[str]] = []

    def pauser(stop_at: int, *extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PAUSER), str(stop_at), *args, *extra],
            cwd=tmp_path, env=child_env(), text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    try:
        first = pauser(2, "--lease-seconds", "1")
        wait_stopped(first, "the runner")  # renewed for paused_a, not yet run it
        time.sleep(1.5)      # its lease expires (database clock)
        # The second runner takes the expired lease over, claims the migration, and pauses
        # at the same point, holding a fresh lease.
        second = pauser(2, "--lease-seconds", "60", "--wait-seconds", "30")
        wait_stopped(second, "the runner")
        assert query(fresh_db, "SELECT holder FROM schema_migrations WHERE name = "
                               "'900_paused'")[0][0].split(":")[1] == str(second.pid)

        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 1, err
        assert "lost the migration lease" in err and "Traceback" not in err
        # Nothing ran after the loss: no table, no progress, no failure recorded.
        assert query(fresh_db, "SELECT to_regclass('paused_a') IS NULL") == [(True,)]
        assert query(fresh_db, "SELECT status, statements_done, error_message FROM "
                               "schema_migrations WHERE name = '900_paused'") == [
            ("running", 0, None)]

        os.kill(second.pid, signal.SIGCONT)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert query(fresh_db, "SELECT status FROM schema_migrations WHERE name = "
                               "'900_paused'") == [("succeeded",)]
        assert query(fresh_db, "SELECT to_regclass('paused_b') IS NOT NULL") == [(True,)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()


def test_a_heartbeat_that_keeps_failing_stops_the_work(fresh_db: str) -> None:
    """The heartbeat cannot reach the database (its connections are refused): once it has not
    renewed for a whole lease, the holder's next check stops the work."""
    from cesar.migrate.lease import Lease, LeaseLost
    from cesar.migrate.store import Identity, ensure_tables

    def unreachable() -> psycopg.Connection:
        return psycopg.connect("host=127.0.0.1 port=1 dbname=none connect_timeout=1")

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ensure_tables(conn)
        lease = Lease.acquire(conn, unreachable, Identity(), seconds=1, wait_seconds=0)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    lease.check()
                except LeaseLost as lost:
                    assert "heartbeat failed" in str(lost)
                    # one line (psycopg's connection errors span several)
                    assert "\n" not in str(lost), str(lost)
                    break
                assert time.monotonic() < deadline, "a failing heartbeat never stopped the work"
                time.sleep(0.1)
        finally:
            lease.release()


#: `cesar migrate ARGS` that stops itself on entering the migration's `finish_step` (every statement
#: run and its progress recorded; the tracking row not yet marked done).
FINISH_PAUSER = """
import os, signal, sys
from cesar import migrate
real = migrate.Runner.finish_step

def finish(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGSTOP)
    return real(self, *args, **kwargs)

migrate.Runner.finish_step = finish
from cesar.cli import main
main(["migrate", *sys.argv[1:]])
"""


def test_a_runner_paused_after_its_last_statement_does_not_finish_a_taken_over_migration(
        fresh_db: str, migrations: Path, tmp_path: Path, runner_for) -> None:
    runner_for(fresh_db).up()
    (migrations / "901_paused.up.sql").write_text(TWO_TABLES)
    (migrations / "901_paused.down.sql").write_text("SELECT 1;\n")
    args = ["up", "--url", fresh_db, "--migrations-dir", str(migrations),
            "--mode", "per-statement"]
    procs: list[subprocess.Popen[str]] = []

    def pauser(*extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(FINISH_PAUSER), *args, *extra],
            cwd=tmp_path, env=child_env(), text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    row = ("SELECT status, holder FROM schema_migrations WHERE name = '901_paused'")
    try:
        first = pauser("--lease-seconds", "1")
        wait_stopped(first, "the runner")  # both statements run and recorded, not yet marked done
        time.sleep(1.5)      # its lease expires
        second = pauser("--lease-seconds", "60", "--wait-seconds", "30")
        # took over, resumed past the last statement, about to finish
        wait_stopped(second, "the runner")
        status, holder = query(fresh_db, row)[0]
        assert status == "running" and holder.split(":")[1] == str(second.pid)

        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 1, err
        assert "lost the migration lease" in err and "Traceback" not in err
        # The late runner neither marked it done nor released the new holder's claim.
        status, holder = query(fresh_db, row)[0]
        assert status == "running" and holder.split(":")[1] == str(second.pid)
        assert query(fresh_db, "SELECT count(*) FROM schema_migration_events WHERE "
                               "migration = '901_paused' AND event = 'apply'") == [(0,)]

        os.kill(second.pid, signal.SIGCONT)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert query(fresh_db, row) == [("succeeded", None)]
        assert query(fresh_db, "SELECT count(*) FROM schema_migration_events WHERE "
                               "migration = '901_paused' AND event = 'apply'") == [(1,)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()
