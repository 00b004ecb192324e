"""The access log's handler: lines written in batches, not one ``write`` per request.

A ``StreamHandler`` writes and flushes each line on the event loop. Every write is a system call
that releases the GIL, and on a busy worker another thread (the threaded read path's workers,
the pool's) takes it and keeps it for up to the interpreter's switch interval: measured with
wrk on 2 cores, the per-line write halved the requests per second of ``/agents``
(docs/performance.md). Here a line is formatted at once (its timestamp is the request's) and
appended to a buffer; the buffer is written in one call when it holds ``capacity`` characters,
when a line of level WARNING or worse arrives, every ``interval`` seconds (a daemon thread), and
when the application shuts down (:func:`flush_all`, from the lifespan's end: uvicorn re-raises
the SIGTERM it caught once it has stopped, so the process ends without running ``atexit`` and
``logging.shutdown`` never flushes). ``interval=0`` writes each line at once.

What a buffer costs: a process killed with SIGKILL loses at most the last ``interval`` seconds of
access lines (no other log line: only ``uvicorn.access`` uses this handler), and access lines
can reach the stream up to ``interval`` seconds after other loggers' lines of the same moment;
each line keeps its own timestamp.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import IO, Any

_handlers: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()


def flush_all() -> None:
    """Write every buffered access line of this process now."""
    for handler in list(_handlers):
        handler.flush()


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: IO[str] | None = None, interval: float = 0.5,
                 capacity: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.interval = interval
        self.capacity = capacity
        self._buffer: list[str] = []
        self._size = 0
        self._flusher: threading.Thread | None = None
        self._stopped = threading.Event()
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.interval <= 0:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
            return
        self._buffer.append(line)
        self._size += len(line)
        if self._flusher is None:
            # Started by the first line, so in the process that serves (uvicorn's workers are
            # spawned after the logging configuration is made).
            self._flusher = threading.Thread(target=self._flush_every, name="cesar-access-log",
                                             daemon=True)
            self._flusher.start()
        if self._size >= self.capacity or record.levelno >= logging.WARNING:
            self._write()

    def _write(self) -> None:
        """Write the buffer in one call; the caller holds the handler's lock."""
        if not self._buffer:
            return
        text = "".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or full stream: as StreamHandler, go on
            pass

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()
        super().flush()

    def _flush_every(self) -> None:
        while not self._stopped.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def handler_config(interval: float) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` entry of the access handler."""
    return {"()": f"{__name__}.BufferedStreamHandler", "formatter": "access",
            "stream": "ext://sys.stderr", "interval": interval}
