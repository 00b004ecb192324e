"""Every route's status codes and bodies, over real HTTP, against a migrated PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from cesar import db, migrate
from tests.api.helpers import ROUTES, ApiServer, closed_port, sample, serve, settings_for


def agents_in(url: str) -> dict[str, dict[str, object]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT id, name, mob_alias, role, status FROM agents").fetchall()
    return {str(r["id"]): r for r in rows}


# ------------------------------------------------------------------------------ /agents
def test_agents_lists_every_agent_of_the_table_in_name_order(api: ApiServer,
                                                              migrated_url: str) -> None:
    expected = agents_in(migrated_url)
    r = api.get("/agents")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == len(expected) == 24
    assert body["next_offset"] is None
    names = [a["name"] for a in body["items"]]
    assert names == sorted(names)
    for agent in body["items"]:
        row = expected[agent["id"]]
        assert (agent["name"], agent["mob_alias"], agent["role"], agent["status"]) == \
            (row["name"], row["mob_alias"], row["role"], row["status"])


def test_pages_cover_every_agent_once(api: ApiServer, migrated_url: str) -> None:
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        r = api.get("/agents", params={"limit": 7, "offset": offset})
        assert r.status_code == 200
        page = r.json()
        assert page["limit"] == 7 and page["offset"] == offset
        assert len(page["items"]) <= 7
        seen.extend(a["id"] for a in page["items"])
        offset = page["next_offset"]
    assert sorted(seen) == sorted(agents_in(migrated_url))
    assert len(seen) == len(set(seen))


def test_an_offset_past_the_end_is_an_empty_page_with_the_total(api: ApiServer) -> None:
    r = api.get("/agents", params={"offset": 1000})
    assert r.status_code == 200
    assert r.json() == {"items": [], "total": 24, "limit": 50, "offset": 1000,
                        "next_offset": None}


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 501}, {"limit": -1}, {"limit": "ten"}, {"offset": -1},
    {"offset": 1_000_001}, {"offset": "1e3"}, {"limit": "9" * 40},
])
def test_bad_paging_is_422(api: ApiServer, params: dict[str, object]) -> None:
    r = api.get("/agents", params=params)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/json"
    assert r.json()["detail"]


def test_one_agent_by_id(api: ApiServer, migrated_url: str) -> None:
    agent_id, row = next(iter(agents_in(migrated_url).items()))
    r = api.get(f"/agents/{agent_id}")
    assert r.status_code == 200
    assert r.json()["mob_alias"] == row["mob_alias"]
    assert r.json()["id"] == agent_id


def test_an_unknown_id_is_404_with_a_json_error(api: ApiServer) -> None:
    unknown = uuid.uuid4()
    r = api.get(f"/agents/{unknown}")
    assert r.status_code == 404
    assert r.json() == {"detail": f"no agent with id {unknown}"}


@pytest.mark.parametrize("bad", ["42", "not-a-uuid", "a9e5c0de-0001-4000-8000", "%00", "x" * 300])
def test_a_malformed_id_is_422(api: ApiServer, bad: str) -> None:
    r = api.get(f"/agents/{bad}")
    assert r.status_code == 422
    assert r.json()["detail"]


def test_other_methods_and_paths(api: ApiServer) -> None:
    import httpx

    assert httpx.post(f"{api.url}/agents", timeout=5).status_code == 405
    assert httpx.delete(f"{api.url}/health", timeout=5).status_code == 405
    r = api.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_an_unmigrated_database_is_503_not_500(fresh_db: str, tmp_path: Path) -> None:
    with serve(settings_for(fresh_db, tmp_path)) as server:
        r = server.get("/agents")
        assert r.status_code == 503
        assert r.json() == {"detail": "the database schema is not migrated; see /health"}
        assert server.get(f"/agents/{uuid.uuid4()}").status_code == 503
        # No key can be checked without the schema: the monitoring credential sees the details.
        assert server.get("/health").json() == {"status": "degraded",
                                                "components": {"database": "postgresql"}}
        health = server.get("/health", key=server.monitor)
        assert health.status_code == 200  # the database answers: the instance is not dead
        body = health.json()
        assert body["status"] == "degraded"
        total = len(migrate.migration_names())
        assert body["components"]["migrations"] == {"applied": 0, "total": total, "failed": 0,
                                                     "pending": total}
        assert any("pending" in p for p in body["problems"])


# ------------------------------------------------------------------------------ /health
def test_health_reports_the_engine_the_server_says(api: ApiServer, migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        engine = db.detect_engine(conn)
        counts = migrate.summary(conn)
    r = api.get("/health")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["status"] == "ok" and body["problems"] == []
    assert body["environment"] == "development"
    c = body["components"]
    assert c["database"] == engine
    assert c["connection"]["reachable"] is True and c["connection"]["endpoint"] == "local"
    assert c["connection"]["latency_ms"] > 0
    assert c["migrations"] == counts and counts["applied"] == counts["total"] > 0
    assert c["pool"]["max"] == 10 and c["pool"]["size"] >= 1
    assert c["read_replica"] is None


def test_liveness_does_not_touch_the_database(tmp_path: Path) -> None:
    dead = f"postgresql://nobody:pw@127.0.0.1:{closed_port()}/none?sslmode=disable"
    with serve(settings_for(dead, tmp_path, pool_timeout=0.5)) as server:
        assert server.get("/health/live", key="").json() == {"status": "alive"}
        health = server.get("/health", key=server.monitor)
        assert health.status_code == 503
        assert health.json()["components"]["connection"]["reachable"] is False
        assert health.json()["components"]["database"] is None  # never answered: unknown
        r = server.get("/agents")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"detail": "the database is unavailable; see /health"}


# ------------------------------------------------------------------------------ /metrics
def test_metrics_expose_the_contract(api: ApiServer, migrated_url: str) -> None:
    before = api.get("/metrics").text
    try:
        agents_before = sample(before, "cesar_http_request_duration_seconds_count",
                               'route="/agents",status="200"')
    except AssertionError:
        agents_before = 0.0
    for _ in range(3):
        assert api.get("/agents").status_code == 200
    api.get(f"/agents/{uuid.uuid4()}")
    r = api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert sample(text, "cesar_http_request_duration_seconds_count",
                  'route="/agents",status="200"') == agents_before + 3
    assert sample(text, "cesar_http_request_duration_seconds_count",
                  'route="/agents/{agent_id}",status="404"') >= 1
    assert sample(text, "cesar_http_request_duration_seconds_bucket",
                  'le="0.02",method="GET",route="/agents"') >= 0
    assert sample(text, "cesar_db_up") == 1
    assert sample(text, "cesar_db_pool_size") >= 1
    assert sample(text, "cesar_db_pool_available") >= 0
    assert sample(text, "cesar_db_pool_waiting") == 0
    assert sample(text, "cesar_db_connection_errors_total") >= 0
    with psycopg.connect(migrated_url) as conn:
        counts = migrate.summary(conn)
    assert sample(text, "cesar_migrations_applied") == counts["applied"]
    assert sample(text, "cesar_migrations_total") == counts["total"]
    assert sample(text, "cesar_migrations_failed") == 0
    assert "# TYPE cesar_sync_lag_seconds gauge" in text


def test_unknown_paths_share_one_route_label(api: ApiServer) -> None:
    for path in ("/x1", "/x2", "/x3/y"):
        api.get(path)
    text = api.get("/metrics").text
    assert sample(text, "cesar_http_request_duration_seconds_count",
                  'route="unmatched",status="404"') >= 3
    assert 'route="/x1"' not in text


# ------------------------------------------------------------------------------ OpenAPI
def test_openapi_describes_every_route_and_its_status_codes(api: ApiServer) -> None:
    doc = api.get("/openapi.json").json()
    assert set(doc["paths"]) == ROUTES
    codes = {path: set(ops["get"]["responses"]) for path, ops in doc["paths"].items()
             if "get" in ops}
    posts = {path: set(ops["post"]["responses"]) for path, ops in doc["paths"].items()
             if "post" in ops}
    assert posts["/tasks"] == {"201", "400", "401", "403", "422", "429", "503"}
    assert posts["/tasks/{task_id}/cancel"] >= {"200", "404", "409", "422"}
    assert posts["/runs/{run_id}/finish"] >= {"200", "404", "409", "422"}
    assert codes["/agents"] == {"200", "401", "403", "422", "429", "503"}
    assert codes["/agents/{agent_id}"] == {"200", "401", "403", "404", "422", "429", "503"}
    assert codes["/health"] == {"200", "401", "429", "503"}
    assert codes["/metrics"] == {"200", "401", "403", "429"}
    assert codes["/events"] == {"200", "401", "403", "422", "429", "503"}
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]}
    assert doc["paths"]["/agents"]["get"]["security"] == [{"bearerAuth": ["agents:read"]}]
    assert doc["paths"]["/health"]["get"]["security"] == [{}, {"bearerAuth": []}]
    assert "security" not in doc["paths"]["/health/live"]["get"]
    assert codes["/health/live"] == {"200"}
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    limit = next(p for p in doc["paths"]["/agents"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 500)
    health = doc["components"]["schemas"]["Components"]["properties"]["database"]
    assert {"cockroachdb", "postgresql"} <= {e for alt in health["anyOf"]
                                             for e in alt.get("enum", [])}


def test_the_read_replica_is_part_of_readiness(migrated_url: str, tmp_path: Path) -> None:
    dead = f"postgresql://nobody:pw@127.0.0.1:{closed_port()}/none?sslmode=disable"
    base = {"database_target": "cluster", "cockroach_db_url": migrated_url, "pool_timeout": 0.5}
    with serve(settings_for(migrated_url, tmp_path, cockroach_read_replica_url=migrated_url,
                            **base)) as server:
        body = server.get("/health").json()
        assert body["status"] == "ok"
        assert body["components"]["connection"]["endpoint"] == "cluster"
        assert body["components"]["read_replica"]["reachable"] is True
        assert server.get("/agents").json()["total"] == 24
    with serve(settings_for(migrated_url, tmp_path, cockroach_read_replica_url=dead,
                            **base)) as server:
        r = server.get("/health")
        assert r.status_code == 503  # the reads cannot be served
        body = r.json()
        assert body["components"]["connection"]["reachable"] is True
        assert body["components"]["read_replica"]["reachable"] is False
        assert any(p.startswith("database (read-replica) unreachable") for p in body["problems"])
        assert server.get("/agents").status_code == 503
