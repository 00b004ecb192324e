"""``cesar soak`` (registered in ``cesar.cli``; ``invoke soak`` calls it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cesar.config import load_settings


@click.command("soak")
@click.option("--duration", default="5m", show_default=True, metavar="DURATION",
              help="How long the load and the faults run: 5m, 30m, 90s, 1h.")
@click.option("--compress", default=48.0, show_default=True, type=float,
              help="Time compression: the sync runs every 300/COMPRESS s and the lag limit "
                   "(600 s) is in compressed seconds. 48: a day of cycles in 30 minutes.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the writers' choices and of the API worker killed.")
@click.option("--faults", default=None, metavar="F1,F2",
              help="Only these faults, in this order (default: all; 'none' for none).")
@click.option("--out", "out_dir", default=".cesar/soak", show_default=True, metavar="DIR",
              help="Where each run's directory (report, plot, logs) is made.")
@click.option("--port", default=None, type=click.IntRange(1024, 65535),
              help="The API's port (default: a free one).")
@click.option("--inject-unexplained", is_flag=True,
              help="Cause one real database error outside every fault: the run must fail "
                   "(proves the log matcher is not blind).")
@click.option("--keep", is_flag=True, help="Keep the run's database files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the report).")
def soak_command(duration: str, compress: float, seed: int, faults: str | None,
                 out_dir: str, port: int | None, inject_unexplained: bool, keep: bool,
                 as_json: bool) -> None:
    """Run the whole stack under load and scheduled faults; exit 1 unless every check passes.

    Writes report.json and soak.png into a new directory under --out."""
    import json

    from cesar.soak import run

    settings = load_settings()
    chosen = run.ALL_FAULTS
    if faults is not None:
        chosen = () if faults.strip() == "none" else tuple(
            f.strip() for f in faults.split(",") if f.strip())
    options = run.Options(run.parse_duration(duration), compress, seed, Path(out_dir), port,
                          chosen, inject_unexplained, settings.pg_bindir, keep)

    def progress(line: str) -> None:
        click.echo(line, err=as_json)

    result = run.soak(options, settings, progress)
    report_file = Path(result["logs"]).parent / "report.json"
    report_file.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if as_json:
        from cesar.console import emit_json

        emit_json(result)
    else:
        _summary(result, report_file)
    if not result["ok"]:
        sys.exit(1)


def _summary(result: dict[str, Any], report_file: Path) -> None:
    for f in result["faults"]:
        rec = "never" if f["recovery_s"] is None else f"{f['recovery_s']:.2f} s"
        click.echo(f"  {f['name']:<20} outage {f['outage_s']:6.2f} s  recovery {rec:>8}  "
                   f"{'ok' if f['ok'] else 'FAILED'}")
    click.echo(f"  reads {result['reads']['count']} (failed {result['reads']['failed']}), "
               f"worst minute p95 {result['max_p95_ms']} ms; writes acknowledged "
               f"{result['writes']['acknowledged']}, lost {result['lost_rows']}; "
               f"max sync lag {result['max_sync_lag_s']} s compressed")
    for e in result["unexplained_errors"]:
        click.echo(f"  unexplained: {e['source']} {e['at']}: {e['line'][:200]}")
    for why in result["failures"]:
        click.echo(f"  FAILED: {why}")
    click.echo(f"soak {'passed' if result['ok'] else 'FAILED'}; report {report_file}, "
               f"plot {result['plot']}")
