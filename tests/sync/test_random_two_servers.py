"""A seeded random history on TWO PostgreSQL servers, the cluster's clock SKEW_SECONDS ahead
(libfaketime), while sync runs overlap, run ``--full``, are paused with SIGSTOP past their lease
while another takes over (then continued with SIGCONT), are killed with SIGKILL, and TRUNCATE is
tried on either side. After the writers stop and two runs move nothing, both sides must hold
identical rows, and each key must be in its last-written state.

The oracle is the writers' own log (the order in which their writes committed), not the
versions the implementation stored. Writes to one key are spaced more than the skew apart (in
real time, whichever side), so that "the last write" is unambiguous: within that spacing, last
writer wins between two clocks can legitimately pick either (docs/sync.md, "Clocks").

Every run under test is its own `cesar sync run` process with a lease of one second.

Environment: ``CESAR_SYNC_RANDOM2_SEEDS`` (comma-separated, default one seed),
``CESAR_SYNC_RANDOM2_SECONDS`` (writing time per seed, default 15). The seed is in every
failure message: rerun with it to replay the same choices (the interleaving is real time).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.sync.helpers import SKEW_SECONDS, Pair, child_env

SEEDS = [int(s) for s in os.environ.get("CESAR_SYNC_RANDOM2_SEEDS", "20261130").split(",")]
SECONDS = float(os.environ.get("CESAR_SYNC_RANDOM2_SECONDS", "15"))
KEYS = 12
SPACING = SKEW_SECONDS + 1.0  # between two writes to one key, in real time
LEASE = 1.0
SIDES = ("local", "cluster")
#: What a run under test may end with besides success: its lease was taken over while it was
#: paused (fencing), or it gave up waiting for a paused holder's lease.
EXPECTED_FAILURES = ("lost the sync lease", "another sync run still holds the lease")
ENV = {"CESAR_SYNC_TABLES": "items", "CESAR_SYNC_LEASE_SECONDS": f"{LEASE:g}",
       "CESAR_SYNC_LOCK_TIMEOUT_MS": "200", "CESAR_SYNC_BATCH_SIZE": "4",
       "CESAR_SYNC_MAX_CLOCK_SKEW_MS": str(int(SKEW_SECONDS * 1000) + 2000),
       # A shared CI machine under load can take seconds to accept a connection.
       "CESAR_CONNECT_TIMEOUT": "30"}


class Writers(threading.Thread):
    """Short writes (one statement, autocommit) on both sides; the log is the oracle."""

    def __init__(self, pair: Pair, rng: random.Random, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.pair, self.rng, self.keys = pair, rng, keys
        self.expected: dict[str, tuple[str, int] | None] = {}
        self.last: dict[str, float] = {}
        self.log: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.count = 0

    def run(self) -> None:
        conns = {s: self.pair.connect(s) for s in SIDES}
        try:
            for conn in conns.values():
                conn.execute("SET lock_timeout = '30s'")  # behind a paused run's row locks
            while not self.stop.is_set():
                now = time.monotonic()
                ready = [k for k in self.keys if now - self.last.get(k, -1e9) > SPACING]
                if not ready:
                    time.sleep(0.05)
                    continue
                self.write(conns, self.rng.choice(ready), self.rng.choice(SIDES))
                time.sleep(self.rng.uniform(0, 0.08))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            for conn in conns.values():
                conn.close()

    def write(self, conns: dict[str, psycopg.Connection], key: str, side: str) -> None:
        state: tuple[str, int] | None
        try:
            if self.expected.get(key) is not None and self.rng.random() < 0.3:
                done = conns[side].execute("DELETE FROM items WHERE id = %s", [key]).rowcount
                state = None
                if done == 0:  # not (yet) on that side: nothing happened
                    return
            else:
                state = (f"{side}-{self.rng.randrange(10**6)}", self.rng.randrange(100))
                conns[side].execute(
                    "INSERT INTO items (id, val, n) VALUES (%s, %s, %s) ON CONFLICT (id) "
                    "DO UPDATE SET val = excluded.val, n = excluded.n", [key, *state])
        except psycopg.errors.LockNotAvailable:
            self.log.append(f"{side} write to {key[:8]} gave up on a lock")
            return
        self.last[key] = time.monotonic()
        self.expected[key] = state
        self.count += 1
        self.log.append(f"{time.monotonic():.2f} {side} {'delete' if state is None else state} "
                        f"{key[:8]}")


class Runs:
    def __init__(self, pair: Pair, tmp_path: Path, log: list[str]) -> None:
        self.pair, self.tmp_path, self.log = pair, tmp_path, log
        self.procs: list[subprocess.Popen[str]] = []
        self.stats = {"runs": 0, "full": 0, "paused": 0, "killed": 0, "overlapping": 0,
                      "fenced": 0, "truncate": 0}

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cesar.cli", "sync", "run", "--local-url", self.pair.local_url,
             "--remote-url", self.pair.cluster_url, "--wait", "3", *args],
            cwd=self.tmp_path, env={**child_env(), **ENV}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        self.stats["runs"] += 1
        self.stats["full"] += "--full" in args
        return proc

    def finish(self, proc: subprocess.Popen[str], killed: bool = False) -> None:
        _, err = proc.communicate(timeout=120)
        if killed:
            return
        if proc.returncode != 0:
            assert proc.returncode == 1 and any(m in err for m in EXPECTED_FAILURES), err
            self.stats["fenced"] += "lost the sync lease" in err
        self.log.append(f"run {proc.pid} exit {proc.returncode}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()

    # ---------------------------------------------------------------- actions
    def one(self, rng: random.Random) -> None:
        r = rng.random()
        if r < 0.2:
            self.finish(self.start())
        elif r < 0.35:
            self.finish(self.start("--full"))  # while the writers write
        elif r < 0.5:
            self.overlap(rng)
        elif r < 0.75:
            self.pause_past_the_lease(rng)
        elif r < 0.9:
            self.kill(rng)
        else:
            self.truncate(rng.choice(SIDES))

    def overlap(self, rng: random.Random) -> None:
        self.stats["overlapping"] += 1
        a, b = self.start(), self.start(*(["--full"] if rng.random() < 0.5 else []))
        self.finish(a)
        self.finish(b)

    def kill(self, rng: random.Random) -> None:
        proc = self.start(*(["--full"] if rng.random() < 0.3 else []))
        time.sleep(rng.uniform(0.3, 1.2))  # the interpreter starts in about 0.3 s
        proc.kill()
        self.stats["killed"] += 1
        self.finish(proc, killed=True)
        self.log.append(f"run {proc.pid} killed")

    def pause_past_the_lease(self, rng: random.Random) -> None:
        paused = self.start(*(["--full"] if rng.random() < 0.3 else []))
        deadline = time.monotonic() + 10
        while (paused.poll() is None and time.monotonic() < deadline
               and self.pair.sql("cluster", "SELECT pid FROM sync_lease") != [(paused.pid,)]):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))  # somewhere in its run, the lease held
        if paused.poll() is not None:
            self.finish(paused)
            return
        os.kill(paused.pid, signal.SIGSTOP)
        self.stats["paused"] += 1
        self.log.append(f"run {paused.pid} stopped")
        time.sleep(LEASE + 0.5)  # its lease expires (database clock)
        self.finish(self.start())  # takes over (or gives up behind the paused one's locks)
        os.kill(paused.pid, signal.SIGCONT)
        self.log.append(f"run {paused.pid} continued")
        self.finish(paused)

    def truncate(self, side: str) -> None:
        self.stats["truncate"] += 1
        with pytest.raises(psycopg.Error, match="use DELETE FROM items"):
            self.pair.sql(side, "TRUNCATE items")
        self.log.append(f"TRUNCATE on {side} refused")


@pytest.mark.parametrize("seed", SEEDS)
def test_two_servers_with_skewed_clocks_converge_to_the_last_write(
        skewed_pair: Pair, tmp_path: Path, seed: int) -> None:
    pair = skewed_pair
    pair.sync(tables=("items",))  # pairs them (and adds the TRUNCATE guards)
    rng = random.Random(seed)
    keys = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(KEYS)]
    writers = Writers(pair, random.Random(rng.random()), keys)
    runs = Runs(pair, tmp_path, writers.log)
    context = f"(CESAR_SYNC_RANDOM2_SEEDS={seed})"
    writers.start()
    try:
        deadline = time.monotonic() + SECONDS
        # Whatever the random seed, each kind of trouble at least once (in an order it draws) while
        # writers write, then more at random until the time is up.
        first = [lambda: runs.finish(runs.start("--full")), lambda: runs.overlap(rng),
                 lambda: runs.pause_past_the_lease(rng), lambda: runs.kill(rng),
                 lambda: runs.truncate(rng.choice(SIDES))]
        rng.shuffle(first)
        for action in first:
            action()
        for _ in range(5):  # the run may have finished before it could be paused
            if runs.stats["paused"]:
                break
            runs.pause_past_the_lease(rng)
        assert runs.stats["paused"], f"no run could be paused {context}"
        while time.monotonic() < deadline:
            runs.one(rng)
            assert writers.error is None, f"{writers.error!r} {context}"
    finally:
        writers.stop.set()
        writers.join(timeout=60)
        runs.close()
    assert writers.error is None, f"{writers.error!r} {context}"

    quiet = 0
    for _ in range(10):
        report = pair.sync(tables=("items",))
        quiet = quiet + 1 if (report.moved, report.deferred, report.failed) == (0, 0, 0) else 0
        if quiet == 2:
            break
    assert quiet == 2, f"runs kept moving rows {context}"

    local, cluster = pair.rows("local", "items"), pair.rows("cluster", "items")
    history = "\n".join(writers.log[-60:])
    assert local == cluster, f"the two servers differ {context}\n{history}"
    for key in keys:
        got: Any = local.get(key)
        state = None if got is None else (got["val"], got["n"])
        assert state == writers.expected.get(key), (
            f"key {key}: last write {writers.expected.get(key)}, got {state} {context}\n{history}")
    assert pair.pending("local") == pair.pending("cluster") == 0
    assert [d.divergent_rows for d in report.divergence if d.table == "items"] == [0]
    print(f"seed {seed}: {writers.count} writes, {runs.stats}")
    assert writers.count >= 10, (writers.count, runs.stats)
