"""Clocks: two PostgreSQL servers, the cluster's clock SKEW_SECONDS ahead (libfaketime).

- a run refuses to move anything when the clocks are further apart than
  CESAR_SYNC_MAX_CLOCK_SKEW_MS (last writer wins compares the two servers' timestamps);
- lag and last_sync_at come from each database's own clock (what its sync_lag view compares
  them with), not from the sync host's.

(Within the bound, "of two writes to one key further apart than the skew, the later wins" is
what test_random_two_servers.py checks.)
"""

from __future__ import annotations

import pytest

from cesar.errors import OperationFailed
from tests.sync.helpers import SKEW_SECONDS, Pair


def test_a_run_refuses_when_the_clocks_differ_by_more_than_the_bound(skewed_pair: Pair) -> None:
    skewed_pair.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'x')")

    with pytest.raises(OperationFailed, match=r"clocks .* differ by 3\.\d s \(the cluster is "
                                              r"ahead\).*CESAR_SYNC_MAX_CLOCK_SKEW_MS=1000"):
        skewed_pair.sync(max_clock_skew_ms=1000)

    assert skewed_pair.rows("cluster", "items") == {}  # nothing moved
    assert skewed_pair.sql("local", "SELECT peer FROM sync_node") == [(None,)]


def test_lag_and_last_sync_at_come_from_each_database_s_clock(skewed_pair: Pair) -> None:
    report = skewed_pair.sync()
    for side in ("local", "cluster"):
        rows = skewed_pair.sql(side, "SELECT min(lag_seconds), max(lag_seconds), "
                                     "max(EXTRACT(EPOCH FROM now() - last_sync_at)) FROM sync_lag")
        low, high, age = (float(x) for x in rows[0])
        # Just synced: by that database's own clock, the lag is about zero (a host clock
        # would make it SKEW_SECONDS on the cluster side, or negative on the other).
        assert -0.5 < low <= high < 2 and -0.5 < age < 2, (side, rows)
    assert abs(report.as_dict()["clock_skew_ms"] / 1000 - SKEW_SECONDS) < 1  # reported


def test_a_clock_refusal_is_recorded_for_status_and_health(skewed_pair: Pair) -> None:
    from cesar.sync import health as sync_health

    with pytest.raises(OperationFailed):
        skewed_pair.sync(max_clock_skew_ms=1000)

    for side in ("local", "cluster"):
        errors = skewed_pair.sql(side, "SELECT DISTINCT last_error FROM sync_state "
                                       "WHERE table_name = 'items'")
        assert len(errors) == 1 and "CESAR_SYNC_MAX_CLOCK_SKEW_MS=1000" in errors[0][0], errors
    with skewed_pair.connect("local") as conn:
        problems = sync_health.problems(sync_health.probe(conn))
    assert any("items" in p and "the last run failed" in p and "clocks" in p
               for p in problems), problems

    skewed_pair.sync()  # within the default bound: the error is cleared
    assert skewed_pair.sql("local", "SELECT DISTINCT last_error FROM sync_state "
                                    "WHERE table_name = 'items'") == [(None,)]


def test_a_refusal_while_another_run_holds_the_lease_leaves_its_figures(
        skewed_pair: Pair) -> None:
    """A second operator's run refused for the clocks (it never takes the lease) does not
    write its refusal over the state of the run that holds the lease."""
    from cesar.sync import lease

    skewed_pair.sync()  # paired; sync_state written, no error
    query = "SELECT DISTINCT last_error FROM sync_state WHERE table_name = 'items'"
    with skewed_pair.connect("cluster") as conn:
        held = lease.SyncLease.acquire(conn, lambda: skewed_pair.connect("cluster"),
                                       seconds=60, wait=0)
        try:
            with pytest.raises(OperationFailed, match="clocks"):
                skewed_pair.sync(max_clock_skew_ms=1000)
            for side in ("local", "cluster"):
                assert skewed_pair.sql(side, query) == [(None,)], side
        finally:
            held.release()
    with pytest.raises(OperationFailed, match="clocks"):  # no run under way: recorded
        skewed_pair.sync(max_clock_skew_ms=1000)
    assert "CESAR_SYNC_MAX_CLOCK_SKEW_MS=1000" in skewed_pair.sql("local", query)[0][0]
