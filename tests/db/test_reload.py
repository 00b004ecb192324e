"""A long-running process (the API) follows a credential change in its configuration files,
and only that: a file that now names another server or database is refused, not followed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cesar.credentials import LOGINS
from cesar.db import Database
from cesar.dev.embedded import CLUSTER_DB, LOCAL_DB
from tests.helpers import PgStack, make_settings


def _write_env(path: Path, url: str) -> None:
    path.write_text(f"LOCAL_DB_URL={url}\n")
    # a new modification time even within the file system's timestamp granularity
    later = time.time_ns() + 10_000_000_000
    os.utime(path, ns=(later, later))
    time.sleep(0.01)


def _who(database: Database) -> tuple[str, str]:
    assert database.pool is not None
    database.pool.drain()  # every connection is replaced, built from the URL as of now ...
    database.pool.wait(timeout=30)  # ... and all are there before anything changes again
    with database.connection() as conn:
        row = conn.execute("SELECT current_database(), session_user").fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_new_login_is_followed_and_another_database_is_not(
        pg_stack: PgStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = LOGINS
    for name in ("LOCAL_DB_URL", "COCKROACH_DB_URL", "DATABASE_TARGET", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    env = tmp_path / ".env"
    url = pg_stack.url(LOCAL_DB, first)
    _write_env(env, url)
    settings = make_settings(environment="development", local_db_url=url, state_dir=tmp_path)
    with Database(settings, reloadable=True).open() as database:
        assert _who(database) == (LOCAL_DB, first)

        _write_env(env, pg_stack.url(CLUSTER_DB, first))  # another database: refused
        assert _who(database) == (LOCAL_DB, first)

        _write_env(env, pg_stack.url(LOCAL_DB, second))  # a rotation: followed
        assert _who(database) == (LOCAL_DB, second)


@pytest.mark.parametrize(("old", "new", "same"), [
    ("postgresql://a:x@db:26257/d?sslmode=verify-full",
     "postgresql://b:y@db:26257/d?sslmode=verify-full", True),       # a rotation
    ("postgresql://a:x@db:26257?sslmode=verify-full",
     "postgresql://b:y@db:26257?sslmode=verify-full", False),        # no database: the user's
    ("postgresql://a:x@db/d", "postgresql://a:x@db2/d", False),      # another server
    ("postgresql://a:x@db/d", "postgresql://a:x@db/e", False),       # another database
    ("postgresql://a:x@db/d?sslmode=verify-full",
     "postgresql://a:x@db/d?sslmode=disable", False),                # weaker TLS is not a login
])
def test_what_counts_as_the_same_target(old: str, new: str, same: bool) -> None:
    from cesar.db.urls import same_target

    assert same_target(old, new) is same
