"""The embedded PostgreSQL reachable beyond loopback, as the test hosts need it: an extra listen
address, and pg_hba.conf admitting one network with SCRAM passwords, never the superuser."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from cesar.db import urls
from cesar.dev.embedded import SUPERUSER, EmbeddedPostgres, pg_bindir
from tests.helpers import new_state_dir, require

# 127.0.0.2 answers on every Linux loopback device without any set-up, and is not 127.0.0.1.
EXTRA = "127.0.0.2"


@pytest.fixture(scope="module")
def networked_pg():
    try:
        pg_bindir()
    except Exception as exc:  # noqa: BLE001 - a missing requirement, reported as such
        require(False, str(exc))
    state_dir = new_state_dir("netlisten")
    pg = EmbeddedPostgres(state_dir, extra_listen=[EXTRA], allow_networks=[f"{EXTRA}/32"])
    state, _ = pg.up()
    try:
        yield pg, state
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def _url(state, host: str, user: str, password: str = "") -> str:
    return urls.build(user=user, password=password, host=host, port=state.port,
                      dbname="cesar_local", sslmode="disable", connect_timeout="5")


def test_application_login_connects_over_the_extra_address(networked_pg) -> None:
    _pg, state = networked_pg
    login = state.active_login
    with psycopg.connect(_url(state, EXTRA, login, state.passwords[login])) as conn:
        row = conn.execute("SELECT inet_server_addr()::text, current_user").fetchone()
    assert row is not None
    assert row[0].split("/")[0] == EXTRA


def test_wrong_password_is_refused_over_the_extra_address(networked_pg) -> None:
    _pg, state = networked_pg
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_url(state, EXTRA, state.active_login, "not-the-password"))


def test_superuser_is_refused_over_the_extra_address(networked_pg) -> None:
    _pg, state = networked_pg
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        psycopg.connect(_url(state, EXTRA, SUPERUSER, "anything"))
