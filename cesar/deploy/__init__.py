"""The deploy side: what reaches the hosts and how.

- ``playbook``: ``invoke deploy``, ``ansible-playbook site.yml`` for an environment
- ``wheelhouse``: the wheels the hosts install, built from this checkout
- ``configcheck``: ``cesar config check``, the settings a host's env file may hold
"""

from cesar.deploy.playbook import (
    ANSIBLE_DIR,
    PLAYBOOK,
    VAULT_HEADER,
    Plan,
    changed_tasks,
    deploy_command,
    inventory_for,
    plan,
    recap,
    require_success,
    run,
    vault_args,
    vault_files,
)

__all__ = [
    "ANSIBLE_DIR", "PLAYBOOK", "VAULT_HEADER", "Plan", "changed_tasks", "deploy_command",
    "inventory_for", "plan", "recap", "require_success", "run", "vault_args", "vault_files",
]
