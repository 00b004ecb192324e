"""The pool and the 40001 retry helper, against a real PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pgerrors

from cesar import db
from cesar.errors import RetryExhausted
from tests.helpers import PgStack, make_settings


def test_application_is_not_the_superuser_and_uses_scram_over_tcp(pg_stack: PgStack) -> None:
    with psycopg.connect(pg_stack.local_url) as conn:
        user, current, superuser, addr = conn.execute(
            "SELECT session_user, current_user, rolsuper, inet_server_addr()::text "
            "FROM pg_roles WHERE rolname = session_user"
        ).fetchone()
    assert (user, current, superuser) == ("cesar_app_a", "cesar_app", False)
    assert addr == "127.0.0.1/32"  # TCP on loopback, not the socket
    with pg_stack.superuser() as su:
        (verifier,) = su.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'cesar_app_a'").fetchone()
    assert verifier.startswith("SCRAM-SHA-256$")


def test_wrong_password_and_superuser_over_tcp_are_refused(pg_stack: PgStack) -> None:
    bad = pg_stack.local_url.replace(pg_stack.state.passwords["cesar_app_a"], "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad)
    su = f"postgresql://postgres@127.0.0.1:{pg_stack.state.port}/postgres?sslmode=disable"
    with pytest.raises(psycopg.OperationalError, match="rejects connection|no pg_hba"):
        psycopg.connect(su)


def test_pool_survives_a_server_restart(pg_stack: PgStack, tmp_path: Path) -> None:
    s = make_settings(local_db_url=pg_stack.local_url, state_dir=tmp_path,
                      pool_min_size=3, pool_max_size=3)
    with db.Database(s).open() as database:
        before = {database.transaction(lambda c: c.execute(
            "SELECT pg_backend_pid()").fetchone()[0]) for _ in range(3)}
        pg_stack.pg.restart()
        # Every pooled connection is now broken; the checkout health check replaces them.
        after = {database.transaction(lambda c: c.execute(
            "SELECT pg_backend_pid()").fetchone()[0]) for _ in range(6)}
    assert before and after and not (before & after)


def test_session_settings_are_applied(pg_stack: PgStack, tmp_path: Path) -> None:
    s = make_settings(local_db_url=pg_stack.local_url, state_dir=tmp_path,
                      statement_timeout_ms=1234, application_name="cesar-test")
    with db.Database(s).open() as database, database.connection() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
        assert conn.execute("SHOW application_name").fetchone()[0] == "cesar-test"
        with pytest.raises(pgerrors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")


@pytest.fixture
def skew_table(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE oncall (shift int, doctor text, on_duty bool)")
        conn.execute("INSERT INTO oncall VALUES (1, 'alice', true), (1, 'bob', true)")
    return fresh_db


def test_real_serialization_failure_is_retried(skew_table: str) -> None:
    """Write skew between two SERIALIZABLE transactions: PostgreSQL aborts one with 40001."""
    barrier = threading.Barrier(2, timeout=20)
    retries: list[BaseException] = []
    attempts = {"alice": 0, "bob": 0}

    def go_off_duty(doctor: str):
        def fn(conn: psycopg.Connection) -> int:
            attempts[doctor] += 1
            (on_duty,) = conn.execute(
                "SELECT count(*) FROM oncall WHERE shift = 1 AND on_duty").fetchone()
            if attempts[doctor] == 1:
                barrier.wait()  # both have read before either writes: a real conflict
            if on_duty >= 2:
                conn.execute("UPDATE oncall SET on_duty = false WHERE doctor = %s", [doctor])
            return on_duty
        return fn

    def worker(doctor: str) -> None:
        with psycopg.connect(skew_table, autocommit=True) as conn:
            db.run_transaction(conn, go_off_duty(doctor), serializable=True,
                               base_delay=0.01, on_retry=lambda a, d, e: retries.append(e))

    threads = [threading.Thread(target=worker, args=(d,)) for d in attempts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(retries) == 1 and isinstance(retries[0], pgerrors.SerializationFailure)
    assert sorted(attempts.values()) == [1, 2]
    with psycopg.connect(skew_table) as conn:
        (still_on_duty,) = conn.execute(
            "SELECT count(*) FROM oncall WHERE on_duty").fetchone()
    assert still_on_duty == 1  # the invariant the retry protects


def test_retry_is_bounded(fresh_db: str) -> None:
    calls = []

    def always_conflicts(conn: psycopg.Connection) -> None:
        calls.append(1)
        conn.execute("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        with pytest.raises(RetryExhausted, match="after 3 attempts"):
            db.run_transaction(conn, always_conflicts, max_attempts=3, base_delay=0.001)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert len(calls) == 3


def test_other_errors_are_not_retried(fresh_db: str) -> None:
    calls = []

    def broken(conn: psycopg.Connection) -> None:
        calls.append(1)
        conn.execute("SELECT * FROM no_such_table")

    with psycopg.connect(fresh_db, autocommit=True) as conn, pytest.raises(
        pgerrors.UndefinedTable
    ):
        db.run_transaction(conn, broken)
    assert len(calls) == 1


def test_work_of_a_failed_attempt_is_rolled_back(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int)")
        attempt = {"n": 0}

        def fn(c: psycopg.Connection) -> None:
            attempt["n"] += 1
            c.execute("INSERT INTO t VALUES (%s)", [attempt["n"]])
            if attempt["n"] == 1:
                c.execute("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")

        db.run_transaction(conn, fn, base_delay=0.001)
        assert [r[0] for r in conn.execute("SELECT n FROM t")] == [2]
