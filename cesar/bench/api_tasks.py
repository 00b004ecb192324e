"""``POST /tasks`` figures for ``invoke bench --suite api``: p50/p95 at 10 and 50 clients.

Each client is a keep-alive connection in a closed loop (as for the GET rows of the suite),
sending a new task with its own ``Idempotency-Key`` each time: the realistic write path (key
check, one transaction with its audit row, the task read back). The tasks it creates stay in the
database (their title says ``bench``); the run's key has ``tasks:write`` and is revoked at the
end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from cesar.bench import api as suite

PATH = "/tasks"
CLIENT_LEVELS = (10, 50)


def make_key() -> str:
    from cesar import db, keys
    from cesar.config import load_settings

    settings = load_settings()
    with db.connect(db.route(settings).primary, settings, autocommit=True) as conn:
        return keys.create(conn, "bench-tasks", ["tasks:write"],
                           actor=f"invoke bench ({keys.operator()})").key


async def _client(host: str, port: int, key: str, stop_at: float, record_from: float,
                  latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            body = json.dumps({"title": "bench task", "priority": 3,
                               "payload": {"bench": True}}).encode()
            request = (f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       f"Authorization: Bearer {key}\r\nIdempotency-Key: bench-{uuid.uuid4()}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                       ).encode() + body
            status = await suite.roundtrip(reader, writer, request)
            ended = time.perf_counter()
            if started >= record_from:
                latencies.append(ended - started)
                if status != 201:
                    errors.append(status)
    finally:
        writer.close()


async def _drive(host: str, port: int, key: str, clients: int, seconds: float,
                 warmup: float) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    errors: list[int] = []
    now = time.perf_counter()
    record_from, stop_at = now + warmup, now + warmup + seconds
    await asyncio.gather(*(_client(host, port, key, stop_at, record_from, latencies, errors)
                           for _ in range(clients)))
    return latencies, errors


def measure(host: str, port: int, key: str, clients: int, seconds: float,
            warmup: float) -> suite.Figures:
    if suite.GENERATOR[0] == "wrk":  # the same request, each with its own Idempotency-Key
        body = json.dumps({"title": "bench task", "priority": 3, "payload": {"bench": True}})
        return suite.measure_wrk(host, port, "tasks", PATH, clients, seconds, warmup,
                                 authorization=f"Bearer {key}", body=body, idempotent=True)
    latencies, errors = asyncio.run(_drive(host, port, key, clients, seconds, warmup))
    ms = sorted(v * 1000 for v in latencies)
    return suite.Figures("tasks", f"POST {PATH}", clients, len(ms), len(errors), seconds,
                         round(suite.percentile(ms, 50), 2), round(suite.percentile(ms, 95), 2),
                         round(suite.percentile(ms, 99), 2),
                         round(ms[-1] if ms else float("nan"), 2))


def run(host: str, port: int, seconds: float, warmup: float) -> list[suite.Figures]:
    """The POST /tasks rows, at CLIENT_LEVELS, with a key made and revoked here."""
    from cesar import db, keys
    from cesar.config import load_settings

    key = make_key()
    try:
        return [measure(host, port, key, clients, seconds, warmup) for clients in CLIENT_LEVELS]
    finally:
        settings = load_settings()
        with db.connect(db.route(settings).primary, settings, autocommit=True) as conn:
            keys.revoke(conn, keys.prefix_of(key), actor=f"invoke bench ({keys.operator()})")
