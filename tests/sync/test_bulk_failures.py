"""The bulk path (cesar/sync/bulk.py) when it fails part-way: a table-level error on a later
chunk leaves the earlier, committed chunks counted in the run's report and its saved state; a
chunk that cannot be kept in its temporary file hands the table's backlog to the batch path in
the same run, which succeeds."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cesar.errors import OperationFailed
from cesar.sync import bulk
from cesar.sync.run import ANALYZE_AFTER_ROWS
from tests.helpers import CliResult, require
from tests.sync.helpers import BULK, ROWS, Pair, fill, items_report, superuser, versions

CHUNK = BULK["bulk_chunk"]


def chunk_starts(pair: Pair) -> list[str]:
    """The first key of each chunk the bulk path will read from the local side (its order)."""
    keys = [k for (k,) in pair.sql(
        "local", "SELECT pk FROM sync_versions WHERE table_name = 'items' AND pending "
                 "AND NOT deleted ORDER BY pk")]
    assert len(keys) == ROWS
    return keys[::CHUNK]


def items_state(pair: Pair, side: str) -> tuple[int, int, object]:
    rows = pair.sql(side, "SELECT rows_last_run, rows_total, position FROM sync_state "
                          "WHERE table_name = 'items' AND direction = 'local_to_cluster'")
    return rows[0] if rows else (0, 0, None)


def manual_analyzes(pair: Pair, side: str) -> int:
    return int(pair.sql(side, "SELECT analyze_count FROM pg_stat_user_tables "
                              "WHERE relname = 'sync_versions'")[0][0])


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A filesystem of ``size`` at ``path`` (a tmpfs): writes past it fail with ENOSPC."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs",
                              str(path)], capture_output=True, text=True)
    require(mounted.returncode == 0, f"mounting a tmpfs (root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_a_table_error_on_a_later_chunk_keeps_the_committed_chunks_counted(synced: Pair
                                                                           ) -> None:
    """The target refuses every row from the second chunk on (a trigger raising a privilege
    error: not a row's error, so the table fails): the first chunk is committed, and the run's
    saved report (sync_state, which `sync status` and the metrics read) counts exactly it."""
    fill(synced)
    second = chunk_starts(synced)[1]
    with superuser(synced, "cluster") as su:
        su.execute(
            "CREATE FUNCTION refuse_late_keys() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.id::TEXT >= '{second}' THEN RAISE EXCEPTION 'refused for the test' "
            "USING ERRCODE = 'insufficient_privilege'; END IF; RETURN NEW; END $$")
        su.execute("CREATE TRIGGER refuse_late_keys BEFORE INSERT OR UPDATE ON items "
                   "FOR EACH ROW EXECUTE FUNCTION refuse_late_keys()")
    before = {side: items_state(synced, side) for side in ("local", "cluster")}
    on_target = len(synced.rows("cluster", "items"))
    analyzed = manual_analyzes(synced, "local")

    with pytest.raises(OperationFailed, match="sync of items"):
        synced.sync(**BULK)

    landed = len(synced.rows("cluster", "items")) - on_target
    assert landed == CHUNK  # the first chunk committed, the second rolled back
    newest = synced.sql("cluster", "SELECT max(version) FROM sync_versions WHERE "
                                   "table_name = 'items' AND pk < %s", [second])[0][0]
    for side in ("local", "cluster"):
        rows_last_run, rows_total, position = items_state(synced, side)
        assert rows_last_run == landed, side
        assert rows_total - before[side][1] == landed, side
        assert position == newest, side
    assert synced.pending("local") == ROWS - CHUNK  # the first chunk was acknowledged
    # ... and counted: the run ANALYZEs the source's version rows after as many
    # acknowledgements (run.ANALYZE_AFTER_ROWS), which it reads from its report.
    assert CHUNK >= ANALYZE_AFTER_ROWS
    assert manual_analyzes(synced, "local") == analyzed + 1

    with superuser(synced, "cluster") as su:
        su.execute("DROP TRIGGER refuse_late_keys ON items")
    report = synced.sync(**BULK)
    assert items_report(report).applied == ROWS - CHUNK  # nothing counted twice
    for side in ("local", "cluster"):
        assert items_state(synced, side)[1] - before[side][1] == ROWS, side
    synced.assert_identical()
    assert versions(synced, "cluster") == versions(synced, "local")
    assert synced.pending("local") == synced.pending("cluster") == 0


@pytest.mark.parametrize("failing", ["first", "read-ahead", "disk-full"])
def test_a_chunk_that_cannot_be_spooled_leaves_the_table_to_the_batch_path(
        synced: Pair, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, tmp_path: Path, failing: str) -> None:
    """The read-ahead spool rolls over into a temporary file that cannot be written: its
    directory is gone (at the first chunk, nothing moved in bulk yet, or at the second, read
    ahead while the first is applied), or its filesystem fills up while the second chunk is
    written to it. The run exits 0 with every row on the target, one warning names the cause
    and the fix, and what the bulk path committed before is counted once."""
    fill(synced)
    if failing != "first":
        # The first chunk's bytes (~150 KB) stay in memory; the next chunks' rows are larger
        # (~2 MB a chunk) than the spool's memory and roll over into the file.
        second = chunk_starts(synced)[1]
        synced.sql("local", "UPDATE items SET doc = jsonb_build_object('pad', repeat('x', 2000)) "
                            "WHERE id::TEXT >= %s", [second])
    monkeypatch.setattr(bulk, "SPOOL_BYTES", 1024 if failing == "first" else 1024 * 1024)
    with contextlib.ExitStack() as stack:
        if failing == "disk-full":
            spool_dir = stack.enter_context(small_filesystem(tmp_path / "small", "256k"))
            cause = "No space left on device"
        else:
            spool_dir, cause = tmp_path / "gone", "No such file or directory"
        monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))
        monkeypatch.setenv("CESAR_SYNC_BULK_THRESHOLD", str(BULK["bulk_threshold"]))
        monkeypatch.setenv("CESAR_SYNC_BULK_CHUNK", str(CHUNK))
        caplog.set_level(logging.WARNING, logger="cesar.sync.bulk")

        r = cli("sync", "run", "--json", "--local-url", synced.local_url,
                "--remote-url", synced.cluster_url)

        if failing == "disk-full":
            # The spool's file was closed with its chunk: the space is free again.
            fs = os.statvfs(spool_dir)
            assert fs.f_bfree == fs.f_blocks
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    tr = next(t for t in r.json()["tables"]
              if t["table"] == "items" and t["direction"] == "local_to_cluster")
    assert tr["applied"] == ROWS and tr["error"] is None
    assert tr["bulk_applied"] == (0 if failing == "first" else CHUNK)
    warnings = [rec.getMessage() for rec in caplog.records
                if rec.name == "cesar.sync.bulk" and rec.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "items" in warnings[0] and cause in warnings[0] and str(spool_dir) in warnings[0]
    assert "TMPDIR" in warnings[0] and "free space" in warnings[0] and "\n" not in warnings[0]
    synced.assert_identical()
    assert versions(synced, "cluster") == versions(synced, "local")
    assert synced.pending("local") == synced.pending("cluster") == 0
