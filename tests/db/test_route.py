"""The routing matrix, against real servers: each environment x which URLs are set x whether
the cluster answers. What serves queries is read back from the server (current_database())."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cesar import db
from cesar.dev.embedded import CLUSTER_DB, LOCAL_DB, free_port
from cesar.errors import ConfigError, OperationFailed
from tests.helpers import PgStack, make_settings


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
    from cesar.dev import tls

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


# Real `SELECT version()` answers: CockroachDB release builds (CCL and OSS), a Cloud build with
# no variant word, a development build, and PostgreSQL from pgserver and Debian.
VERSION_STRINGS = [
    ("CockroachDB CCL v24.3.5 (x86_64-pc-linux-gnu, built 2025/02/13 16:46:31, go1.22.8 "
     "X:nocoverageredesign)", "cockroachdb", "v24.3.5"),
    ("CockroachDB CCL v25.2.23 (x86_64-pc-linux-gnu, built 2025/09/02 17:01:28, go1.23.12)",
     "cockroachdb", "v25.2.23"),
    ("CockroachDB OSS v24.1.0 (x86_64-pc-linux-gnu, built 2024/05/20)", "cockroachdb", "v24.1.0"),
    ("CockroachDB v24.1.0-alpha.1", "cockroachdb", "v24.1.0-alpha.1"),
    ("CockroachDB CCL v25.4.0-alpha.2-dev-5f5c6a65f739d6b247afec3411ed1284266bd1f7 "
     "(x86_64-pc-linux-gnu, built 2025/09/17 06:08:24, go1.23.12 X:nocoverageredesign)",
     "cockroachdb", "v25.4.0-alpha.2"),
    ("PostgreSQL 16.2 on x86_64-pc-linux-gnu, compiled by gcc (GCC) 8.5.0, 64-bit",
     "postgresql", "16.2"),
    ("PostgreSQL 15.8 (Debian 15.8-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc (Debian "
     "12.2.0-14) 12.2.0, 64-bit", "postgresql", "15.8"),
]


@pytest.mark.parametrize(("text", "engine", "version"), VERSION_STRINGS)
def test_version_strings_are_parsed(text: str, engine: str, version: str) -> None:
    from cesar.cockroach import parse_server_version

    parsed = parse_server_version(text)
    assert (parsed.engine, parsed.version_text) == (engine, version)


@pytest.mark.parametrize(("text", "engine", "version"), VERSION_STRINGS)
def test_engine_detection_reads_the_servers_own_answer(
        pg_stack: PgStack, fresh_db: str, text: str, engine: str, version: str) -> None:
    """A real session whose version() answers with each string (a function earlier on the
    search path than pg_catalog's): detection follows the answer, never the URL."""
    import psycopg
    from psycopg import sql

    dbname = fresh_db.rsplit("/", 1)[1].split("?")[0]
    with pg_stack.superuser(dbname) as su:
        su.execute(sql.SQL("CREATE FUNCTION public.version() RETURNS text LANGUAGE sql "
                           "AS {}").format(sql.Literal(f"SELECT {sql.Literal(text).as_string()}")))
    with psycopg.connect(fresh_db, options="-c search_path=public,pg_catalog") as conn:
        assert conn.execute("SELECT version()").fetchone()[0] == text
        assert db.detect_engine(conn) == engine
