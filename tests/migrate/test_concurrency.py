"""The lease: concurrent runners, takeover only after expiry, heartbeat, SIGKILL and recovery.

Every runner here is a separate `cesar migrate` process against one real PostgreSQL database.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cesar import migrate
from tests.helpers import PgStack, query, schema_dump
from tests.migrate.helpers import events, file_count, finish, sleeping_in_migration, wait_until

Spawn = Callable[..., subprocess.Popen[str]]

COUNTER = """\
CREATE TABLE IF NOT EXISTS applied_count (id UUID PRIMARY KEY);

INSERT INTO applied_count (id) VALUES (gen_random_uuid());
"""

# Sleeps only while the test keeps the kill_switch table: the run after the kill is fast.
SLOW = """\
CREATE TABLE IF NOT EXISTS slow_marker (id UUID PRIMARY KEY);

INSERT INTO slow_marker (id) VALUES (gen_random_uuid());

SELECT pg_sleep(CASE WHEN to_regclass('kill_switch') IS NULL THEN 0 ELSE 60 END);

CREATE INDEX IF NOT EXISTS slow_marker_idx ON slow_marker (id);
"""


def lease_row(url: str) -> list[tuple]:
    return query(url, "SELECT holder, expires_at > now() FROM schema_migration_lease")


def _add(migrations: Path, name: str, up: str, down: str = "SELECT 1;\n") -> None:
    (migrations / f"{name}.up.sql").write_text(up)
    (migrations / f"{name}.down.sql").write_text(down)


# ------------------------------------------------------------------ exactly once
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_six_concurrent_runners_apply_each_migration_exactly_once(
    fresh_db: str, migrations: Path, spawn: Spawn, mode: str
) -> None:
    _add(migrations, "900_counter", COUNTER)
    # 901 waits on a table the test keeps locked until a runner has been seen waiting for the
    # lease: the runners overlap however slowly they start.
    query(fresh_db, "CREATE TABLE overlap_gate (x INT)")
    _add(migrations, "901_pause", "SELECT count(*) FROM overlap_gate;\n")
    with psycopg.connect(fresh_db) as gate:
        gate.execute("LOCK TABLE overlap_gate IN ACCESS EXCLUSIVE MODE")
        procs = [spawn("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--mode",
                       mode, "--lease-seconds", "5", "--wait-seconds", "120")
                 for _ in range(6)]
        outs: list[list[str]] = [[] for _ in procs]
        errs: list[list[str]] = [[] for _ in procs]
        readers = [threading.Thread(target=lambda s=s, o=o: o.extend(s), daemon=True)
                   for p, o, e in zip(procs, outs, errs, strict=True)
                   for s, o in ((p.stdout, o), (p.stderr, e))]
        for reader in readers:
            reader.start()
        wait_until(lambda: any("waiting for the migration lease" in line
                               for o in outs for line in list(o)),
                   timeout=60, what="a runner waiting for the lease")
        gate.rollback()
    for reader in readers:
        reader.join(timeout=120)
    results = [(p.wait(timeout=30), "".join(o), "".join(e))
               for p, o, e in zip(procs, outs, errs, strict=True)]
    n = file_count() + 2
    for code, out, err in results:
        assert code == 0, err
        assert out.strip().splitlines()[-1] == f"{n}/{n} applied, 0 pending"
    applies = Counter(m for m, e in events(fresh_db) if e == "apply")
    assert applies == Counter(migrate.migration_names(migrations))
    assert set(applies.values()) == {1}
    assert query(fresh_db, "SELECT count(*) FROM applied_count") == [(1,)]
    assert query(fresh_db, "SELECT count(*) FROM agents") == [(24,)]
    assert lease_row(fresh_db) == []  # released by whoever held it last
    waited = sum("waiting for the migration lease" in out for _, out, _ in results)
    assert waited >= 1, "the runners did not overlap: this run tested nothing"


# ------------------------------------------------------------------ takeover rules
def _hold_lease(url: str, holder: str, seconds: float) -> None:
    query(url, "INSERT INTO schema_migration_lease (id, holder, actor, host, pid, command, "
               "expires_at) VALUES (1, %s, 'someone', 'elsewhere', 4242, 'migrate up', "
               "now() + make_interval(secs => %s))", [holder, seconds])


def test_no_takeover_before_expiry(fresh_db: str, migrations: Path, runner_for, cli) -> None:
    runner_for(fresh_db).up()  # creates the runner's tables
    _add(migrations, "900_counter", COUNTER)
    _hold_lease(fresh_db, "elsewhere:4242:live", 60)
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                 "--wait-seconds", "1")
    assert result.code == 1
    assert "still held by elsewhere:4242:live" in result.err
    assert "waiting for the migration lease held by elsewhere:4242:live" in result.out
    assert query(fresh_db, "SELECT to_regclass('applied_count')") == [(None,)]
    assert lease_row(fresh_db) == [("elsewhere:4242:live", True)]
    assert events(fresh_db, "lease-takeover") == []


def test_takeover_after_expiry_is_recorded(fresh_db: str, migrations: Path, runner_for,
                                           cli) -> None:
    runner_for(fresh_db).up()
    _add(migrations, "900_counter", COUNTER)
    _hold_lease(fresh_db, "elsewhere:4242:dead", -1)
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                 "--wait-seconds", "0")
    assert result.code == 0, result.err
    assert query(fresh_db, "SELECT count(*) FROM applied_count") == [(1,)]
    takeovers = query(fresh_db, "SELECT detail->'previous'->>'holder' FROM "
                                "schema_migration_events WHERE event = 'lease-takeover'")
    assert takeovers == [("elsewhere:4242:dead",)]
    assert lease_row(fresh_db) == []


def test_a_runner_waits_for_a_lease_to_expire_then_proceeds(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    runner_for(fresh_db).up()
    _add(migrations, "900_counter", COUNTER)
    _hold_lease(fresh_db, "elsewhere:4242:dying", 2)
    result = cli("up", "--url", fresh_db, "--migrations-dir", str(migrations),
                 "--wait-seconds", "30")
    assert result.code == 0, result.err
    assert "waiting for the migration lease held by elsewhere:4242:dying" in result.out
    assert len(events(fresh_db, "lease-takeover")) == 1


def test_lock_status_and_break(fresh_db: str, migrations: Path, runner_for, cli) -> None:
    args = ("--url", fresh_db, "--migrations-dir", str(migrations))
    assert cli("lock", "status", *args).out.strip() == "lease: free"
    runner_for(fresh_db).up()
    _hold_lease(fresh_db, "elsewhere:4242:live", 60)

    status = cli("lock", "status", *args, "--json").json()
    assert status["held"] is True and status["lease"]["holder"] == "elsewhere:4242:live"
    assert 0 < status["lease"]["seconds_left"] <= 60

    refused = cli("lock", "break", *args)
    assert refused.code == 1 and "--force --reason" in refused.err
    no_reason = cli("lock", "break", *args, "--force")
    assert no_reason.code == 2 and "needs --reason" in no_reason.err
    assert lease_row(fresh_db) == [("elsewhere:4242:live", True)]

    broken = cli("lock", "break", *args, "--force", "--reason", "host decommissioned")
    assert broken.code == 0, broken.err
    assert lease_row(fresh_db) == []
    assert query(fresh_db, "SELECT reason, (detail->>'forced')::boolean FROM "
                           "schema_migration_events WHERE event = 'lock-broken'") == [
        ("host decommissioned", True)]

    _hold_lease(fresh_db, "elsewhere:4242:dead", -5)
    expired = cli("lock", "break", *args)
    assert expired.code == 0 and "broke the lease of elsewhere:4242:dead" in expired.out
    assert cli("lock", "break", *args).out.strip() == "no lease is held"


# ------------------------------------------------------------------ heartbeat
@pytest.mark.slow
def test_heartbeat_keeps_a_long_migration_s_lease_from_being_taken_over(
    fresh_db: str, migrations: Path, runner_for, spawn: Spawn
) -> None:
    runner_for(fresh_db).up()
    # The migration waits on a table the test keeps locked until the second runner has been
    # seen waiting and several leases of 1.5 s have passed: only the heartbeat keeps it held,
    # however slowly either runner starts.
    query(fresh_db, "CREATE TABLE heartbeat_gate (x INT)")
    _add(migrations, "900_long", "SELECT count(*) FROM heartbeat_gate;\n")
    args = ("up", "--url", fresh_db, "--migrations-dir", str(migrations),
            "--lease-seconds", "1.5")
    with psycopg.connect(fresh_db) as gate:
        gate.execute("LOCK TABLE heartbeat_gate IN ACCESS EXCLUSIVE MODE")
        first = spawn(*args)
        wait_until(lambda: bool(lease_row(fresh_db)), what="the first runner's lease")
        held_since = time.monotonic()
        holder = lease_row(fresh_db)[0][0]
        second = spawn(*args, "--wait-seconds", "60")
        seen = []
        assert second.stdout is not None
        for line in second.stdout:
            seen.append(line)
            if "waiting for the migration lease" in line:
                break
        time.sleep(max(0.0, 5 - (time.monotonic() - held_since)))
        gate.rollback()
    code1, _, err1 = finish(first)
    code2, out2, err2 = finish(second)
    out2 = "".join(seen) + out2
    assert code1 == 0, err1
    assert code2 == 0, err2
    assert "waiting for the migration lease held by " + holder in out2
    assert events(fresh_db, "lease-takeover") == []
    assert [m for m, _ in events(fresh_db, "apply")].count("900_long") == 1


# ------------------------------------------------------------------ SIGKILL and recovery


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_sigkill_mid_migration_then_the_next_run_recovers_within_the_lease(
    fresh_db: str, migrations: Path, runner_for, spawn: Spawn, mode: str, pg_stack: PgStack
) -> None:
    runner_for(fresh_db).up()
    _add(migrations, "900_slow", SLOW, "DROP TABLE IF EXISTS slow_marker;\n")
    query(fresh_db, "CREATE TABLE kill_switch (armed BOOLEAN)")
    args = ("up", "--url", fresh_db, "--migrations-dir", str(migrations), "--mode", mode,
            "--lease-seconds", "3")
    victim = spawn(*args)
    wait_until(lambda: sleeping_in_migration(pg_stack, fresh_db),
               what="the runner inside 900_slow")
    holder = lease_row(fresh_db)[0][0]
    assert f":{victim.pid}:" in holder
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    query(fresh_db, "DROP TABLE kill_switch")

    row = query(fresh_db, "SELECT status, statements_done FROM schema_migrations "
                          "WHERE name = '900_slow'")
    if mode == "per-statement":
        assert row == [("running", 2)]  # statements 1-2 recorded, 3 interrupted
    else:
        assert row == []  # its transaction never committed: no trace but the lease
    assert lease_row(fresh_db)[0][0] == holder

    code, out, err = finish(spawn(*args, "--wait-seconds", "30"))
    assert code == 0, err
    if mode == "per-statement":
        assert "resuming at statement 3 after an interrupted run" in out
    assert query(fresh_db, "SELECT count(*) FROM slow_marker") == [(1,)]  # the INSERT ran once
    assert query(fresh_db, "SELECT status FROM schema_migrations WHERE name = '900_slow'") == [
        ("succeeded",)]
    takeovers = query(fresh_db, "SELECT detail->'previous'->>'holder' FROM "
                                "schema_migration_events WHERE event = 'lease-takeover'")
    assert takeovers == [(holder,)]
    assert lease_row(fresh_db) == []


def _applied_so_far(url: str) -> int:
    try:
        return len(events(url, "apply"))
    except psycopg.errors.UndefinedTable:
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_sigkill_at_any_point_of_a_full_run_is_recovered_by_the_next_run(
    pg_stack: PgStack, migrations: Path, runner_for, spawn: Spawn, mode: str
) -> None:
    reference = pg_stack.create_database()
    runner_for(reference).up()
    expected = schema_dump(pg_stack, reference)
    names = migrate.migration_names(migrations)
    rng = random.Random(20240611)
    points = [0, len(names) // 4, len(names) // 2, 3 * len(names) // 4, len(names) - 1]
    killed_mid_run = attempts = 0
    # Kill once the run has applied k migrations, plus a random few milliseconds: the kill
    # lands somewhere inside migration k+1 (a statement, a progress record, a commit). On a
    # fast machine a kill can land after the run ended; such an attempt still checks the re-run
    # but does not count, and the points are tried again (earlier ones first) until three
    # kills have landed inside a run.
    while killed_mid_run < 3 and attempts < 4 * len(points):
        k = points[attempts % len(points)] if attempts < len(points) else \
            rng.choice(points[:3])
        attempts += 1
        url = pg_stack.create_database()
        args = ("up", "--url", url, "--migrations-dir", str(migrations), "--mode", mode,
                "--lease-seconds", "1")
        victim = spawn(*args)
        wait_until(lambda url=url, k=k, v=victim: _applied_so_far(url) >= k
                   or v.poll() is not None, what=f"{k} migrations applied", interval=0.005)
        if attempts <= len(points):
            time.sleep(rng.uniform(0, 0.03))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        at_kill = _applied_so_far(url)
        killed_mid_run += 0 <= at_kill < len(names)
        code, _, err = finish(spawn(*args, "--wait-seconds", "30"))
        assert code == 0, f"after a kill with {at_kill} applied: {err}"
        assert schema_dump(pg_stack, url) == expected, f"after a kill with {at_kill} applied"
        assert query(url, "SELECT count(*) FROM agents") == [(24,)]
        applies = Counter(m for m, e in events(url) if e == "apply")
        assert applies == Counter(names), f"after a kill with {at_kill} applied"
    # Kills must land inside runs, or this test would not test recovery.
    assert killed_mid_run >= 3, f"only {killed_mid_run} of {attempts} kills landed mid-run"


IN_DOUBT = """\
CREATE TABLE IF NOT EXISTS indoubt (id UUID PRIMARY KEY, n INT);

ALTER TABLE indoubt ADD CONSTRAINT indoubt_n_positive CHECK (n > 0);

CREATE INDEX IF NOT EXISTS indoubt_n_idx ON indoubt (n);
"""


@pytest.mark.slow
def test_a_statement_that_committed_after_its_runner_was_killed_is_not_run_twice(
    fresh_db: str, migrations: Path, runner_for, spawn: Spawn, pg_stack: PgStack
) -> None:
    """The per-statement window between a DDL statement and its progress record.

    The runner is killed while its ALTER waits for a lock we hold; we then release the lock,
    the orphaned server session commits the ALTER, and nobody records it. The next run must
    see that statement 2 already took effect (ADD CONSTRAINT has no IF NOT EXISTS)."""
    runner_for(fresh_db).up()
    _add(migrations, "900_indoubt", IN_DOUBT, "DROP TABLE IF EXISTS indoubt;\n")
    query(fresh_db, "CREATE TABLE indoubt (id UUID PRIMARY KEY, n INT)")
    dbname = fresh_db.rsplit("/", 1)[1].split("?")[0]

    def blocked_alter() -> list[tuple]:
        with pg_stack.superuser() as su:
            return su.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = "
                "'Lock' AND query LIKE 'ALTER TABLE indoubt%%'", [dbname]).fetchall()

    args = ("up", "--url", fresh_db, "--migrations-dir", str(migrations),
            "--mode", "per-statement", "--lease-seconds", "2")
    with psycopg.connect(fresh_db) as locker:
        locker.execute("LOCK TABLE indoubt IN ACCESS EXCLUSIVE MODE")
        victim = spawn(*args)
        wait_until(lambda: bool(blocked_alter()), what="the ALTER waiting for our lock")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        locker.commit()  # the orphaned session now runs the ALTER and commits it
    wait_until(lambda: not blocked_alter(), what="the orphaned ALTER to finish")
    constraint = ("SELECT count(*) FROM pg_constraint WHERE conname = 'indoubt_n_positive'")
    wait_until(lambda: query(fresh_db, constraint) == [(1,)], what="the ALTER's commit")
    assert query(fresh_db, "SELECT status, statements_done FROM schema_migrations "
                           "WHERE name = '900_indoubt'") == [("running", 1)]

    code, out, err = finish(spawn(*args, "--wait-seconds", "30"))
    assert code == 0, err
    assert "already done by the interrupted run: 42710" in out
    assert query(fresh_db, "SELECT status FROM schema_migrations WHERE name = '900_indoubt'") \
        == [("succeeded",)]
    assert query(fresh_db, "SELECT (detail->>'statement')::int FROM schema_migration_events "
                           "WHERE event = 'resume' AND detail ? 'in_doubt'") == [(2,)]
    assert query(fresh_db, "SELECT to_regclass('indoubt_n_idx') IS NOT NULL") == [(True,)]


def test_a_failed_run_does_not_get_the_in_doubt_allowance(
    fresh_db: str, migrations: Path, runner_for, cli
) -> None:
    """Only an interrupted run's first statement is in doubt: a failure is never excused."""
    runner_for(fresh_db).up()
    query(fresh_db, "CREATE TABLE indoubt (id UUID PRIMARY KEY, n INT)")
    query(fresh_db, "ALTER TABLE indoubt ADD CONSTRAINT indoubt_n_positive CHECK (n > 0)")
    _add(migrations, "900_indoubt", IN_DOUBT)
    args = ("--url", fresh_db, "--migrations-dir", str(migrations), "--mode", "per-statement")
    first = cli("up", *args)
    assert first.code == 1 and "SQLSTATE 42710" in first.err
    assert cli("repair", "900_indoubt", *args[:4], "--reason", "retry").code == 0
    again = cli("up", *args)
    assert again.code == 1 and "SQLSTATE 42710" in again.err
