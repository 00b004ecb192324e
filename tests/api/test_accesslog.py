"""The access log's batched writes (cesar/api/accesslog.py), through the logging configuration
`cesar api` gives uvicorn: fewer writes than lines, no line lost or reordered, a line written
without waiting for the next request, and everything written at close."""

from __future__ import annotations

import io
import logging
import logging.config
import time
from collections.abc import Iterator

import pytest

from cesar.api.server import log_config


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def access() -> Iterator[tuple[logging.Logger, CountingStream]]:
    stream = CountingStream()
    config = log_config("info")  # the default: a batch at least every 0.5 s
    config["handlers"]["access"]["stream"] = stream
    logging.config.dictConfig(config)
    logger = logging.getLogger("uvicorn.access")
    try:
        yield logger, stream
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)


def _line(logger: logging.Logger, n: int, status: int = 200) -> None:
    # uvicorn's own call (uvicorn/protocols/http/httptools_impl.py)
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/agents?n={n}", "1.1", status)


def test_a_burst_of_requests_is_written_in_few_writes_every_line_in_order(access) -> None:
    logger, stream = access
    for n in range(500):
        _line(logger, n)
    for handler in logger.handlers:
        handler.flush()
    lines = stream.getvalue().splitlines()
    assert [line.split("n=")[1].split(" ")[0] for line in lines] == [str(n) for n in range(500)]
    assert all(' "GET /agents?n=' in line and line.endswith("200 OK") for line in lines)
    assert stream.writes < 50  # one per line before


def test_the_last_line_is_written_without_another_request(access) -> None:
    logger, stream = access
    _line(logger, 1)
    deadline = time.monotonic() + 10
    while "n=1 " not in stream.getvalue():
        assert time.monotonic() < deadline, "the line stayed in the buffer"
        time.sleep(0.05)


def test_close_writes_what_is_buffered(access) -> None:
    logger, stream = access
    handler = logger.handlers[0]
    handler.interval = 3600  # type: ignore[attr-defined]  # no timer flush in this test
    for n in range(3):
        _line(logger, n)
    handler.close()
    assert stream.getvalue().count("GET /agents") == 3
