"""A TCP fault proxy: the cluster database made unreachable while the local one keeps serving.

The embedded stack serves both databases from one PostgreSQL server, so stopping the server
cannot take the cluster away alone; clients of the cluster connect through this proxy instead,
and :meth:`FaultProxy.cut` makes it behave like a partition that resets: every open connection
is closed at once and every new one is closed as soon as it is accepted, until
:meth:`FaultProxy.restore`. ``tc netem`` and toxiproxy are not available on these machines.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

BUFFER = 65536


class FaultProxy:
    """Forward ``listen_host:port`` to ``upstream``; ``cut()`` / ``restore()`` the link."""

    def __init__(self, upstream_host: str, upstream_port: int, *,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((listen_host, listen_port), reuse_port=False)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.accepted = 0
        self.refused = 0  # connections closed on arrival while cut
        self.cuts: list[tuple[float, float | None]] = []  # (cut at, restored at) wall clock

    # ------------------------------------------------------------------ control
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()
        self._close_all()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._cut = True
            self.cuts.append((time.time(), None))
        self._close_all()

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            if self.cuts and self.cuts[-1][1] is None:
                self.cuts[-1] = (self.cuts[-1][0], time.time())

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    def _close_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._cut:  # cut while connecting: this one is dropped too
                    _close(client)
                    _close(upstream)
                    continue
                self._open.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
