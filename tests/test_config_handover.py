"""The embedded stack hands its URLs to the configuration in its 0600 state file, which is read
in development only (cesar.config.dev_urls; the connection layer asks config, never cesar.dev)."""

from __future__ import annotations

import stat

import pytest

from cesar import db
from cesar.config import DEV_STATE_FILE
from cesar.errors import ConfigError
from tests.helpers import PgStack, make_settings


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
