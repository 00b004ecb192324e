"""testinfra verification of deployed CESAR hosts: what `ansible-playbook site.yml` promises.

Run against any inventory (the test hosts' one, staging, production)::

    uv run pytest checks --hosts=ansible://all \
        --ansible-inventory=ansible/inventories/staging/hosts.yml

(add ANSIBLE_VAULT_PASSWORD_FILE=... when the inventory has vault files). Every check runs on
each host from the host itself. What a host should look like comes from the roles' defaults
overlaid with the inventory's variables for that host, as Ansible sees them.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROLES = Path(__file__).resolve().parent.parent / "ansible" / "roles"
ROLE_NAMES = ("cesar_release", "cesar_api", "cesar_sync", "cesar_firewall", "cesar_log_metrics",
              "cesar_web")


class Expected(dict):
    """The role defaults overlaid with the host's inventory variables, templates resolved."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def groups(self) -> list[str]:
        return list(self.get("group_names", []))

    @property
    def venv(self) -> str:
        return f"{self['cesar_release_root']}/current/venv"

    def as_service_user(self, command: str) -> str:
        """A shell command run as the service user with the sync's environment loaded."""
        inner = f"set -a; . {shlex.quote(self['cesar_sync_env_file'])}; set +a; {command}"
        return f"runuser -u {self['cesar_release_user']} -- /bin/sh -c {shlex.quote(inner)}"


def _defaults() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for role in ROLE_NAMES:
        merged.update(yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {})
    return merged


def _resolve(values: dict[str, Any]) -> dict[str, Any]:
    """Render ``{{ var }}`` references between the variables until nothing changes."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    resolved = dict(values)
    for _ in range(5):
        changed = False
        for key, value in resolved.items():
            if isinstance(value, str) and "{{" in value:
                try:
                    new = env.from_string(value).render(resolved)
                except jinja2.UndefinedError:
                    continue  # e.g. playbook_dir: meaningful on the controller only
                if new != value:
                    resolved[key], changed = new, True
        if not changed:
            break
    return resolved


@pytest.fixture
def expected(host) -> Expected:
    return Expected(_resolve({**_defaults(), **host.ansible.get_variables()}))


@pytest.fixture
def api_host(host, expected: Expected) -> Expected:
    if "cesar_api" not in expected.groups:
        pytest.skip("not in the cesar_api group")
    return expected


@pytest.fixture
def sync_host(host, expected: Expected) -> Expected:
    if "cesar_sync" not in expected.groups:
        pytest.skip("not in the cesar_sync group")
    return expected


@pytest.fixture
def web_host(host, expected: Expected) -> Expected:
    if "cesar_web" not in expected.groups:
        pytest.skip("not in the cesar_web group")
    return expected


def run_json(host, command: str) -> Any:
    """Run a command on the host that prints one JSON document; fail with its stderr."""
    result = host.run(command)
    assert result.rc == 0, f"{command!r} failed ({result.rc}): {result.stderr.strip()}"
    return json.loads(result.stdout)
