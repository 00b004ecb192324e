"""``--full``: differences the capture never saw are found by range digests and repaired."""

from __future__ import annotations

import uuid

from tests.sync.helpers import Pair, bypass


def items_report(report):  # type: ignore[no-untyped-def]
    return next(r for r in report.reconcile if r.table == "items")


def fill(pair: Pair, n: int) -> list[str]:
    keys = sorted(str(uuid.uuid4()) for _ in range(n))
    pair.sql("local", "INSERT INTO items (id, val) SELECT k, 'v' FROM unnest(%s::uuid[]) AS k",
             [keys])
    pair.sync()
    return keys


def test_drift_is_found_and_repaired(synced: Pair) -> None:
    keys = fill(synced, 200)
    extra = str(uuid.uuid4())
    bypass(synced, "cluster",
           ("UPDATE items SET val = 'changed behind the sync' WHERE id = ANY(%s::uuid[])",
            [keys[10:12]]),
           ("DELETE FROM items WHERE id = %s", [keys[50]]),
           ("INSERT INTO items (id, val) VALUES (%s, 'inserted behind the sync')", [extra]))
    bypass(synced, "local", ("UPDATE items SET n = 99 WHERE id = %s", [keys[150]]))

    assert synced.sync().moved == 0  # the incremental pass cannot see any of it

    report = synced.sync(full=True)
    r = items_report(report)
    # Two different images: the cluster's wins. A row on one side only (no tombstone says it
    # was deleted) is copied: the extra row to local, the silently deleted one back to the cluster.
    assert (r.keys_differing, r.repaired_local, r.repaired_cluster) == (5, 4, 1)
    synced.assert_identical()
    assert synced.sql("local", "SELECT val FROM items WHERE id = %s", [keys[10]]) == [
        ("changed behind the sync",)]
    assert synced.sql("cluster", "SELECT count(*) FROM items WHERE id = %s", [keys[50]]) == [(1,)]
    repaired = [c for c in synced.conflicts("local") if c["resolution"] == "repaired"]
    # Every overwritten local image is kept; the row that local lacked overwrote nothing.
    assert sorted(c["pk"] for c in repaired) == sorted([*keys[10:12], keys[150]])
    assert items_report(synced.sync(full=True)).ranges_differing == 0


def test_a_change_whose_pending_flag_was_lost_is_moved_by_the_newer_version(synced: Pair) -> None:
    keys = fill(synced, 10)
    synced.sql("local", "UPDATE items SET val = 'newer' WHERE id = %s", [keys[3]])
    synced.sql("local", "UPDATE sync_versions SET pending = false WHERE pk = %s", [keys[3]])
    assert synced.sync().moved == 0
    report = synced.sync(full=True)
    assert items_report(report).repaired_cluster == 1  # local's version is newer: it wins
    assert synced.sql("cluster", "SELECT val FROM items WHERE id = %s", [keys[3]]) == [("newer",)]


def test_ranges_bound_what_is_fetched(synced: Pair) -> None:
    keys = fill(synced, 1000)
    bypass(synced, "cluster",
           ("UPDATE items SET val = 'x' WHERE id = ANY(%s::uuid[])", [[keys[100], keys[101],
                                                                     keys[700]]]))
    r = items_report(synced.sync(full=True, range_size=50))
    assert r.ranges >= 20  # 1000 rows, 50 per range
    assert r.ranges_differing == 2 and r.keys_differing == 3
    assert r.rows_compared <= 2 * 2 * 50  # only the two differing ranges, from both sides
    synced.assert_identical()


def test_rows_older_than_the_capture_are_copied_range_by_range(synced: Pair) -> None:
    keys = [str(uuid.uuid4()) for _ in range(300)]
    bypass(synced, "local", ("INSERT INTO items (id, val) SELECT k, 'old' "
                             "FROM unnest(%s::uuid[]) AS k", [keys]))
    r = items_report(synced.sync(full=True, range_size=50))
    assert r.repaired_cluster == 300 and r.ranges >= 6
    assert synced.conflicts("cluster") == []  # nothing was overwritten
    synced.assert_identical()


def test_the_first_run_of_a_pair_reconciles_everything(pair: Pair) -> None:
    # The same 24 seeded agents on both sides, but created at different moments (as on two
    # databases seeded one after the other): no versions anywhere, so the cluster's copy wins.
    bypass(pair, "local", ("UPDATE agents SET created_at = created_at - INTERVAL '1 minute'", []))
    report = pair.sync()
    assert report.first_pairing and report.full
    agents = next(r for r in report.reconcile if r.table == "agents")
    assert agents.repaired_local == 24
    pair.assert_identical(("agents",))
    assert len(pair.conflicts("local")) == 24  # every overwritten image is kept
    assert pair.sync().full is False  # later runs are incremental


def test_a_dry_full_run_reports_and_changes_nothing(synced: Pair) -> None:
    keys = fill(synced, 20)
    bypass(synced, "cluster", ("DELETE FROM items WHERE id = %s", [keys[5]]))
    r = items_report(synced.sync(full=True, dry_run=True))
    assert r.keys_differing == 1 and r.repaired_cluster == 1  # would restore it there
    assert len(synced.rows("cluster", "items")) == 19
    assert synced.conflicts("cluster") == []
