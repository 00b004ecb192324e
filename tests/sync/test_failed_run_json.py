"""``cesar sync run --json`` when the run fails: still one JSON object on stdout, the shape of a
successful run's plus ``ok`` and ``error``, counting what the run committed before it failed;
the one line on stderr and the exit code as without ``--json``. Bad usage prints no report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.helpers import CliResult, child_env
from tests.sync.helpers import SKEW_SECONDS, Pair, bypass, items_report, sleeping, superuser

ROWS, BATCH = 30, 10

#: The top-level fields of a successful run's object before ``ok`` and ``error`` were added:
#: readers rely on every one of them.
FIELDS = {"summary", "dry_run", "full", "first_pairing", "in_progress", "local", "cluster",
          "moved", "conflicts", "failed", "deferred", "seconds", "clock_skew_ms", "divergence",
          "truncate_guarded", "tables", "reconcile"}


def run_json(cli: Callable[..., CliResult], pair: Pair, *args: str,
             cluster: str | None = None) -> CliResult:
    return cli("sync", "run", "--json", "--local-url", pair.local_url,
               "--remote-url", cluster or pair.cluster_url, *args)


def failed_report(r: CliResult) -> dict[str, Any]:
    """The failed run's object, checked against its stderr line: the same words, one line."""
    assert r.code == 1, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cesar: error: "), r.err
    assert "Traceback" not in r.err + r.out
    report = json.loads(r.out)  # exactly one JSON document: anything else fails to parse
    assert isinstance(report, dict)
    assert report["ok"] is False
    assert report["error"] == lines[0].removeprefix("cesar: error: ")
    assert set(report) == FIELDS | {"ok", "error"}
    return report


def table(report: dict[str, Any], name: str, direction: str) -> dict[str, Any]:
    return next(t for t in report["tables"] if t["table"] == name and t["direction"] == direction)


def password(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["password"])


@pytest.mark.parametrize("failure", ["session-killed", "table-refused"])
def test_a_run_that_fails_mid_way_reports_what_it_committed(
        synced: Pair, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch,
        failure: str) -> None:
    """Three batches of ``items`` to the cluster; the third one fails on the target: its
    session is ended (``pg_terminate_backend``, the run stops at once) or a trigger refuses it
    (a table-level error: the run syncs the other tables, then fails). The two committed
    batches are on the target and counted as applied; what the source acknowledged is counted
    as acknowledged; the next run moves the rest and counts nothing twice."""
    monkeypatch.setenv("CESAR_SYNC_BATCH_SIZE", str(BATCH))
    synced.sql("local", "INSERT INTO items (id, val) SELECT gen_random_uuid(), 'x' "
                        "FROM generate_series(1, %s)", [ROWS])
    synced.sql("local", "UPDATE agents SET status = 'paused' WHERE name = 'CESAR'")
    keys = [k for (k,) in synced.sql("local", "SELECT pk FROM sync_versions WHERE "
                                              "table_name = 'items' AND pending ORDER BY pk")]
    third = keys[2 * BATCH]  # batches are read in key order
    fail = ("PERFORM pg_terminate_backend(pg_backend_pid())" if failure == "session-killed"
            else "RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'insufficient_privilege'")
    with superuser(synced, "cluster") as su:
        # SECURITY DEFINER: ending a session is the superuser's right, not the sync's.
        su.execute("CREATE FUNCTION refuse_third() RETURNS trigger LANGUAGE plpgsql "
                   "SECURITY DEFINER AS $$ BEGIN "
                   f"IF NEW.id::TEXT >= '{third}' THEN {fail}; END IF; RETURN NEW; END $$")
        su.execute("CREATE TRIGGER refuse_third BEFORE INSERT ON items "
                   "FOR EACH ROW EXECUTE FUNCTION refuse_third()")

    r = run_json(cli, synced)

    report = failed_report(r)
    on_target = len(synced.rows("cluster", "items"))
    assert on_target == 2 * BATCH  # the third batch rolled back
    items = table(report, "items", "local_to_cluster")
    assert items["applied"] == on_target
    still_pending = synced.sql("local", "SELECT count(*) FROM sync_versions WHERE "
                                        "table_name = 'items' AND pending")[0][0]
    assert items["acknowledged"] == ROWS - still_pending
    assert items["error"] is not None
    assert report["moved"] >= on_target
    assert password(synced.local_url) not in r.out + r.err
    assert password(synced.cluster_url) not in r.out + r.err
    if failure == "session-killed":
        assert report["error"] == ("database error: terminating connection due to "
                                   "administrator command (SQLSTATE 57P01)")
        assert report["summary"].startswith("sync failed after ")
        # Stopped before it measured the backlog: unknown, not zero.
        assert items["pending_after"] is None
    else:
        assert report["error"].startswith("the sync of items (local_to_cluster) failed: "
                                          "refused for the test")
        assert items["pending_after"] == ROWS - on_target
        # The other tables were synced, and the state saved counts the same rows.
        assert table(report, "agents", "local_to_cluster")["applied"] == 1
        assert synced.sql("cluster", "SELECT rows_last_run FROM sync_state WHERE "
                                     "table_name = 'items' AND direction = 'local_to_cluster'"
                          ) == [(on_target,)]

    with superuser(synced, "cluster") as su:
        su.execute("DROP TRIGGER refuse_third ON items")
        # A run whose session was ended cannot release its lease: it would expire by itself.
        su.execute("DELETE FROM sync_lease")
    again = run_json(cli, synced)
    assert again.code == 0, again.err
    done = json.loads(again.out)
    assert done["ok"] is True and done["error"] is None
    assert table(done, "items", "local_to_cluster")["applied"] == ROWS - on_target
    synced.assert_identical()


def test_a_split_batch_whose_second_half_ends_the_session_counts_its_first_half(
        synced: Pair, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch of ten; a row of its second half is refused (a check violation), so the batch
    is split to find it: the first half commits, then the second half's session is ended. The
    first half is on the target and counted as applied."""
    monkeypatch.setenv("CESAR_SYNC_BATCH_SIZE", str(BATCH))
    synced.sql("local", "INSERT INTO items (id, val) SELECT gen_random_uuid(), 'x' "
                        "FROM generate_series(1, %s)", [BATCH])
    keys = [k for (k,) in synced.sql("local", "SELECT pk FROM sync_versions WHERE "
                                              "table_name = 'items' AND pending ORDER BY pk")]
    bad = keys[BATCH // 2 + 2]  # in the second half
    with superuser(synced, "cluster") as su:
        su.execute("CREATE SEQUENCE bad_row_tries")
        su.execute("CREATE FUNCTION bad_row() RETURNS trigger LANGUAGE plpgsql "
                   "SECURITY DEFINER AS $$ BEGIN "
                   f"IF NEW.id::TEXT = '{bad}' THEN "
                   "IF nextval('bad_row_tries') = 1 THEN RAISE EXCEPTION 'bad row for the test' "
                   "USING ERRCODE = 'check_violation'; END IF; "
                   "PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NEW; END $$")
        su.execute("CREATE TRIGGER bad_row BEFORE INSERT ON items "
                   "FOR EACH ROW EXECUTE FUNCTION bad_row()")

    r = run_json(cli, synced)

    report = failed_report(r)
    assert report["error"] == ("database error: terminating connection due to administrator "
                               "command (SQLSTATE 57P01)")
    on_target = len(synced.rows("cluster", "items"))
    assert on_target == BATCH // 2  # the first half committed, the second rolled back
    assert table(report, "items", "local_to_cluster")["applied"] == on_target
    assert report["moved"] >= on_target

    with superuser(synced, "cluster") as su:
        su.execute("DROP TRIGGER bad_row ON items")
        su.execute("DELETE FROM sync_lease")  # its session was ended: it could not release it
    again = run_json(cli, synced)
    assert again.code == 0, again.err
    assert table(json.loads(again.out), "items", "local_to_cluster")["applied"] == BATCH - on_target
    synced.assert_identical()


def hold_lease(pair: Pair, seconds: float) -> None:
    pair.sql("cluster", "INSERT INTO sync_lease (id, holder, host, pid, expires_at) VALUES "
                        "(1, 'elsewhere:4242:feedbeef', 'elsewhere', 4242, "
                        "now() + %s * INTERVAL '1 second')", [seconds])


def test_a_run_that_finds_the_lease_held(synced: Pair, cli: Callable[..., CliResult]) -> None:
    """Without --wait another run in progress is not a failure (exit 0, ``ok`` true, the
    holder in ``in_progress``); with --wait it fails when the wait ends (exit 1, ``ok`` false,
    the same holder)."""
    synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'waiting')")
    hold_lease(synced, 60)

    r = run_json(cli, synced)
    assert r.code == 0 and r.err == "", r
    report = json.loads(r.out)
    assert report["ok"] is True and report["error"] is None
    assert report["in_progress"]["holder"] == "elsewhere:4242:feedbeef"

    r = run_json(cli, synced, "--wait", "0.5")
    report = failed_report(r)
    assert report["error"].startswith("another sync run still holds the lease after 0.5 s")
    assert report["in_progress"]["holder"] == "elsewhere:4242:feedbeef"
    assert report["tables"] == [] and report["moved"] == 0
    assert synced.pending("local") == 1  # nothing moved


def stop_when(proc: subprocess.Popen[str], ready: Callable[[], object], sig: int, *,
              settle: float = 0.0) -> tuple[str, str]:
    """Send ``sig`` to ``proc`` once ``ready()`` is true (within 60 s) and ``settle`` seconds
    later; what it printed on stdout and stderr."""
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(settle)
        proc.send_signal(sig)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def signalled_report(proc: subprocess.Popen[str], out: str, err: str, code: int,
                     message: str) -> dict[str, Any]:
    """The report of a run a signal stopped: ``message`` on both streams, exit ``code``."""
    assert proc.returncode == code, (out, err)
    assert err.strip().splitlines()[-1] == f"cesar: error: {message}", err
    report = json.loads(out)
    assert report["ok"] is False and report["error"] == message, report
    assert "Traceback" not in out + err
    return dict(report)


def test_a_run_interrupted_while_it_waits_says_so_on_both_streams(synced: Pair) -> None:
    """Ctrl-C (a real SIGINT) while the run waits for another's lease: the report says
    ``interrupted``, the stderr line says the same, and the exit code is the shell's for SIGINT
    (130), as docs/sync.md says."""
    hold_lease(synced, 60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cesar.cli", "sync", "run", "--json", "--wait", "30",
         "--local-url", synced.local_url, "--remote-url", synced.cluster_url],
        env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Waiting: it has read the lease at least once (its session is on the cluster).
    out, err = stop_when(proc, lambda: synced.sql(
        "cluster", "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'cesar-sync%%'"),
        signal.SIGINT, settle=0.5)
    signalled_report(proc, out, err, 130, "interrupted")


@pytest.mark.parametrize("path", ["batch", "bulk"])
def test_a_run_ended_by_sigterm_mid_apply_releases_its_lease_and_says_so(synced: Pair,
                                                                         path: str) -> None:
    """SIGTERM (the cron wrapper's ``timeout``) while the run's apply is blocked on the target:
    the query is cancelled, the batch or chunk rolls back, the lease is released (the next run
    starts at once, not when it expires), and the run says so on both streams, exit 143. On
    the bulk path the first chunk of 1,000 has committed (and its acknowledgement, running
    beside the stalled second chunk, finishes): the report counts it, and only the rest is
    left pending."""
    rows, first = (2500, 1000) if path == "bulk" else (ROWS, 0)  # first: before it stalls
    ids = [r[0] for r in synced.sql("local", "INSERT INTO items (id, val) SELECT "
                                             "gen_random_uuid(), 'late' FROM generate_series(1, "
                                             "%s) RETURNING id::TEXT", [rows])]
    before = int(synced.sql("cluster", "SELECT count(*) FROM items")[0][0])
    with superuser(synced, "cluster") as su:
        su.execute("CREATE FUNCTION stall() RETURNS TRIGGER LANGUAGE plpgsql AS $$ BEGIN "
                   f"IF (SELECT count(*) FROM items) > {before + first} THEN "
                   "PERFORM pg_sleep(60); END IF; RETURN NULL; END $$")
        su.execute("CREATE TRIGGER stall AFTER INSERT ON items FOR EACH STATEMENT "
                   "EXECUTE FUNCTION stall()")
    bulk = ({"CESAR_SYNC_BULK_THRESHOLD": "1000", "CESAR_SYNC_BULK_CHUNK": "1000"}
            if path == "bulk" else {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "cesar.cli", "sync", "run", "--json",
         "--local-url", synced.local_url, "--remote-url", synced.cluster_url],
        env={**child_env(), "CESAR_SYNC_TABLES": "items", "CESAR_SYNC_LEASE_SECONDS": "300",
             **bulk}, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stalled() -> int:
        return sleeping(synced, "cluster")

    out, err = stop_when(proc, stalled, signal.SIGTERM)
    report = signalled_report(proc, out, err, 143, "terminated (SIGTERM)")
    assert stalled() == 0  # cancelled, not left running
    assert synced.sql("cluster", "SELECT count(*) FROM sync_lease")[0][0] == 0
    moved = table(report, "items", "local_to_cluster")
    assert moved["applied"] == moved["acknowledged"] == first, moved
    assert synced.pending("local") == rows - first
    assert int(synced.sql("cluster", "SELECT count(*) FROM items")[0][0]) == before + first

    with superuser(synced, "cluster") as su:
        su.execute("DROP TRIGGER stall ON items")
    again = synced.sync()  # fails if the lease were still held (its helper says so)
    assert items_report(again).applied == rows - first
    synced.assert_identical()
    assert set(ids) <= set(synced.rows("cluster", "items"))


def test_a_run_that_cannot_reach_a_database_and_bad_usage(
        synced: Pair, cli: Callable[..., CliResult]) -> None:
    """An unreachable cluster is a failed run (exit 1): a report naming both sides, masked.
    Bad usage or configuration (exit 2) is not a run: nothing on stdout."""
    dead = "postgresql://cesar_app_a:secret@127.0.0.1:1/nowhere?sslmode=disable"
    r = run_json(cli, synced, cluster=dead)
    report = failed_report(r)
    assert report["error"].startswith("cannot connect to the cluster database")
    assert report["cluster"] == "postgresql://cesar_app_a:***@127.0.0.1:1/nowhere?sslmode=disable"
    assert report["local"] and password(synced.local_url) not in r.out
    assert "secret" not in r.out + r.err
    assert report["tables"] == [] and report["moved"] == 0

    r = run_json(cli, synced, "--wait", "-1")
    assert (r.code, r.out) == (2, ""), r
    r = run_json(cli, synced, cluster=synced.local_url)  # the same database twice
    assert r.code == 2 and r.out == "" and "lead to the same database" in r.err


def test_a_successful_run_says_ok(synced: Pair, cli: Callable[..., CliResult]) -> None:
    synced.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'a')")
    r = run_json(cli, synced)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert set(report) == FIELDS | {"ok", "error"}
    assert report["ok"] is True and report["error"] is None
    assert report["moved"] == 1 and report["summary"].startswith("sync done in ")


def test_a_full_run_that_fails_in_its_reconcile_reports_the_tables_repaired(
        synced: Pair, cli: Callable[..., CliResult]) -> None:
    """``--full`` repairs ``agents`` (a row changed behind the capture), then its session is
    ended while it repairs ``items``: the report still has the agents repair it committed."""
    bypass(synced, "cluster", ("UPDATE agents SET role = 'drifted' WHERE name = 'CESAR'", []))
    bypass(synced, "local", ("INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'x')", []))
    with superuser(synced, "cluster") as su:
        su.execute("CREATE FUNCTION end_session() RETURNS trigger LANGUAGE plpgsql "
                   "SECURITY DEFINER AS $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); "
                   "RETURN NEW; END $$")
        su.execute("CREATE TRIGGER end_session BEFORE INSERT ON items "
                   "FOR EACH ROW EXECUTE FUNCTION end_session()")

    r = run_json(cli, synced, "--full")

    report = failed_report(r)
    assert report["full"] is True and "57P01" in report["error"]
    repaired = {x["table"]: x["repaired_local"] + x["repaired_cluster"]
                for x in report["reconcile"]}
    assert repaired.get("agents") == 1 and "items" not in repaired
    assert report["moved"] == 1
    roles = {side: synced.sql(side, "SELECT role FROM agents WHERE name = 'CESAR'")
             for side in ("local", "cluster")}
    assert roles["local"] == roles["cluster"]  # the repair committed
    assert synced.rows("cluster", "items") == {}


def test_a_run_refused_for_its_clocks(skewed_pair: Pair, cli: Callable[..., CliResult],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's server is SKEW_SECONDS ahead, past a bound of 1 s: a failed run (it is
    recorded in sync_state too), with the skew it measured."""
    monkeypatch.setenv("CESAR_SYNC_MAX_CLOCK_SKEW_MS", "1000")
    skewed_pair.sql("local", "INSERT INTO items (id, val) VALUES (gen_random_uuid(), 'x')")

    report = failed_report(run_json(cli, skewed_pair))

    assert "CESAR_SYNC_MAX_CLOCK_SKEW_MS=1000" in report["error"]
    assert abs(report["clock_skew_ms"] / 1000 - SKEW_SECONDS) < 1
    assert report["tables"] == [] and report["moved"] == 0
    assert skewed_pair.rows("cluster", "items") == {}
