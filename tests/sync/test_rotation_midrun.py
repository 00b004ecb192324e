"""A password rotation that switches the login while a sync run is under way.

The run reads its URLs when it starts. Connections it opens later (the lease heartbeat's, the
acknowledgements') must use the credential as it is *then*: once the rotation's grace period
ends the previous password is gone and that login is refused.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cesar.config import load_settings
from cesar.db import urls
from cesar.sync import run as sync_run
from tests.helpers import APP_ROLE
from tests.sync.conftest import Pair


def _login_url(url: str, user: str, password: str) -> str:
    parts = conninfo_to_dict(url)
    return urls.build(user=user, password=password, host=str(parts["host"]),
                      port=int(parts["port"]), dbname=str(parts["dbname"]),
                      sslmode=str(parts.get("sslmode", "disable")))


def _write_env(path: Path, pair: Pair, user: str, password: str) -> None:
    path.write_text(f"LOCAL_DB_URL={_login_url(pair.local_url, user, password)}\n"
                    f"COCKROACH_DB_URL={_login_url(pair.cluster_url, user, password)}\n")
    path.chmod(0o600)


def test_a_run_spanning_a_rotation_connects_with_the_new_credential(
        pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    login = f"t_rot_{uuid.uuid4().hex[:8]}"
    old, new = secrets.token_hex(16), secrets.token_hex(16)
    # As on the hosts: the credentials come from an env file the rotation rewrites.
    for name in ("LOCAL_DB_URL", "COCKROACH_DB_URL", "COCKROACH_READ_REPLICA_URL",
                 "DATABASE_TARGET", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CESAR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    env_file = tmp_path / ".env"
    with pair.pg.superuser() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(login), sql.Literal(old)))
    try:
        _write_env(env_file, pair, login, old)
        item = str(uuid.uuid4())
        pair.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'before the rotation')",
                 [item])
        rotated = []

        def progress(message: str) -> None:
            # Mid-run, after the lease is taken: the rotation switches the login (the env
            # file) and, its grace period over, the previous password no longer works.
            if rotated:
                return
            rotated.append(message)
            _write_env(env_file, pair, login, new)
            with pair.pg.superuser() as admin:
                admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(login), sql.Literal(new)))
            time.sleep(2.5)  # past a whole lease: the heartbeat must have reconnected

        settings = load_settings()
        sync = pair.settings.model_copy(update={"lease_seconds": 1.0})
        report = sync_run.run(settings, sync, sync_run.Options(), progress)
        assert rotated, "the run never reached the point where the rotation happens"
        assert report.in_progress is None
        assert pair.sql("cluster", "SELECT val FROM items WHERE id = %s", [item]) == [
            ("before the rotation",)]
        assert pair.pending("local") == 0
    finally:
        with pair.pg.superuser() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", [login])
        for url in (pair.local_url, pair.cluster_url):
            with pair.pg.superuser(str(conninfo_to_dict(url)["dbname"])) as admin:
                # What the run created (its triggers' function) goes to the application role.
                admin.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    sql.Identifier(login), sql.Identifier(APP_ROLE)))
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(login)))
        with pair.pg.superuser() as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))
