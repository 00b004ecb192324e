"""The live stream sees what the sync applies: a change written on the other database reaches
``/events`` of this one after a sync run, and the sync's own state changes are events too.
Each database keeps its own event log: it is never synced."""

from __future__ import annotations

from pathlib import Path

from tests.api.helpers import make_key, serve_events
from tests.api.sse import SseStream
from tests.sync.helpers import Pair


def test_a_change_on_the_other_database_reaches_the_stream_after_a_sync_run(
        synced: Pair, tmp_path: Path) -> None:
    local = synced.url("local")
    key = make_key(local, "agents:read")
    with serve_events(local, tmp_path) as api, SseStream(api.url, key) as stream:
        with synced.connect("cluster") as conn:
            row = conn.execute("INSERT INTO tasks (title, requested_by) "
                               "VALUES ('written on the cluster', 'operator') "
                               "RETURNING id").fetchone()
            assert row is not None
            task = str(row[0])
            conn.execute("UPDATE tasks SET priority = 1 WHERE id = %s", (task,))
        synced.sync()
        seen: list[tuple[str, str, str]] = []
        wanted = {("tasks", "insert", task), ("sync_state", "update", "tasks/cluster_to_local")}
        while not wanted <= set(seen):
            body = stream.events(1)[0].json
            seen.append((body["table"], body["op"], body["pk"]))
            if body["table"] == "tasks":
                assert body["row"]["title"] == "written on the cluster"
                assert body["row"]["priority"] == 1  # the row as the sync applied it
    # The log is each database's own: the sync neither sends nor applies it.
    assert synced.sql("local", "SELECT count(*) FROM sync_versions "
                               "WHERE table_name LIKE 'event_log%%'")[0][0] == 0
    cluster_pks = {r[0] for r in synced.sql("cluster", "SELECT pk FROM event_log "
                                                       "WHERE table_name = 'tasks'")}
    assert task in cluster_pks  # written there: its own log has it too
