"""``invoke bench --suite backup``: backup time, RPO and RTO of the local database's server.

On an embedded PostgreSQL of its own (archiving on, as ``invoke up`` sets it), with ``--rows``
(1,000,000) rows in a table of the local database and a writer committing a row every
``--interval`` seconds (20 per second) throughout:

1. **backup**: one ``cesar backup take`` (pg_basebackup with the WAL streamed in);
2. **RPO under steady writes**: the age of the newest restorable point (``measure_rpo``: 0 when
   every WAL byte is archived, else the time since the last segment reached the archive),
   sampled every 0.5 s for ``--window`` seconds; target: the maximum <= 15 s;
3. **drill**: ``cesar backup drill`` (verify the backup, restore on a scratch server to a fresh
   restore point, compare every table): its RTO (copy + replay + promote + first query);
   target <= 30 s;
4. **restore into a new database**: ``cesar backup restore --to (now - 5 s) --into NAME``,
   end to end (scratch recovery, then pg_dump | pg_restore beside the live database).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from cesar.backup import base, drill, restore
from cesar.backup.settings import BackupSettings, resolve
from cesar.config import Settings
from cesar.dev.embedded import EmbeddedPostgres

TARGET_RPO = 15.0
TARGET_RTO = 30.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows (1,000,000)")
    parser.add_argument("--interval", type=float, default=0.05,
                        help="seconds between the writer's commits (0.05)")
    parser.add_argument("--window", type=float, default=45.0,
                        help="seconds of RPO sampling under writes (45)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        if not args.json:
            print(f"  {line}", flush=True)

    parent = Path(".cesar", "bench").absolute()
    parent.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="backup-", dir=parent))
    pg = EmbeddedPostgres(state_dir)
    figures: dict[str, Any] = {"rows": args.rows}
    stop = threading.Event()
    writes = {"n": 0}
    try:
        pg.up()
        server = resolve(Settings(_env_file=None, state_dir=state_dir),  # type: ignore[call-arg]
                         BackupSettings(_env_file=None))  # type: ignore[call-arg]
        conninfo = pg.superuser_conninfo(server.database)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            t0 = time.perf_counter()
            conn.execute("CREATE TABLE bench_rows (id bigint PRIMARY KEY, body text NOT NULL, "
                         "at timestamptz NOT NULL DEFAULT now())")
            conn.execute("INSERT INTO bench_rows (id, body) SELECT g, md5(g::text) || md5('x' "
                         "|| g::text) FROM generate_series(1, %s) g", [args.rows])
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))"
                                ).fetchone()[0]
        say(f"loaded {args.rows:,} rows ({size}) in {time.perf_counter() - t0:.1f} s")
        figures["database_size"] = size

        def writer() -> None:
            with psycopg.connect(conninfo, autocommit=True) as w:
                next_id = args.rows + 1
                while not stop.is_set():
                    w.execute("INSERT INTO bench_rows (id, body) VALUES (%s, 'steady')",
                              [next_id])
                    next_id += 1
                    writes["n"] += 1
                    time.sleep(args.interval)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(2)

        backup = base.take(server)
        figures["backup_seconds"] = backup.seconds
        figures["backup_bytes"] = backup.bytes
        say(f"backup {backup.label}: {backup.bytes / 2**20:.0f} MiB in {backup.seconds:.2f} s")

        samples = []
        end = time.monotonic() + args.window
        with psycopg.connect(pg.superuser_conninfo(), autocommit=True) as conn:
            while time.monotonic() < end:
                value = drill.measure_rpo(conn)
                if value is not None:
                    samples.append(value)
                time.sleep(0.5)
        figures["rpo_max_seconds"] = round(max(samples), 2)
        figures["rpo_median_seconds"] = round(statistics.median(samples), 2)
        say(f"RPO under steady writes ({len(samples)} samples over {args.window:.0f} s): "
            f"max {figures['rpo_max_seconds']} s, median {figures['rpo_median_seconds']} s "
            f"(target <= {TARGET_RPO:.0f} s)")

        result = drill.run(server)
        figures["drill_ok"] = result["ok"]
        figures["drill_rpo_seconds"] = result["rpo_seconds"]
        figures["rto_seconds"] = result["rto_seconds"]
        figures["drill_seconds"] = result["seconds"]
        say(f"drill {'ok' if result['ok'] else 'FAILED ' + str(result['problems'])}: RPO "
            f"{result['rpo_seconds']} s, RTO {result['rto_seconds']} s (target <= "
            f"{TARGET_RTO:.0f} s), {result['seconds']} s in all")

        target = datetime.now(UTC) - timedelta(seconds=5)
        t0 = time.perf_counter()
        done = restore.restore(server, target, "bench_restored")
        figures["restore_into_seconds"] = round(time.perf_counter() - t0, 2)
        with psycopg.connect(pg.superuser_conninfo("bench_restored")) as conn:
            figures["restored_rows"] = conn.execute("SELECT count(*) FROM bench_rows"
                                                    ).fetchone()[0]
        say(f"restore --into bench_restored (to {done.target}): "
            f"{figures['restore_into_seconds']} s end to end, {figures['restored_rows']:,} rows")
    finally:
        stop.set()
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    figures["writes_during_bench"] = writes["n"]
    figures["targets"] = {"rpo_seconds": TARGET_RPO, "rto_seconds": TARGET_RTO}
    figures["met"] = {"rpo": figures["rpo_max_seconds"] <= TARGET_RPO,
                      "rto": (figures["rto_seconds"] or 1e9) <= TARGET_RTO}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(json.dumps(figures))
    return 0
