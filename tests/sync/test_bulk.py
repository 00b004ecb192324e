"""The bulk path (cesar/sync/bulk.py): a large backlog moved with COPY and set-based statements
keeps every guarantee of the batch path: exact versions, nothing lost or written twice when
killed, writers on both sides during the run, and conflicting versions decided and recorded."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import psycopg

from tests.sync.helpers import (
    BULK,
    ROWS,
    Pair,
    child_env,
    fill,
    items_report,
    sleeping,
    superuser,
    versions,
)


def test_a_large_backlog_moves_in_bulk_with_its_exact_versions(synced: Pair) -> None:
    fill(synced)
    report = synced.sync(**BULK)
    tr = items_report(report)
    assert tr.bulk_applied == ROWS and tr.applied == ROWS and tr.acknowledged == ROWS
    assert report.conflicts == 0 and report.failed == 0
    synced.assert_identical()
    # The target holds each row's own version (time and origin), not pending; nothing echoes.
    assert versions(synced, "cluster") == versions(synced, "local")
    assert synced.pending("local") == synced.pending("cluster") == 0
    # Updates of already synced rows take the bulk path too (the target's older versions).
    synced.sql("local", "UPDATE items SET n = n + 1")
    again = synced.sync(**BULK)
    assert items_report(again).bulk_applied == ROWS and again.conflicts == 0
    synced.assert_identical()
    assert versions(synced, "cluster") == versions(synced, "local")


def test_a_chunk_of_new_keys_still_updates_the_few_the_target_knows(synced: Pair) -> None:
    """A chunk skips the statements for keys the target already has a version row of when it
    has none in the chunk's key range: a key it does know, at either end of a chunk or inside
    one, is still updated by the bulk path, not left to the batch path."""
    known = ["00000000-0000-4000-8000-000000000000",   # the lowest key of the first chunk
             "80000000-0000-4000-8000-000000000000",   # inside the second
             "ffffffff-ffff-4fff-bfff-ffffffffffff"]   # the highest key of the last
    synced.sql("local", "INSERT INTO items (id, val) SELECT k, 'first' "
                        "FROM unnest(%s::uuid[]) AS k", [known])
    synced.sync(**BULK)
    assert synced.pending("local") == 0 and len(synced.rows("cluster", "items")) == len(known)
    fill(synced)
    synced.sql("local", "UPDATE items SET val = 'again' WHERE id = ANY(%s::uuid[])", [known])

    report = synced.sync(**BULK)

    tr = items_report(report)
    assert tr.bulk_applied == ROWS + len(known), tr
    assert report.conflicts == 0 and report.failed == 0
    synced.assert_identical()
    assert versions(synced, "cluster") == versions(synced, "local")
    assert synced.pending("local") == synced.pending("cluster") == 0


def test_a_key_a_target_writer_inserts_and_deletes_under_a_chunk_stays_deleted(synced: Pair
                                                                              ) -> None:
    """The fresh keys' statement reads which keys the target has no version row of in its
    snapshot; a writer on the target then inserts and deletes one of them (its version row
    says deleted) before the statement reaches it. The row must not be inserted under the
    writer's version: the chunk goes to the batch path, and the delete, the key's last write,
    wins on both sides."""
    ids = sorted(fill(synced, n=1500))
    key = ids[len(ids) // 2]
    with superuser(synced, "cluster") as su:
        # The chunk's insert sleeps at its first row, after its snapshot was taken.
        su.execute("CREATE FUNCTION slow_chunk() RETURNS TRIGGER LANGUAGE plpgsql AS $$ BEGIN "
                   "IF current_setting('cesar.sync_apply', true) = 'on' AND "
                   "current_setting('test.slept', true) IS DISTINCT FROM 'yes' THEN "
                   "PERFORM set_config('test.slept', 'yes', true); PERFORM pg_sleep(3); "
                   "END IF; RETURN NEW; END $$")
        su.execute("CREATE TRIGGER slow_chunk BEFORE INSERT ON items FOR EACH ROW "
                   "EXECUTE FUNCTION slow_chunk()")
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("report", synced.sync(
        bulk_threshold=1000, bulk_chunk=5000)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not sleeping(synced, "cluster"):
            assert thread.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.05)
        synced.sql("cluster", "INSERT INTO items (id, val) VALUES (%s, 'cluster')", [key])
        synced.sql("cluster", "DELETE FROM items WHERE id = %s", [key])
    finally:
        thread.join(timeout=120)
    assert "report" in outcome, "the run did not finish"
    assert items_report(outcome["report"]).bulk_chunks_to_batch == 1  # its one chunk fell back
    with superuser(synced, "cluster") as su:
        su.execute("DROP TRIGGER slow_chunk ON items")
    for _ in range(2):
        synced.sync()
    synced.assert_identical()
    assert key not in synced.rows("local", "items")
    assert len(synced.rows("cluster", "items")) >= len(ids) - 1
    assert synced.pending("local") == synced.pending("cluster") == 0


def test_conflicting_versions_are_decided_and_recorded_as_by_the_batch_path(synced: Pair
                                                                             ) -> None:
    ids = fill(synced)
    synced.sync(**BULK)
    older, newer = ids[:10], ids[10:20]
    # The cluster changes ten keys before the local side rewrites them all (local wins, the
    # cluster's unsent versions are overwritten and recorded), and ten after (the cluster wins).
    synced.sql("cluster", "UPDATE items SET val = 'cluster-early' WHERE id = ANY(%s::uuid[])",
               [older])
    synced.sql("local", "UPDATE items SET val = 'local'")
    synced.sql("cluster", "UPDATE items SET val = 'cluster-late' WHERE id = ANY(%s::uuid[])",
               [newer])

    report = synced.sync(**BULK)

    tr = items_report(report)
    assert tr.bulk_applied == ROWS - 20  # the twenty contested keys went the batch path's way
    synced.assert_identical()
    vals = dict(synced.sql("local", "SELECT id::TEXT, val FROM items"))
    assert {vals[k] for k in older} == {"local"} and {vals[k] for k in newer} == {"cluster-late"}
    assert sum(v == "local" for v in vals.values()) == ROWS - 10
    resolutions = sorted(c["resolution"] for c in synced.conflicts("cluster"))
    assert resolutions == ["existing_won"] * 10 + ["incoming_won"] * 10
    assert synced.pending("local") == synced.pending("cluster") == 0


#: A run in a child process, SIGKILLed at one point of the bulk path.
KILLER = """
import os, signal, sys
from cesar.sync import bulk
point, local, cluster = sys.argv[1:4]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after-chunk-commit":      # the target committed a chunk, the source is not acked
    bulk.acknowledge_chunk = die
elif point == "before-chunk-commit":   # the chunk is written on the target, not committed
    import dataclasses
    real_apply = bulk.apply_chunk
    def apply_then_die(piece, target, spec):
        # The fence runs last inside the chunk's transaction: die there instead.
        return real_apply(piece, dataclasses.replace(target, fence=die), spec)
    bulk.apply_chunk = apply_then_die
from cesar.cli import main
main(["sync", "run", "--local-url", local, "--remote-url", cluster])
"""


def spawn(pair: Pair, point: str) -> subprocess.Popen[str]:
    env = {**child_env(), "CESAR_SYNC_TABLES": "items", "CESAR_SYNC_LEASE_SECONDS": "1",
           "CESAR_SYNC_BULK_THRESHOLD": "1000", "CESAR_SYNC_BULK_CHUNK": "1000"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLER), point, pair.local_url, pair.cluster_url],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def xmins(pair: Pair, side: str) -> dict[str, str]:
    return {str(k): str(x) for k, x in pair.sql(side, "SELECT id, xmin FROM items")}


def test_killed_after_a_chunk_committed_loses_nothing_and_writes_nothing_twice(synced: Pair
                                                                               ) -> None:
    fill(synced)
    proc = spawn(synced, "after-chunk-commit")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    first = xmins(synced, "cluster")
    # One chunk landed, unacknowledged (or two: the next chunk's apply runs beside the first
    # chunk's acknowledgement, which is where the run died).
    assert len(first) in (1000, 2000)
    assert synced.pending("local") == ROWS

    report = synced.sync(wait=5, **BULK)

    assert report.conflicts == 0 and report.failed == 0
    after = xmins(synced, "cluster")
    assert all(after[k] == x for k, x in first.items())  # the landed chunk was not rewritten
    assert report.moved == ROWS - len(first)
    synced.assert_identical()
    assert versions(synced, "cluster") == versions(synced, "local")
    assert synced.pending("local") == synced.pending("cluster") == 0


def test_killed_before_a_chunk_committed_leaves_it_all_to_the_next_run(synced: Pair) -> None:
    fill(synced)
    before = synced.rows("cluster", "items")
    proc = spawn(synced, "before-chunk-commit")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert synced.rows("cluster", "items") == before  # rolled back with the process

    report = synced.sync(wait=5, **BULK)

    assert report.moved == ROWS and report.conflicts == 0
    synced.assert_identical()
    assert versions(synced, "cluster") == versions(synced, "local")


def test_writers_on_both_sides_during_a_bulk_run_lose_nothing(synced: Pair) -> None:
    """Writers update, insert and delete on both sides while the bulk moves 2,500 rows; after
    two quiet runs both sides are identical and every key holds its last write (the writers'
    own log is the oracle)."""
    ids = fill(synced, n=ROWS)
    last: dict[str, str | None] = {k: "bulk" for k in ids}
    lock = threading.Lock()
    stop = threading.Event()
    rng = random.Random(17)
    failed: list[str] = []

    def writer(side: str) -> None:
        with synced.connect(side) as conn:
            while not stop.is_set():
                with lock:
                    key = rng.choice(ids)
                    action = rng.random()
                    val = f"{side}-{uuid.uuid4().hex[:6]}"
                    try:
                        if action < 0.8:
                            # Absent on this side (not yet synced, or deleted): written anew.
                            conn.execute("INSERT INTO items (id, val) VALUES (%s, %s) "
                                         "ON CONFLICT (id) DO UPDATE SET val = excluded.val",
                                         [key, val])
                            last[key] = val
                        elif action < 0.9:
                            if conn.execute("DELETE FROM items WHERE id = %s",
                                            [key]).rowcount:
                                last[key] = None
                        else:
                            new = str(uuid.uuid4())
                            conn.execute("INSERT INTO items (id, val) VALUES (%s, %s)",
                                         [new, val])
                            ids.append(new)
                            last[new] = val
                    except psycopg.errors.DeadlockDetected:
                        failed.append(side)  # not committed: not a write to keep
                time.sleep(0.002)

    threads = [threading.Thread(target=writer, args=(s,)) for s in ("local", "cluster")]
    for t in threads:
        t.start()
    try:
        report = synced.sync(**BULK)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert items_report(report).bulk_applied > 0
    for _ in range(2):
        synced.sync(**BULK)
    synced.assert_identical()
    got = dict(synced.sql("local", "SELECT id::TEXT, val FROM items WHERE id = ANY(%s::uuid[])",
                          [list(last)]))
    assert {k: got.get(k) for k in last} == last
    assert synced.pending("local") == synced.pending("cluster") == 0


def test_a_slow_acknowledgement_does_not_hold_back_the_next_chunk(synced: Pair) -> None:
    """The source acknowledges chunk N while the target applies chunk N+1: with every
    acknowledgement on the source held off (a session holds sync_versions in SHARE mode, which
    their UPDATE waits for), the target still receives a second chunk. Released, the run ends
    with everything moved and acknowledged once."""
    fill(synced)
    before = len(synced.rows("cluster", "items"))
    holder = synced.connect("local", autocommit=False)
    holder.execute("LOCK TABLE sync_versions IN SHARE MODE")
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = synced.sync(**BULK)
        except BaseException as exc:  # noqa: BLE001 (reported by the test's thread below)
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    landed = 0
    try:
        deadline = time.monotonic() + 20
        while landed < 2000 and time.monotonic() < deadline:
            landed = int(synced.sql("cluster", "SELECT count(*) FROM items")[0][0]) - before
            time.sleep(0.05)
    finally:
        holder.rollback()
        holder.close()
        thread.join(timeout=120)
    assert landed >= 2000, f"only {landed} rows reached the target while chunk 1 waited"
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert items_report(report).bulk_applied == ROWS  # type: ignore[arg-type]
    synced.assert_identical()
    assert versions(synced, "cluster") == versions(synced, "local")
    assert synced.pending("local") == synced.pending("cluster") == 0
