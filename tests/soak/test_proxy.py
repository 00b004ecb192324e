"""The fault proxy: bytes pass while linked; a cut drops open connections and refuses new
ones until restored; the upstream server itself is never touched."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import psycopg
import pytest

from cesar.soak.proxy import FaultProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[:2]
    finally:
        stop.set()
        thread.join()
        server.close()


def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def test_cut_drops_open_connections_refuses_new_ones_and_restore_heals(echo) -> None:
    with FaultProxy(*echo) as proxy:
        assert _roundtrip(proxy.port) == b"ping"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        held.sendall(b"before")
        assert held.recv(4096) == b"before"

        proxy.cut()
        # The open connection is closed under its client: EOF or a reset, never an answer.
        try:
            held.sendall(b"during")
            assert held.recv(4096) == b""
        except ConnectionError:
            pass
        held.close()
        # A new connection is accepted and closed at once: no byte comes back.
        with contextlib.suppress(ConnectionError):
            assert _roundtrip(proxy.port) == b""
        assert proxy.refused >= 1

        proxy.restore()
        assert _roundtrip(proxy.port, b"after") == b"after"
        assert len(proxy.cuts) == 1 and proxy.cuts[0][1] is not None


def test_a_database_behind_the_cut_is_unreachable_while_the_server_serves_directly(
        pg_stack) -> None:
    direct = pg_stack.url("postgres")
    with FaultProxy("127.0.0.1", pg_stack.state.port) as proxy:
        through = direct.replace(f":{pg_stack.state.port}/", f":{proxy.port}/")
        with psycopg.connect(through, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            proxy.cut()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(through, connect_timeout=2)
        # The server itself is fine: only the way through the proxy is cut.
        with psycopg.connect(direct, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.restore()
        with psycopg.connect(through, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
