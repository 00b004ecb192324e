"""`invoke up` / `down` / `status` as an operator runs them (subprocesses, real server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cesar.dev.embedded import EmbeddedPostgres, free_port
from tests.helpers import REPO, new_state_dir


def run(*args: str, env: dict[str, str] | None = None, check: bool = True):
    base = {k: v for k, v in os.environ.items()
            if k not in ("ENVIRONMENT", "LOCAL_DB_URL", "COCKROACH_DB_URL", "DATABASE_TARGET")}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    state = new_state_dir("stack")
    env = {"CESAR_STATE_DIR": str(state), "CESAR_API_PORT": str(free_port())}
    try:
        yield env
    finally:
        run("invoke", "down", env=env, check=False)
        EmbeddedPostgres(state).down()
        shutil.rmtree(state, ignore_errors=True)


def status(env: dict[str, str]) -> dict:
    return json.loads(run("invoke", "status", "--json", env=env).stdout)


def test_up_down_up_keeps_data(stack_env: dict[str, str]) -> None:
    first = run("invoke", "up", env=stack_env)
    assert "initialised" in first.stdout
    info = status(stack_env)
    assert info["environment"] == "development"
    assert info["embedded"]["running"] is True
    assert info["databases"]["local"]["agents"] == 24
    assert info["databases"]["cluster"]["agents"] == 24
    for key in ("local_db_url", "cluster_db_url"):
        assert ":***@127.0.0.1:" in info[key]
    assert info["api_url"] == f"http://127.0.0.1:{stack_env['CESAR_API_PORT']}"
    lags = {(t["table"], t["direction"]): t["lag_seconds"] for t in info["sync"]["tables"]}
    assert ("agents", "local_to_cluster") in lags and ("agents", "cluster_to_local") in lags
    assert all(lag is not None and lag < 600 for lag in lags.values())

    state = EmbeddedPostgres(Path(stack_env["CESAR_STATE_DIR"])).load_state()
    assert state is not None
    assert state.passwords["cesar_app_a"] not in json.dumps(info)
    local_url = state.url("cesar_local")
    with psycopg.connect(local_url) as conn:
        conn.execute(
            "INSERT INTO agents (id, name, mob_alias, role) VALUES "
            "('00000000-0000-4000-8000-0000000000aa', 'Kept', 'The Survivor', 'test')")

    run("invoke", "down", env=stack_env)
    stopped = status(stack_env)
    assert stopped["embedded"]["running"] is False
    assert stopped["databases"]["local"]["reachable"] is False
    assert "error" in stopped["sync"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(local_url, connect_timeout=2)

    again = run("invoke", "up", env=stack_env)
    assert "initialised" not in again.stdout
    with psycopg.connect(local_url) as conn:
        (name,) = conn.execute(
            "SELECT name FROM agents WHERE id = '00000000-0000-4000-8000-0000000000aa'"
        ).fetchone()
        (count,) = conn.execute("SELECT count(*) FROM agents").fetchone()
    assert (name, count) == ("Kept", 25)

    # A third `up` on a running stack changes nothing.
    third = run("invoke", "up", env=stack_env)
    assert "started" not in third.stdout and "created" not in third.stdout


def test_down_without_a_stack_is_harmless(stack_env: dict[str, str]) -> None:
    out = run("invoke", "down", env=stack_env)
    assert "nothing to stop" in out.stdout


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ENVIRONMENT": "prod"}, "ENVIRONMENT='prod'"),
        ({"ENVIRONMENT": "production"}, "ENVIRONMENT=production"),
        ({"LOCAL_DB_URL": "mysql://x"}, "LOCAL_DB_URL"),
        ({"CESAR_POOL_TIMEOUT": "-1"}, "CESAR_POOL_TIMEOUT"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    stack_env: dict[str, str], env: dict[str, str], needle: str
) -> None:
    for cmd in (("cesar.cli", "up"), ("invoke", "up"), ("cesar.cli", "status")):
        proc = run(*cmd, env={**stack_env, **env}, check=False)
        assert proc.returncode == 2, (cmd, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cesar: error:") and needle in lines[0]
        assert "Traceback" not in proc.stderr + proc.stdout


def test_unreachable_database_is_one_line_and_exit_1(stack_env: dict[str, str]) -> None:
    port = free_port()
    dead = f"postgresql://u:secretpw@127.0.0.1:{port}/x?sslmode=disable"
    proc = run("cesar.cli", "up", env={**stack_env, "LOCAL_DB_URL": dead,
                                        "COCKROACH_DB_URL": dead}, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to the local database" in lines[0]
    assert "secretpw" not in proc.stderr and "Traceback" not in proc.stderr


def test_usage_error_exits_2(stack_env: dict[str, str]) -> None:
    proc = run("cesar.cli", "up", "--no-such-flag", env=stack_env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
