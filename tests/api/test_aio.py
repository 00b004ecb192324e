"""The async read path (cesar/api/aio.py): no round trip per checkout, and still no failed
request when the server drops the pooled connections, nor a slow return after an outage."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from cesar.api import aio
from cesar.dev.embedded import free_port
from tests.api.helpers import ApiServer, serve, settings_for
from tests.helpers import PgStack, child_env


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Each round-trip check the async pool makes (the real check runs: only counted)."""
    made: list[float] = []
    real = AsyncConnectionPool.check_connection

    async def counted(conn: Any) -> None:
        made.append(time.monotonic())
        await real(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    return made


@pytest.fixture
def served(migrated_url: str, tmp_path: Path, checks: list[float],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.setenv("CESAR_API_READ_PATH", "async")
    with serve(settings_for(migrated_url, tmp_path, pool_timeout=2.0)) as server:
        assert server.server.config.app.state.reads is not None  # type: ignore[attr-defined]
        yield server


def test_a_busy_pool_checks_no_connection_per_request(served: ApiServer,
                                                      checks: list[float]) -> None:
    with httpx.Client(headers=served.headers, timeout=5) as client:
        for _ in range(5):  # warm: the key looked up, connections made
            assert client.get(f"{served.url}/agents").status_code == 200
        before = len(checks)
        for _ in range(200):
            assert client.get(f"{served.url}/agents").status_code == 200
    # A round trip per checkout would be 200 here; only a connection idle past the bound is.
    assert len(checks) - before <= 5


def test_a_connection_idle_past_the_bound_is_checked_before_use(
        served: ApiServer, checks: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "CHECK_IDLE_SECONDS", 0.2)
    reads: aio.AsyncReads = served.server.config.app.state.reads  # type: ignore[attr-defined]
    monkeypatch.setattr(reads, "check_idle", 0.2)
    assert served.get("/agents").status_code == 200
    time.sleep(0.4)
    before = len(checks)
    assert served.get("/agents").status_code == 200
    assert len(checks) > before


def test_connections_dropped_by_the_server_cost_no_failed_request(
        served: ApiServer, pg_stack: PgStack, migrated_url: str) -> None:
    """The server ends every pooled connection (as a restart does) within the idle bound: the
    next reads still answer 200 (the pool is checked and the read runs again)."""
    with httpx.Client(headers=served.headers, timeout=5) as client:
        for _ in range(20):
            assert client.get(f"{served.url}/agents").status_code == 200
        dbname = psycopg.conninfo.conninfo_to_dict(migrated_url)["dbname"]
        with pg_stack.superuser() as su:
            ended = su.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = "
                "'client backend' AND usename <> current_user", [dbname]).fetchone()
        assert ended and ended[0] > 0
        codes = [client.get(f"{served.url}/agents").status_code for _ in range(20)]
    assert codes == [200] * 20


def test_a_bad_read_path_is_one_line_and_exit_2(migrated_url: str, tmp_path: Path) -> None:
    env = {**child_env(), "ENVIRONMENT": "development", "LOCAL_DB_URL": migrated_url,
           "CESAR_STATE_DIR": str(tmp_path), "CESAR_API_READ_PATH": "fibers"}
    done = subprocess.run([sys.executable, "-m", "cesar.cli", "api", "--check", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "cesar: error: CESAR_API_READ_PATH='fibers' is not valid: Input should be 'async', "
        "'async-checked', 'async-unprepared', 'async-uncoalesced' or 'threads'; fix it in the "
        "environment, .env or .env.cockroach"]
