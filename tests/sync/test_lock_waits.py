"""Bounded lock waits: a key held by an open transaction on the target costs one wait per run,
and a run's lock waiting stays within its budget; everything else in the batch still moves.

The waits are counted on the server (``pg_stat_activity``: the sync's transactions waiting for
a lock, each seen for at least WAITED seconds), not timed by the test.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg

from tests.sync.helpers import Pair

WAITED = 0.2  # a wait seen this long was a real lock wait (lock_timeout 500 ms), not a 1 ms try


class WaitCounter(threading.Thread):
    """Polls the cluster side for the sync's transactions that wait for a lock."""

    def __init__(self, pair: Pair) -> None:
        super().__init__(daemon=True)
        self.pair = pair
        self.dbname = pair.cluster_url.rsplit("/", 1)[1].split("?")[0]
        self.seen: dict[tuple[int, object], list[float]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        with self.pair.pg.superuser() as conn:  # other logins' sessions are visible to it
            while not self.done.is_set():
                now = time.monotonic()
                for pid, started in conn.execute(
                        "SELECT pid, xact_start FROM pg_stat_activity WHERE datname = %s AND "
                        "application_name = 'cesar-sync' AND wait_event_type = 'Lock'",
                        [self.dbname]).fetchall():
                    span = self.seen.setdefault((pid, started), [now, now])
                    span[1] = now
                time.sleep(0.02)

    def long_waits(self) -> int:
        self.done.set()
        self.join()
        return sum(1 for first, last in self.seen.values() if last - first >= WAITED)


def held_key_case(pair: Pair, **settings: object) -> tuple[int, object]:
    """511 new keys on the local side; one of them held on the cluster by an open INSERT.
    Returns the number of long lock waits of the run, and its report."""
    keys = sorted(str(uuid.uuid4()) for _ in range(511))
    pair.sql("local", "INSERT INTO items (id, val) SELECT k, 'v' FROM unnest(%s::uuid[]) AS k",
             [keys])
    held = keys[200]
    with psycopg.connect(pair.cluster_url) as holder:  # an application's open transaction
        holder.execute("INSERT INTO items (id, val) VALUES (%s, 'held')", [held])
        counter = WaitCounter(pair)
        counter.start()
        report = pair.sync(lock_timeout_ms=500, tables=("items",), **settings)
        waits = counter.long_waits()
        holder.rollback()
    assert report.moved == 510 and report.deferred == 1
    assert held not in pair.rows("cluster", "items")
    pair.sync(tables=("items",))  # released: the deferred key moves
    pair.assert_identical(("items",))
    return waits, report


def test_a_held_key_among_511_costs_one_wait_not_one_per_bisection_level(synced: Pair) -> None:
    waits, _ = held_key_case(synced)
    assert waits == 1


def test_a_spent_lock_wait_budget_defers_without_waiting(synced: Pair) -> None:
    waits, _ = held_key_case(synced, lock_wait_budget_ms=0)
    assert waits == 0
