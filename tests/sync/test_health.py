"""The sync lag where the operators look: /health, /metrics and `cesar smoke`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.helpers import sample, serve, settings_for
from tests.helpers import CliResult
from tests.sync.helpers import Pair


def test_health_and_metrics_show_the_lag_per_table_and_direction(synced: Pair,
                                                                  tmp_path: Path) -> None:
    synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'a'), "
                        "(gen_random_uuid(), 'b')")
    synced.sync()
    with serve(settings_for(synced.local_url, tmp_path)) as api:
        body = api.get("/health").json()
        sync = body["components"]["sync"]
        assert body["status"] == "ok", body["problems"]
        lags = {(t["table"], t["direction"]): t for t in sync["tables"]}
        assert len(lags) == 20 and sync["lag_limit_seconds"] == 600
        assert all(0 <= t["lag_seconds"] < 60 for t in lags.values())
        assert lags[("items", "local_to_cluster")]["rows_total"] == 2

        text = api.get("/metrics").text
        assert 0 <= sample(text, "cesar_sync_lag_seconds",
                           'direction="cluster_to_local",table="agents"') < 60
        assert sample(text, "cesar_sync_rows_total",
                      'direction="local_to_cluster",table="items"') == 2
        assert sample(text, "cesar_sync_conflicts_total", 'table="items"') == 0
        assert sample(text, "cesar_sync_last_success_timestamp_seconds",
                      'direction="local_to_cluster",table="items"') > 1.7e9

        # The cron job stopped an hour ago: the lag grows and /health says which table.
        synced.sql("local", "UPDATE sync_state SET last_sync_at = now() - INTERVAL '1 hour' "
                            "WHERE table_name = 'tasks' AND direction = 'cluster_to_local'")
        body = api.get("/health").json()
        assert body["status"] == "degraded"
        [problem] = body["problems"]
        assert problem.startswith("sync: tasks cluster_to_local lag 3600 s is over the 600 s")
        assert sample(api.get("/metrics").text, "cesar_sync_lag_seconds",
                      'direction="cluster_to_local",table="tasks"') >= 3600


def test_smoke_checks_the_lag_under_600_s(synced: Pair, cli: Callable[..., CliResult],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("COCKROACH_DB_URL", synced.cluster_url)
    monkeypatch.setenv("CESAR_STATE_DIR", str(tmp_path / "no-embedded-stack"))

    def sync_check() -> dict[str, str]:
        result = cli("smoke", "--json", "--api-url", "http://127.0.0.1:1", "--timeout", "0.5")
        return next(c for c in json.loads(result.out)["checks"] if c["name"] == "sync-lag")

    check = sync_check()
    assert check["status"] == "pass" and "limit 600 s" in check["detail"]
    synced.sql("cluster", "UPDATE sync_state SET last_sync_at = now() - INTERVAL '20 minutes' "
                          "WHERE table_name = 'agents'")
    check = sync_check()
    assert check["status"] == "fail"
    assert check["detail"].startswith("sync: agents ") and "(2 over the limit)" in check["detail"]
