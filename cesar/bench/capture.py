"""``invoke bench --suite capture``: what the sync's capture costs a bulk insert.

On a scratch database of the embedded server (``invoke up`` first), migrated with every
migration, three tables of the shape of ``agents``: ``agents`` itself (PostgreSQL's
statement-level capture, migration 017, and the event log's capture, 016/018), the same with the
event log's capture off (``sync_only``: the sync's own share), a copy with 011's row-level
trigger (what CockroachDB runs, and PostgreSQL before 017), a copy whose only capture is one
keyed row per new row (``floor``: the least a capture that records each change durably can
cost), and a copy without capture. The
same ``INSERT ... SELECT`` of ``--rows`` rows goes into each, in turn, ``--rounds`` times
(interleaved, so that the machine's load falls on all alike). Prints each time and the ratios
to the insert without capture.

Target: the captured insert within 1.5x of the plain one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from cesar import migrate
from cesar.config import Settings
from cesar.dev.embedded import APP_ROLE, EmbeddedPostgres

MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "sql" / "migrations"
TARGET_RATIO = 1.5
INSERT = ("INSERT INTO {} (id, name, mob_alias, role) SELECT gen_random_uuid(), "
          "'agent ' || g || %s, 'alias ' || g, 'bench' FROM generate_series(1, %s) AS g")
ROW_TRIGGER = ("CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agents_row "
               "FOR EACH ROW WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM "
               "'on') EXECUTE FUNCTION sync_capture()")
#: ``floor``: the least any capture that keeps one durable, keyed row per change can cost: the
#: plain insert plus, in one statement-level trigger, one (table, key) row per new row into a
#: table with only its primary key, in key order. No version, origin or pending index: what
#: is left when everything the sync records about a change is taken away but the change itself.
FLOOR = ("CREATE TABLE floor_keys (table_name TEXT, pk TEXT, PRIMARY KEY (table_name, pk)); "
         "CREATE FUNCTION floor_capture() RETURNS TRIGGER AS $$ BEGIN "
         "INSERT INTO floor_keys SELECT TG_TABLE_NAME, n.id::TEXT FROM floor_new AS n ORDER BY 2; "
         "RETURN NULL; END; $$ LANGUAGE plpgsql; "
         "CREATE TRIGGER floor_capture AFTER INSERT ON agents_floor REFERENCING NEW TABLE AS "
         "floor_new FOR EACH STATEMENT EXECUTE FUNCTION floor_capture()")
TABLES = {"plain": "agents_plain", "statement": "agents", "row": "agents_row",
          "sync_only": "agents", "floor": "agents_floor"}
#: ``sync_only``: ``agents`` with the event log's capture (migrations 016/018) switched off for
#: that insert, in its transaction: the sync's own share of what ``statement`` costs.
EVENT_TRIGGERS = ("SELECT tgname FROM pg_trigger WHERE tgrelid = 'agents'::regclass "
                  "AND tgname IN ('event_capture', 'event_capture_update', "
                  "'event_capture_delete')")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite capture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per insert (1,000,000)")
    parser.add_argument("--rounds", type=int, default=2, help="inserts per table (2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    pg = EmbeddedPostgres(Path(settings.state_dir))
    state = pg.load_state()
    if state is None or pg.pid() is None:
        raise SystemExit("cesar: error: the embedded stack is not running: run "
                         "`uv run invoke up` first")
    name = f"bench_capture_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.superuser_conninfo("postgres"), autocommit=True) as su:
        su.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                 sql.Identifier(APP_ROLE)))
    times: dict[str, list[float]] = {k: [] for k in TABLES}
    loads = []
    try:
        url = state.url(name)
        migrate.apply_all(url, settings, migrations_dir=MIGRATIONS)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE agents_row (LIKE agents INCLUDING ALL)")
            conn.execute(ROW_TRIGGER)
            conn.execute("CREATE TABLE agents_plain (LIKE agents INCLUDING ALL)")
            conn.execute("CREATE TABLE agents_floor (LIKE agents INCLUDING ALL)")
            conn.execute(FLOOR)
            for i in range(args.rounds):
                for kind, table in TABLES.items():
                    events = [r[0] for r in conn.execute(EVENT_TRIGGERS)] if (
                        kind == "sync_only") else []
                    with conn.transaction():
                        for trigger in events:
                            conn.execute(sql.SQL("ALTER TABLE agents DISABLE TRIGGER {}").format(
                                sql.Identifier(trigger)))
                        started = time.perf_counter()
                        conn.execute(sql.SQL(INSERT).format(sql.Identifier(table)),
                                     [f" r{i}{kind}", args.rows])
                        times[kind].append(round(time.perf_counter() - started, 3))
                        for trigger in events:
                            conn.execute(sql.SQL("ALTER TABLE agents ENABLE TRIGGER {}").format(
                                sql.Identifier(trigger)))
                    loads.append(round(os.getloadavg()[0], 2))
    finally:
        with psycopg.connect(pg.superuser_conninfo("postgres"), autocommit=True) as su:
            su.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
    plain = statistics.median(times["plain"])
    ratios = {k: round(statistics.median(v) / plain, 2) for k, v in times.items()}
    if args.json:
        print(json.dumps({"rows": args.rows, "seconds": times, "ratios": ratios,
                          "load_averages": loads, "target": TARGET_RATIO}, indent=2))
        return 0
    print(f"insert of {args.rows:,} rows, {args.rounds} round(s), load average "
          f"{min(loads):.2f}-{max(loads):.2f}")
    for kind in TABLES:
        print(f"  {kind:<10} {', '.join(f'{t:.2f} s' for t in times[kind]):<30} "
              f"{ratios[kind]:.2f}x the plain insert")
    print(f"target: statement-level capture <= {TARGET_RATIO:g}x")
    return 0
