"""The roles read the way geerlingguy's and prometheus-community's do: every tunable a prefixed
default, validated by meta/argument_specs.yml and documented in the role's README; and no secret
in plain text anywhere under ansible/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

ANSIBLE = REPO / "ansible"
ROLES = sorted(p for p in (ANSIBLE / "roles").iterdir() if (p / "defaults" / "main.yml").exists())
VAULT_HEADER = "$ANSIBLE_VAULT;"
# A database URL whose password is written out (not a {{ template }}).
CLEAR_PASSWORD = re.compile(r"postgres(?:ql)?://[^:/@\s{}]+:(?!\{\{)[^@\s]+@")


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _defaults(role: Path) -> dict:
    return _yaml(role / "defaults" / "main.yml")


def _options(role: Path) -> dict:
    return _yaml(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_prefixed_with_the_role_name(role: Path) -> None:
    unprefixed = [name for name in _defaults(role) if not name.startswith(f"{role.name}_")]
    assert not unprefixed


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_cover_exactly_the_defaults(role: Path) -> None:
    defaults, options = _defaults(role), _options(role)
    assert set(options) == set(defaults)
    for name, value in defaults.items():
        if isinstance(value, str) and "{{" in value:
            continue  # templated defaults: the spec documents the resolved value
        assert options[name].get("default") == value, name


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_readme_documents_every_default_with_its_value(role: Path) -> None:
    readme = (role / "README.md").read_text()
    for name, value in _defaults(role).items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")),
                   None)
        assert row is not None, f"{name} is not in {role.name}/README.md's variable table"
        shown = row.split("|")[2].strip().strip("`")
        if isinstance(value, str):
            assert shown == (value or '""'), f"{name}: README says {shown!r}, default {value!r}"
        else:
            assert yaml.safe_load(shown) == value, f"{name}: README {shown!r}, default {value!r}"

def test_vault_files_are_encrypted() -> None:
    vaults = sorted((ANSIBLE / "inventories").glob("*/group_vars/**/vault*.yml"))
    assert {p.relative_to(ANSIBLE / "inventories").parts[0] for p in vaults} == {
        "staging", "production"}
    for path in vaults:
        assert path.read_text().startswith(VAULT_HEADER), f"{path} is not vault-encrypted"


def test_no_secret_in_plain_text() -> None:
    """Outside the vault files: no vault_* value is defined and no URL carries a password."""
    for path in sorted(ANSIBLE.rglob("*")):
        if not path.is_file() or path.read_text(errors="replace").startswith(VAULT_HEADER):
            continue
        text = path.read_text(errors="replace")
        assert not CLEAR_PASSWORD.search(text), f"{path}: a database URL with a password"
        if path.suffix in (".yml", ".yaml"):
            data = yaml.safe_load(text)
            if isinstance(data, dict):
                defined = [k for k in data if str(k).startswith("vault_")]
                assert not defined, f"{path} defines {defined} outside a vault file"


def test_every_vault_variable_used_is_documented_in_the_deploy_guide() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    used = set()
    for path in (ANSIBLE / "inventories").rglob("vars.yml"):
        used |= set(re.findall(r"\bvault_[a-z_]+", path.read_text()))
    assert used
    for name in sorted(used):
        assert name in guide, f"{name} is not explained in docs/deploy.md"
