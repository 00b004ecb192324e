"""The ``/events`` part of ``invoke bench --suite api`` (also ``--suite events`` alone).

Starts ``cesar api`` (one worker) against the configured database, then:

- latency: ``--subscribers`` (50) SSE clients subscribe; ``--changes`` (200) tasks are inserted
  one per autocommit statement, ``--interval`` apart; for each, the time from just before the
  INSERT (so the commit is included) to each subscriber's receipt of its event. p50/p95/max
  over every (change, subscriber) pair. The subscribers and the writer run in this process, on
  the same machine: their parsing is part of the figure.
- memory: the API process's RSS (``VmRSS``) idle, then with ``--idle`` (500) subscribers
  connected and idle; the difference per subscriber.

The tasks it inserts are deleted at the end (their events stay in the log until pruned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from pathlib import Path

from cesar.bench.api import Server, _make_key, _revoke, percentile
from cesar.dev.embedded import free_port

TITLE = "bench: /events latency"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _open(port: int, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream"
                 f"\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"bench: /events answered {head.splitlines()[0].decode()}")
    return reader, writer


async def _subscriber(port: int, key: str, ready: list[int], sent: dict[str, float],
                      latencies: list[float], wanted: int, counts: list[int]) -> None:
    reader, writer = await _open(port, key)
    buffer = b""
    got = 0
    try:
        while got < wanted:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            now = time.perf_counter()
            buffer += chunk[:size]
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                if block.startswith(b": cesar events"):
                    ready[0] += 1
                    continue
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        pk = json.loads(line[6:]).get("pk")
                        started = sent.get(pk)
                        if started is not None:
                            latencies.append(now - started)
                            got += 1
    finally:
        counts.append(got)
        writer.close()


def _insert(url_settings: object, n: int, interval: float, sent: dict[str, float]) -> None:
    from cesar import db
    from cesar.config import Settings

    assert isinstance(url_settings, Settings)
    with db.connect(db.route(url_settings).primary, url_settings, autocommit=True) as conn:
        for _ in range(n):
            pk = str(uuid.uuid4())
            sent[pk] = time.perf_counter()
            conn.execute("INSERT INTO tasks (id, title, requested_by) VALUES (%s, %s, 'bench')",
                         (pk, TITLE))
            time.sleep(interval)


def _cleanup() -> None:
    from cesar import db
    from cesar.config import load_settings

    settings = load_settings()
    with db.connect(db.route(settings).primary, settings, autocommit=True) as conn:
        conn.execute("DELETE FROM tasks WHERE title = %s AND requested_by = 'bench'", (TITLE,))


async def _latency(port: int, key: str, subscribers: int, changes: int,
                   interval: float) -> dict[str, object]:
    from cesar.config import load_settings

    sent: dict[str, float] = {}
    latencies: list[float] = []
    ready = [0]
    counts: list[int] = []
    tasks = [asyncio.create_task(_subscriber(port, key, ready, sent, latencies, changes, counts))
             for _ in range(subscribers)]
    deadline = time.monotonic() + 30
    while ready[0] < subscribers:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: only {ready[0]} of {subscribers} subscribers connected")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(_insert, load_settings(), changes, interval, sent)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    ms = sorted(v * 1000 for v in latencies)
    return {"subscribers": subscribers, "changes": changes, "deliveries": len(ms),
            "expected": subscribers * changes, "p50_ms": round(percentile(ms, 50), 2),
            "p95_ms": round(percentile(ms, 95), 2), "max_ms": round(ms[-1], 2) if ms else None}


async def _memory(port: int, key: str, pid: int, idle: int) -> dict[str, object]:
    before = _rss_kib(pid)
    conns = []
    for _ in range(idle):
        reader, writer = await _open(port, key)
        await reader.readuntil(b"\n\n")  # the stream's first comment: subscribed
        conns.append((reader, writer))
    await asyncio.sleep(1.0)
    after = _rss_kib(pid)
    for _, writer in conns:
        writer.close()
    return {"idle_subscribers": idle, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_subscriber": round((after - before) / idle, 1) if idle else None}


def run(subscribers: int = 50, changes: int = 200, interval: float = 0.01,
        idle: int = 500) -> dict[str, object]:
    port = free_port()
    key = _make_key()
    try:
        with Server(port, 1) as server:
            assert server.proc is not None
            time.sleep(1.0)  # the reader's start, and the process settled
            latency = asyncio.run(_latency(port, key, subscribers, changes, interval))
            memory = asyncio.run(_memory(port, key, server.proc.pid, idle))
    finally:
        _revoke(key)
        _cleanup()
    return {"latency": latency, "memory": memory}


def report(figures: dict[str, object]) -> str:
    lat = figures["latency"]
    mem = figures["memory"]
    assert isinstance(lat, dict) and isinstance(mem, dict)
    return (f"/events latency, commit -> receipt, {lat['subscribers']} subscribers x "
            f"{lat['changes']} changes ({lat['deliveries']}/{lat['expected']} delivered): "
            f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, max {lat['max_ms']} ms\n"
            f"/events memory: API RSS {mem['rss_before_kib']} KiB idle, {mem['rss_after_kib']} "
            f"KiB with {mem['idle_subscribers']} idle subscribers "
            f"({mem['kib_per_subscriber']} KiB each)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite events", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.01,
                        help="seconds between two inserts (default 0.01)")
    parser.add_argument("--idle", type=int, default=500, help="idle subscribers for the RSS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = run(args.subscribers, args.changes, args.interval, args.idle)
    figures["cpus"] = os.cpu_count()
    figures["load_average"] = os.getloadavg()
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0
