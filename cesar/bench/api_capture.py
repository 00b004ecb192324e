"""``invoke bench --suite api_capture``: what the sync's capture costs ``POST /tasks``.

Starts ``cesar api`` (one worker) against the configured database and drives ``POST /tasks``
(cesar/bench/api_tasks.py: a new task per request, its audit row, read back) at 50 clients,
alternately with the capture triggers enabled and disabled on every synced table (``ALTER TABLE
... DISABLE TRIGGER`` of ``sync_capture`` and, on PostgreSQL, its two statement-level
companions; nothing else is touched), ``--rounds`` times each, and reports p95 with capture over
p95 without. The triggers are enabled again at the end, whatever happens (a run that is killed
meanwhile leaves them disabled: ``cesar sync run`` then refuses, naming the trigger).

Target: within 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict

from psycopg import sql

from cesar.bench import api, api_tasks
from cesar.dev.embedded import free_port
from cesar.sync.tables import CAPTURE_TRIGGER, STATEMENT_COMPANIONS, SYNCED_TABLES

TARGET_RATIO = 1.2


def _set_capture(enabled: bool) -> None:
    from cesar import db
    from cesar.config import load_settings

    settings = load_settings()
    verb = sql.SQL("ENABLE" if enabled else "DISABLE")
    with db.connect(db.route(settings).primary, settings, autocommit=True) as conn:
        present = conn.execute(
            "SELECT c.relname, t.tgname FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c "
            "ON c.oid = t.tgrelid WHERE c.relname = ANY(%s) AND t.tgname = ANY(%s)",
            [list(SYNCED_TABLES), [CAPTURE_TRIGGER, *STATEMENT_COMPANIONS]]).fetchall()
        for table, trigger in present:
            conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
                sql.Identifier(table), verb, sql.Identifier(trigger)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite api_capture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per row (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (1)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--rounds", type=int, default=2, help="on/off pairs (2)")
    parser.add_argument("--load-generator", choices=api.GENERATORS, default="wrk",
                        help="wrk (default; Debian package wrk) or python")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    api.use_generator(args.load_generator)

    rows = []
    key = api_tasks.make_key()
    started = time.perf_counter()
    try:
        port = free_port()
        with api.Server(port, 1):
            for _ in range(args.rounds):
                for capture in (True, False):
                    _set_capture(capture)
                    f = api_tasks.measure("127.0.0.1", port, key, args.clients, args.seconds,
                                          args.warmup)
                    rows.append({"capture": capture, "load_average": round(os.getloadavg()[0], 2),
                                 **asdict(f), "rps": round(f.rps, 1)})
    finally:
        _set_capture(True)
        api._revoke(key)
    on = statistics.median(r["p95_ms"] for r in rows if r["capture"])
    off = statistics.median(r["p95_ms"] for r in rows if not r["capture"])
    verdict = {"p95_on_ms": on, "p95_off_ms": off, "ratio": round(on / off, 2) if off else None,
               "target": TARGET_RATIO}
    if args.json:
        print(json.dumps({"clients": args.clients, "cpus": os.cpu_count(), "rows": rows,
                          "load_generator": api.GENERATOR[0],
                          "verdict": verdict}, indent=2))
        return 0
    print(f"POST /tasks at {args.clients} clients, 1 worker, capture on and off alternately; "
          f"load generator {api.GENERATOR[0]}")
    print(f"{'capture':<8} {'load':>5} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'errors':>6}")
    for r in rows:
        print(f"{'on' if r['capture'] else 'off':<8} {r['load_average']:>5.2f} "
              f"{r['requests']:>8} {r['rps']:>7.0f} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} "
              f"{r['errors']:>6}")
    print(f"median p95: on {on:.2f} ms, off {off:.2f} ms: {verdict['ratio']}x "
          f"(target <= {TARGET_RATIO:g}x); total {time.perf_counter() - started:.1f} s")
    return 0
