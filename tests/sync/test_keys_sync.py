"""API keys travel with the two-way sync: a key made on one side opens the API of the other after
a run, and a revocation made after the other side's last edit wins, even while the other side's
API keeps recording uses of the key (those are not edits the sync carries)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from cesar import keys
from cesar.api.settings import AuthSettings
from tests.api.helpers import serve, settings_for
from tests.sync.helpers import Pair

#: The documented bound on a revocation reaching the API (docs/api.md).
BOUND = 5.0


def create(pair: Pair, side: str, *scopes: str) -> str:
    with psycopg.connect(pair.url(side), autocommit=True) as conn:
        return keys.create(conn, f"made-on-{side}", list(scopes), actor="tests").key


def revoke(pair: Pair, side: str, key: str) -> None:
    with psycopg.connect(pair.url(side), autocommit=True) as conn:
        keys.revoke(conn, keys.prefix_of(key), actor="tests")


def until_refused(get: object, key: str) -> float:
    started = time.monotonic()
    while get("/agents", key=key).status_code != 401:  # type: ignore[operator]
        assert time.monotonic() - started < BOUND, "the key still works after the bound"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_key_made_on_one_side_works_on_the_other_after_a_run(synced: Pair,
                                                               tmp_path: Path) -> None:
    on_cluster = create(synced, "cluster", "agents:read")
    with serve(settings_for(synced.local_url, tmp_path)) as api:  # the API serves local
        assert api.get("/agents", key=on_cluster).status_code == 401  # not there yet
        synced.sync()
        time.sleep(AuthSettings(_env_file=None).key_cache_seconds)  # type: ignore[call-arg]
        assert api.get("/agents", key=on_cluster).status_code == 200
    audit = synced.sql("local", "SELECT action FROM audit_log WHERE detail->>'prefix' = %s",
                       (keys.prefix_of(on_cluster),))
    assert audit == [("api_key.create",)]  # the audit row travelled with it


def test_a_later_revocation_on_the_other_side_wins_despite_uses(synced: Pair,
                                                                tmp_path: Path) -> None:
    key = create(synced, "local", "agents:read")
    synced.sync()
    fast = AuthSettings(_env_file=None, usage_flush_seconds=0.1)  # type: ignore[call-arg]
    with serve(settings_for(synced.local_url, tmp_path), fast) as api:
        assert api.get("/agents", key=key).status_code == 200
        # An edit on local (renamed), then the revocation on the cluster, later.
        synced.sql("local", "UPDATE api_keys SET name = 'renamed', updated_at = now() "
                            "WHERE key_prefix = %s", (keys.prefix_of(key),))
        revoke(synced, "cluster", key)
        # The local API does not know yet: it serves the key and records its uses.
        for _ in range(5):
            assert api.get("/agents", key=key).status_code == 200
            time.sleep(0.1)
        time.sleep(0.3)  # the uses are written (api_key_usage)
        used = synced.sql("local", "SELECT count(*) FROM api_key_usage")[0][0]
        assert used >= 1
        synced.sync()
        took = until_refused(api.get, key)
    for side in ("local", "cluster"):
        row = synced.sql(side, "SELECT name, revoked_at IS NOT NULL FROM api_keys "
                               "WHERE key_prefix = %s", (keys.prefix_of(key),))
        # The later version (the cluster's revocation) won whole: the rename before it lost.
        assert row == [("made-on-local", True)], (side, row)
    print(f"refused on local {took:.2f} s after the run carried the revocation")
