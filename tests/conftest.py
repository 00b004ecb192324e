"""Shared fixtures: a real embedded PostgreSQL for the whole session, fresh databases per test,
migrated databases and ``api``, the real application served over HTTP for a whole module (the
API's tests and its clients' tests, smoke and demo, use them; a module's tests must not change
that database: tests that break something make their own).

Nothing here mocks the database. A requirement that is missing fails the run in CI (CI=true)
with a message naming what to install; outside CI it skips with the same message.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from cesar.dev.embedded import EmbeddedPostgres, tls_bindir
from tests.api.helpers import ApiServer, migrated_database, serve, settings_for
from tests.helpers import CONFIG_VARS, PgStack, new_state_dir, require


@pytest.fixture(autouse=True)
def _clean_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("CESAR_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def pg_stack() -> Iterator[PgStack]:
    """One embedded PostgreSQL (pgserver's binaries) for the whole test session."""
    from cesar.dev.embedded import pg_bindir

    try:
        pg_bindir()
    except Exception as exc:  # noqa: BLE001 - reported as a requirement, not an error
        require(False, str(exc))
    state_dir = new_state_dir("session")
    pg = EmbeddedPostgres(state_dir)
    state, _ = pg.up()
    try:
        yield PgStack(pg, state)
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_stack() -> Iterator[PgStack]:
    """A second embedded server built with SSL: its cluster stand-in URL is verify-full."""
    bindir = tls_bindir()
    require(bindir is not None,
            "a PostgreSQL server built with SSL: apt-get install postgresql (Debian's package)")
    state_dir = new_state_dir("tls")
    pg = EmbeddedPostgres(state_dir, bindir=bindir)
    state, _ = pg.up()
    try:
        yield PgStack(pg, state)
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def fresh_db(pg_stack: PgStack) -> Iterator[str]:
    """A fresh, empty database for one test; yields the application login's URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_stack.create_database(name)
    try:
        yield url
    finally:
        pg_stack.drop_database(name)


@pytest.fixture(scope="module")
def migrated_url(pg_stack: PgStack) -> Iterator[str]:
    name, url = migrated_database(pg_stack)
    try:
        yield url
    finally:
        pg_stack.drop_database(name)


@pytest.fixture(scope="module")
def api(migrated_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serve(settings_for(migrated_url, tmp_path_factory.mktemp("api"))) as server:
        yield server


@pytest.fixture
def migrated_db(pg_stack: PgStack) -> Iterator[str]:
    """A migrated database for one test, which it may break."""
    name, url = migrated_database(pg_stack)
    try:
        yield url
    finally:
        pg_stack.drop_database(name)
