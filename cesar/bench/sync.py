"""``invoke bench --suite sync``: the sync against the practical limit of moving rows.

On an embedded PostgreSQL of its own (two fresh databases, every migration applied), with the
``agents`` table:

1. ``--rows`` (1,000,000) rows inserted on the local side (captured by the trigger: the capture's
   write cost is shown beside the same insert into a table without it);
2. **COPY pipe**: ``COPY (SELECT * FROM agents) TO STDOUT`` on the local database piped into
   ``COPY ... FROM STDIN`` on the cluster database (a scratch table of the same shape): the
   practical limit;
3. **initial sync**: one ``cesar sync run`` moving them all to the cluster (pending rows);
4. **incremental**: ``--changed`` (10,000) of those rows updated, then one run;
5. **empty**: runs with nothing to move (median of 5), with one synced table and with all ten;
6. **full reconcile** of the equal tables (the nightly ``--full``), for scale.

Targets: initial sync within 3x the COPY pipe; the incremental run under 5% of the
initial one; the empty run under 100 ms plus a small constant per table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cesar import migrate
from cesar.config import Settings
from cesar.credentials import APP_ROLE
from cesar.dev.embedded import EmbeddedPostgres
from cesar.sync import run as sync_run
from cesar.sync.tables import SYNCED_TABLES, SyncSettings

TARGET_INITIAL_RATIO = 3.0
TARGET_INCREMENTAL_SHARE = 0.05
TARGET_EMPTY_MS = 100.0

MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "sql" / "migrations"


def _settings(state_dir: Path) -> Settings:
    return Settings(_env_file=None, state_dir=state_dir)  # type: ignore[call-arg]


def _sync_settings(tables: tuple[str, ...]) -> SyncSettings:
    return SyncSettings(_env_file=None, tables=tables)  # type: ignore[call-arg]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


class Bench:
    def __init__(self, rows: int, changed: int, progress: Callable[[str], None]) -> None:
        self.rows, self.changed, self.say = rows, changed, progress
        parent = Path(".cesar", "bench").absolute()  # gitignored; reachable by the server user
        parent.mkdir(parents=True, exist_ok=True)
        self.state_dir = Path(tempfile.mkdtemp(prefix="sync-", dir=parent))
        self.pg = EmbeddedPostgres(self.state_dir)
        self.settings = _settings(self.state_dir)
        self.urls: dict[str, str] = {}
        self.figures: dict[str, Any] = {}

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        state, _ = self.pg.up()
        with psycopg.connect(self.pg.superuser_conninfo(), autocommit=True) as su:
            for side in ("local", "cluster"):
                name = f"bench_{side}"
                su.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)))
                self.urls[side] = state.url(name)
                migrate.apply_all(self.urls[side], self.settings, migrations_dir=MIGRATIONS)
        with psycopg.connect(self.urls["cluster"], autocommit=True) as conn:
            conn.execute("CREATE TABLE copy_target (LIKE agents INCLUDING ALL)")
        self.sync(("agents",))  # pair the two (the first run reconciles the 24 seeded agents)

    def teardown(self) -> None:
        self.pg.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def sync(self, tables: tuple[str, ...], **options: Any) -> sync_run.RunReport:
        return sync_run.run(self.settings, _sync_settings(tables), sync_run.Options(
            local_url=self.urls["local"], remote_url=self.urls["cluster"], **options))

    # ---------------------------------------------------------------- measurements
    def insert(self) -> None:
        self.say(f"inserting {self.rows:,} agents on the local side (captured) ...")
        query = ("INSERT INTO {} (id, name, mob_alias, role) SELECT gen_random_uuid(), "
                 "'agent ' || g, 'alias ' || g, 'bench' FROM generate_series(1, %s) AS g")
        with psycopg.connect(self.urls["local"], autocommit=True) as conn:
            captured, _ = _timed(lambda: conn.execute(
                sql.SQL(query).format(sql.Identifier("agents")), [self.rows]))
            conn.execute("CREATE TABLE plain_agents (LIKE agents INCLUDING ALL)")
            plain, _ = _timed(lambda: conn.execute(
                sql.SQL(query).format(sql.Identifier("plain_agents")), [self.rows]))
            conn.execute("DROP TABLE plain_agents")
            conn.execute("VACUUM ANALYZE agents")
            conn.execute("VACUUM ANALYZE sync_versions")
        self.figures["insert_captured_s"] = round(captured, 3)
        self.figures["insert_plain_s"] = round(plain, 3)

    def copy_pipe(self) -> None:
        self.say("COPY pipe local -> cluster ...")
        with psycopg.connect(self.urls["local"]) as src, \
                psycopg.connect(self.urls["cluster"]) as dst:
            def pipe() -> None:
                with src.cursor().copy("COPY (SELECT * FROM agents) TO STDOUT") as out, \
                        dst.cursor().copy("COPY copy_target FROM STDIN") as into:
                    for chunk in out:
                        into.write(chunk)
                dst.commit()

            seconds, _ = _timed(pipe)
            dst.execute("TRUNCATE copy_target")
            dst.commit()
        self.figures["copy_pipe_s"] = round(seconds, 3)

    def initial(self) -> None:
        self.say(f"initial sync of {self.rows:,} rows ...")
        seconds, report = _timed(lambda: self.sync(("agents",)))
        assert report.moved == self.rows, report.summary()
        self.figures["initial_sync_s"] = round(seconds, 3)
        self.figures["initial_rows_per_s"] = round(self.rows / seconds)

    def incremental(self) -> None:
        self.say(f"updating {self.changed:,} rows, then one run ...")
        with psycopg.connect(self.urls["local"], autocommit=True) as conn:
            conn.execute("UPDATE agents SET mob_alias = mob_alias || ' (changed)' WHERE id IN "
                         "(SELECT id FROM agents WHERE role = 'bench' "
                         "ORDER BY md5(id::TEXT) LIMIT %s)", [self.changed])
        seconds, report = _timed(lambda: self.sync(("agents",)))
        assert report.moved == self.changed, report.summary()
        self.figures["incremental_s"] = round(seconds, 3)

    def empty(self) -> None:
        self.say("empty runs ...")
        for label, tables in (("empty_one_table_ms", ("agents",)),
                              ("empty_all_tables_ms", SYNCED_TABLES)):
            times = []
            for _ in range(5):
                seconds, report = _timed(lambda t=tables: self.sync(t))  # type: ignore[misc]
                assert report.moved == 0, report.summary()
                times.append(seconds * 1000)
            self.figures[label] = round(statistics.median(times), 1)
        self.figures["tables_all"] = len(SYNCED_TABLES)

    def full(self) -> None:
        self.say("full reconcile of the equal tables ...")
        seconds, report = _timed(lambda: self.sync(("agents",), full=True))
        assert report.moved == 0, report.summary()
        self.figures["full_reconcile_s"] = round(seconds, 3)

    def verdict(self) -> dict[str, Any]:
        f = self.figures
        ratio = f["initial_sync_s"] / f["copy_pipe_s"]
        share = f["incremental_s"] / f["initial_sync_s"]
        per_table = (f["empty_all_tables_ms"] - f["empty_one_table_ms"]) / (f["tables_all"] - 1)
        return {
            "initial_vs_copy": round(ratio, 2), "initial_target": TARGET_INITIAL_RATIO,
            "incremental_share": round(share, 4), "incremental_target": TARGET_INCREMENTAL_SHARE,
            "empty_ms": f["empty_one_table_ms"], "empty_per_table_ms": round(per_table, 1),
            "empty_target_ms": TARGET_EMPTY_MS,
            "met": ratio <= TARGET_INITIAL_RATIO and share < TARGET_INCREMENTAL_SHARE
            and f["empty_one_table_ms"] < TARGET_EMPTY_MS + per_table,
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows moved (1,000,000)")
    parser.add_argument("--changed", type=int, default=10_000,
                        help="rows changed before the incremental run (10,000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        if not args.json:
            print(f"  {line}", flush=True)

    bench = Bench(args.rows, args.changed, progress)
    try:
        bench.setup()
        bench.insert()
        bench.copy_pipe()
        bench.initial()
        bench.incremental()
        bench.empty()
        bench.full()
    finally:
        bench.teardown()
    verdict = bench.verdict()
    context = {"rows": args.rows, "changed": args.changed, "cpus": os.cpu_count(),
               "load_average": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps({**context, "figures": bench.figures, "target": verdict}, indent=2))
        return 0
    f = bench.figures
    print(f"sync benchmark: {args.rows:,} rows of agents, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"  insert, captured by the trigger   {f['insert_captured_s']:8.2f} s   "
          f"(without it {f['insert_plain_s']:.2f} s)")
    print(f"  COPY pipe local -> cluster        {f['copy_pipe_s']:8.2f} s")
    print(f"  initial sync                      {f['initial_sync_s']:8.2f} s   "
          f"{verdict['initial_vs_copy']:.2f}x the COPY pipe (target <= "
          f"{TARGET_INITIAL_RATIO:g}x), {f['initial_rows_per_s']:,} rows/s")
    print(f"  incremental, {args.changed:,} changed      {f['incremental_s']:8.2f} s   "
          f"{verdict['incremental_share']:.1%} of the initial sync (target < "
          f"{TARGET_INCREMENTAL_SHARE:.0%})")
    print(f"  empty run, 1 table                {f['empty_one_table_ms']:8.1f} ms  "
          f"(all {f['tables_all']} tables: {f['empty_all_tables_ms']:.1f} ms, "
          f"{verdict['empty_per_table_ms']:.1f} ms per table; target < {TARGET_EMPTY_MS:g} ms "
          "+ per table)")
    print(f"  full reconcile, equal tables      {f['full_reconcile_s']:8.2f} s")
    print(f"target {'met' if verdict['met'] else 'NOT met'}")
    return 0
