"""`invoke deploy --tags` can pick any phase of a role: every phase is tagged with the role's name
and ``<role>_<phase>``, and the preflight that sets the facts later phases need always runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"
PHASED = sorted(p.parent.parent.name for p in ROLES.glob("*/tasks/main.yml")
                if "import_tasks" in p.read_text())


@pytest.mark.parametrize("role", PHASED)
def test_every_phase_of_a_role_is_tagged(role: str) -> None:
    phases = yaml.safe_load((ROLES / role / "tasks" / "main.yml").read_text())
    untagged = []
    for phase in phases:
        tags = phase.get("tags") or []
        own = [t for t in tags if t.startswith(f"{role}_")]
        if role not in tags or len(own) != 1:
            untagged.append(phase["name"])
        elif phase["ansible.builtin.import_tasks"] == "preflight.yml" and "always" not in tags:
            untagged.append(f"{phase['name']} (checks and facts precede any phase: tag it always)")
    assert untagged == []


def test_the_roles_with_phases_are_found() -> None:
    assert {"cesar_api", "cesar_sync", "cesar_release", "cesar_firewall"} <= set(PHASED)
