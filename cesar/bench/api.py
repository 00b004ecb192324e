"""``invoke bench --suite api``: latency and throughput of the API, against a bare endpoint.

Starts ``cesar api`` (one worker, the production defaults, access log included) on a free port
against the configured database, then drives ``/health``, ``/agents`` and ``/health/live`` (the
bare endpoint: same server, same middleware, no database) with 1, 10 and 50 concurrent clients,
in the same run, so the database's cost reads as a ratio. Each client is a keep-alive HTTP/1.1
connection sending its next request when the previous answer has arrived (a closed loop), so
the figures include the queueing that concurrency causes.

The load generator is ``wrk`` (Debian package ``wrk``: C, one thread, epoll), which runs on the
same machine as the server and so must take as little of its CPU as possible: on 2 cores the
Python generator took about as much CPU as the server and inflated every p95.
``--load-generator python`` keeps the asyncio clients of this module (no HTTP library in the
loop) for machines without wrk.

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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from cesar.dev.embedded import free_port
from cesar.errors import ConfigError, OperationFailed

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


# ------------------------------------------------------------------------------ wrk
#: "wrk" or "python": what :func:`measure` drives the server with (``--load-generator``).
GENERATOR = ["wrk"]
GENERATORS = ("wrk", "python")

# The key goes through the environment, not wrk's command line (which `ps` shows to everyone);
# `done` prints the figures as one JSON line wrk's own summary cannot give (p95).
_WRK_SCRIPT = """
local auth = os.getenv("CESAR_BENCH_AUTHORIZATION")
if auth ~= nil and auth ~= "" then wrk.headers["Authorization"] = auth end
local body = os.getenv("CESAR_BENCH_BODY")
if body ~= nil and body ~= "" then
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
local idem = os.getenv("CESAR_BENCH_IDEMPOTENCY_PREFIX")
if idem ~= nil and idem ~= "" then
  local n = 0
  request = function()
    n = n + 1
    wrk.headers["Idempotency-Key"] = idem .. "-" .. n
    return wrk.format()
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "CESAR-WRK {\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p95_us\\":%d,"
    .. "\\"p99_us\\":%d,\\"max_us\\":%d,\\"errors\\":%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def use_generator(name: str) -> None:
    """Choose the load generator; wrk absent is one line naming the package (exit 2)."""
    if name not in GENERATORS:
        raise ConfigError(f"unknown load generator {name!r}: use one of {', '.join(GENERATORS)}")
    if name == "wrk" and shutil.which("wrk") is None:
        raise ConfigError("the load generator wrk is not installed: `apt-get install wrk` "
                          "(Debian package wrk), or pass --load-generator python")
    GENERATOR[0] = name


def _wrk(url: str, clients: int, seconds: int, env: dict[str, str]) -> dict[str, float]:
    if env.get("CESAR_BENCH_IDEMPOTENCY_PREFIX"):  # a new key per request, in every run
        env = {**env, "CESAR_BENCH_IDEMPOTENCY_PREFIX": f"bench-{uuid.uuid4()}"}
    with tempfile.NamedTemporaryFile("w", prefix="cesar-bench-", suffix=".lua") as script:
        script.write(_WRK_SCRIPT)
        script.flush()
        done = subprocess.run(
            ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s",
             "-s", script.name, url],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("CESAR-WRK "):
            return json.loads(line[len("CESAR-WRK "):])
    tail = (done.stderr or done.stdout).strip().splitlines()
    raise OperationFailed(f"wrk gave no figures (exit {done.returncode}): "
                          f"{tail[-1] if tail else 'no output'}")


def measure_wrk(host: str, port: int, name: str, path: str, clients: int, seconds: float,
                warmup: float, *, authorization: str = "", body: str = "",
                idempotent: bool = False) -> Figures:
    """One closed-loop measurement with wrk: ``clients`` keep-alive connections, after an
    unmeasured warm-up (wrk counts whole seconds: both are rounded up to at least 1)."""
    env = {"CESAR_BENCH_AUTHORIZATION": authorization, "CESAR_BENCH_BODY": body,
           "CESAR_BENCH_IDEMPOTENCY_PREFIX": "yes" if idempotent else ""}
    url = f"http://{host}:{port}{path}"
    if warmup > 0:
        _wrk(url, clients, max(1, round(warmup)), env)
    whole = max(1, round(seconds))
    got = _wrk(url, clients, whole, env)
    return Figures(name, path, clients, int(got["requests"]), int(got["errors"]),
                   got["duration_us"] / 1e6, round(got["p50_us"] / 1000, 2),
                   round(got["p95_us"] / 1000, 2), round(got["p99_us"] / 1000, 2),
                   round(got["max_us"] / 1000, 2))


def measure(host: str, port: int, name: str, clients: int, seconds: float,
            warmup: float) -> Figures:
    path = ENDPOINTS[name]
    if GENERATOR[0] == "wrk":
        auth = "" if name == "bare" else next(
            (h.split(": ", 1)[1] for h in AUTH_HEADER if h.startswith("Authorization: ")), "")
        return measure_wrk(host, port, name, path, clients, seconds, warmup, authorization=auth)
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

    def __init__(self, port: int, workers: int, extra: tuple[str, ...] = ()) -> None:
        self.port = port
        self.workers = workers
        self.extra = extra  # more `cesar api` options (e.g. --no-access-log)
        fd, name = tempfile.mkstemp(prefix="cesar-bench-api-", suffix=".log")
        os.close(fd)
        self.log = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "cesar.cli", "api", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers), *self.extra]
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
    parser.add_argument("--load-generator", choices=GENERATORS, default="wrk",
                        help="wrk (default; Debian package wrk) or python (asyncio clients in "
                        "this process, which share the server's CPU)")
    parser.add_argument("--no-events", action="store_true",
                        help="skip the /events figures (cesar/bench/events.py)")
    parser.add_argument("--no-tasks", action="store_true",
                        help="skip the POST /tasks rows (cesar/bench/api_tasks.py)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c]
    use_generator(args.load_generator)

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
            "load_generator": GENERATOR[0],
            "load_average": os.getloadavg(),
            "results": [{**asdict(f), "rps": round(f.rps, 1)} for f in rows],
            "target": verdict,
            "events": events_figures,
        }, indent=2))
    else:
        print(f"cesar api, {args.workers} worker(s), {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}; {args.seconds:g} s per row after {args.warmup:g} s "
              f"warm-up; closed loop, keep-alive; load generator {GENERATOR[0]}")
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
