"""``--full`` while the application writes: a write committed between the reconcile's reads.

The reconcile reads a range's rows, then the versions of the keys that differ. Here an
application write to one of those keys commits exactly between the two reads (the version read
is wrapped so that the write lands first: deterministic, no timing). The reconcile must not copy
the image it read before that write under the version of that write; the next run moves the
write, and both sides end with it.
"""

from __future__ import annotations

import uuid

import pytest

from cesar.sync import reconcile
from tests.sync.helpers import Pair, bypass


def test_a_write_between_the_reconcile_s_reads_is_not_stamped_on_an_old_image(
        synced: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    key = str(uuid.uuid4())
    synced.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'A')", [key])
    synced.sync()
    # Drift the capture never saw: the cluster's image differs, with the same version.
    bypass(synced, "cluster", ("UPDATE items SET val = 'B' WHERE id = %s", [key]))

    real = reconcile.read_versions
    written: list[bool] = []

    def write_then_read(conn, spec, keys):  # type: ignore[no-untyped-def]
        if not written:  # the application's write commits between the two reads
            written.append(True)
            synced.sql("local", "UPDATE items SET val = 'C' WHERE id = %s", [key])
        return real(conn, spec, keys)

    monkeypatch.setattr(reconcile, "read_versions", write_then_read)
    synced.sync(full=True)
    monkeypatch.undo()
    assert written

    synced.sync()  # the write is pending on the local side: this run moves it

    for side in ("local", "cluster"):
        assert synced.sql(side, "SELECT val FROM items WHERE id = %s", [key]) == [("C",)], side
    synced.assert_identical()
    assert synced.pending("local") == synced.pending("cluster") == 0


def test_a_key_deferred_by_the_reconcile_is_not_reported_as_divergence(
        synced: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``--full`` under load defers keys written meanwhile; they move on the next run and
    must not raise the divergence alarm."""
    key = str(uuid.uuid4())
    synced.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'A')", [key])
    synced.sync()
    bypass(synced, "cluster", ("UPDATE items SET val = 'B' WHERE id = %s", [key]))

    real = reconcile.read_versions
    written: list[bool] = []

    def write_then_read(conn, spec, keys):  # type: ignore[no-untyped-def]
        # A writer at each of the reconcile's reads of the key (a run that deferred a key goes
        # over its table once more): the key is deferred by both passes.
        if key in keys:
            written.append(True)
            synced.sql("local", "UPDATE items SET val = %s WHERE id = %s",
                       [f"C{len(written)}", key])
        return real(conn, spec, keys)

    monkeypatch.setattr(reconcile, "read_versions", write_then_read)
    report = synced.sync(full=True)
    monkeypatch.undo()

    deferred = [r.deferred for r in report.reconcile if r.table == "items"]
    assert deferred == [1], report.reconcile
    assert [d.divergent_rows for d in report.divergence if d.table == "items"] == [0], \
        report.divergence
