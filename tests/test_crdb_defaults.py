"""CockroachDB v26.1's changed defaults: ``crdb_internal`` and ``system`` tables are refused to
ordinary sessions (``allow_unsafe_internals`` off), and new tables are schema-locked. The code
reads only what a non-admin login may read on every supported release, and unlocks a table
before ``SET LOCALITY``.

The CockroachDB paths are reached on a real PostgreSQL session whose ``version()`` answers as
CockroachDB (a function ahead of ``pg_catalog`` on the search path): the engine switch is real,
and any read of a CockroachDB-only catalog fails there as it would on v26.1."""

from __future__ import annotations

import ast
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cesar.db import engines
from cesar.migrate import regions as migrate_regions
from cesar.rotate import rotator
from tests.helpers import REPO, PgStack

V26_1 = "CockroachDB CCL v26.1.2 (x86_64-pc-linux-gnu, built 2026/03/10 11:02:03, go1.23.12)"


def answer_as(pg_stack: PgStack, url: str, version_text: str) -> psycopg.Connection:
    """A session on ``url`` whose ``SELECT version()`` answers ``version_text``."""
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    body = f"SELECT {sql.Literal(version_text).as_string()}"
    with pg_stack.superuser(dbname) as su:
        su.execute(sql.SQL("CREATE FUNCTION public.version() RETURNS text LANGUAGE sql "
                           "AS {}").format(sql.Literal(body)))
    return psycopg.connect(url, autocommit=True, options="-c search_path=public,pg_catalog")


@pytest.fixture
def crdb_session(pg_stack: PgStack, fresh_db: str) -> psycopg.Connection:
    conn = answer_as(pg_stack, fresh_db, V26_1)
    yield conn
    conn.close()


def test_rotation_reads_no_internal_table_to_save_the_old_verifier(
        crdb_session: psycopg.Connection) -> None:
    assert engines.of(crdb_session) is engines.COCKROACHDB
    assert rotator.read_verifier(crdb_session, "cesar_app_a") is None


def _sql_strings(path: Path) -> list[str]:
    """Every string constant of a module (SQL lives in them), comments and docstrings aside."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_module_queries_crdb_internal_or_system_tables() -> None:
    offenders = []
    for path in sorted((REPO / "cesar").rglob("*.py")):
        for text in _sql_strings(path):
            lowered = text.lower()
            if "crdb_internal." in lowered or "from system." in lowered \
                    or "system.users" in lowered:
                offenders.append(f"{path.relative_to(REPO)}: {text[:70]!r}")
    assert offenders == []


def test_the_locality_catalog_reads_show_statements_only() -> None:
    for query in migrate_regions.CATALOG_QUERIES:
        assert "[SHOW " in query and "crdb_internal" not in query


def test_set_locality_runs_on_an_unlocked_table() -> None:
    statements = migrate_regions.statements_for("agents", "us-east1")
    unlock = statements.index('ALTER TABLE "agents" SET (schema_locked = false)')
    locality = statements.index('ALTER TABLE "agents" SET LOCALITY REGIONAL BY ROW')
    assert unlock < locality


@pytest.mark.parametrize(("version_text", "status", "fragment"), [
    ("CockroachDB CCL v24.3.5 (x86_64-pc-linux-gnu, built 2025/02/13 16:46:31, go1.22.8)", "fail",
     "CockroachDB v24.3.5 is older than v25.4, the oldest release this project supports "
     "(pinned: v25.4.10)"),
    ("CockroachDB CCL v25.4.10 (x86_64-pc-linux-gnu, built 2026/05/06 12:00:00, go1.23.12)",
     "pass", "(engine cockroachdb)"),
    (V26_1, "pass", "pinned v25.4.10, run `cesar doctor` after an upgrade"),
    ("CockroachDB CCL master-dev (x86_64-pc-linux-gnu, built 2026/05/06 12:00:00)", "fail",
     "a CockroachDB server whose release cannot be parsed from version() ('CockroachDB CCL "
     "master-dev"),
])
def test_smoke_judges_a_cockroachdb_server_by_the_pinned_release(
        pg_stack: PgStack, fresh_db: str, version_text: str, status: str, fragment: str) -> None:
    from cesar import smoke

    options = smoke.Options(url=fresh_db, variable="--url", environment="development",
                            api_url="http://127.0.0.1:9")
    with answer_as(pg_stack, fresh_db, version_text) as conn:
        ctx = smoke.Context(options, {}, conn=conn)
        got_status, detail = smoke.check_server(ctx)
    assert ctx.engine == "cockroachdb"
    assert got_status == status and fragment in detail, detail
