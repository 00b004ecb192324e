"""A raw Server-Sent Events client for the tests of ``/events``: a plain socket (so a test can
cut the connection with a TCP reset, or stop reading), HTTP/1.1 chunked decoding, SSE parsing."""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Message:
    id: int | None
    event: str  # "message" unless the server named it (e.g. "reset")
    data: str
    comment: str | None = None  # a comment line (": ping") instead of an event

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class SseStream:
    """``GET /events`` with ``Accept: text/event-stream`` on its own TCP connection."""

    def __init__(self, url: str, key: str | None, *, last_id: int | None = None,
                 query: str = "", rcvbuf: int | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: the window is agreed at the handshake
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((parts.hostname, parts.port))
        lines = [f"GET /events{query} HTTP/1.1", f"Host: {parts.netloc}",
                 "Accept: text/event-stream"]
        if key:
            lines.append(f"Authorization: Bearer {key}")
        if last_id is not None:
            lines.append(f"Last-Event-ID: {last_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._raw = b""  # received, not yet decoded: a timeout loses nothing
        status_line = self._readline().decode()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := self._readline().decode().rstrip("\r\n")):
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._buffer = b""
        self.ended = False

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self._raw += data
        return bool(data)

    def _readline(self) -> bytes:
        while b"\r\n" not in self._raw:
            if not self._fill():
                line, self._raw = self._raw, b""
                return line
        line, self._raw = self._raw.split(b"\r\n", 1)
        return line + b"\r\n"

    def _read(self, size: int) -> bytes:
        while len(self._raw) < size:
            if not self._fill():
                break
        data, self._raw = self._raw[:size], self._raw[size:]
        return data

    def body(self) -> bytes:
        """The whole (non-streaming) body of an error answer."""
        return self._read(int(self.headers.get("content-length", "0")))

    def _chunk(self) -> bytes:
        # A chunk is taken only once it is complete, so a timeout leaves the state intact.
        while True:
            head, sep, rest = self._raw.partition(b"\r\n")
            if sep:
                size = int(head.strip().split(b";")[0], 16)
                if size == 0:
                    self.ended = True
                    return b""
                if len(rest) >= size + 2:
                    self._raw = rest[size + 2:]
                    return rest[:size]
            if not self._fill():
                self.ended = True
                return b""

    def next(self) -> Message | None:
        """The next event or comment; None when the stream has ended."""
        while b"\n\n" not in self._buffer:
            if self.ended:
                return None
            self._buffer += self._chunk()
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        msg = Message(None, "message", "")
        data: list[str] = []
        for line in block.decode().split("\n"):
            if line.startswith(":"):
                msg.comment = line[1:].strip()
            field, _, value = line.partition(": ")
            if field == "id":
                msg.id = int(value)
            elif field == "event":
                msg.event = value
            elif field == "data":
                data.append(value)
        msg.data = "\n".join(data)
        return msg

    def events(self, count: int) -> list[Message]:
        """The next ``count`` events (comments skipped)."""
        out: list[Message] = []
        while len(out) < count:
            msg = self.next()
            if msg is None:
                raise AssertionError(f"the stream ended after {len(out)} of {count} events")
            if msg.comment is None or msg.data:
                out.append(msg)
        return out

    def reset(self) -> None:
        """Cut the connection with a TCP reset (SO_LINGER 0), as a crashed client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
