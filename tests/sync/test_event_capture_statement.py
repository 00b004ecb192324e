"""The event log's statement-level capture of PostgreSQL (migration 018): one set-based write
per statement, recording row for row the events 016's row trigger recorded, for the
application's writes and for the rows the sync applies."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.sync.helpers import Pair, function_calls, superuser


def _calls(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> int:
    return function_calls(conn, ('event_capture', 'event_capture_statement'), statement, params)


def _events(conn: psycopg.Connection[Any], after: int) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT id, table_name, op, pk, row_image FROM event_log "
                        "WHERE id > %s ORDER BY id", [after]).fetchall()


def _last(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM event_log").fetchone()
    return int(row[0]) if row else 0


def test_a_bulk_statement_logs_every_row_with_one_trigger_call(pair: Pair) -> None:
    ids = sorted(str(uuid.uuid4()) for _ in range(500))
    with superuser(pair) as conn:
        start = _last(conn)
        insert = _calls(conn, "INSERT INTO agents (id, name, mob_alias, role) "
                              "SELECT i, 'n' || i::TEXT, 'alias', 'bulk' "
                              "FROM unnest(%s::uuid[]) AS i ORDER BY i", [ids])
        inserted = _events(conn, start)
        images = {str(r[0]): r[1] for r in conn.execute(
            "SELECT id, to_jsonb(a) FROM agents AS a WHERE role = 'bulk'").fetchall()}
        mark = _last(conn)
        update = _calls(conn, "UPDATE agents SET status = 'paused' WHERE role = 'bulk'")
        updated = _events(conn, mark)
        after_update = {str(r[0]): r[1] for r in conn.execute(
            "SELECT id, to_jsonb(a) FROM agents AS a WHERE role = 'bulk'").fetchall()}
        mark = _last(conn)
        delete = _calls(conn, "DELETE FROM agents WHERE role = 'bulk'")
        deleted = _events(conn, mark)
        nothing = _calls(conn, "UPDATE agents SET status = 'paused' WHERE role = 'none'")
        assert _last(conn) == deleted[-1][0]  # a statement writing nothing logs nothing

    assert (insert, update, delete, nothing) == (1, 1, 1, 1)
    # Row for row what the row trigger logged: one event per row, its key and image.
    assert [(t, op, pk) for _, t, op, pk, _ in inserted] == [("agents", "insert", i) for i in ids]
    assert {pk: img for *_, pk, img in inserted} == images
    assert sorted((t, op, pk) for _, t, op, pk, _ in updated) == [
        ("agents", "update", i) for i in ids]
    assert {pk: img for *_, pk, img in updated} == after_update
    assert all(img["status"] == "paused" for *_, img in updated)
    assert sorted((t, op, pk, img) for _, t, op, pk, img in deleted) == [
        ("agents", "delete", i, None) for i in ids]


def test_rows_the_sync_applies_are_logged_on_the_target(synced: Pair) -> None:
    """The sync's bulk path (and batch path) writes through the same capture: each applied row
    is one event on the target, as before."""
    pair = synced
    with pair.connect("cluster") as conn:
        start = _last(conn)
    ids = [str(uuid.uuid4()) for _ in range(1200)]
    pair.sql("local", "INSERT INTO agents (id, name, mob_alias, role) "
                      "SELECT i, 'n', 'a', 'sync' FROM unnest(%s::uuid[]) AS i", [ids])
    report = pair.sync(bulk_threshold=1000)
    assert sum(t.bulk_applied for t in report.tables) == len(ids)
    with pair.connect("cluster") as conn:
        got = [(t, op, pk) for _, t, op, pk, _ in _events(conn, start) if t == "agents"]
    assert sorted(got) == sorted(("agents", "insert", i) for i in ids)
