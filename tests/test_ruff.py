"""The code base stays lint-clean (ruff, configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run(
        # No cache: a cached verdict hid import-order errors that a clean clone (CI) reports,
        # because moved modules change which imports ruff sees as first-party.
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
         "cesar", "infra", "tests", "checks", "tasks.py"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
