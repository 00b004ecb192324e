"""A run killed with SIGKILL at the worst moments, and runs that overlap."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.helpers import CliResult
from tests.sync.helpers import Pair, child_env

#: Runs `cesar sync run` in a child process after replacing one function with a SIGKILL of the
#: process itself: the kill lands exactly at that point, with no hook in the code under test.
KILLER = """
import os, signal, sys, time
from cesar.sync import apply, capture
point, local, cluster = sys.argv[1:4]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after-target-commit":      # the target committed, the source is not acknowledged
    capture.acknowledge = die
elif point == "before-target-commit":   # the target's transaction has written, not committed
    real_write = apply.write_changes
    def write_then_die(*args, **kwargs):
        real_write(*args, **kwargs)
        die()
    apply.write_changes = write_then_die
elif point == "during-first-reconcile":
    from cesar.sync import reconcile
    reconcile.reconcile_table = die
elif point == "slow-acknowledge":       # hold the lease until the gate file exists
    real_ack = capture.acknowledge
    def slow(*args, **kwargs):
        deadline = time.monotonic() + 60
        while not os.path.exists(os.environ["GATE_FILE"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return real_ack(*args, **kwargs)
    capture.acknowledge = slow
from cesar.cli import main
main(["sync", "run", "--local-url", local, "--remote-url", cluster])
"""


def spawn(pair: Pair, point: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLER), point, pair.local_url, pair.cluster_url],
        env={**child_env(), **env}, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def xmins(pair: Pair, side: str) -> dict[str, str]:
    """Each row's creating transaction: unchanged when a second apply really wrote nothing."""
    return {str(k): str(x) for k, x in pair.sql(side, "SELECT id, xmin FROM items")}


def write_some(pair: Pair) -> str:
    """Three new rows and a delete on the local side, and one key both sides changed (the local
    write last, so the cluster's version is overwritten and recorded). Returns that key."""
    contested, doomed = str(uuid.uuid4()), str(uuid.uuid4())
    for k in (contested, doomed):
        pair.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'base')", [k])
    pair.sync()
    pair.sql("cluster", "UPDATE items SET val = 'cluster' WHERE id = %s", [contested])
    pair.sql("local", "UPDATE items SET val = 'local' WHERE id = %s", [contested])
    pair.sql("local", "DELETE FROM items WHERE id = %s", [doomed])
    for i in range(3):
        pair.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), %s)", [f"n{i}"])
    return contested


def test_killed_after_the_target_committed_loses_nothing_and_duplicates_nothing(
        synced: Pair) -> None:
    contested = write_some(synced)
    pending_before = synced.pending("local")

    proc = spawn(synced, "after-target-commit", CESAR_SYNC_LEASE_SECONDS="1")
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == -signal.SIGKILL, err
    # The cluster committed the first batch (the inserts and updates; the delete would come in
    # a later phase); the local side was never acknowledged.
    cluster, local = synced.rows("cluster", "items"), synced.rows("local", "items")
    assert all(cluster[k] == row for k, row in local.items())
    assert synced.pending("local") == pending_before
    [conflict] = synced.conflicts("cluster")
    written = xmins(synced, "cluster")

    report = synced.sync(wait=5)  # the dead run's lease expires after 1 s, then it is taken over

    assert report.moved == 1  # only the delete: the rest was already there, not written twice
    after = xmins(synced, "cluster")
    assert len(after) == len(written) - 1 and all(written[k] == x for k, x in after.items())
    assert synced.conflicts("cluster") == [conflict]  # recorded once
    assert synced.pending("local") == synced.pending("cluster") == 0
    synced.assert_identical()
    assert synced.sql("cluster", "SELECT val FROM items WHERE id = %s", [contested]) == [
        ("local",)]


def test_killed_before_the_target_committed_leaves_everything_to_the_next_run(
        synced: Pair) -> None:
    write_some(synced)
    cluster_before = synced.rows("cluster", "items")

    proc = spawn(synced, "before-target-commit", CESAR_SYNC_LEASE_SECONDS="1")
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == -signal.SIGKILL, err
    assert synced.rows("cluster", "items") == cluster_before  # rolled back with the process
    assert synced.conflicts("cluster") == []
    report = synced.sync(wait=5)
    assert report.moved == 5 and report.conflicts == 1
    synced.assert_identical()


def test_a_first_run_killed_before_its_reconcile_finished_reconciles_again(pair: Pair) -> None:
    # Rows older than the capture (no version): only the first run's reconcile moves them.
    with pair.connect("local") as conn:
        conn.execute("SELECT set_config('cesar.sync_apply', 'on', false)")
        conn.execute("INSERT INTO items (id, val) SELECT gen_random_uuid(), 'old' "
                     "FROM generate_series(1, 20)")
    proc = spawn(pair, "during-first-reconcile", CESAR_SYNC_LEASE_SECONDS="1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert pair.sql("local", "SELECT peer FROM sync_node") == [(None,)]  # not paired yet

    report = pair.sync(wait=5)

    assert report.first_pairing and report.full
    pair.assert_identical()


# ------------------------------------------------------------------------- overlapping runs
def hold_lease(pair: Pair, seconds: float, holder: str = "elsewhere:4242:feedbeef") -> None:
    pair.sql("cluster", "INSERT INTO sync_lease (id, holder, host, pid, expires_at) "
                        "VALUES (1, %s, 'elsewhere', 4242, now() + %s * INTERVAL '1 second')",
             [holder, seconds])


def run_cli(cli: Callable[..., CliResult], pair: Pair, *args: str) -> tuple[int, str, str]:
    r = cli("sync", "run", "--local-url", pair.local_url, "--remote-url", pair.cluster_url, *args)
    return r.code, r.out, r.err


def test_a_second_run_exits_0_at_once_while_one_is_in_progress(
        synced: Pair, cli: Callable[..., CliResult]) -> None:
    synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'waiting')")
    hold_lease(synced, 60)

    code, out, _ = run_cli(cli, synced)
    assert code == 0
    assert "another sync run is in progress (elsewhere:4242:feedbeef" in out
    assert synced.pending("local") == 1  # it did nothing

    started = time.monotonic()
    code, _, err = run_cli(cli, synced, "--wait", "1")
    assert code == 1 and time.monotonic() - started >= 1
    assert err.startswith("cesar: error: another sync run still holds the lease after 1 s")


def test_an_expired_lease_of_a_dead_run_is_taken_over(
        synced: Pair, cli: Callable[..., CliResult]) -> None:
    synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'waiting')")
    hold_lease(synced, -1)  # its holder stopped renewing it
    code, out, _ = run_cli(cli, synced)
    assert code == 0 and "moved 1 row" in out
    assert synced.sql("cluster", "SELECT count(*) FROM sync_lease") == [(0,)]


def test_two_real_runs_at_once_do_not_interleave(synced: Pair, tmp_path: Path) -> None:
    for i in range(50):
        synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), %s)", [str(i)])
    # The first run holds its lease until the second has ended, however slowly it starts.
    gate = tmp_path / "gate"
    first = spawn(synced, "slow-acknowledge", GATE_FILE=str(gate))
    deadline = time.monotonic() + 30
    while not synced.sql("cluster", "SELECT holder FROM sync_lease"):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "cesar.cli", "sync", "run", "--local-url", synced.local_url,
         "--remote-url", synced.cluster_url], env=child_env(), text=True, capture_output=True,
        timeout=60)
    gate.touch()
    out, err = first.communicate(timeout=60)

    assert second.returncode == 0 and "another sync run is in progress" in second.stdout
    assert first.returncode == 0, err
    assert "moved 50 rows" in out
    synced.assert_identical()
