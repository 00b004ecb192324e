"""The routing matrix, against real servers: each environment x which URLs are set x whether
the cluster answers. What serves queries is read back from the server (current_database())."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cesar import db
from cesar.embedded import CLUSTER_DB, LOCAL_DB, free_port
from cesar.errors import ConfigError, OperationFailed
from tests.conftest import PgStack, make_settings


def serving(settings, *, read_only: bool = False) -> str:
    with db.Database(settings).open() as database, \
            database.connection(read_only=read_only) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        return str(row[0])


def dead_url(pg_stack: PgStack, dbname: str = CLUSTER_DB, tls: bool = False) -> str:
    """A URL to a port nothing listens on (reserved then released, never contacted before)."""
    port = free_port()
    url = pg_stack.url(dbname).replace(f":{pg_stack.state.port}/", f":{port}/")
    return url.replace("sslmode=disable", "sslmode=verify-full") if tls else url


@pytest.fixture
def empty_state(tmp_path: Path) -> Path:
    """A state directory with no embedded stack, so only explicit URLs count."""
    return tmp_path


# -------------------------------------------------------------------- development
def test_dev_default_uses_local(pg_stack: PgStack, empty_state: Path) -> None:
    s = make_settings(local_db_url=pg_stack.local_url, cockroach_db_url=pg_stack.cluster_url,
                      state_dir=empty_state)
    assert serving(s) == LOCAL_DB


def test_dev_prefers_cluster_when_told(pg_stack: PgStack, empty_state: Path) -> None:
    s = make_settings(local_db_url=pg_stack.local_url, cockroach_db_url=pg_stack.cluster_url,
                      database_target="cluster", state_dir=empty_state)
    assert serving(s) == CLUSTER_DB


def test_dev_falls_back_to_local_with_a_warning(
    pg_stack: PgStack, empty_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_settings(local_db_url=pg_stack.local_url, cockroach_db_url=dead_url(pg_stack),
                      database_target="cluster", state_dir=empty_state, connect_timeout=2)
    with caplog.at_level(logging.WARNING, logger="cesar.db"):
        assert serving(s) == LOCAL_DB
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "falls back to the local database" in warnings[0].getMessage()
    assert pg_stack.state.passwords["cesar_app_a"] not in warnings[0].getMessage()


def test_dev_cluster_unreachable_and_no_local_fails(pg_stack: PgStack, empty_state: Path) -> None:
    s = make_settings(cockroach_db_url=dead_url(pg_stack), database_target="cluster",
                      state_dir=empty_state, connect_timeout=2)
    with pytest.raises(OperationFailed, match="cannot connect to the cluster database"):
        serving(s)


def test_dev_local_unreachable_fails_without_trying_the_cluster(
    pg_stack: PgStack, empty_state: Path
) -> None:
    s = make_settings(local_db_url=dead_url(pg_stack, LOCAL_DB),
                      cockroach_db_url=pg_stack.cluster_url, state_dir=empty_state,
                      connect_timeout=2)
    with pytest.raises(OperationFailed, match="local database .*LOCAL_DB_URL"):
        serving(s)


def test_dev_target_cluster_without_any_cluster_url_is_a_config_error(
    pg_stack: PgStack, empty_state: Path
) -> None:
    s = make_settings(local_db_url=pg_stack.local_url, database_target="cluster",
                      state_dir=empty_state)
    with pytest.raises(ConfigError, match="DATABASE_TARGET=cluster but COCKROACH_DB_URL"):
        serving(s)


def test_dev_without_any_url_or_stack_is_a_config_error(empty_state: Path) -> None:
    with pytest.raises(ConfigError, match="run `invoke up`"):
        serving(make_settings(state_dir=empty_state))


def test_dev_fills_missing_urls_from_the_embedded_stack(pg_stack: PgStack) -> None:
    s = make_settings(state_dir=pg_stack.pg.state_dir)
    assert serving(s) == LOCAL_DB
    s = make_settings(state_dir=pg_stack.pg.state_dir, database_target="cluster")
    assert serving(s) == CLUSTER_DB


def test_dev_explicit_url_wins_over_the_embedded_stack(pg_stack: PgStack) -> None:
    other = pg_stack.create_database()
    s = make_settings(state_dir=pg_stack.pg.state_dir, local_db_url=other)
    assert serving(s) == other.rsplit("/", 1)[1].split("?")[0]


# -------------------------------------------------------------------- staging, production
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_cluster_only_with_verify_full(tls_stack: PgStack, environment: str,
                                       empty_state: Path) -> None:
    assert "sslmode=verify-full" in tls_stack.cluster_url
    s = make_settings(environment=environment, cockroach_db_url=tls_stack.cluster_url,
                      local_db_url=tls_stack.local_url, database_target="local",
                      state_dir=empty_state)
    assert serving(s) == CLUSTER_DB


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_cluster_unreachable_never_falls_back(
    pg_stack: PgStack, environment: str, empty_state: Path
) -> None:
    s = make_settings(environment=environment, cockroach_db_url=dead_url(pg_stack, tls=True),
                      local_db_url=pg_stack.local_url, state_dir=empty_state, connect_timeout=2)
    with pytest.raises(OperationFailed, match="cluster database"):
        serving(s)


def test_verify_full_rejects_a_server_whose_certificate_does_not_match(
    tls_stack: PgStack, empty_state: Path
) -> None:
    # Same server, but a CA it was not signed with: verify-full must refuse to talk to it.
    wrong_ca = empty_state / "other-ca.crt"
    from cesar import tls

    tls.ensure_server_certificates(empty_state / "other")
    wrong_ca.write_bytes((empty_state / "other" / "ca.crt").read_bytes())
    url = tls_stack.cluster_url.replace(str(tls_stack.pg.ca_file), str(wrong_ca))
    s = make_settings(environment="production", cockroach_db_url=url, state_dir=empty_state)
    with pytest.raises(OperationFailed, match="SSL error"):
        serving(s)


def test_sslmode_disable_against_a_tls_server_is_still_refused(tls_stack: PgStack) -> None:
    url = tls_stack.cluster_url.split("?")[0] + "?sslmode=disable"
    with pytest.raises(ConfigError, match="sslmode=disable"):
        db.route(make_settings(environment="production", cockroach_db_url=url))


def test_read_replica_serves_read_only_work(tls_stack: PgStack, empty_state: Path) -> None:
    replica_db = tls_stack.create_database()
    name = replica_db.rsplit("/", 1)[1].split("?")[0]
    replica_url = tls_stack.cluster_url.replace(f"/{CLUSTER_DB}?", f"/{name}?")
    s = make_settings(environment="production", cockroach_db_url=tls_stack.cluster_url,
                      cockroach_read_replica_url=replica_url, state_dir=empty_state)
    assert serving(s, read_only=True) == name
    assert serving(s, read_only=False) == CLUSTER_DB


def test_engine_is_detected_from_the_server(pg_stack: PgStack, empty_state: Path) -> None:
    s = make_settings(local_db_url=pg_stack.local_url, state_dir=empty_state)
    with db.Database(s).open() as database:
        assert database.engine == "postgresql"
