"""`invoke deploy` / `cesar deploy`: which inventory, which vault password, which command."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cesar import deploy
from cesar.errors import ConfigError
from tests.helpers import REPO

ANSIBLE = REPO / "ansible"


def _plan(environment: str, **kw):
    kw.setdefault("environ", {})
    return deploy.plan(environment, ansible_dir=ANSIBLE, **kw)


def test_environment_picks_its_inventory_and_prompts_for_the_vault() -> None:
    plan = _plan("production")
    assert plan.inventory == ANSIBLE / "inventories" / "production" / "hosts.yml"
    assert plan.cwd == ANSIBLE
    assert plan.argv[1:4] == ["-i", str(plan.inventory), "site.yml"]
    assert "--ask-vault-pass" in plan.argv
    assert plan.env["ANSIBLE_CONFIG"] == str(ANSIBLE / "ansible.cfg")


def test_vault_password_file_from_the_option_or_the_setting(tmp_path: Path) -> None:
    secret = tmp_path / "vault-pass"
    secret.write_text("x\n")
    secret.chmod(stat.S_IRUSR | stat.S_IWUSR)
    by_option = _plan("staging", vault_password_file=str(secret))
    by_env = _plan("staging", environ={"CESAR_VAULT_PASSWORD_FILE": str(secret)})
    for plan in (by_option, by_env):
        assert f"--vault-password-file={secret}" in plan.argv
        assert "--ask-vault-pass" not in plan.argv
    by_ansible = _plan("staging", environ={"ANSIBLE_VAULT_PASSWORD_FILE": str(secret)})
    assert not [a for a in by_ansible.argv if "vault" in a]


def test_a_missing_vault_password_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _plan("staging", vault_password_file=str(tmp_path / "nope"))


def test_development_needs_an_explicit_inventory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ENVIRONMENT=development has no inventory"):
        _plan("development")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    h1:\n")
    plan = _plan("development", inventory=inventory, check=True, limit="h1",
                 wheelhouse=tmp_path / "wh", extra_vars=["a=b"])
    assert plan.inventory == inventory
    assert not [a for a in plan.argv if "vault" in a]  # no vault file beside that inventory
    assert plan.argv[4:] == ["--check", "--diff", "--limit=h1", "-e",
                             f"cesar_release_wheelhouse={tmp_path / 'wh'}", "-e", "a=b"]


def test_recap_and_changed_tasks_are_read_from_ansible_output() -> None:
    output = (
        "TASK [cesar_api : Write the systemd unit] ****\nok: [h1]\nchanged: [h2]\n\n"
        "PLAY RECAP *********\n"
        "h1                         : ok=45   changed=0    unreachable=0    failed=0    "
        "skipped=16   rescued=0    ignored=0\n"
        "h2                         : ok=22   changed=1    unreachable=0    failed=0    "
        "skipped=8    rescued=0    ignored=0\n"
    )
    assert deploy.recap(output) == {
        "h1": {"ok": 45, "changed": 0, "unreachable": 0, "failed": 0, "skipped": 16,
               "rescued": 0, "ignored": 0},
        "h2": {"ok": 22, "changed": 1, "unreachable": 0, "failed": 0, "skipped": 8,
               "rescued": 0, "ignored": 0},
    }
    assert deploy.changed_tasks(output) == ["cesar_api : Write the systemd unit -> h2"]


def test_displayed_command_masks_passwords_in_extra_vars(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    h1:\n")
    url = "postgresql://cesar_app_a:s3cr%2Ft@db.example.invalid:26257/cesar?sslmode=verify-full"
    plan = _plan("development", inventory=inventory,
                 extra_vars=[f"cesar_api_cockroach_db_url={url}"])
    assert f"cesar_api_cockroach_db_url={url}" in plan.argv  # ansible gets the real value
    assert "s3cr" not in plan.display()
    assert "postgresql://cesar_app_a:***@db.example.invalid:26257/cesar" in plan.display()
