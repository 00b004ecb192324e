"""Divergence is never silent: TRUNCATE of a synced table is refused on PostgreSQL, and rows
removed behind the capture (a TRUNCATE done deliberately, a restore) are reported by the next
run, `cesar sync status`, /health and /metrics, until a `--full` repairs them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.api.helpers import sample, serve, settings_for
from tests.helpers import CliResult
from tests.sync.helpers import Pair


@pytest.mark.parametrize("side", ["local", "cluster"])
def test_truncate_of_a_synced_table_is_refused_with_one_line_naming_delete(
        synced: Pair, side: str) -> None:
    synced.sql(side, "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'kept')")
    with pytest.raises(psycopg.Error) as err:
        synced.sql(side, "TRUNCATE items")
    message = err.value.diag.message_primary or ""  # the error's one line (psql: "ERROR: ...")
    assert "\n" not in message and "use DELETE FROM items" in message, message
    assert len(synced.rows(side, "items")) == 1


def test_rows_removed_behind_the_capture_are_reported_until_a_full_run(
        synced: Pair, cli: Callable[..., CliResult], tmp_path: Path) -> None:
    synced.sql("local", "INSERT INTO items (id, val) SELECT gen_random_uuid(), 'v' || g "
                        "FROM generate_series(1, 5) AS g")
    synced.sync()
    with synced.connect("local") as conn:  # deliberate: what a restore, or CockroachDB, does
        conn.execute("SELECT set_config('cesar.sync_apply', 'on', false)")
        conn.execute("TRUNCATE items")

    report = synced.sync()  # nothing is pending: the incremental pass moves nothing

    status = cli("sync", "status", "--json", "--local-url", synced.local_url,
                 "--remote-url", synced.cluster_url)
    found = {d["table"]: d for d in json.loads(status.out).get("divergence") or []}
    assert found["items"]["divergent_rows"] == 5 and found["items"]["method"] == "count"
    assert found["items"]["local_rows"] == 0 and found["items"]["cluster_rows"] == 5
    assert report.moved == 0 and "the sides DIFFER: items by 5 rows" in report.summary()
    text = cli("sync", "status", "--local-url", synced.local_url,
               "--remote-url", synced.cluster_url).out
    assert "DIVERGED items: the two sides differ by 5 rows" in text
    with serve(settings_for(synced.local_url, tmp_path)) as api:
        body = api.get("/health").json()
        assert body["status"] == "degraded"
        assert any(p.startswith("sync: items: the two sides differ by 5 rows")
                   for p in body["problems"]), body["problems"]
        assert sample(api.get("/metrics").text, "cesar_sync_divergent_rows",
                      'table="items"') == 5

        report = synced.sync(full=True)

        assert [d.divergent_rows for d in report.divergence if d.table == "items"] == [0]
        assert sample(api.get("/metrics").text, "cesar_sync_divergent_rows",
                      'table="items"') == 0
        assert api.get("/health").json()["status"] == "ok"
    synced.assert_identical()  # the rows came back: nothing said they were deleted


def _guard(pair: Pair, side: str) -> list[tuple[str, ...]]:
    return pair.sql(side, "SELECT t.tgenabled FROM pg_trigger t JOIN pg_class c "
                          "ON c.oid = t.tgrelid WHERE t.tgname = 'sync_refuse_truncate' "
                          "AND c.relname = 'items'")


def test_a_held_table_lock_defers_the_truncate_guard_and_the_run_goes_on(synced: Pair) -> None:
    """The guard's DDL queues behind an application's open transaction for at most a second
    (queued, it would block that table's writes): the run warns, moves its changes, and the
    next run adds the guard."""
    synced.sql("local", "DROP TRIGGER sync_refuse_truncate ON items")
    key = str(uuid.uuid4())
    synced.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'moved')", [key])
    with synced.connect("local", autocommit=False) as app:
        # The application's transaction: a write, still open (ROW EXCLUSIVE on items).
        app.execute("INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'open')")
        report = synced.sync(statement_timeout_ms=20_000)
        assert _guard(synced, "local") == []
        assert synced.sql("cluster", "SELECT val FROM items WHERE id = %s", [key]) == [
            ("moved",)]
        app.rollback()
    report = synced.sync()
    assert "items" in report.truncate_guarded
    assert _guard(synced, "local") == [("O",)]


def test_a_disabled_truncate_guard_is_enabled_again(synced: Pair) -> None:
    synced.sql("local", "ALTER TABLE items DISABLE TRIGGER sync_refuse_truncate")
    synced.sync()
    assert _guard(synced, "local") == [("O",)]
    with pytest.raises(psycopg.Error, match="use DELETE FROM items"):
        synced.sql("local", "TRUNCATE items")


def test_rows_removed_behind_the_capture_of_a_busy_table_are_reported(synced: Pair) -> None:
    """The table stays busy (a key pending on the cluster is held by an open transaction on the
    local side, so the run defers it): the cross-side count cannot run, and the per-side check
    (live versions whose row is gone, in one snapshot) still reports the rows removed."""
    synced.sql("local", "INSERT INTO items (id, val) SELECT gen_random_uuid(), 'v' || g "
                        "FROM generate_series(1, 5) AS g")
    synced.sync()
    synced.sql("cluster", "INSERT INTO items (id, val) SELECT gen_random_uuid(), 'w' || g "
                          "FROM generate_series(1, 2) AS g")
    synced.sync()
    report = synced.sync()
    assert [d.divergent_rows for d in report.divergence if d.table == "items"] == [0]
    with synced.connect("local") as conn:  # rows deleted with the capture disabled
        conn.execute("SELECT set_config('cesar.sync_apply', 'on', false)")
        conn.execute("DELETE FROM items WHERE id IN (SELECT id FROM items LIMIT 3)")
    key = str(uuid.uuid4())
    synced.sql("cluster", "INSERT INTO items (id, val) VALUES (%s, 'busy')", [key])
    with synced.connect("local", autocommit=False) as app:
        app.execute("INSERT INTO items (id, val) VALUES (%s, 'open')", [key])  # holds the key
        report = synced.sync(lock_timeout_ms=200)
        app.rollback()
    assert synced.pending("cluster") >= 1  # busy: the held key is still to move
    found = [d for d in report.divergence if d.table == "items"]
    assert [d.divergent_rows for d in found] == [3], report.divergence
