"""Fencing: a sync run paused past its lease lands nothing once another run took over; a run
killed on this host does not block the next one for a lease.

Each run under test is its own `cesar sync run` process. The pause is a SIGSTOP the process
sends itself when it first reaches one function (replaced in the child only: no hook in the
code under test); it resumes with SIGCONT while the run that took over still holds the lease.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import wait_stopped
from tests.sync.helpers import Pair, child_env

#: `cesar sync run` that stops itself the first time it reaches ``point`` (apply: a batch is
#: about to be applied on the target; acknowledge: the target committed, the source is not yet
#: acknowledged; in-acknowledge: inside the acknowledging transaction, its rows updated and
#: locked, before its fence; save-state: the run's moves are done, its sync_state rows not yet
#: written; record: its divergence found, not yet recorded; slow-apply: hold the lease for a
#: minute, to be killed).
#: The stop is sent to the calling thread, so that it stops right there: a signal sent to the
#: process is taken by its main thread, and the caller ran on for a moment (into a transaction,
#: on a loaded machine) before the stop reached it.
PAUSER = """
import os, signal, sys, threading, time
from cesar.sync import apply, capture, run
point, local, cluster = sys.argv[1:4]
stopped = []

def pause_before(real):
    def wrapper(*args, **kwargs):
        if not stopped:
            stopped.append(True)
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
        return real(*args, **kwargs)
    return wrapper

if point == "apply":
    run.apply_changes = pause_before(run.apply_changes)
elif point == "acknowledge":
    capture.acknowledge = pause_before(capture.acknowledge)
elif point == "in-acknowledge":
    real_ack = capture.acknowledge
    def inside(conn, spec, changes, fence=None, **kwargs):
        return real_ack(conn, spec, changes, fence=pause_before(fence), **kwargs)
    capture.acknowledge = inside
elif point == "save-state":
    from cesar.sync import state
    state.save_state = pause_before(state.save_state)
elif point == "record":
    from cesar.sync import divergence
    divergence.record = pause_before(divergence.record)
elif point == "slow-apply":
    real = run.apply_changes
    def slow(*args, **kwargs):
        time.sleep(60)
        return real(*args, **kwargs)
    run.apply_changes = slow
from cesar.cli import main
main(["sync", "run", "--local-url", local, "--remote-url", cluster, *sys.argv[4:]])
"""


class Runs:
    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, point: str, lease_seconds: float, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PAUSER), point, self.pair.local_url,
             self.pair.cluster_url, *args],
            env={**child_env(), "CESAR_SYNC_LEASE_SECONDS": str(lease_seconds)}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()


@pytest.fixture
def runs(synced: Pair) -> Runs:
    r = Runs(synced)
    yield r  # type: ignore[misc]
    r.close()



def write_rows(pair: Pair, n: int = 5) -> None:
    pair.sql("local", "INSERT INTO items (id, val) SELECT gen_random_uuid(), 'v' || g "
                      "FROM generate_series(1, %s) AS g", [n])


def take_over(runs: Runs, point: str) -> subprocess.Popen[str]:
    """A second run that takes the first one's expired lease over and pauses at ``point``,
    holding a lease of a minute."""
    time.sleep(1.5)  # the first run's lease of 1 s has expired (database clock)
    second = runs.start(point, 60, "--wait", "30")
    wait_stopped(second, "the run")
    holder = runs.pair.sql("cluster", "SELECT pid FROM sync_lease")
    assert holder == [(second.pid,)]
    return second


def finish_second(second: subprocess.Popen[str], pair: Pair) -> None:
    os.kill(second.pid, signal.SIGCONT)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert pair.pending("local") == pair.pending("cluster") == 0
    pair.assert_identical()


def test_a_paused_run_s_late_apply_fails_after_a_takeover(runs: Runs) -> None:
    pair = runs.pair
    write_rows(pair)
    first = runs.start("apply", 1)
    wait_stopped(first, "the run")  # it has read the batch and is about to apply it on the cluster
    second = take_over(runs, "apply")

    os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=60)

    assert first.returncode == 1, err
    assert "lost the sync lease" in err and "Traceback" not in err
    assert pair.rows("cluster", "items") == {}  # its late apply did not land
    assert pair.pending("local") == 5
    finish_second(second, pair)


def test_a_paused_run_s_late_acknowledgement_fails_after_a_takeover(runs: Runs) -> None:
    pair = runs.pair
    write_rows(pair)
    first = runs.start("acknowledge", 1)
    # the cluster has committed the batch; the local side is not acked
    wait_stopped(first, "the run")
    assert len(pair.rows("cluster", "items")) == 5
    second = take_over(runs, "apply")

    os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=60)

    assert first.returncode == 1, err
    assert "lost the sync lease" in err and "Traceback" not in err
    assert pair.pending("local") == 5  # its late acknowledgement did not land
    finish_second(second, pair)


def test_a_run_killed_on_this_host_is_taken_over_at_once(runs: Runs) -> None:
    """Its lease (30 s) has not expired, but its holder is a process of this host that no
    longer exists: the next run (which does not wait) takes over instead of reporting a run in
    progress."""
    pair = runs.pair
    write_rows(pair)
    victim = runs.start("slow-apply", 30)
    deadline = time.monotonic() + 60
    while not pair.sql("cluster", "SELECT 1 FROM sync_lease"):
        assert time.monotonic() < deadline and victim.poll() is None, "no lease taken"
        time.sleep(0.05)
    victim.kill()
    victim.wait()
    [(seconds_left,)] = pair.sql("cluster", "SELECT EXTRACT(EPOCH FROM expires_at - now()) "
                                            "FROM sync_lease")
    assert seconds_left > 10  # still far from expiring

    report = pair.sync(wait=0)  # asserts that the lease was taken, not found in progress

    assert report.moved == 5
    pair.assert_identical()


def test_a_run_paused_inside_its_acknowledgement_reports_the_lost_lease(runs: Runs) -> None:
    """The server ends a transaction idle for one lease (the sync's sessions set
    idle_in_transaction_session_timeout to it), so the paused run resumes on a closed
    connection: that is its lease lost, said as such, and its acknowledgement did not land."""
    pair = runs.pair
    write_rows(pair)
    first = runs.start("in-acknowledge", 1)
    wait_stopped(first, "the run")
    second = take_over(runs, "apply")  # it reads the 5 rows: the locks were released

    os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=60)

    assert first.returncode == 1, err
    assert "lost the sync lease" in err and "the database ended its session" in err, err
    assert "Traceback" not in err
    assert pair.pending("local") == 5
    finish_second(second, pair)


def test_a_paused_run_s_late_state_does_not_overwrite_the_run_that_took_over(
        runs: Runs) -> None:
    """What `cesar sync status`, /health and /metrics read (sync_state) is written under the
    lease too: a run paused before writing it, once another run took over and wrote its own,
    writes nothing and says it lost the lease."""
    pair = runs.pair
    write_rows(pair)
    first = runs.start("save-state", 1)
    wait_stopped(first, "the run")  # the 5 rows moved and acknowledged; its state not written
    pair.sql("cluster", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'late')")
    time.sleep(1.5)  # the first run's lease of 1 s has expired (database clock)
    second = pair.sync(wait=30)
    assert second.moved == 1
    query = ("SELECT direction, rows_last_run, updated_at FROM sync_state "
             "WHERE table_name = 'items' ORDER BY direction")
    newer = {side: pair.sql(side, query) for side in ("local", "cluster")}
    assert [r[:2] for r in newer["local"]] == [("cluster_to_local", 1), ("local_to_cluster", 0)]

    os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=60)

    assert first.returncode == 1, err
    assert "lost the sync lease" in err and "Traceback" not in err
    assert {side: pair.sql(side, query) for side in ("local", "cluster")} == newer


def test_a_paused_run_s_late_divergence_record_does_not_hide_a_newer_finding(
        runs: Runs) -> None:
    """A run paused with "no divergence" in hand, while a row is deleted behind the capture
    and the run that took over records it: the late record does not overwrite that finding
    (the alert and /health would have cleared until the next run)."""
    pair = runs.pair
    write_rows(pair)
    pair.sync()
    first = runs.start("record", 1)
    wait_stopped(first, "the run")  # it has counted: the sides agree; nothing recorded yet
    pair.sql("cluster", "ALTER TABLE items DISABLE TRIGGER USER")
    pair.sql("cluster", "DELETE FROM items WHERE id = (SELECT id FROM items LIMIT 1)")
    pair.sql("cluster", "ALTER TABLE items ENABLE TRIGGER USER")
    time.sleep(1.5)  # the first run's lease of 1 s has expired (database clock)
    pair.sync(wait=30)
    found = "SELECT divergent_rows FROM sync_divergence WHERE table_name = 'items'"
    assert pair.sql("cluster", found) == [(1,)]

    os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=60)

    assert first.returncode == 1, err
    assert "lost the sync lease" in err and "Traceback" not in err
    assert pair.sql("cluster", found) == [(1,)]
    assert pair.sql("local", found) == [(1,)]
