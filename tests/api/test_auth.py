"""API keys against real servers: every 401, 403 and 429 path, revocation across two worker
processes within the documented bound, last use in batches, audit rows, and `cesar keys`."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from cesar import keys
from cesar.api.settings import AuthSettings
from cesar.dev.embedded import free_port
from tests.api.helpers import (
    ApiServer,
    base_env,
    cesar_api,
    make_key,
    run_cesar,
    sample,
    serve,
    settings_for,
    wait_healthy,
)

#: The documented bound on a revocation reaching every worker (docs/api.md).
REVOCATION_BOUND = 5.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def failures(server: ApiServer, reason: str) -> float:
    text = server.get("/metrics", key=server.monitor).text
    return sample(text, "cesar_api_auth_failures_total", f'reason="{reason}"')


@pytest.fixture(scope="module")
def auth_api(migrated_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """Throttling out of the way (its own test below); usage written every 0.2 s."""
    settings = AuthSettings(_env_file=None, auth_failure_limit=100_000,  # type: ignore[call-arg]
                            usage_flush_seconds=0.2, metrics_token="monitor-" + "x" * 24)
    with serve(settings_for(migrated_url, tmp_path_factory.mktemp("auth")), settings) as server:
        yield server


# ------------------------------------------------------------------------------ 401
def test_no_key_is_401_with_a_challenge(auth_api: ApiServer) -> None:
    before = failures(auth_api, "missing")
    for path in ("/agents", "/agents/a9e5c0de-0001-4000-8000-000000000001", "/metrics"):
        r = auth_api.get(path, key="")
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == 'Bearer realm="cesar"'
        assert "Authorization: Bearer KEY" in r.json()["detail"]
    assert failures(auth_api, "missing") == before + 3


@pytest.mark.parametrize(("header", "reason"), [
    ("Basic dXNlcjpwYXNz", "malformed"),
    ("Bearer", "malformed"),
    ("Bearer not-a-key", "malformed"),
    (f"Bearer {keys.generate()[0]}", "unknown"),
])
def test_bad_credentials_are_401_invalid_token(auth_api: ApiServer, header: str,
                                               reason: str) -> None:
    before = failures(auth_api, reason)
    r = httpx.get(f"{auth_api.url}/agents", headers={"Authorization": header}, timeout=5)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="cesar", error="invalid_token"'
    assert failures(auth_api, reason) == before + 1


def test_a_key_differing_in_one_character_is_unknown(auth_api: ApiServer,
                                                     migrated_url: str) -> None:
    key = make_key(migrated_url, "agents:read")
    assert auth_api.get("/agents", key=key).status_code == 200
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert auth_api.get("/agents", key=flipped).status_code == 401


def test_an_expired_key_is_401(auth_api: ApiServer, migrated_url: str) -> None:
    key = make_key(migrated_url, "agents:read", expires_in=dt.timedelta(seconds=1))
    assert auth_api.get("/agents", key=key).status_code == 200
    time.sleep(1.2)  # past the expiry; the cached lookup knows the seconds that were left
    before = failures(auth_api, "expired")
    r = auth_api.get("/agents", key=key)
    assert r.status_code == 401 and r.json()["detail"].endswith("has expired")
    assert failures(auth_api, "expired") == before + 1


def test_a_revoked_key_is_401(auth_api: ApiServer, migrated_url: str) -> None:
    key = make_key(migrated_url, "agents:read")
    assert auth_api.get("/agents", key=key).status_code == 200
    prefix = keys.prefix_of(key)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        keys.revoke(conn, prefix, actor="tests")
    deadline = time.monotonic() + REVOCATION_BOUND
    while auth_api.get("/agents", key=key).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key still works after the bound"
        time.sleep(0.1)
    r = auth_api.get("/agents", key=key)
    assert r.status_code == 401 and r.json()["detail"] == f"the API key {prefix} is revoked"


# ------------------------------------------------------------------------------ 403
def test_a_missing_scope_is_403(auth_api: ApiServer, migrated_url: str) -> None:
    key = make_key(migrated_url, "tasks:write")
    before = failures(auth_api, "scope")
    for path in ("/agents", "/metrics"):
        r = auth_api.get(path, key=key)
        assert r.status_code == 403
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert failures(auth_api, "scope") == before + 2
    assert auth_api.get("/metrics", key=make_key(migrated_url, "metrics:read")).status_code == 200


# ------------------------------------------------------------------------------ /health
def test_health_shows_anonymous_callers_only_status_and_engine(auth_api: ApiServer,
                                                               migrated_url: str) -> None:
    assert auth_api.get("/health/live", key="").json() == {"status": "alive"}
    anonymous = auth_api.get("/health", key="")
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "ok", "components": {"database": "postgresql"}}
    reader = auth_api.get("/health", key=make_key(migrated_url, "agents:read")).json()
    assert set(reader) == {"status", "components"}  # a key without health:detail: the same
    detail = auth_api.get("/health", key=make_key(migrated_url, "health:detail")).json()
    assert detail["components"]["migrations"]["pending"] == 0 and "problems" in detail
    assert auth_api.get("/health", key=keys.generate()[0]).status_code == 401  # sent: checked


# ------------------------------------------------------------------------------ 429
def test_repeated_failures_from_an_address_are_429(migrated_url: str, tmp_path: Path) -> None:
    settings = AuthSettings(_env_file=None, auth_failure_limit=5,  # type: ignore[call-arg]
                            auth_failure_window_seconds=60, auth_block_seconds=2,
                            metrics_token="monitor-" + "y" * 24)
    with serve(settings_for(migrated_url, tmp_path), settings) as server:
        good = make_key(migrated_url, "agents:read")
        throttled, unknown = failures(server, "throttled"), failures(server, "unknown")
        for _ in range(5):
            assert server.get("/agents", key=keys.generate()[0]).status_code == 401
        r = server.get("/agents", key=keys.generate()[0])
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert server.get("/agents", key=good).status_code == 429  # not even looked at
        assert server.get("/health", key="").status_code == 200  # readiness stays open
        assert server.get("/health/live", key="").status_code == 200
        assert server.get("/metrics", key=server.monitor).status_code == 429  # nor this one
        time.sleep(2.1)
        assert server.get("/agents", key=good).status_code == 200  # the block ended
        assert failures(server, "throttled") == throttled + 3
        assert failures(server, "unknown") == unknown + 5


# ------------------------------------------------------------------------ no write per request
def test_last_use_is_recorded_in_batches_not_per_request(migrated_url: str,
                                                         tmp_path: Path) -> None:
    """With an hour between writes, 30 requests write nothing; stopping the server writes the
    batch: one row for the key, and no edit of api_keys the sync would carry."""
    key = make_key(migrated_url, "agents:read")
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        key_id = keys.lookup(conn, keys.hash_key(key)).id  # type: ignore[union-attr]
    hourly = AuthSettings(_env_file=None, usage_flush_seconds=3600)  # type: ignore[call-arg]

    def usage() -> list[tuple[object, ...]]:
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            return conn.execute("SELECT last_used_at FROM api_key_usage WHERE key_id = %s",
                                (key_id,)).fetchall()

    with serve(settings_for(migrated_url, tmp_path), hourly) as server:
        for _ in range(30):
            assert server.get("/agents", key=key).status_code == 200
        assert usage() == []  # thirty requests, no write
    assert len(usage()) == 1  # the batch, written when the worker stopped
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        versions = conn.execute("SELECT count(*) FROM sync_versions WHERE table_name = "
                                "'api_keys' AND pk = %s", (str(key_id),)).fetchone()[0]
        last_used = conn.execute("SELECT last_used_at FROM api_keys WHERE id = %s",
                                 (key_id,)).fetchone()[0]
    assert versions == 1 and last_used is None  # the creation only: a use is not an edit


# ------------------------------------------------------------------------------ two workers
def test_a_revocation_reaches_both_workers_within_the_bound(migrated_url: str,
                                                            tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = make_key(migrated_url, "agents:read")
    metrics_dir = tmp_path / "metrics"
    env = {**base_env(migrated_url, tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "CESAR_API_AUTH_FAILURE_LIMIT": "100000"}  # the refusals below are not an attack

    def fresh() -> int:  # a new connection each: the kernel spreads them over the workers
        return httpx.get(f"{url}/agents", headers={**bearer(key), "Connection": "close"},
                         timeout=5).status_code

    with cesar_api("--port", str(port), "--workers", "2", "--no-access-log", env=env) as proc:
        wait_healthy(url, proc)
        pids: set[str] = set()
        for _ in range(50):  # until both workers have served (and cached) the key
            assert all(fresh() == 200 for _ in range(10))
            pids = {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("histogram_*.db")}
            if len(pids) == 2:
                break
        assert len(pids) == 2, f"expected both workers to have served the key, got {pids}"
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            keys.revoke(conn, keys.prefix_of(key), actor="tests")
        revoked_at = time.monotonic()
        last_accepted = 0.0
        streak = 0
        while streak < 40:  # 40 refusals in a row on new connections: no worker accepts it
            code = fresh()
            assert code in (200, 401), code
            if code == 200:
                last_accepted, streak = time.monotonic() - revoked_at, 0
            else:
                streak += 1
            assert time.monotonic() - revoked_at < 60, "the revoked key kept working"
        assert last_accepted < REVOCATION_BOUND, \
            f"a worker accepted the revoked key {last_accepted:.2f} s after its revocation"
        print(f"last acceptance of the revoked key {last_accepted:.2f} s after the revocation")


# ------------------------------------------------------------------------------ the command
def test_keys_command_contract(migrated_url: str, tmp_path: Path) -> None:
    env = {"ENVIRONMENT": "development", "LOCAL_DB_URL": migrated_url,
           "CESAR_STATE_DIR": str(tmp_path)}
    made = run_cesar("keys", "create", "--name", "contract", "--scopes", "agents:read",
                     "--json", env=env)
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert keys.well_formed(created["key"]) and created["key"].startswith(created["prefix"])
    listed = run_cesar("keys", "list", "--json", env=env)
    assert listed.returncode == 0
    assert created["key"][19:] not in listed.stdout  # never the secret
    assert keys.hash_key(created["key"]) not in listed.stdout  # nor its hash
    row = next(r for r in json.loads(listed.stdout) if r["prefix"] == created["prefix"])
    assert row["state"] == "active" and row["scopes"] == ["agents:read"]
    assert set(row) >= {"prefix", "name", "scopes", "created_at", "expires_at", "last_used_at",
                        "revoked_at"}
    revoked = run_cesar("keys", "revoke", created["prefix"], env=env)
    assert revoked.returncode == 0 and revoked.stdout.startswith(f"revoked {created['prefix']}")
    again = run_cesar("keys", "revoke", created["prefix"], env=env)  # idempotent
    assert again.returncode == 0 and "already revoked" in again.stdout
    with psycopg.connect(migrated_url) as conn:
        stored = conn.execute("SELECT key_hash, revoked_at IS NOT NULL FROM api_keys "
                              "WHERE key_prefix = %s", (created["prefix"],)).fetchone()
        audit = conn.execute("SELECT action, detail->>'prefix' FROM audit_log "
                             "WHERE target_id = %s ORDER BY occurred_at",
                             (created["id"],)).fetchall()
    assert stored == (keys.hash_key(created["key"]), True)
    assert audit == [("api_key.create", created["prefix"]), ("api_key.revoke", created["prefix"])]


@pytest.mark.parametrize(("args", "message"), [
    (["create", "--name", "x", "--scopes", "agents:readd"], "unknown scope agents:readd"),
    (["create", "--name", "x", "--scopes", ","], "--scopes is empty"),
    (["create", "--name", "x", "--scopes", "agents:read", "--expires-in", "soon"],
     "is not a duration"),
    (["create", "--name", "x", "--scopes", "agents:read", "--expires-in", "0d"],
     "must be more than 0"),
    (["create", "--name", " ", "--scopes", "agents:read"], "--name must be"),
    (["revoke", "not-a-prefix"], "is not a key prefix"),
])
def test_bad_input_is_one_line_and_exit_2(migrated_url: str, tmp_path: Path, args: list[str],
                                          message: str) -> None:
    env = {"ENVIRONMENT": "development", "LOCAL_DB_URL": migrated_url,
           "CESAR_STATE_DIR": str(tmp_path)}
    with psycopg.connect(migrated_url) as conn:
        count = conn.execute("SELECT count(*) FROM api_keys").fetchone()
    r = run_cesar("keys", *args, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("cesar: error: ") and message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with psycopg.connect(migrated_url) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == count


def test_revoking_an_unknown_prefix_is_exit_1(migrated_url: str, tmp_path: Path) -> None:
    env = {"ENVIRONMENT": "development", "LOCAL_DB_URL": migrated_url,
           "CESAR_STATE_DIR": str(tmp_path)}
    r = run_cesar("keys", "revoke", "cesar_000000000000", env=env)
    assert r.returncode == 1
    assert r.stderr == ("cesar: error: no key has the prefix cesar_000000000000; "
                        "`cesar keys list` shows them\n")


# ------------------------------------------------------------------------------ configuration
def test_the_hosts_environment_file_may_carry_the_auth_settings(tmp_path: Path) -> None:
    """What Ansible writes (cesar_api_metrics_token) passes `cesar config check`; a revocation
    bound over 5 s is refused, naming the variable."""
    from cesar.deploy.configcheck import check
    from cesar.errors import ConfigError

    url = "postgresql://cesar_app_a:pw@db.example:26257/cesar?sslmode=verify-full"
    good = tmp_path / "api.env"
    good.write_text(f"ENVIRONMENT='staging'\nCOCKROACH_DB_URL='{url}'\n"
                    "CESAR_API_METRICS_TOKEN='generated-elsewhere'\n"
                    "CESAR_API_KEY_CACHE_SECONDS='2'\n")
    report = check(good, "api")
    assert "CESAR_API_METRICS_TOKEN" in report.keys
    assert "generated-elsewhere" not in report.line()
    bad = tmp_path / "bad.env"
    bad.write_text(f"ENVIRONMENT='staging'\nCOCKROACH_DB_URL='{url}'\n"
                   "CESAR_API_KEY_CACHE_SECONDS='30'\n")
    with pytest.raises(ConfigError, match="CESAR_API_KEY_CACHE_SECONDS"):
        check(bad, "api")


# ------------------------------------------------------------------------------ smoke's key
def test_smoke_makes_its_key_again_when_the_stored_one_is_revoked(migrated_url: str,
                                                                  tmp_path: Path) -> None:
    from cesar import smoke
    from tests.helpers import make_settings

    settings = make_settings(local_db_url=migrated_url, state_dir=tmp_path)
    first = smoke.development_key(settings)
    assert first and (tmp_path / smoke.SMOKE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert smoke.development_key(settings) == first
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        keys.revoke(conn, keys.prefix_of(first), actor="tests")
    second = smoke.development_key(settings)
    assert second and second != first
    assert (tmp_path / smoke.SMOKE_KEY_FILE).read_text().strip() == second


def test_smoke_outside_development_creates_nothing_and_says_what_to_set(
        migrated_url: str, auth_api: ApiServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cesar import smoke
    from tests.helpers import make_settings

    settings = make_settings(environment="staging", local_db_url=migrated_url,
                             state_dir=tmp_path)
    assert smoke.api_key(settings) is None
    assert not (tmp_path / smoke.SMOKE_KEY_FILE).exists()
    monkeypatch.setenv("CESAR_API_KEY", "cesar_from_the_environment")
    assert smoke.api_key(settings) == "cesar_from_the_environment"
    options = smoke.Options(url=migrated_url, variable="COCKROACH_DB_URL",
                            environment="development", api_url=auth_api.url, timeout=2.0)
    got = {r.name: r for r in smoke.run(options, [c for c in smoke.CHECKS
                                                  if c.name.startswith("api-")]).results}
    assert got["api-health"].status == "pass"  # /health answers anonymous callers
    assert got["api-latency"].status == "fail"
    assert got["api-latency"].detail.startswith("no API key for /agents: set CESAR_API_KEY")
