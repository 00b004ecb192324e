"""Helpers of the sync's tests: the two sides of a test (``Pair``), the settings and the
environment that sync the test tables, and the skew of the second server's clock.

Fixtures live in conftest.py beside this file.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cesar.sync import run as sync_run
from cesar.sync.run import Options, RunReport
from cesar.sync.tables import SYNCED_TABLES, SyncSettings
from tests.helpers import PgStack, make_settings
from tests.helpers import child_env as base_child_env

#: Tables of the test template besides the schema's: ``items`` (a plain synced table for the
#: randomised test) and ``named_items`` (a UNIQUE column the two sides can violate apart).
TEST_TABLES = ("items", "named_items")

#: The second server's clock runs this far ahead of real time (libfaketime).
SKEW_SECONDS = 3.0


def sync_settings(**overrides: Any) -> SyncSettings:
    """SyncSettings from the given values only (no environment, no .env files)."""
    overrides.setdefault("tables", SYNCED_TABLES + TEST_TABLES)
    return SyncSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


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


def child_env() -> dict[str, str]:
    """The environment of a sync subprocess: no operator configuration leaks in."""
    env = base_child_env()
    env["CESAR_SYNC_TABLES"] = ",".join(SYNCED_TABLES + TEST_TABLES)
    return env


BYPASS = "SELECT set_config('cesar.sync_apply', 'on', false)"  # a session the capture ignores


def bypass(pair: Pair, side: str, *statements: tuple[str, list]) -> None:
    """Run statements that the capture does not see (drift: what --full is for)."""
    with pair.connect(side) as conn:
        conn.execute(BYPASS)
        for query, params in statements:
            conn.execute(query, params)  # type: ignore[arg-type]


def superuser(pair: Pair, side: str = "local") -> psycopg.Connection[Any]:
    """The server's superuser, connected to ``side``'s database of ``pair``."""
    dbname = psycopg.conninfo.conninfo_to_dict(pair.url(side))["dbname"]
    return pair.pg.superuser(str(dbname))


def sleeping(pair: Pair, side: str) -> int:
    """Sessions of ``side``'s database waiting in ``pg_sleep`` (a test's stall), counted as the
    superuser: another login's waits are hidden from the application's."""
    with superuser(pair, side) as su:
        row = su.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                         "AND datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def function_calls(conn: psycopg.Connection[Any], functions: tuple[str, ...], statement: str,
                   params: Any = None) -> int:
    """How many times the PL/pgSQL ``functions`` ran for ``statement`` (its own transaction;
    counted by the server: track_functions, read before the commit)."""
    count = ("SELECT coalesce(sum(pg_stat_get_xact_function_calls(p.oid)), 0) FROM pg_proc p "
             "WHERE p.proname = ANY(%s)")
    with conn.transaction():
        conn.execute("SET LOCAL track_functions = 'pl'")
        before = conn.execute(count, [list(functions)]).fetchone()
        conn.execute(statement, params)
        after = conn.execute(count, [list(functions)]).fetchone()
    assert before is not None and after is not None
    return int(after[0]) - int(before[0])


# ------------------------------------------------------------ the bulk path's tests
#: Small enough for a test: 2,500 rows are three chunks.
BULK = {"bulk_threshold": 1000, "bulk_chunk": 1000}
ROWS = 2500


def fill(pair: Pair, side: str = "local", n: int = ROWS, val: str = "bulk") -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    pair.sql(side, "INSERT INTO items (id, val, n, doc) SELECT i, %s, 7, "
                   "jsonb_build_object('k', i::TEXT) FROM unnest(%s::uuid[]) AS i", [val, ids])
    return ids


def versions(pair: Pair, side: str) -> dict[str, tuple]:
    return {pk: (v, o, d) for pk, v, o, d in pair.sql(
        side, "SELECT pk, version, origin, deleted FROM sync_versions "
              "WHERE table_name = 'items'")}


def items_report(report, direction: str = "local_to_cluster"):  # type: ignore[no-untyped-def]
    return next(t for t in report.tables if t.table == "items" and t.direction == direction)
