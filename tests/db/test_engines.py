"""The engine objects' claims, checked against a real server where one runs here (PostgreSQL)."""

from __future__ import annotations

import psycopg
import pytest

from cesar.db import engines
from cesar.migrate import open_runner
from tests.helpers import make_settings


def test_the_postgresql_object_is_what_a_postgresql_server_is(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        engine = engines.of(conn)
        assert engine is engines.POSTGRESQL
        # transactional_ddl: a rolled-back CREATE TABLE leaves nothing behind.
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute("CREATE TABLE ddl_probe (id int)")
            conn.execute("SELECT 1 / 0")
        assert conn.execute("SELECT to_regclass('ddl_probe')").fetchone() == (None,)
        # liveness_settings: each one is accepted by this server.
        for statement in engine.liveness_settings:
            conn.execute(statement)
        # strict_session_reset: every reset the runner issues exists here.
        for statement in ("RESET ALL", "RESET ROLE", "DEALLOCATE ALL"):
            conn.execute(statement)


def test_the_runner_takes_its_auto_mode_and_session_from_the_engine(fresh_db: str) -> None:
    conn, runner = open_runner(fresh_db, make_settings())
    with conn:
        assert runner.traits() is engines.POSTGRESQL
        assert runner.effective_mode() == "transactional"
        runner.up()
        shown = conn.execute("SHOW client_connection_check_interval").fetchone()
        assert shown == ("2s",)


def test_cockroachdb_runs_migrations_statement_by_statement() -> None:
    assert engines.named("cockroachdb").default_mode == "per-statement"
    assert engines.COCKROACHDB.liveness_settings == ()
    assert not engines.COCKROACHDB.strict_session_reset
