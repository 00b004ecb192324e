"""The playbook as Ansible's own tools judge it: ansible-lint (production profile) and
ansible-playbook --syntax-check with each inventory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, require

ANSIBLE = REPO / "ansible"
INVENTORIES = sorted((ANSIBLE / "inventories").glob("*/hosts.yml"))


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    require(path.exists(), f"{name}: run `uv sync` (it is in the dev dependency group)")
    return str(path)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "NO_COLOR": "1",
           "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(argv, cwd=ANSIBLE, capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_ansible_lint_passes_with_the_production_profile() -> None:
    result = _run([_tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.parent.name)
def test_syntax_check_passes(inventory: Path) -> None:
    result = _run([_tool("ansible-playbook"), "--syntax-check", "-i", str(inventory), "site.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_environments_have_an_inventory() -> None:
    assert {p.parent.name for p in INVENTORIES} == {"staging", "production"}
