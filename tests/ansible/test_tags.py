"""`invoke deploy --tags` can pick any phase of a role: every phase is tagged with the role's name
and ``<role>_<phase>``, and the preflight that sets the facts later phases need always runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"
# Every role: a task written straight into main.yml has no phase tag, and `--tags` skips it.
PHASED = sorted(p.parent.parent.name for p in ROLES.glob("*/tasks/main.yml"))


@pytest.mark.parametrize("role", PHASED)
def test_every_phase_of_a_role_is_tagged(role: str) -> None:
    phases = yaml.safe_load((ROLES / role / "tasks" / "main.yml").read_text())
    untagged = []
    for phase in phases:
        if "ansible.builtin.import_tasks" not in phase:
            untagged.append(f"{phase['name']} (a task, not a phase: move it into a phase file)")
            continue
        tags = phase.get("tags") or []
        own = [t for t in tags if t.startswith(f"{role}_")]
        if role not in tags or len(own) != 1:
            untagged.append(phase["name"])
        elif phase["ansible.builtin.import_tasks"] == "preflight.yml" and "always" not in tags:
            untagged.append(f"{phase['name']} (checks and facts precede any phase: tag it always)")
    assert untagged == []


def test_the_roles_with_phases_are_found() -> None:
    assert {"cesar_api", "cesar_sync", "cesar_release", "cesar_firewall", "cesar_web",
            "cesar_log_metrics"} <= set(PHASED)


def test_every_role_in_the_playbook_has_phases() -> None:
    plays = yaml.safe_load((ROLES.parent / "site.yml").read_text())
    used = {entry["role"] for play in plays for entry in play.get("roles", [])}
    assert used <= set(PHASED)
