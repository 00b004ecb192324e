"""``invoke bench --suite api``: latency and throughput of the API, against a bare endpoint.

Starts ``cesar api`` (one worker, the production defaults, access log included) on a free port
against the configured database, then drives ``/health``, ``/agents`` and ``/health/live`` (the
bare endpoint: same server, same middleware, no database) with 1, 10 and 50 concurrent clients,
in the same run, so the database's cost reads as a ratio. Each client is a keep-alive HTTP/1.1
connection sending its next request when the previous answer has arrived (a closed loop), so
the figures include the queueing that concurrency causes. The load generator is a few lines of
asyncio (no HTTP library in the loop) so that it steals as little CPU as possible from the
server on a small machine; it runs in this process, on the same machine.

Targets: p95 of ``/agents`` at 50 clients under 20 ms, and within 3x of the bare
endpoint's p95 at 50 clients.

Authentication is on, as in production: the run creates an API key (``agents:read``,
``health:detail``) in the configured database, sends it with every ``/health`` and ``/agents``
request, and revokes it at the end; ``/health/live`` needs none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from cesar.dev.embedded import free_port

ENDPOINTS = {"bare": "/health/live", "health": "/health", "agents": "/agents"}
TARGET_P95_MS = 20.0
TARGET_RATIO = 3.0


@dataclass
class Figures:
    endpoint: str
    path: str
    clients: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> int:
    """Send one HTTP/1.1 request on a kept-alive connection, read the whole answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


#: The header lines sent with every request but the bare endpoint's (the run's API key).
AUTH_HEADER: list[str] = []


async def _client(host: str, port: int, path: str, stop_at: float, record_from: float,
                  latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    extra = "" if path == ENDPOINTS["bare"] else "".join(f"{h}\r\n" for h in AUTH_HEADER)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            status = await roundtrip(reader, writer, request)
            ended = time.perf_counter()
            if started >= record_from:
                latencies.append(ended - started)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


async def _drive(host: str, port: int, path: str, clients: int, seconds: float,
                 warmup: float) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    errors: list[int] = []
    now = time.perf_counter()
    record_from, stop_at = now + warmup, now + warmup + seconds
    await asyncio.gather(*(
        _client(host, port, path, stop_at, record_from, latencies, errors)
        for _ in range(clients)
    ))
    return latencies, errors, seconds


def measure(host: str, port: int, name: str, clients: int, seconds: float,
            warmup: float) -> Figures:
    path = ENDPOINTS[name]
    latencies, errors, elapsed = asyncio.run(_drive(host, port, path, clients, seconds, warmup))
    ms = sorted(v * 1000 for v in latencies)
    return Figures(name, path, clients, len(ms), len(errors), elapsed,
                   round(percentile(ms, 50), 2), round(percentile(ms, 95), 2),
                   round(percentile(ms, 99), 2), round(ms[-1] if ms else float("nan"), 2))


# ------------------------------------------------------------------------------ the key
def _make_key() -> str:
    from cesar import db, keys
    from cesar.config import load_settings

    settings = load_settings()
    with db.connect(db.route(settings).primary, settings, autocommit=True) as conn:
        return keys.create(conn, "bench", ["agents:read", "health:detail"],
                           actor=f"invoke bench ({keys.operator()})").key


def _revoke(key: str) -> None:
    from cesar import db, keys
    from cesar.config import load_settings

    settings = load_settings()
    with db.connect(db.route(settings).primary, settings, autocommit=True) as conn:
        keys.revoke(conn, keys.prefix_of(key), actor=f"invoke bench ({keys.operator()})")


# ------------------------------------------------------------------------------ server
class Server:
    """``cesar api`` as a child process on a free port (its log in a temporary file)."""

    def __init__(self, port: int, workers: int) -> None:
        self.port = port
        self.workers = workers
        fd, name = tempfile.mkstemp(prefix="cesar-bench-api-", suffix=".log")
        os.close(fd)
        self.log = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "cesar.cli", "api", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers)]
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: `cesar api` exited: {self.tail()}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise SystemExit(f"bench: the API did not answer 200 on /health in 30 s: {self.tail()}")

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(empty log)"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ report
def _table(rows: list[Figures], bare_p95: dict[int, float]) -> str:
    out = [f"{'endpoint':<8} {'path':<13} {'clients':>7} {'requests':>8} {'req/s':>8} "
           f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'p95/bare':>8} {'errors':>6}"]
    for f in rows:
        ratio = f.p95_ms / bare_p95[f.clients] if bare_p95.get(f.clients) else float("nan")
        out.append(f"{f.endpoint:<8} {f.path:<13} {f.clients:>7} {f.requests:>8} "
                   f"{f.rps:>8.0f} {f.p50_ms:>7.2f} {f.p95_ms:>7.2f} {f.p99_ms:>7.2f} "
                   f"{f.max_ms:>7.2f} {ratio:>8.2f} {f.errors:>6}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured seconds per endpoint and concurrency (default 3)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="unmeasured seconds before each measurement (default 0.5)")
    parser.add_argument("--clients", default="1,10,50",
                        help="concurrency levels, comma-separated (default 1,10,50)")
    parser.add_argument("--workers", type=int, default=1, help="`cesar api --workers` (1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-events", action="store_true",
                        help="skip the /events figures (cesar/bench/events.py)")
    parser.add_argument("--no-tasks", action="store_true",
                        help="skip the POST /tasks rows (cesar/bench/api_tasks.py)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c]

    port = free_port()
    rows: list[Figures] = []
    started = time.perf_counter()
    key = _make_key()
    AUTH_HEADER[:] = [f"Authorization: Bearer {key}"]
    try:
        with Server(port, args.workers):
            for clients in levels:
                for name in ENDPOINTS:
                    rows.append(measure("127.0.0.1", port, name, clients, args.seconds,
                                        args.warmup))
            if not args.no_tasks:  # the write path: POST /tasks at 10 and 50 clients
                from cesar.bench import api_tasks
                rows.extend(api_tasks.run("127.0.0.1", port, args.seconds, args.warmup))
    finally:
        _revoke(key)
    bare = {f.clients: f.p95_ms for f in rows if f.endpoint == "bare"}
    agents_top = next((f for f in rows if f.endpoint == "agents" and f.clients == max(levels)),
                      None)
    verdict = {}
    if agents_top is not None:
        ratio = agents_top.p95_ms / bare[agents_top.clients]
        verdict = {
            "agents_p95_ms": agents_top.p95_ms, "agents_p95_target_ms": TARGET_P95_MS,
            "p95_ratio_to_bare": round(ratio, 2), "ratio_target": TARGET_RATIO,
            "met": agents_top.p95_ms < TARGET_P95_MS and ratio <= TARGET_RATIO,
            "clients": agents_top.clients,
        }
    events_figures = None
    if not args.no_events:  # the live stream: its own server, after the request rows
        from cesar.bench import events as events_bench

        events_figures = events_bench.run()
    if args.json:
        print(json.dumps({
            "workers": args.workers, "seconds_per_run": args.seconds, "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "results": [{**asdict(f), "rps": round(f.rps, 1)} for f in rows],
            "target": verdict,
            "events": events_figures,
        }, indent=2))
    else:
        print(f"cesar api, {args.workers} worker(s), {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}; {args.seconds:g} s per row after {args.warmup:g} s "
              "warm-up; closed loop, keep-alive")
        print(_table(rows, bare))
        if verdict:
            state = "met" if verdict["met"] else "NOT met"
            print(f"target {state}: /agents p95 at {verdict['clients']} clients "
                  f"{verdict['agents_p95_ms']:.2f} ms (< {TARGET_P95_MS:g} ms), "
                  f"{verdict['p95_ratio_to_bare']:.2f}x the bare endpoint (<= {TARGET_RATIO:g}x)")
        if events_figures is not None:
            print(events_bench.report(events_figures))
        print(f"total {time.perf_counter() - started:.1f} s")
    return 0
