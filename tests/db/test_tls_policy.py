"""One TLS rule for every URL a command connects to, explicit flags included.

Outside development every URL must say ``sslmode=verify-full``; the only exemption is the
sync's local database reached over a unix socket or a loopback address. Each refusal path is
driven through the real command against a real server that would have accepted the connection,
so a refusal proves the policy ran before anything was sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cesar import db
from cesar.errors import ConfigError
from tests.helpers import CliResult, PgStack, make_settings, run_in_process

SAFE_REMOTE = ("postgresql://app:pw@db.cesar.invalid:26257/cesar"
               "?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt")



@pytest.fixture
def cesar(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Callable[..., CliResult]:
    """``cesar ARGS`` in this process, in an empty directory (no .env files)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str, env: dict[str, str]) -> CliResult:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return run_in_process(capsys, args)

    return run


def _one_error_line(result: CliResult, *needles: str) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2, result
    assert len(lines) == 1 and lines[0].startswith("cesar: error: "), result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_migrate_up_url_without_verify_full_is_refused_before_connecting(
        cesar: Callable[..., CliResult], fresh_db: str, environment: str) -> None:
    assert "sslmode=disable" in fresh_db  # a server that would accept this very URL
    result = cesar("migrate", "up", "--url", fresh_db,
                   env={"ENVIRONMENT": environment, "COCKROACH_DB_URL": SAFE_REMOTE})
    _one_error_line(result, "--url has sslmode=disable", f"ENVIRONMENT={environment}",
                    "verify-full")
    password = psycopg.conninfo.conninfo_to_dict(fresh_db)["password"]
    assert str(password) not in result.err
    assert _tables(fresh_db) == set()  # nothing was applied


def test_sync_run_remote_url_without_verify_full_is_refused(
        cesar: Callable[..., CliResult], pg_stack: PgStack, fresh_db: str) -> None:
    # The local side is exempt (loopback); the remote one never is, even on loopback.
    result = cesar("sync", "run", "--local-url", pg_stack.local_url, "--remote-url", fresh_db,
                   env={"ENVIRONMENT": "production", "COCKROACH_DB_URL": SAFE_REMOTE})
    _one_error_line(result, "--remote-url has sslmode=disable", "ENVIRONMENT=production")
    assert _tables(fresh_db) == set()


def test_sync_status_remote_url_without_verify_full_is_refused(
        cesar: Callable[..., CliResult], pg_stack: PgStack, fresh_db: str) -> None:
    result = cesar("sync", "status", "--local-url", pg_stack.local_url, "--remote-url",
                   fresh_db.replace("sslmode=disable", "sslmode=require"),
                   env={"ENVIRONMENT": "staging", "COCKROACH_DB_URL": SAFE_REMOTE})
    _one_error_line(result, "--remote-url has sslmode=require", "ENVIRONMENT=staging")


def test_sync_run_remote_local_url_without_verify_full_is_refused(
        cesar: Callable[..., CliResult]) -> None:
    remote_local = "postgresql://app:pw@10.20.1.9:5432/cesar_local?sslmode=prefer"
    result = cesar("sync", "run", "--local-url", remote_local, "--remote-url", SAFE_REMOTE,
                   env={"ENVIRONMENT": "staging"})
    line = _one_error_line(result, "--local-url has sslmode=prefer", "ENVIRONMENT=staging")
    assert "unix socket or a loopback address is exempt" in line


def test_local_db_url_off_host_without_verify_full_is_refused_by_every_command(
        cesar: Callable[..., CliResult]) -> None:
    env = {"ENVIRONMENT": "production", "COCKROACH_DB_URL": SAFE_REMOTE,
           "LOCAL_DB_URL": "postgresql://app:pw@db-local.cesar.invalid/cesar_local"}
    for args in (("status",), ("sync", "run"), ("migrate", "status")):
        result = cesar(*args, env=env)
        _one_error_line(result, "LOCAL_DB_URL has no sslmode", "ENVIRONMENT=production")


@pytest.mark.parametrize("url", [
    "postgresql://app:pw@127.0.0.1:5432/cesar_local?sslmode=disable",
    "postgresql://app:pw@127.3.4.5:5432/cesar_local",
    "postgresql://app:pw@[::1]:5432/cesar_local?sslmode=disable",
    "postgresql://app:pw@localhost/cesar_local",
    "postgresql://app:pw@/cesar_local?host=/run/postgresql",
    "postgresql:///cesar_local",
    "postgresql://app:pw@db.example.com/cesar_local?hostaddr=127.0.0.1",
    # position by position: an empty hostaddr entry means that position's host
    "postgresql://app:pw@localhost:1,192.0.2.1:1/cesar_local?hostaddr=,127.0.0.1",
    # a service file cannot redirect what the URL names in full
    "postgresql://app:pw@/cesar_local?service=cesar&hostaddr=127.0.0.1",
])
def test_a_local_database_on_a_socket_or_loopback_is_exempt(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_libpq_env(monkeypatch)
    db.require_tls(url, "LOCAL_DB_URL", "production", local=True)
    with pytest.raises(ConfigError, match="COCKROACH_DB_URL"):
        db.require_tls(url, "COCKROACH_DB_URL", "production")  # the cluster never is


@pytest.mark.parametrize("url", [
    "postgresql://app:pw@10.0.0.5/cesar_local?sslmode=require",
    "postgresql://app:pw@localhost.evil.example/cesar_local",
    "postgresql://app:pw@127.0.0.1,10.0.0.5/cesar_local",  # one off-host candidate is enough
    "postgresql://app:pw@localhost/cesar_local?hostaddr=10.0.0.5",  # hostaddr is what is used
    "postgresql://app:pw@/cesar_local",  # no host: PGHOST decides (set below)
    # libpq pairs host and hostaddr by position: the empty first hostaddr entry dials 192.0.2.1
    "postgresql://u@192.0.2.1:1,localhost:1/db?hostaddr=,127.0.0.1",
    "postgresql://u@/db?hostaddr=127.0.0.1,",  # the empty entry takes PGHOST's (off-host)
    "postgresql://u@127.0.0.1,::1/db?hostaddr=127.0.0.1",  # libpq refuses the count mismatch
    # host and sslmode come from pg_service.conf, which may name any machine
    "postgresql://u@/db?service=cesar",
    "postgresql://u@localhost/db?service=cesar",  # the service file may set hostaddr
    "postgresql://u@/db?service=cesar&hostaddr=,127.0.0.1",
])
def test_anything_that_may_leave_the_host_is_not_exempt(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_libpq_env(monkeypatch)
    monkeypatch.setenv("PGHOST", "db.example.com")
    with pytest.raises(ConfigError, match="LOCAL_DB_URL .*verify-full"):
        db.require_tls(url, "LOCAL_DB_URL", "staging", local=True)
    db.require_tls(url, "LOCAL_DB_URL", "development", local=True)


@pytest.mark.parametrize(("variable", "value", "url"), [
    ("PGHOSTADDR", "192.0.2.7", "postgresql://u@/db"),  # a hostless URL dials PGHOSTADDR
    ("PGHOSTADDR", "192.0.2.7", "postgresql://u@localhost/db"),  # which wins over host
    ("PGSERVICE", "cesar", "postgresql://u@/db"),  # pg_service.conf decides the host
    ("PGSERVICE", "cesar", "postgresql://u@127.0.0.1/db"),  # ... or a hostaddr
])
def test_the_libpq_environment_that_may_redirect_a_local_url_is_judged(
        variable: str, value: str, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_libpq_env(monkeypatch)
    db.require_tls(url, "LOCAL_DB_URL", "production", local=True)  # on its own: local
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match="LOCAL_DB_URL .*verify-full"):
        db.require_tls(url, "LOCAL_DB_URL", "production", local=True)


def _clear_libpq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("PGHOST", "PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE"):
        monkeypatch.delenv(variable, raising=False)


def test_route_checks_local_db_url_outside_development() -> None:
    ok = make_settings(environment="staging", cockroach_db_url=SAFE_REMOTE,
                       local_db_url="postgresql://app:pw@127.0.0.1/cesar_local?sslmode=disable")
    assert db.route(ok).primary.variable == "COCKROACH_DB_URL"
    bad = make_settings(environment="staging", cockroach_db_url=SAFE_REMOTE,
                        local_db_url="postgresql://app:pw@10.0.0.5/cesar_local?sslmode=disable")
    with pytest.raises(ConfigError, match="^LOCAL_DB_URL has sslmode=disable"):
        db.route(bad)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_the_rotation_admin_url_obeys_the_same_rule(
        environment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cesar.rotate import cli as rotate_cli

    monkeypatch.chdir(tmp_path)
    settings = make_settings(
        environment=environment, cockroach_db_url=SAFE_REMOTE, state_dir=tmp_path,
        admin_db_url="postgresql://root:pw@db.cesar.invalid:26257/cesar?sslmode=require")
    with pytest.raises(ConfigError, match=f"^CESAR_ADMIN_DB_URL has sslmode=require; "
                                          f"ENVIRONMENT={environment} requires"):
        rotate_cli.build(settings, skip=set(), grace=0, max_attempts=1)
