"""Two logins, one group role: either login runs every migration and every down file.

An object belongs to the role that created it, and only its owner may ``DROP`` it or
``CREATE OR REPLACE`` it. The embedded stack's logins start their sessions as ``cesar_app`` (a
role default), which CockroachDB has no equivalent of; these tests create a fresh pair of logins
without that default, as a CockroachDB cluster has them (members of ``cesar_app``, nothing
else), so that only the runner's own ``SET ROLE`` can make what they create shared.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cesar.db import urls
from cesar.dev.embedded import APP_ROLE
from tests.helpers import PgStack, query
from tests.migrate.helpers import file_count


@pytest.fixture
def two_logins(pg_stack: PgStack, fresh_db: str) -> Iterator[tuple[str, str]]:
    """URLs of two new logins, members of the group role, without a role default."""
    params = psycopg.conninfo.conninfo_to_dict(fresh_db)
    names = [f"t_login_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    out = []
    with pg_stack.superuser() as conn:
        for name in names:
            password = secrets.token_urlsafe(18)
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Identifier(APP_ROLE)))
            out.append(urls.build(user=name, password=password, host=str(params["host"]),
                                  port=int(str(params["port"])), dbname=str(params["dbname"]),
                                  sslmode="disable"))
    try:
        a, b = out
        yield a, b
    finally:
        with pg_stack.superuser(str(params["dbname"])) as conn:
            for name in names:
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with pg_stack.superuser() as conn:
            for name in names:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.mark.parametrize("mode", ["transactional", "per-statement"])
def test_either_login_runs_every_migration_and_every_down_file(
    two_logins: tuple[str, str], migrations: Path, cli, mode: str
) -> None:
    a, b = two_logins
    assert query(a, "SELECT current_user = session_user") == [(True,)]  # no role default
    n = file_count()

    def run(url: str, *args: str) -> None:
        result = cli(*args, "--url", url, "--migrations-dir", str(migrations), "--mode", mode)
        assert result.code == 0, result.err

    run(a, "up")
    owners = query(a, "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c "
                      "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'")
    assert owners == [(APP_ROLE,)]
    assert query(a, "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc "
                    "WHERE proname = 'sync_capture'") == [(APP_ROLE,)]
    # the other login rolls every migration back (its down files drop triggers and functions)
    run(b, "down", "--steps", str(n))
    assert query(b, "SELECT count(*) FROM schema_migrations WHERE status = 'succeeded'") \
        == [(0,)]
    run(b, "up")
    run(a, "down", "--steps", str(n))
    run(a, "up")
    assert query(a, "SELECT count(*) FROM schema_migrations WHERE status = 'succeeded'") \
        == [(n,)]
