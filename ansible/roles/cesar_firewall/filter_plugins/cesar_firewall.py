"""``cesar_firewall_ruleset``: the nftables file from the role's variables, rendered on the
controller by ``cesar.firewall`` (the checks the cluster's allowlist applies, in one place)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError


def cesar_firewall_ruleset(cidrs: Any, environment: str, port: Any) -> str:
    from cesar import firewall
    from cesar.errors import CesarError

    try:
        return firewall.render(cidrs, str(environment), int(port))
    except CesarError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"cesar_firewall_ruleset": cesar_firewall_ruleset}
