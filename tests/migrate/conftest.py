"""Fixtures of the migration runner's tests: real PostgreSQL, real runner processes.

``migrations`` is a private copy of the repository's ``sql/migrations`` that a test may edit
(drift, a failing statement, a fix). ``cli`` runs ``cesar migrate ...`` in-process (fast);
``spawn`` starts it as a separate process (for concurrency and SIGKILL).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cesar import migrate
from tests.helpers import CliResult, child_env, make_settings, run_in_process
from tests.migrate.helpers import REPO_MIGRATIONS


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A copy of the repository's migrations that the test may change."""
    target = tmp_path / "migrations"
    shutil.copytree(REPO_MIGRATIONS, target)
    return target


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``cesar migrate ARGS`` in this process; returns the exit code and both outputs."""

    def run(*args: str) -> CliResult:
        return run_in_process(capsys, ["migrate", *args])

    return run


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``cesar migrate ARGS`` as its own process (killed at the end if still running)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cesar.cli", "migrate", *args],
            cwd=tmp_path, env=child_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def runner_for(migrations: Path) -> Iterator[Callable[..., migrate.Runner]]:
    """A Runner on its own autocommit connection (closed at the end)."""
    conns: list[psycopg.Connection] = []
    settings = make_settings()

    def make(url: str, **options: Any) -> migrate.Runner:
        options.setdefault("migrations_dir", migrations)
        conn, runner = migrate.open_runner(url, settings, **options)
        conns.append(conn)
        return runner

    yield make
    for conn in conns:
        conn.close()
