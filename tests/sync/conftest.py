"""Fixtures of the sync's tests: two fresh databases per test, migrated, as the two sides.

Both sides are real PostgreSQL databases on the session's embedded server, created from one
migrated template (``CREATE DATABASE ... TEMPLATE``: a file copy, much faster than running the
eleven migrations twice per test). A copy also copies ``sync_node.origin``, so each copy gets a
new one, exactly as migration 010 would have drawn it.

Besides the schema's synced tables the template has ``items`` (a plain synced table for the
randomised test) and ``named_items`` (with a UNIQUE column that the two sides can violate apart).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cesar import migrate
from cesar.sync import run as sync_run
from cesar.sync.run import Options, RunReport
from cesar.sync.tables import SYNCED_TABLES, SyncSettings
from tests.helpers import REPO, PgStack, make_settings, new_state_dir, require
from tests.helpers import child_env as base_child_env

TEST_TABLES = ("items", "named_items")
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


def sync_settings(**overrides: Any) -> SyncSettings:
    """SyncSettings from the given values only (no environment, no .env files)."""
    overrides.setdefault("tables", SYNCED_TABLES + TEST_TABLES)
    return SyncSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


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


#: The second server's clock runs this far ahead of real time (libfaketime).
SKEW_SECONDS = 3.0
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


@dataclass
class Pair:
    """The two sides of one test, and ways to run the sync between them."""

    pg: PgStack
    local_url: str
    cluster_url: str
    settings: SyncSettings = field(default_factory=sync_settings)

    def url(self, side: str) -> str:
        return self.local_url if side == "local" else self.cluster_url

    def connect(self, side: str, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.url(side), autocommit=autocommit)

    def options(self, **kw: Any) -> Options:
        return Options(local_url=self.local_url, remote_url=self.cluster_url, **kw)

    def sync(self, *, full: bool = False, dry_run: bool = False, wait: float = 0.0,
             **settings: Any) -> RunReport:
        """One run in this process (``wait``: for the lease of a run that died)."""
        s = self.settings.model_copy(update=settings) if settings else self.settings
        report = sync_run.run(make_settings(), s,
                              self.options(full=full, dry_run=dry_run, wait=wait))
        assert report.in_progress is None, f"the lease is held: {report.in_progress}"
        return report

    def sql(self, side: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect(side) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

    def rows(self, side: str, table: str) -> dict[str, dict[str, Any]]:
        """Every row of ``table`` on one side, by id, as the database returns its values."""
        with self.connect(side) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            got = cur.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(
                sql.Identifier(table))).fetchall()
        return {str(r["id"]): r for r in got}

    def assert_identical(self, tables: tuple[str, ...] = SYNCED_TABLES + TEST_TABLES) -> None:
        for table in tables:
            local, cluster = self.rows("local", table), self.rows("cluster", table)
            assert local == cluster, f"{table} differs between the two sides"

    def pending(self, side: str) -> int:
        return int(self.sql(side, "SELECT count(*) FROM sync_versions WHERE pending")[0][0])

    def conflicts(self, side: str) -> list[dict[str, Any]]:
        with self.connect(side) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            return cur.execute("SELECT * FROM sync_conflicts ORDER BY detected_at, id").fetchall()


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


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> Callable[..., CliResult]:
    """``cesar ARGS`` in this process, with the test tables synced; code and both outputs."""
    from cesar.cli import main

    monkeypatch.setenv("CESAR_SYNC_TABLES", ",".join(SYNCED_TABLES + TEST_TABLES))

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:  # pragma: no cover - main always exits
            code = 0
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def child_env() -> dict[str, str]:
    """The environment of a sync subprocess: no operator configuration leaks in."""
    env = base_child_env()
    env["CESAR_SYNC_TABLES"] = ",".join(SYNCED_TABLES + TEST_TABLES)
    return env
