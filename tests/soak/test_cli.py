"""Bad input to `cesar soak` is one line and exit 2, before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env


@pytest.mark.parametrize(("args", "names"), [
    (["--duration", "10s"], "--duration"),
    (["--duration", "five minutes"], "--duration"),
    (["--compress", "0"], "--compress"),
    (["--faults", "pg_restart,meteor"], "meteor"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], names: str, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cesar.cli", "soak", *args,
                           "--out", str(tmp_path)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cesar: error:") and names in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing was started or written
