"""``invoke bench --suite migrate``: the cost of a no-op ``migrate up``.

The goal: a run with nothing to do costs one read of the tracking table, however many
migrations are applied. Measured for the repository's migrations and for 200 (the repository's
plus generated ones), each on its own database:

- wall time of the no-op ``Runner.up()`` in this process (files read and hashed, one query):
  median and p95 over ``--runs`` runs;
- round trips to the server during that call, counted from libpq's own protocol trace
  (each ``Query`` or ``Sync`` message the client sends is one round trip); connection setup is
  left out (it is the same for every run: startup and SCRAM authentication);
- wall time of the whole command, ``python -m cesar.cli migrate up``, as an operator runs it
  (interpreter start-up and imports included), median over ``--process-runs`` runs.

By default it starts its own embedded PostgreSQL under ``.cesar/bench/`` and removes it after;
``--url`` uses an existing server instead (the URL's user must be able to CREATE DATABASE).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from cesar import migrate
from cesar.config import Settings
from cesar.db import urls

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "sql" / "migrations"


@dataclass
class Figures:
    case: str
    applied: int
    round_trips: int
    median_ms: float
    p95_ms: float
    process_median_ms: float | None


def count_round_trips(trace: str) -> int:
    """Round trips in a libpq trace: each Query (simple protocol) or Sync (extended) sent."""
    count = 0
    for line in trace.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == "F" and parts[2].startswith(("Query", "Sync")):
            count += 1
    return count


def measure_noop(url: str, migrations_dir: Path, runs: int) -> tuple[int, list[float], int]:
    """(round trips of one no-op run, wall times in ms, applied count)."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    conn, runner = migrate.open_runner(url, settings, migrations_dir=migrations_dir)
    with conn:
        report = runner.up()  # warm: apply everything (not measured)
        applied = report.plan.counts["applied"]
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            noop = runner.up()
            times.append((time.perf_counter() - started) * 1000)
            assert not noop.done, "a no-op run applied something"
        with tempfile.TemporaryFile("w+") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            runner.up()
            conn.pgconn.untrace()
            trace.seek(0)
            trips = count_round_trips(trace.read())
    return trips, times, applied


def measure_process(url: str, migrations_dir: Path, runs: int) -> float | None:
    if runs <= 0:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("CESAR_")}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cesar.cli", "migrate", "up", "--url", url,
                        "--migrations-dir", str(migrations_dir)], env=env, check=True,
                       capture_output=True, timeout=120)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def synthetic_dir(target: Path, total: int) -> Path:
    """The repository's migrations plus small generated ones, ``total`` in all."""
    target.mkdir(parents=True, exist_ok=True)
    for path in REPO_MIGRATIONS.glob("*.sql"):
        shutil.copy(path, target / path.name)
    have = len(migrate.migration_names(target))
    for k in range(have + 1, total + 1):
        name = f"{5000 + k:05d}_bench_{k}"
        (target / f"{name}.up.sql").write_text(
            f"CREATE TABLE IF NOT EXISTS bench_{k} (\n"
            "    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),\n"
            "    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()\n);\n"
        )
        (target / f"{name}.down.sql").write_text(f"DROP TABLE IF EXISTS bench_{k};\n")
    return target


@contextmanager
def server(url: str | None) -> Iterator[tuple[str, Path]]:
    """(an admin URL able to create databases, a scratch directory)."""
    scratch = Path(tempfile.mkdtemp(prefix="cesar-bench-migrate-"))
    if url is not None:
        try:
            yield url, scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    from cesar.dev.embedded import EmbeddedPostgres

    state_dir = Path(".cesar") / "bench" / f"migrate-{uuid.uuid4().hex[:8]}"
    pg = EmbeddedPostgres(state_dir)
    state, _ = pg.up()
    try:
        yield pg.superuser_conninfo(), scratch
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    del state


def new_database(admin: str, template_url: str | None) -> str:
    """A fresh database; returns a URL for it (the app login's when embedded)."""
    name = f"bench_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        owner = "cesar_app" if template_url is None else None
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            stmt = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                 sql.Identifier(owner))
        conn.execute(stmt)
    if template_url is not None:
        params = urls.parse(template_url, "--url")
        return urls.build(user=params.get("user", ""), password=params.get("password", ""),
                          host=params.get("host", "127.0.0.1"), port=int(params.get("port", 5432)),
                          dbname=name, **({"sslmode": params["sslmode"]}
                                          if "sslmode" in params else {}))
    from cesar.dev.embedded import EmbeddedPostgres

    # The embedded admin URL is the superuser's socket; the runner logs in as the app.
    state_dir = Path(psycopg.conninfo.conninfo_to_dict(admin)["host"]).parent
    state = EmbeddedPostgres(state_dir).load_state()
    if state is None:
        raise RuntimeError("embedded state missing")
    return state.url(name)


def run(args: argparse.Namespace) -> list[Figures]:
    out = []
    with server(args.url) as (admin, scratch):
        repo_count = len(migrate.migration_names(REPO_MIGRATIONS))
        cases = [(f"repository ({repo_count})", REPO_MIGRATIONS)]
        cases.append((f"{args.many} migrations", synthetic_dir(scratch / "many", args.many)))
        for label, directory in cases:
            url = new_database(admin, args.url)
            trips, times, applied = measure_noop(url, directory, args.runs)
            times.sort()
            out.append(Figures(
                case=label, applied=applied, round_trips=trips,
                median_ms=round(statistics.median(times), 2),
                p95_ms=round(times[max(0, int(len(times) * 0.95) - 1)], 2),
                process_median_ms=(round(p, 1) if (p := measure_process(
                    url, directory, args.process_runs)) is not None else None),
            ))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite migrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None,
                        help="An existing server (a user that can CREATE DATABASE); default: "
                             "start an embedded PostgreSQL.")
    parser.add_argument("--runs", type=int, default=50, help="In-process no-op runs per case.")
    parser.add_argument("--process-runs", type=int, default=5,
                        help="Whole-command runs per case (0 to skip).")
    parser.add_argument("--many", type=int, default=200, help="Size of the large case.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    figures = run(args)
    if args.json:
        print(json.dumps({"suite": "migrate", "figures": [asdict(f) for f in figures]}, indent=2))
        return 0
    print(f"no-op `migrate up` ({args.runs} in-process runs per case; "
          f"{args.process_runs} whole-command runs)")
    print(f"{'case':<22} {'applied':>7} {'round trips':>11} {'median ms':>10} {'p95 ms':>8} "
          f"{'command ms':>11}")
    for f in figures:
        cmd = "-" if f.process_median_ms is None else f"{f.process_median_ms:.0f}"
        print(f"{f.case:<22} {f.applied:>7} {f.round_trips:>11} {f.median_ms:>10.2f} "
              f"{f.p95_ms:>8.2f} {cmd:>11}")
    return 0
