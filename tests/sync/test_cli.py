"""``cesar sync run|status``: the contract cron and the checks rely on, and every refusal."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.helpers import CliResult
from tests.sync.helpers import Pair


def sync_run(cli: Callable[..., CliResult], pair: Pair, *args: str,
             local: str | None = None, cluster: str | None = None) -> CliResult:
    return cli("sync", "run", "--local-url", local or pair.local_url,
               "--remote-url", cluster or pair.cluster_url, *args)


def test_run_json_then_status_json(pair: Pair, cli: Callable[..., CliResult]) -> None:
    first = sync_run(cli, pair, "--json")
    assert first.code == 0, first.err
    assert json.loads(first.out)["first_pairing"] is True
    pair.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'a')")
    pair.sql("cluster", "DELETE FROM agents WHERE name = 'Onyx'")

    result = sync_run(cli, pair, "--json")

    report = json.loads(result.out)
    assert result.code == 0 and report["moved"] == 2 and report["first_pairing"] is False
    moved = {(t["table"], t["direction"]): t["applied"] for t in report["tables"] if t["applied"]}
    assert moved == {("items", "local_to_cluster"): 1, ("agents", "cluster_to_local"): 1}

    status = cli("sync", "status", "--json", "--local-url", pair.local_url,
                 "--remote-url", pair.cluster_url)
    info = json.loads(status.out)
    assert status.code == 0 and info["paired"] is True and info["lease"] is None
    rows = {(r["table_name"], r["direction"]): r for r in info["tables"]}
    assert len(rows) == 2 * 10  # every synced table, both directions
    assert rows[("items", "local_to_cluster")]["rows_total"] == 1
    assert all(0 <= r["lag_seconds"] < 60 and r["pending"] == 0 for r in rows.values())
    assert info["max_lag_seconds"] < 60


def test_status_shows_pending_rows_and_their_lag(synced: Pair,
                                                 cli: Callable[..., CliResult]) -> None:
    synced.sql("cluster", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'waiting')")
    with synced.connect("cluster", autocommit=False) as held:  # held: the run must defer it
        held.execute("UPDATE agents SET status = 'paused' WHERE name = 'CESAR'")
        synced.sql("local", "UPDATE agents SET status = 'retired' WHERE name = 'CESAR'")
        synced.sync()
        held.rollback()
    text = cli("sync", "status", "--local-url", synced.local_url,
               "--remote-url", synced.cluster_url)
    assert text.code == 0
    line = next(x for x in text.out.splitlines() if x.startswith("agents ")
                and "local_to_cluster" in x)
    assert line.split()[-3] == "1"  # one row still pending: the deferred one
    assert "pair     paired" in text.out


# ------------------------------------------------------------------------- refusals (exit 2)
def test_bad_usage_and_bad_urls(pair: Pair, cli: Callable[..., CliResult]) -> None:
    r = sync_run(cli, pair, "--wait", "-1")
    assert (r.code, r.err.strip()) == (2, "cesar: error: --wait must be 0 or more seconds")
    r = sync_run(cli, pair, local="mysql://nobody@localhost/x")
    assert r.code == 2 and r.err.startswith("cesar: error: --local-url") and len(
        r.err.strip().splitlines()) == 1


def test_an_unreachable_database_fails_with_one_line(pair: Pair,
                                                     cli: Callable[..., CliResult]) -> None:
    dead = "postgresql://cesar_app_a:secret@127.0.0.1:1/nowhere?sslmode=disable"
    r = sync_run(cli, pair, cluster=dead)
    assert r.code == 1
    assert r.err.startswith("cesar: error: cannot connect to the cluster database "
                            "postgresql://cesar_app_a:***@127.0.0.1:1/nowhere")
    assert "secret" not in r.err


def test_the_sides_connect_together_yet_fail_in_order(pair: Pair,
                                                      cli: Callable[..., CliResult]) -> None:
    """Both sides are opened at the same time: with both unreachable the error still names
    the local side (the first), and a cluster connection opened while the local one failed is
    closed, not left behind."""
    dead = "postgresql://cesar_app_a:secret@127.0.0.1:1/nowhere?sslmode=disable"
    r = sync_run(cli, pair, local=dead, cluster=dead.replace("nowhere", "elsewhere"))
    assert r.code == 1
    assert r.err.startswith("cesar: error: cannot connect to the local database "
                            "postgresql://cesar_app_a:***@127.0.0.1:1/nowhere"), r.err
    r = sync_run(cli, pair, local=dead)
    assert r.code == 1 and "cannot connect to the local database" in r.err, r.err
    # A backend ends a moment after its client closed: wait for that, not for a leak.
    deadline = time.monotonic() + 10
    while (left := pair.sql("cluster", "SELECT count(*) FROM pg_stat_activity WHERE "
                            "application_name = 'cesar-sync' AND datname = current_database()")
           ) != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [(0,)], left


def test_a_database_without_the_sync_tables(pair: Pair, fresh_db: str,
                                            cli: Callable[..., CliResult]) -> None:
    r = sync_run(cli, pair, cluster=fresh_db)
    assert r.code == 2 and "has no sync tables; run `cesar migrate up` on it" in r.err


def test_the_same_database_twice(pair: Pair, cli: Callable[..., CliResult]) -> None:
    r = sync_run(cli, pair, cluster=pair.local_url)
    assert r.code == 2 and "lead to the same database" in r.err


def test_swapped_urls_after_pairing(synced: Pair, cli: Callable[..., CliResult]) -> None:
    r = sync_run(cli, synced, local=synced.cluster_url, cluster=synced.local_url)
    assert r.code == 2 and "the URLs look swapped" in r.err


def test_a_third_database_is_refused_until_full_repairs_the_pair(
        synced: Pair, make_pair: Callable[[], Pair], cli: Callable[..., CliResult]) -> None:
    newcomer = make_pair().local_url  # a fresh cluster replacing the old one
    synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'a')")
    r = sync_run(cli, synced, cluster=newcomer)
    assert r.code == 2 and "paired with another database" in r.err
    assert "cesar sync run --full" in r.err
    r = sync_run(cli, synced, "--full", cluster=newcomer)
    assert r.code == 0, r.err
    assert Pair(synced.pg, synced.local_url, newcomer).rows("cluster", "items") == synced.rows(
        "local", "items")


@pytest.mark.parametrize("break_it, message", [
    (("cluster", "DROP TABLE named_items"),
     "synced table 'named_items' does not exist in the cluster database"),
    (("local", "ALTER TABLE items DISABLE TRIGGER sync_capture"),
     "the capture trigger on 'items' is disabled in the local database"),
    (("cluster", "DROP TRIGGER sync_capture ON items"),
     "the capture trigger on 'items' is missing in the cluster database"),
    (("local", "ALTER TABLE items ADD COLUMN extra TEXT"),
     "synced table 'items' differs between the local database and the cluster (extra text)"),
])
def test_a_misconfigured_table_stops_the_run_before_anything_moves(
        synced: Pair, cli: Callable[..., CliResult], break_it: tuple[str, str],
        message: str) -> None:
    synced.sql("local", "INSERT INTO agents (id, name, mob_alias, role) "
                        "VALUES (gen_random_uuid(), 'Zed', 'Z', 'test')")
    synced.sql(*break_it)
    r = sync_run(cli, synced)
    assert r.code == 2 and message in r.err, r.err
    assert synced.pending("local") == 1  # nothing moved, not even the healthy agents table


def test_a_table_that_fails_does_not_hold_back_the_others(
        synced: Pair, cli: Callable[..., CliResult]) -> None:
    synced.sql("cluster", "CREATE FUNCTION refuse() RETURNS TRIGGER AS $$ BEGIN "
                          "RAISE EXCEPTION 'items are read-only here'; END; $$ LANGUAGE plpgsql")
    synced.sql("cluster", "CREATE TRIGGER refuse BEFORE INSERT ON items FOR EACH ROW "
                          "EXECUTE FUNCTION refuse()")
    synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'refused')")
    synced.sql("local", "UPDATE agents SET status = 'paused' WHERE name = 'CESAR'")
    r = sync_run(cli, synced)
    assert r.code == 1
    assert r.err.startswith("cesar: error: the sync of items (local_to_cluster) failed: "
                            "items are read-only here; the other tables were synced")
    assert synced.sql("cluster", "SELECT status FROM agents WHERE name = 'CESAR'") == [
        ("paused",)]
    assert synced.sql("cluster", "SELECT last_error FROM sync_state WHERE table_name = 'items' "
                                 "AND direction = 'local_to_cluster'") == [
        ("items are read-only here",)]
    assert synced.pending("local") == 1  # kept for the next run


def test_parents_must_come_first(synced: Pair, cli: Callable[..., CliResult]) -> None:
    r = sync_run(cli, synced, "--tables", "task_assignments,tasks,agents")
    assert r.code == 2
    assert "lists 'task_assignments' before 'agents', which it references" in r.err


def test_unknown_table(synced: Pair, cli: Callable[..., CliResult]) -> None:
    r = sync_run(cli, synced, "--tables", "agents,nonsense")
    assert r.code == 2 and "synced table 'nonsense' does not exist" in r.err


def test_status_when_one_side_is_down(synced: Pair, cli: Callable[..., CliResult]) -> None:
    dead = "postgresql://cesar_app_a:x@127.0.0.1:1/nowhere?sslmode=disable"
    r = cli("sync", "status", "--json", "--local-url", synced.local_url, "--remote-url", dead)
    info = json.loads(r.out)
    assert r.code == 0 and info["cluster"]["reachable"] is False
    assert len(info["tables"]) == 20  # read from the local side instead



@pytest.mark.parametrize("command", [("sync", "run"), ("up",)])
def test_urls_from_variables_are_named_by_their_variables(
        synced: Pair, make_pair: Callable[[], Pair], cli: Callable[..., CliResult],
        monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
        command: tuple[str, ...]) -> None:
    """A refusal names what the operator set, the variables, and no flag they never typed:
    through `cesar sync run` and through the sync pass of `invoke up` (`cesar up`), which
    migrates both databases first and then hands the same endpoints to the sync."""
    monkeypatch.setenv("CESAR_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("LOCAL_DB_URL", synced.cluster_url)
    monkeypatch.setenv("COCKROACH_DB_URL", synced.local_url)
    r = cli(*command)
    assert r.code == 2, r
    assert ("the URLs look swapped (LOCAL_DB_URL is the local PostgreSQL, COCKROACH_DB_URL "
            "the cluster)") in r.err, r.err
    assert "--local-url" not in r.err and "--remote-url" not in r.err

    alone = make_pair().local_url
    monkeypatch.setenv("LOCAL_DB_URL", alone)
    monkeypatch.setenv("COCKROACH_DB_URL", alone)
    r = cli(*command)
    assert r.code == 2, r
    assert "LOCAL_DB_URL and COCKROACH_DB_URL lead to the same database" in r.err, r.err
