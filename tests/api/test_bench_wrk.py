"""The API benchmarks' load generator (cesar/bench/api.py): wrk against a real HTTP server, and
one line naming the Debian package when wrk is missing. (Benchmarks are never tests: this only
checks that the generator sends what the server needs and reads wrk's figures back.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cesar.bench import api
from tests.helpers import REPO, require


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API
    seen: list[tuple[str, str, str | None, str | None, bytes]] = []

    def _answer(self, status: int) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        Recorder.seen.append((self.command, self.path, self.headers.get("Authorization"),
                              self.headers.get("Idempotency-Key"), body))
        out = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(200 if self.path == "/ok" else 500)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(201)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    require(shutil.which("wrk") is not None, "wrk (Debian package wrk)")
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_wrk_sends_the_key_and_reads_back_its_figures(server: int) -> None:
    f = api.measure_wrk("127.0.0.1", server, "agents", "/ok", 2, 1, 0,
                        authorization="Bearer not-a-real-key")
    assert f.requests > 10 and f.errors == 0
    assert 0 < f.p50_ms <= f.p95_ms <= f.p99_ms <= f.max_ms
    assert len(Recorder.seen) >= f.requests  # wrk counts only answers completed in time
    assert {(m, p, a) for m, p, a, _, _ in Recorder.seen} == {("GET", "/ok",
                                                               "Bearer not-a-real-key")}


def test_wrk_counts_error_statuses(server: int) -> None:
    f = api.measure_wrk("127.0.0.1", server, "bare", "/fails", 2, 1, 0)
    assert f.requests > 0 and f.errors == f.requests


def test_wrk_posts_each_task_with_its_own_idempotency_key(server: int) -> None:
    f = api.measure_wrk("127.0.0.1", server, "tasks", "/tasks", 2, 1, 1,
                        authorization="Bearer k", body='{"title": "x"}', idempotent=True)
    assert f.requests > 10 and f.errors == 0
    keys = [k for _, _, _, k, _ in Recorder.seen]
    assert all(m == "POST" and b == b'{"title": "x"}' for m, _, _, _, b in Recorder.seen)
    assert None not in keys and len(set(keys)) == len(keys)  # warm-up and run included


def test_without_wrk_the_suite_names_the_package(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with Python and no wrk
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir), "CESAR_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "invoke", "bench", "--suite", "api_levers"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "invoke bench: the load generator wrk is not installed: `apt-get install wrk` "
        "(Debian package wrk), or pass --load-generator python"], done.stderr
