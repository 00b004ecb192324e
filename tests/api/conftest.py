"""Fixtures of the API's tests: migrated databases on the session's PostgreSQL (migrated by the
real runner) and ``api``, the real application served over HTTP for a whole module, on a
database that the module's tests must not change (tests that break something make their own).
Nothing is mocked; the helpers the tests call live in tests/api/helpers.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.helpers import ApiServer, migrated_database, serve, settings_for
from tests.helpers import PgStack


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
