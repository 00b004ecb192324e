"""Fixtures of the sync's tests: two fresh databases per test, migrated, as the two sides.

Both sides are real PostgreSQL databases on the session's embedded server, created from one
migrated template (``CREATE DATABASE ... TEMPLATE``: a file copy, much faster than running the
eleven migrations twice per test). A copy also copies ``sync_node.origin``, so each copy gets a
new one, exactly as migration 010 would have drawn it.

Besides the schema's synced tables the template has the test tables (tests/sync/helpers.py
TEST_TABLES). The helpers the tests call (``Pair``, ``sync_settings``) live in that module.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cesar import migrate
from cesar.sync.tables import SYNCED_TABLES
from tests.helpers import (
    REPO,
    CliResult,
    PgStack,
    make_settings,
    new_state_dir,
    require,
    run_in_process,
)
from tests.sync.helpers import SKEW_SECONDS, TEST_TABLES, Pair, sync_settings

TEST_DDL = """
CREATE TABLE items (
    id         UUID        PRIMARY KEY,
    val        TEXT        NOT NULL,
    n          INT         NOT NULL DEFAULT 0,
    doc        JSONB       NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE named_items (
    id    UUID PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE,
    note  TEXT
);
"""
CAPTURE = ("CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
           "WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on') "
           "EXECUTE FUNCTION sync_capture()")
NEW_ORIGIN = ("UPDATE sync_node SET origin = substr(replace(gen_random_uuid()::TEXT, '-', ''), "
              "1, 16) WHERE singleton")


def _template(stack: PgStack) -> str:
    name = f"sync_tmpl_{uuid.uuid4().hex[:8]}"
    url = stack.create_database(name)
    migrate.apply_all(url, make_settings(), migrations_dir=REPO / "sql" / "migrations")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TEST_DDL)
        for table in TEST_TABLES:
            conn.execute(sql.SQL(CAPTURE).format(sql.Identifier(table)))
    return name


@pytest.fixture(scope="session")
def sync_template(pg_stack: PgStack) -> Iterator[str]:
    """A database with every migration and the test tables, used only as a template."""
    name = _template(pg_stack)
    try:
        yield name
    finally:
        pg_stack.drop_database(name)


FAKETIME_LIBS = (Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
                 Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"))


@pytest.fixture(scope="session")
def skewed_stack() -> Iterator[PgStack]:
    """A second PostgreSQL server (its own data directory, port and postmaster) started under
    libfaketime (Debian's ``faketime``): its clock is SKEW_SECONDS ahead of this host's."""
    lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
    require(lib is not None, "libfaketime: apt-get install faketime")
    from cesar.dev.embedded import EmbeddedPostgres

    state_dir = new_state_dir("skewed")
    pg = EmbeddedPostgres(state_dir)
    faked = {"LD_PRELOAD": str(lib), "FAKETIME": f"+{SKEW_SECONDS:g}s",
             "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    saved = {k: os.environ.get(k) for k in faked}
    os.environ.update(faked)  # inherited by pg_ctl, the postmaster and its backends only
    try:
        state, _ = pg.up()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    stack = PgStack(pg, state)
    try:
        with stack.superuser() as conn:
            before = time.time()
            row = conn.execute("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS FLOAT8)"
                               ).fetchone()
            ahead = float(row[0]) - (before + time.time()) / 2  # type: ignore[index]
        assert abs(ahead - SKEW_SECONDS) < 1, f"the faked clock is {ahead:.2f} s ahead"
        yield stack
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def skewed_template(skewed_stack: PgStack) -> Iterator[str]:
    name = _template(skewed_stack)
    try:
        yield name
    finally:
        skewed_stack.drop_database(name)


def _copy(stack: PgStack, template: str, names: list[tuple[PgStack, str]]) -> str:
    name = f"t_sync_{uuid.uuid4().hex[:10]}"
    with stack.superuser() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER cesar_app").format(
            sql.Identifier(name), sql.Identifier(template)))
    names.append((stack, name))
    url = stack.url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(NEW_ORIGIN)
    return url


@pytest.fixture
def make_pair(pg_stack: PgStack, sync_template: str) -> Iterator[Callable[[], Pair]]:
    """Creates pairs of fresh databases (dropped at the end of the test)."""
    names: list[tuple[PgStack, str]] = []

    def make() -> Pair:
        return Pair(pg_stack, _copy(pg_stack, sync_template, names),
                    _copy(pg_stack, sync_template, names))

    yield make
    for stack, name in names:
        stack.drop_database(name)


@pytest.fixture
def skewed_pair(pg_stack: PgStack, sync_template: str, skewed_stack: PgStack,
                skewed_template: str) -> Iterator[Pair]:
    """Two fresh databases on two servers: the local side on the session's server, the cluster
    side on the server whose clock is SKEW_SECONDS ahead. Not yet paired."""
    names: list[tuple[PgStack, str]] = []
    yield Pair(pg_stack, _copy(pg_stack, sync_template, names),
               _copy(skewed_stack, skewed_template, names),
               settings=sync_settings(max_clock_skew_ms=int(SKEW_SECONDS * 1000) + 2000))
    for stack, name in names:
        stack.drop_database(name)


@pytest.fixture
def pair(make_pair: Callable[[], Pair]) -> Pair:
    """Two fresh databases, migrated, not yet paired."""
    return make_pair()


@pytest.fixture
def synced(pair: Pair) -> Pair:
    """Two fresh databases after their first run (paired; the seeded agents reconciled)."""
    pair.sync()
    return pair


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> Callable[..., CliResult]:
    """``cesar ARGS`` in this process, with the test tables synced; code and both outputs."""
    monkeypatch.setenv("CESAR_SYNC_TABLES", ",".join(SYNCED_TABLES + TEST_TABLES))

    def run(*args: str) -> CliResult:
        return run_in_process(capsys, args)

    return run
