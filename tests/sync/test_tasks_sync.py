"""Idempotent task creation across the two-way sync: the same request (API key and
Idempotency-Key) made on the local database and on the cluster is one task after a run, and the
task state machine's guard (migration 015) lets the sync apply the other side's later version."""

from __future__ import annotations

from pathlib import Path

import psycopg

from cesar import keys
from tests.api.helpers import call, serve, settings_for
from tests.sync.helpers import Pair


def test_one_task_for_one_key_across_a_sync(synced: Pair, tmp_path: Path) -> None:
    with psycopg.connect(synced.local_url, autocommit=True) as conn:
        key = keys.create(conn, "both-sides", ["agents:read", "tasks:write"],
                          actor="tests").key
    synced.sync()  # the key reaches the cluster
    body = {"title": "made twice, kept once", "priority": 2, "payload": {"n": 1}}
    headers = {"Idempotency-Key": "order-4711"}
    with serve(settings_for(synced.local_url, tmp_path / "l")) as local, \
            serve(settings_for(synced.cluster_url, tmp_path / "c")) as cluster:
        on_local = call(local.url, key, "POST", "/tasks", json=body, headers=headers)
        on_cluster = call(cluster.url, key, "POST", "/tasks", json=body, headers=headers)
        assert on_local.status_code == on_cluster.status_code == 201
        assert on_local.json()["id"] == on_cluster.json()["id"]
        synced.sync()
        for api in (local, cluster):  # after the run, a retry on either side replays it
            again = call(api.url, key, "POST", "/tasks", json=body, headers=headers)
            assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["id"] == on_local.json()["id"]
        # A transition made on one side reaches the other through the guard: cancelled on the
        # cluster, then queued -> cancelled is applied on local by the sync.
        task_id = on_local.json()["id"]
        assert call(cluster.url, key, "POST", f"/tasks/{task_id}/cancel").status_code == 200
    synced.sync()
    for side in ("local", "cluster"):
        assert synced.sql(side, "SELECT count(*) FROM tasks WHERE title = %s",
                          (body["title"],)) == [(1,)]
        assert synced.sql(side, "SELECT status FROM tasks WHERE id = %s",
                          (task_id,)) == [("cancelled",)]
    synced.assert_identical(("tasks", "audit_log", "api_keys"))
