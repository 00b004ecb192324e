"""/health follows the database: 503 while the embedded PostgreSQL is stopped, 200 again once
it is started, with no restart of the service. Uses its own server (it stops it)."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cesar import migrate
from cesar.api.settings import AuthSettings
from cesar.dev.embedded import EmbeddedPostgres
from tests.api.helpers import ApiServer, sample, serve, settings_for
from tests.helpers import REPO, make_settings, new_state_dir

#: The client gives up after this long: /health must have answered by then.
CLIENT_TIMEOUT = 2.0


@pytest.fixture
def own_postgres() -> Iterator[tuple[EmbeddedPostgres, str]]:
    state_dir = new_state_dir("api-outage")
    pg = EmbeddedPostgres(state_dir)
    state, _ = pg.up()
    url = pg.local_url(state)
    migrate.apply_all(url, make_settings(), migrations_dir=REPO / "sql" / "migrations")
    try:
        yield pg, url
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


#: Prometheus' credential for /metrics: checked without the database, so it works during the
#: outage too (generated per run).
METRICS_TOKEN = secrets.token_urlsafe(24)
PROMETHEUS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def health(server: ApiServer) -> httpx.Response:
    """/health with a key that may see the details (looked up before the outage)."""
    return httpx.get(f"{server.url}/health", timeout=CLIENT_TIMEOUT, headers=server.headers)


def until(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.25)
    return False


def test_health_goes_503_when_postgres_stops_and_200_when_it_returns(
        own_postgres: tuple[EmbeddedPostgres, str], tmp_path: Path) -> None:
    pg, url = own_postgres
    auth = AuthSettings(_env_file=None, metrics_token=METRICS_TOKEN)  # type: ignore[call-arg]
    with serve(settings_for(url, tmp_path, pool_timeout=1.0), auth) as server:
        first = health(server)
        assert first.status_code == 200, first.text
        assert first.json()["components"]["database"] == "postgresql"
        errors_before = sample(httpx.get(f"{server.url}/metrics", headers=PROMETHEUS).text,
                               "cesar_db_connection_errors_total")

        pg.down()
        down = health(server)  # an httpx timeout here fails the test: no answer within 2 s
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "degraded"
        assert body["components"]["connection"]["reachable"] is False
        assert body["components"]["connection"]["error"]
        assert body["components"]["database"] == "postgresql"  # last known engine
        assert any("unreachable" in p for p in body["problems"])
        agents = httpx.get(f"{server.url}/agents", timeout=5, headers=server.headers)
        assert agents.status_code == 503 and agents.json()["detail"]
        for _ in range(3):  # it stays bounded while the pool keeps failing to reconnect
            assert health(server).status_code == 503
        metrics = httpx.get(f"{server.url}/metrics", timeout=5, headers=PROMETHEUS)
        assert metrics.status_code == 200
        assert sample(metrics.text, "cesar_db_up") == 0
        assert sample(metrics.text, "cesar_db_connection_errors_total") > errors_before

        pg.up()
        assert until(lambda: health(server).status_code == 200, 60), \
            "/health did not return to 200 within 60 s of PostgreSQL's restart"
        agents = httpx.get(f"{server.url}/agents", timeout=5, headers=server.headers)
        assert agents.json()["total"] == 24
        metrics = httpx.get(f"{server.url}/metrics", headers=PROMETHEUS)
        assert sample(metrics.text, "cesar_db_up") == 1
