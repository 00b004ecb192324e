"""`invoke up` applies every migration to both databases through the runner and reports N/N;
`invoke migrate` and `invoke rollback` wrap `cesar migrate`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cesar import migrate
from cesar.dev.embedded import EmbeddedPostgres, free_port
from tests.helpers import REPO, child_env, new_state_dir, query
from tests.migrate.helpers import file_count


def invoke(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO,
                          env={**child_env(), **env}, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    state = new_state_dir("migrate-stack")
    env = {"CESAR_STATE_DIR": str(state), "CESAR_API_PORT": str(free_port())}
    try:
        yield env
    finally:
        invoke("down", env=env)
        EmbeddedPostgres(state).down()
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.slow
def test_invoke_up_migrates_both_databases_and_reports_n_of_n(
    stack_env: dict[str, str]
) -> None:
    n = file_count()
    first = invoke("up", env=stack_env)
    assert first.returncode == 0, first.stderr
    assert f"applied {n} migrations to the local database" in first.stdout
    assert f"applied {n} migrations to the cluster database" in first.stdout
    assert first.stdout.count(f"migrations={n}/{n}") == 2

    again = invoke("up", "--json", env=stack_env)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert "applied" not in " ".join(doc["actions"])
    state = EmbeddedPostgres(Path(stack_env["CESAR_STATE_DIR"])).load_state()
    assert state is not None
    for name, dbname in (("local", "cesar_local"), ("cluster", "cesar_cluster")):
        counts = doc["databases"][name]["migrations"]
        assert counts == {"applied": n, "total": n, "failed": 0, "pending": 0}
        applied = query(state.url(dbname), "SELECT count(*) FROM schema_migrations "
                                           "WHERE status = 'succeeded'")
        assert applied == [(n,)]

    status = invoke("status", env=stack_env)
    assert status.stdout.count(f"migrations={n}/{n}") == 2

    # The invoke tasks wrap `cesar migrate` for the configured environment (the local database).
    st = invoke("migrate", "--status", "--json", env=stack_env)
    assert st.returncode == 0, st.stderr
    assert [m["name"] for m in json.loads(st.stdout)["migrations"]] == \
        migrate.migration_names(REPO / "sql" / "migrations")
    dry = invoke("rollback", "--steps", "2", "--dry-run", env=stack_env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would roll back") == 2
    noop = invoke("migrate", env=stack_env)
    assert noop.returncode == 0, noop.stderr
    assert noop.stdout.strip() == f"{n}/{n} applied, 0 pending"
    cluster = invoke("migrate", "--dry-run", "--url", state.url("cesar_cluster"), env=stack_env)
    assert cluster.returncode == 0 and "nothing to apply" in cluster.stdout
