"""A server started under a deep directory still starts: its unix socket path must fit in
``sun_path`` (107 characters and a NUL), whatever the checkout's or the test's depth."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from cesar.db.sockets import SOCKET_DIR_MAX
from cesar.dev.embedded import EmbeddedPostgres


@pytest.mark.parametrize("extra", [0, 1, 40], ids=["longest-in-place", "one-longer", "deep"])
def test_the_embedded_server_starts_whatever_the_depth_of_its_state_directory(
        tmp_path: Path, extra: int) -> None:
    # a state directory whose socket directory (<state>/run) is SOCKET_DIR_MAX + extra long
    base = tmp_path / "s"
    pad = SOCKET_DIR_MAX + extra - len(str(base / "run"))
    assert pad > 0, "the test's own directory is too deep for this test"
    state_dir = base.with_name("s" + "x" * pad)
    assert len(str(state_dir / "run")) == SOCKET_DIR_MAX + extra
    pg = EmbeddedPostgres(state_dir)
    try:
        state, _ = pg.up()
        assert len(f"{state.socket_dir}/.s.PGSQL.{state.port}") <= 107
        with psycopg.connect(pg.superuser_conninfo(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # a restart listens where the first start did
        pg.restart()
        assert pg.load_state().socket_dir == state.socket_dir
        with psycopg.connect(pg.superuser_conninfo(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg.down()


def test_a_server_that_cannot_start_is_one_line_with_its_own_reason(tmp_path: Path) -> None:
    import socket

    from cesar.errors import OperationFailed

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pg = EmbeddedPostgres(tmp_path / "s", port=port)
        try:
            with pytest.raises(OperationFailed) as failed:
                pg.up()
        finally:
            pg.down()
    message = str(failed.value)
    assert "\n" not in message
    assert "Address already in use" in message and "could not create any TCP/IP sockets" in message
    assert str(pg.log_file) in message
