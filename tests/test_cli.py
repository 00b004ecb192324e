"""The root command: a process made ready ahead of its turn (``--ready``) runs exactly what it
is told, once."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO, child_env


def _warm(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cesar.cli", "--ready"], input=stdin, text=True,
                          capture_output=True, cwd=REPO, env=child_env(), timeout=120)


def test_it_runs_the_command_of_its_line_as_cesar_would() -> None:
    # A bad usage: cesar's own one-line error and exit 2, so the arguments reached cesar.
    proc = _warm("soak --duration 5s\n")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "cesar: error: --duration must be at least 1m (a minute of p95 is the unit)"]


def test_without_a_line_it_ends_and_runs_nothing() -> None:
    proc = _warm("")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
