"""The dashboard's unit tests (vitest: the SSE parser, the live connection, the components)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_vitest(web_modules: Path) -> None:
    proc = subprocess.run(["npx", "--no-install", "vitest", "run", "--reporter=dot"],
                          cwd=web_modules, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_typecheck(web_modules: Path) -> None:
    """Strict TypeScript over pages, components and tests (next build checks only what it
    bundles)."""
    proc = subprocess.run(["npx", "--no-install", "tsc", "--noEmit"], cwd=web_modules,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
