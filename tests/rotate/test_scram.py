"""SCRAM verifiers computed here are accepted by a real PostgreSQL and only for their password."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from cesar.dev.embedded import new_password
from cesar.rotate import scram
from tests.helpers import PgStack


def test_verifier_format_and_matching() -> None:
    v = scram.verifier("correct horse", salt=b"0123456789abcdef")
    assert v.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert scram.matches("correct horse", v)
    assert not scram.matches("correct horsf", v)
    assert scram.verifier("x") != scram.verifier("x")  # a fresh salt every time


def test_low_iteration_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        scram.verifier("x", iterations=1000)


def test_postgresql_accepts_the_verifier_and_never_sees_the_password(pg_stack: PgStack) -> None:
    password = new_password()
    v = scram.verifier(password)
    log_before = pg_stack.pg.log_file.stat().st_size
    with pg_stack.superuser() as su:
        su.execute("SET log_statement = 'all'")  # the worst case: every statement is logged
        su.execute("DROP ROLE IF EXISTS scram_probe")
        su.execute(sql.SQL("CREATE ROLE scram_probe LOGIN PASSWORD {}").format(sql.Literal(v)))
        (stored,) = su.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_probe'").fetchone()
    try:
        assert stored == v  # stored as given, not re-hashed
        url = f"postgresql://scram_probe:{password}@127.0.0.1:{pg_stack.state.port}/postgres"
        with psycopg.connect(url + "?sslmode=disable") as conn:
            assert conn.execute("SELECT session_user").fetchone() == ("scram_probe",)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(url.replace(password, password[:-1] + "!") + "?sslmode=disable")
        with pg_stack.pg.log_file.open("rb") as fh:
            fh.seek(log_before)
            logged = fh.read().decode("utf-8", "replace")
        assert "scram_probe" in logged  # the statement was logged...
        assert password not in logged  # ...but never the password
    finally:
        with pg_stack.superuser() as su:
            su.execute("DROP ROLE IF EXISTS scram_probe")
