"""`cesar smoke`: every check passes on a healthy stack and fails, for its own reason, when
its condition is broken. Real servers throughout (PostgreSQL, with and without TLS; the API)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg

from cesar import smoke
from cesar.db import urls
from cesar.dev import tls
from tests.api.helpers import (
    ApiServer,
    closed_port,
    run_cesar,
    serve,
    settings_for,
)
from tests.helpers import REPO, PgStack

DB_CHECKS = ["dns", "tcp", "tls", "auth", "server", "latency", "migrations", "agents"]


def options(url: str, api: ApiServer | str, **overrides: object) -> smoke.Options:
    """``api``: a server (its URL and key) or a bare URL (no key)."""
    api_url, key = (api, None) if isinstance(api, str) else (api.url, api.key)
    values: dict[str, object] = {"url": url, "variable": "COCKROACH_DB_URL",
                                 "environment": "development", "api_url": api_url,
                                 "api_key": key, "timeout": 2.0}
    values.update(overrides)
    return smoke.Options(**values)  # type: ignore[arg-type]


def outcome(report: smoke.Report) -> dict[str, tuple[str, str]]:
    return {r.name: (r.status, r.detail) for r in report.results}


def statuses(report: smoke.Report) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def with_url(url: str, **changes: str) -> str:
    params = urls.parse(url, "test")
    params.update(changes)
    return urls.build(user=params.pop("user"), password=params.pop("password"),
                      host=params.pop("host"), port=int(params.pop("port")),
                      dbname=params.pop("dbname"), **params)


# ------------------------------------------------------------------------ the healthy case
def test_a_healthy_development_stack_passes(migrated_url: str, api: ApiServer) -> None:
    report = smoke.run(options(migrated_url, api))
    got = outcome(report)
    assert not report.failed, got
    expected = {c.name: "pass" for c in smoke.CHECKS}
    expected["tls"] = "warn"  # pgserver's build has no SSL: said, not failed, in development
    expected["sync-lag"] = "warn"  # this database never synced (tests/sync/test_health.py)
    assert statuses(report) == expected
    assert "does not offer TLS" in got["tls"][1] and "development only" in got["tls"][1]
    assert got["server"][1].startswith("PostgreSQL ")
    assert got["agents"][1] == "24 agents"
    assert got["migrations"][1].endswith("applied, none failed")
    assert got["api-health"][1].startswith("200, components.database=postgresql")


# ------------------------------------------------------------------------ database checks
def test_dns(migrated_url: str, api: ApiServer) -> None:
    report = smoke.run(options(with_url(migrated_url, host="cesar-smoke.invalid"), api))
    got = outcome(report)
    assert got["dns"][0] == "fail"
    assert got["dns"][1].startswith("cannot resolve cesar-smoke.invalid")
    assert {n: got[n][0] for n in DB_CHECKS[1:]} == dict.fromkeys(DB_CHECKS[1:], "skip")
    assert got["api-health"][0] == "pass"  # the API's checks do not depend on the URL's host
    assert report.failed == ["dns"]


def test_tcp(migrated_url: str, api: ApiServer) -> None:
    port = closed_port()
    got = outcome(smoke.run(options(with_url(migrated_url, port=str(port)), api)))
    assert got["tcp"] == ("fail", f"cannot connect to 127.0.0.1:{port}: Connection refused")
    assert got["auth"][0] == got["tls"][0] == got["agents"][0] == "skip"


def test_tls_is_required_outside_development(migrated_url: str, api: ApiServer) -> None:
    got = outcome(smoke.run(options(migrated_url, api, environment="staging",
                                    expect_database="postgresql")))
    assert got["tls"] == ("fail", "the server does not offer TLS; ENVIRONMENT=staging requires "
                                  "it with sslmode=verify-full")


def test_auth(migrated_url: str, api: ApiServer) -> None:
    got = outcome(smoke.run(options(with_url(migrated_url, password="wrong"), api)))
    assert got["auth"][0] == "fail"
    assert "refused user cesar_app_" in got["auth"][1]
    assert "password authentication failed" in got["auth"][1]
    assert got["tcp"][0] == "pass" and got["agents"][0] == "skip"


def test_engine(migrated_url: str, api: ApiServer) -> None:
    got = outcome(smoke.run(options(migrated_url, api, expect_database="cockroachdb")))
    assert got["server"][0] == "fail"
    assert got["server"][1].endswith("the engine is postgresql, expected cockroachdb")
    assert got["api-health"] == ("fail", "200, but components.database is postgresql, "
                                         "expected cockroachdb")


def test_latency_budget(migrated_url: str, api: ApiServer) -> None:
    got = outcome(smoke.run(options(migrated_url, api, budget_ms=0.001)))
    assert got["latency"][0] == "fail" and got["latency"][1].endswith(
        "over the 0.001 ms budget")
    assert got["api-latency"][0] == "fail"
    assert got["api-latency"][1].startswith("/health, /agents over budget")


def test_a_failed_migration(migrated_db: str, api: ApiServer) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET status = 'failed' "
                     "WHERE name = (SELECT max(name) FROM schema_migrations)")
    got = outcome(smoke.run(options(migrated_db, api)))
    assert got["migrations"][0] == "fail"
    assert got["migrations"][1].endswith("1 failed (see `cesar migrate status`)")


def test_a_pending_migration(migrated_url: str, api: ApiServer, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(REPO / "sql" / "migrations", migrations)
    (migrations / "999_later.up.sql").write_text("SELECT 1;\n")
    got = outcome(smoke.run(options(migrated_url, api, migrations_dir=migrations)))
    assert got["migrations"][0] == "fail"
    assert got["migrations"][1].endswith("1 pending (run `invoke migrate`)")


def test_the_agents_count(migrated_db: str, api: ApiServer) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("INSERT INTO agents (name, mob_alias, role) "
                     "VALUES ('Extra', 'The Spare', 'testing')")
    got = outcome(smoke.run(options(migrated_db, api)))
    assert got["agents"] == ("fail", "25 agents, expected 24")
    got = outcome(smoke.run(options(migrated_db, api, expected_agents=25)))
    assert got["agents"] == ("pass", "25 agents")


def test_no_agents_table(fresh_db: str, api: ApiServer) -> None:
    got = outcome(smoke.run(options(fresh_db, api)))
    assert got["agents"] == ("fail", "there is no agents table (run `invoke migrate`)")


# ------------------------------------------------------------------------ TLS server
def test_tls_verified_against_a_server_with_ssl(tls_stack: PgStack, api: ApiServer,
                                                tmp_path: Path) -> None:
    url = tls_stack.cluster_url
    assert urls.parse(url, "test")["sslmode"] == "verify-full"
    checks = smoke.CHECKS[:4]  # dns, tcp, tls, auth: the database there is not migrated
    got = outcome(smoke.run(options(url, api, environment="production"), checks))
    assert got["tls"][0] == "pass", got["tls"]
    assert "certificate verified, expires in" in got["tls"][1]
    assert got["tls"][1].startswith("TLSv1.")
    assert got["auth"][1].endswith("(TLS)")

    other_ca = tmp_path / "other-ca"
    tls.ensure_server_certificates(other_ca)
    untrusted = with_url(url, sslrootcert=str(other_ca / "ca.crt"))
    got = outcome(smoke.run(options(untrusted, api, environment="production"), checks))
    assert got["tls"][0] == "fail"
    assert got["tls"][1].startswith("the server's certificate is not trusted")

    encrypted_only = with_url(url, sslmode="require")
    got = outcome(smoke.run(options(encrypted_only, api, environment="staging"), checks))
    assert got["tls"] == ("fail", "COCKROACH_DB_URL has sslmode=require; ENVIRONMENT=staging "
                                  "requires sslmode=verify-full")

    missing_ca = with_url(url, sslrootcert=str(tmp_path / "nowhere.crt"))
    got = outcome(smoke.run(options(missing_ca, api, environment="production"), checks))
    assert got["tls"][0] == "fail" and "nowhere.crt does not exist" in got["tls"][1]


# ------------------------------------------------------------------------ API checks
def test_no_api(migrated_url: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    got = outcome(smoke.run(options(migrated_url, url)))
    assert got["api-health"][0] == "fail"
    assert got["api-health"][1].startswith(f"nothing answers on {url}/health")
    assert got["api-latency"] == ("skip", "not run: the API does not answer /health")
    assert got["agents"][0] == "pass"


def test_an_api_whose_database_is_down(migrated_url: str, tmp_path: Path) -> None:
    dead = f"postgresql://nobody:pw@127.0.0.1:{closed_port()}/none?sslmode=disable"
    with serve(settings_for(dead, tmp_path, pool_timeout=0.5)) as broken:
        got = outcome(smoke.run(options(migrated_url, broken)))
    assert got["api-health"][0] == "fail"
    # The key cannot be checked while the API's database is down: the anonymous answer.
    assert got["api-health"][1].startswith("503: unhealthy")


# ------------------------------------------------------------------------ the command
def test_the_command_exit_codes_and_json(migrated_url: str, api: ApiServer,
                                         tmp_path: Path) -> None:
    env = {"ENVIRONMENT": "development", "COCKROACH_DB_URL": migrated_url,
           "LOCAL_DB_URL": migrated_url, "CESAR_API_URL": api.url,
           "CESAR_STATE_DIR": str(tmp_path)}
    ok = run_cesar("smoke", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1].split() == ["check", "result", "ms", "detail"]
    assert ok.stdout.splitlines()[-1].startswith("all passed in ")
    assert "***" in ok.stdout.splitlines()[0]  # the URL is shown with its password masked
    assert urls.parse(migrated_url, "x")["password"] not in ok.stdout

    bad = run_cesar("smoke", "--json", "--expected-agents", "25", env=env)
    assert bad.returncode == 1
    assert bad.stderr == "cesar: error: smoke checks failed: agents\n"
    body = json.loads(bad.stdout)
    assert body["ok"] is False and body["failed"] == ["agents"]
    assert [c["name"] for c in body["checks"]] == [c.name for c in smoke.CHECKS]

    usage = run_cesar("smoke", "--expect-database", "mysql", env=env)
    assert usage.returncode == 2 and "'mysql' is not one of" in usage.stderr

    no_url = run_cesar("smoke", env={"ENVIRONMENT": "staging", "CESAR_STATE_DIR": str(tmp_path)})
    assert no_url.returncode == 2
    assert no_url.stderr.startswith("cesar: error: COCKROACH_DB_URL is not set; "
                                    "ENVIRONMENT=staging")

