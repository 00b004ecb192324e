"""The embedded stack hands its URLs to the configuration in its 0600 state file, which is read
in development only (cesar.config.dev_urls; the connection layer asks config, never cesar.dev)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cesar import db
from cesar.config import DEV_STATE_FILE, dev_server
from cesar.errors import ConfigError
from tests.helpers import REPO, PgStack, child_env, make_settings


def test_the_running_stack_hands_over_its_urls(pg_stack: PgStack) -> None:
    settings = make_settings(state_dir=pg_stack.pg.state_dir)
    assert db.embedded_urls(settings) == (pg_stack.local_url, pg_stack.cluster_url)
    mode = stat.S_IMODE((pg_stack.pg.state_dir / DEV_STATE_FILE).stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_the_file_is_never_read_outside_development(pg_stack: PgStack, environment: str) -> None:
    settings = make_settings(environment=environment, state_dir=pg_stack.pg.state_dir,
                             cockroach_db_url="postgresql://u:p@db.example/c?sslmode=verify-full")
    assert db.embedded_urls(settings) == (None, None)


def test_a_rotation_saves_the_new_password_and_its_url_together(tmp_path) -> None:
    from cesar.dev.embedded import EmbeddedPostgres, StackState

    pg = EmbeddedPostgres(tmp_path)
    state = StackState(port=5999, passwords={"cesar_app_a": "one", "cesar_app_b": "two"})
    pg.save_state(state)
    state.active_login = "cesar_app_b"
    pg.save_state(state)
    local, cluster = db.embedded_urls(make_settings(state_dir=tmp_path))
    assert local == pg.local_url(state) and ":two@" in local and ":two@" in cluster
    assert pg.load_state() == state  # the URLs ride along without becoming state


def test_an_unreadable_file_is_one_line_naming_it(tmp_path) -> None:
    (tmp_path / DEV_STATE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable.*run `invoke up` again"):
        db.embedded_urls(make_settings(state_dir=tmp_path))


def test_backups_reach_the_embedded_server_without_the_dev_stack_s_code(pg_stack: PgStack) -> None:
    # A fresh interpreter, as `cesar backup` runs: the server is found from the handed-over
    # file alone, and it is the running server (a query as its superuser answers).
    code = (
        "import sys\n"
        "from cesar.backup.settings import BackupSettings, resolve\n"
        "from cesar.config import load_settings\n"
        "server = resolve(load_settings(), BackupSettings(_env_file=None))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('cesar.dev'))\n"
        "assert not loaded, loaded\n"
        "with server.connect('cesar_local') as conn:\n"
        "    print(conn.execute('SELECT current_user, current_database()').fetchone())\n"
        "print(server.repo)\n"
    )
    env = {**child_env(), "CESAR_STATE_DIR": str(pg_stack.pg.state_dir)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["('postgres', 'cesar_local')",
                                        str(pg_stack.pg.state_dir / "backups")]


def test_a_state_file_from_before_the_server_was_handed_over_asks_for_invoke_up(
        tmp_path: Path) -> None:
    from cesar.backup.settings import BackupSettings, resolve
    from cesar.dev.embedded import EmbeddedPostgres, StackState

    pg = EmbeddedPostgres(tmp_path)
    pg.save_state(StackState(port=5999, passwords={"cesar_app_a": "one", "cesar_app_b": "two"}))
    data = json.loads((tmp_path / DEV_STATE_FILE).read_text())
    del data["server"]
    (tmp_path / DEV_STATE_FILE).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="run `invoke up` first"):
        resolve(make_settings(state_dir=tmp_path), BackupSettings(_env_file=None))
    assert pg.load_state() is not None  # the stack itself still reads it


def test_a_mangled_server_entry_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / DEV_STATE_FILE).write_text(json.dumps({"server": {"port": "x"}}))
    with pytest.raises(ConfigError, match=f"{DEV_STATE_FILE} is unreadable.*invoke up"):
        dev_server(make_settings(state_dir=tmp_path))
