"""``invoke bench --suite api_levers``: ``/agents`` at 50 clients, one read path at a time.

For each value of ``CESAR_API_READ_PATH`` (cesar/api/aio.py) it starts ``cesar api`` (one
worker, access log on, as ``invoke bench --suite api`` does), then drives the bare endpoint
(``/health/live``) and ``/agents`` (authenticated: a key made for the run, revoked after) with
the same closed-loop clients, and reports ``/agents`` p95 against the bare endpoint's measured
on the same server minutes apart at most. So each lever is measured on its own:

- ``threads``: the threaded pool, a worker-thread hop and a check round trip per request;
- ``async-checked``: the async pool, still a check round trip per checkout;
- ``async-unprepared``: no check round trip, statements prepared after their fifth use;
- ``async-uncoalesced``: no check round trip, prepared from the first use, a query per request;
- ``async``: the same, and identical reads in flight together share one query that began after
  each arrived (the default; rows are read as tuples and each distinct row encoded once on
  every path).

The key lookup is cached per worker (``CESAR_API_KEY_CACHE_SECONDS``, 2 s) in every row; the
``threads`` row with ``--no-key-cache`` shows what the cache saves (a lookup per request), and
``--no-access-log`` adds a row per read path with ``cesar api --no-access-log`` (what the access
log line costs), ``--access-log-unbuffered`` one with a write per access line
(``CESAR_API_ACCESS_LOG_FLUSH_SECONDS=0``, cesar/api/accesslog.py). The load generator is wrk
unless ``--load-generator python`` (:mod:`cesar.bench.api`); every row records the machine's
load average as it ended.

Target: ``/agents`` p95 at 50 clients within 2x the bare endpoint's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict

from cesar.bench import api
from cesar.dev.embedded import free_port

PATHS = ("threads", "async-checked", "async-unprepared", "async-uncoalesced", "async")
TARGET_RATIO = 2.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite api_levers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measured seconds per row (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (default 1)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"read paths, comma-separated (default {','.join(PATHS)})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole sequence (interleaved), default 1")
    parser.add_argument("--no-key-cache", action="store_true",
                        help="also a threads row with CESAR_API_KEY_CACHE_SECONDS=0")
    parser.add_argument("--access-log-unbuffered", action="store_true",
                        help="also a row per read path with CESAR_API_ACCESS_LOG_FLUSH_SECONDS=0 "
                        "(one write per access line)")
    parser.add_argument("--no-access-log", action="store_true",
                        help="also a row per read path with `cesar api --no-access-log`")
    parser.add_argument("--gc-default", action="store_true",
                        help="also a row per read path with CPython's collector as it is "
                        "(CESAR_API_GC=default)")
    parser.add_argument("--load-generator", choices=api.GENERATORS, default="wrk",
                        help="wrk (default; Debian package wrk) or python")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    api.use_generator(args.load_generator)
    paths = [p for p in args.paths.split(",") if p]
    # (label, environment of the server, more `cesar api` options)
    variants: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
        (p, {"CESAR_API_READ_PATH": p}, ()) for p in paths]
    if args.access_log_unbuffered:
        variants += [(f"{p}, access log unbuffered",
                      {"CESAR_API_READ_PATH": p, "CESAR_API_ACCESS_LOG_FLUSH_SECONDS": "0"}, ())
                     for p in paths]
    if args.no_access_log:
        variants += [(f"{p}, no access log", {"CESAR_API_READ_PATH": p}, ("--no-access-log",))
                     for p in paths]
    if args.gc_default:
        variants += [(f"{p}, gc default", {"CESAR_API_READ_PATH": p, "CESAR_API_GC": "default"},
                      ()) for p in paths]
    if args.no_key_cache:
        variants.append(("threads, key cache off",
                         {"CESAR_API_READ_PATH": "threads", "CESAR_API_KEY_CACHE_SECONDS": "0"},
                         ()))

    results = []
    key = api._make_key()
    api.AUTH_HEADER[:] = [f"Authorization: Bearer {key}"]
    names = {k for _, env, _ in variants for k in env}
    saved = {k: os.environ.get(k) for k in names}
    started = time.perf_counter()
    try:
        for _ in range(args.rounds):
            for label, env, extra in variants:
                for k in names:
                    os.environ.pop(k, None)
                os.environ.update(env)
                port = free_port()
                with api.Server(port, 1, extra):
                    bare = api.measure("127.0.0.1", port, "bare", args.clients, args.seconds,
                                       args.warmup)
                    agents = api.measure("127.0.0.1", port, "agents", args.clients,
                                         args.seconds, args.warmup)
                results.append({
                    "read_path": label, "load_average": round(os.getloadavg()[0], 2),
                    "bare": {**asdict(bare), "rps": round(bare.rps, 1)},
                    "agents": {**asdict(agents), "rps": round(agents.rps, 1)},
                    "ratio": round(agents.p95_ms / bare.p95_ms, 2) if bare.p95_ms else None,
                })
    finally:
        api._revoke(key)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if args.json:
        print(json.dumps({"clients": args.clients, "cpus": os.cpu_count(),
                          "load_generator": api.GENERATOR[0],
                          "seconds_per_row": args.seconds, "target_ratio": TARGET_RATIO,
                          "results": results}, indent=2))
        return 0
    print(f"/agents vs /health/live at {args.clients} clients, 1 worker, {os.cpu_count()} CPUs; "
          f"{args.seconds:g} s per row after {args.warmup:g} s warm-up; authenticated; "
          f"load generator {api.GENERATOR[0]}")
    print(f"{'read path':<34} {'load':>5} {'bare p95':>9} {'bare r/s':>9} {'agents p95':>11} "
          f"{'agents r/s':>11} {'ratio':>6} {'errors':>6}")
    for r in results:
        b, a = r["bare"], r["agents"]
        print(f"{r['read_path']:<34} {r['load_average']:>5.2f} {b['p95_ms']:>9.2f} "
              f"{b['rps']:>9.0f} {a['p95_ms']:>11.2f} {a['rps']:>11.0f} {r['ratio']:>6.2f} "
              f"{a['errors']:>6}")
    print(f"target: ratio <= {TARGET_RATIO:g}; total {time.perf_counter() - started:.1f} s")
    return 0
