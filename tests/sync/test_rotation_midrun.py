"""A password rotation that switches the login while a sync run is under way.

The run reads its URLs when it starts. Connections it opens later (the lease heartbeat's, the
acknowledgements') must use the credential as it is *then*: once the rotation's grace period
ends the previous password is gone and that login is refused.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cesar.config import load_settings
from cesar.db import urls
from cesar.sync import run as sync_run
from tests.helpers import APP_ROLE
from tests.sync.helpers import Pair


def _login_url(url: str, user: str, password: str) -> str:
    parts = conninfo_to_dict(url)
    return urls.build(user=user, password=password, host=str(parts["host"]),
                      port=int(parts["port"]), dbname=str(parts["dbname"]),
                      sslmode=str(parts.get("sslmode", "disable")))


def _write_env(path: Path, pair: Pair, user: str, password: str) -> None:
    path.write_text(f"LOCAL_DB_URL={_login_url(pair.local_url, user, password)}\n"
                    f"COCKROACH_DB_URL={_login_url(pair.cluster_url, user, password)}\n")
    path.chmod(0o600)


@pytest.fixture
def login(pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A login of its own (its first password in ``tmp_path/.env``, the working directory):
    as on the hosts, the credentials come from an env file that the rotation rewrites."""
    name = f"t_rot_{uuid.uuid4().hex[:8]}"
    for variable in ("LOCAL_DB_URL", "COCKROACH_DB_URL", "COCKROACH_READ_REPLICA_URL",
                     "DATABASE_TARGET", "ENVIRONMENT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CESAR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    first = secrets.token_hex(16)
    with pair.pg.superuser() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(first)))
    _write_env(tmp_path / ".env", pair, name, first)
    try:
        yield name
    finally:
        with pair.pg.superuser() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", [name])
        for url in (pair.local_url, pair.cluster_url):
            with pair.pg.superuser(str(conninfo_to_dict(url)["dbname"])) as admin:
                # What the run created (its triggers' function) goes to the application role.
                admin.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)))
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with pair.pg.superuser() as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _rotate(pair: Pair, env_file: Path, login: str) -> None:
    """The switch to a new password, its grace period over: the old one no longer works."""
    new = secrets.token_hex(16)
    _write_env(env_file, pair, login, new)
    with pair.pg.superuser() as admin:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(login), sql.Literal(new)))


def test_a_run_spanning_a_rotation_connects_with_the_new_credential(
        pair: Pair, login: str, tmp_path: Path) -> None:
    item = str(uuid.uuid4())
    pair.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'before the rotation')", [item])
    rotated = []

    def progress(message: str) -> None:
        # Mid-run, after the lease is taken: the rotation switches the login (the env file)
        # and, its grace period over, the previous password no longer works.
        if rotated:
            return
        rotated.append(message)
        _rotate(pair, tmp_path / ".env", login)
        time.sleep(2.5)  # past a whole lease: the heartbeat must have reconnected

    sync = pair.settings.model_copy(update={"lease_seconds": 1.0})
    report = sync_run.run(load_settings(), sync, sync_run.Options(), progress)
    assert rotated, "the run never reached the point where the rotation happens"
    assert report.in_progress is None
    assert pair.sql("cluster", "SELECT val FROM items WHERE id = %s", [item]) == [
        ("before the rotation",)]
    assert pair.pending("local") == 0


def test_a_run_whose_credential_was_replaced_before_it_connected_reads_it_again(
        pair: Pair, login: str, tmp_path: Path) -> None:
    # Settings read, then the rotation switched and its grace period ended before the run's
    # first connection (a slow start on a loaded machine).
    settings = load_settings()
    _rotate(pair, tmp_path / ".env", login)
    item = str(uuid.uuid4())
    pair.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'moved')", [item])
    report = sync_run.run(settings, pair.settings, sync_run.Options())
    assert report.in_progress is None
    assert pair.sql("cluster", "SELECT val FROM items WHERE id = %s", [item]) == [("moved",)]
