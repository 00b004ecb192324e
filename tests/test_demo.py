"""``cesar demo`` against a real API on a real PostgreSQL: everything it reports was made through
the API (rows with the demo key's audit trail), runs have events, tokens and costs, none is left
running, and bad usage is one line with exit 2."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cesar.cli import main
from tests.api.helpers import rows, run_cesar, serve, settings_for


def test_demo_drives_the_api_and_leaves_nothing_running(migrated_db: str,
                                                        tmp_path: Path) -> None:
    env = {"ENVIRONMENT": "development", "LOCAL_DB_URL": migrated_db,
           "CESAR_STATE_DIR": str(tmp_path / "state")}
    with serve(settings_for(migrated_db, tmp_path)) as api:
        done = run_cesar("demo", "--rate", "4", "--duration", "3", "--seed", "7", "--json",
                         "--api-url", api.url, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert "demo " in done.stderr  # progress goes to stderr with --json
    key_file = tmp_path / "state" / "demo-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() not in done.stdout + done.stderr
    assert summary["tasks_created"] >= 8
    tasks = rows(migrated_db, "SELECT count(*) AS n FROM tasks WHERE requested_by LIKE "
                              "'api_key:%%(demo)'")[0]["n"]
    assert tasks == summary["tasks_created"]
    runs = rows(migrated_db, "SELECT status, count(*) AS n, sum(tokens_in) AS tin, "
                             "sum(cost_usd)::text AS cost FROM agent_runs GROUP BY status")
    assert "running" not in {r["status"] for r in runs}
    assert sum(r["n"] for r in runs) == summary["runs_started"] > 0
    assert sum(int(r["tin"]) for r in runs) == summary["tokens_in"]
    events = rows(migrated_db, "SELECT count(*) AS n FROM agent_run_events")[0]["n"]
    assert events == summary["events"] > 0
    # Every write left an audit row naming the demo's key.
    writes = rows(migrated_db, "SELECT count(*) AS n FROM audit_log WHERE actor LIKE "
                               "'api_key:%%(demo)'")[0]["n"]
    assert writes >= tasks + summary["runs_started"] + events


@pytest.mark.parametrize("args", [["--rate", "0"], ["--duration", "soon"],
                                  ["--duration", "0"], ["--rate", "fast"]])
def test_demo_bad_usage_is_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("cesar: error:")
    assert f"'{args[0]}'" in line  # names the option at fault
