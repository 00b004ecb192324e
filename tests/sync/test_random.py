"""A seeded random history: writers on both sides, transactions held open across runs, runs
interleaved and some killed with SIGKILL. After the writers stop and two runs move nothing,
both sides must hold identical rows, and each key's state must be its last write.

"Last write" is the committed write with the greatest version (the version the capture trigger
gave it, read back inside the writer's own transaction) and, at an equal version, the greater
origin: the order the sync promises. Writes that were rolled back do not count.

Environment: ``CESAR_SYNC_RANDOM_SEED`` (default 20261125), ``CESAR_SYNC_RANDOM_STEPS``
(default 160 writer or sync steps), ``CESAR_SYNC_RANDOM_KEYS`` (default 10 overlapping keys).
The seed is in every failure message: rerun with it to replay the same history.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cesar.sync import run as sync_run
from tests.helpers import make_settings
from tests.sync.helpers import Pair, sync_settings

SEED = int(os.environ.get("CESAR_SYNC_RANDOM_SEED", "20261125"))
STEPS = int(os.environ.get("CESAR_SYNC_RANDOM_STEPS", "160"))
KEYS = int(os.environ.get("CESAR_SYNC_RANDOM_KEYS", "10"))
MAX_OPEN = 3  # open transactions per side at most

SIDES = ("local", "cluster")
#: Only `items` is synced here (fewer catalog reads per run); a lock wait gives up quickly so
#: that a key inserted on both sides at once costs milliseconds; a killed run's lease expires
#: after a second.
SETTINGS = sync_settings(tables=("items",), lock_timeout_ms=100, lease_seconds=1, batch_size=4)


@dataclass
class Write:
    key: str
    version: tuple[Any, str]
    state: tuple[str, int, Any] | None  # (val, n, doc), or None for a delete


@dataclass
class Txn:
    side: str
    conn: psycopg.Connection
    writes: list[Write] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


class History:
    def __init__(self, pair: Pair, rng: random.Random) -> None:
        self.pair = pair
        self.rng = rng
        self.keys = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(KEYS)]
        self.open: list[Txn] = []
        self.committed: list[Write] = []
        self.log: list[str] = []
        self.runs = self.kills = 0
        self.child: multiprocessing.process.BaseProcess | None = None  # a run in the background

    # ---------------------------------------------------------------- writers
    def begin(self, side: str) -> Txn:
        txn = Txn(side, self.pair.connect(side, autocommit=False))
        self.open.append(txn)
        return txn

    def write(self, txn: Txn) -> None:
        busy = {k for t in self.open if t.side == txn.side and t is not txn for k in t.keys}
        free = [k for k in self.keys if k not in busy]
        if not free:
            return
        key = self.rng.choice(free)
        exists = txn.conn.execute("SELECT 1 FROM items WHERE id = %s", [key]).fetchone()
        state: tuple[str, int, Any] | None
        if exists and self.rng.random() < 0.3:
            txn.conn.execute("DELETE FROM items WHERE id = %s", [key])
            state, op = None, "delete"
        else:
            state = (f"{txn.side}-{self.rng.randrange(10**6)}", self.rng.randrange(100),
                     {"step": len(self.log)})
            txn.conn.execute(
                "INSERT INTO items (id, val, n, doc) VALUES (%s, %s, %s, %s) ON CONFLICT (id) "
                "DO UPDATE SET val = excluded.val, n = excluded.n, doc = excluded.doc",
                [key, state[0], state[1], Jsonb(state[2])])
            op = "update" if exists else "insert"
        version = txn.conn.execute("SELECT version, origin FROM sync_versions "
                                   "WHERE table_name = 'items' AND pk = %s", [key]).fetchone()
        assert version is not None
        txn.writes.append(Write(key, (version[0], version[1]), state))
        txn.keys.add(key)
        self.log.append(f"{txn.side} {op} {key[:8]} in txn {id(txn) % 1000}")

    def end(self, txn: Txn, commit: bool) -> None:
        if commit:
            txn.conn.commit()
            self.committed.extend(txn.writes)
        else:
            txn.conn.rollback()
        txn.conn.close()
        self.open.remove(txn)
        self.log.append(f"{txn.side} {'commit' if commit else 'rollback'} txn {id(txn) % 1000}")

    # ---------------------------------------------------------------- runs
    def sync(self) -> sync_run.RunReport:
        self.runs += 1
        report = sync_run.run(make_settings(), SETTINGS, self.pair.options(wait=5))
        assert report.in_progress is None
        self.log.append(f"sync: moved {report.moved}, deferred {report.deferred}")
        return report

    def start_background_sync(self) -> None:
        """A run in a forked process, while the writers go on (it races with them)."""
        if self.child is not None:
            return
        ctx = multiprocessing.get_context("fork")
        self.child = ctx.Process(target=_child_run,
                                 args=(self.pair.local_url, self.pair.cluster_url))
        self.child.start()
        self.runs += 1
        self.log.append("background sync started")

    def kill_one_run(self) -> None:
        """SIGKILL a background run while it is alive (retried if it finished first)."""
        self.stop_background_sync(kill=False)
        for _ in range(10):
            kills = self.kills
            self.start_background_sync()
            time.sleep(self.rng.uniform(0.02, 0.12))
            self.stop_background_sync(kill=True)
            if self.kills > kills:
                return

    def stop_background_sync(self, kill: bool) -> None:
        """Let the background run finish, or SIGKILL it wherever it is."""
        if self.child is None:
            return
        if kill and self.child.is_alive():
            os.kill(self.child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            self.kills += 1
        self.child.join(timeout=60)
        assert self.child.exitcode is not None, "a background sync run hung"
        assert kill or self.child.exitcode == 0, "a background sync run failed (see stderr)"
        self.log.append(f"background sync {'killed' if kill else 'joined'} "
                        f"(exit {self.child.exitcode})")
        self.child = None

    # ---------------------------------------------------------------- one step
    def step(self) -> None:
        r = self.rng.random()
        if r < 0.03:
            self.stop_background_sync(kill=False)
            self.sync()
        elif r < 0.09:
            self.start_background_sync()
        elif r < 0.12:
            self.stop_background_sync(kill=self.rng.random() < 0.6)
        elif r < 0.22 and self.open:
            self.end(self.rng.choice(self.open), commit=self.rng.random() < 0.8)
        else:
            side = self.rng.choice(SIDES)
            mine = [t for t in self.open if t.side == side]
            if not mine or (len(mine) < MAX_OPEN and self.rng.random() < 0.3):
                txn = self.begin(side)
            else:
                txn = self.rng.choice(mine)
            self.write(txn)
            if self.rng.random() < 0.3 and len(txn.writes) == 1:
                self.end(txn, commit=True)  # a short, autocommit-like write

    def expected(self) -> dict[str, tuple[str, int, Any] | None]:
        last: dict[str, Write] = {}
        for w in self.committed:
            if w.key not in last or w.version > last[w.key].version:
                last[w.key] = w
        return {k: w.state for k, w in last.items()}


def _child_run(local_url: str, cluster_url: str) -> None:
    code = 0
    try:
        sync_run.run(make_settings(), SETTINGS,
                     sync_run.Options(local_url=local_url, remote_url=cluster_url, wait=5))
    except BaseException:  # noqa: BLE001 - the exit code tells the parent
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def test_random_histories_converge_to_the_last_write(synced: Pair) -> None:
    rng = random.Random(SEED)
    history = History(synced, rng)
    context = f"(CESAR_SYNC_RANDOM_SEED={SEED} CESAR_SYNC_RANDOM_STEPS={STEPS})"
    for i in range(STEPS):
        history.step()
        time.sleep(history.rng.uniform(0, 0.004))  # let a background run get somewhere
        if i == STEPS // 2:
            history.kill_one_run()  # at least one run dies with SIGKILL, whatever the random seed
    history.stop_background_sync(kill=history.rng.random() < 0.5)
    while history.open:  # the writers stop: everything still open commits or rolls back
        history.end(history.open[0], commit=rng.random() < 0.8)

    quiet = 0
    for _ in range(12):
        report = history.sync()
        quiet = quiet + 1 if (report.moved, report.deferred, report.failed) == (0, 0, 0) else 0
        if quiet == 2:
            break
    assert quiet == 2, f"runs kept moving rows {context}\n" + "\n".join(history.log[-30:])

    local, cluster = synced.rows("local", "items"), synced.rows("cluster", "items")
    assert local == cluster, f"the sides differ {context}"
    expected = history.expected()
    for key in history.keys:
        state = expected.get(key)  # never written and committed: absent
        got = local.get(key)
        got_state = None if got is None else (got["val"], got["n"], got["doc"])
        assert got_state == state, f"key {key}: expected its last write {state}, got " \
                                   f"{got_state} {context}\n" + "\n".join(history.log)
    assert synced.pending("local") == synced.pending("cluster") == 0
    assert history.committed and history.runs >= 5 and history.kills >= 1, context
