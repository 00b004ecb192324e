"""Names of everything a stack creates, in one place.

Pulumi logical names and Docker object names both carry the stack (``cesar-dev-roach-1``), so
two stacks can share one Docker host and a name says where it belongs. Hostnames on the private
network are short (``roach-1``, ``prometheus``) because the certificates and the generated
configuration refer to them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cesar.errors import ConfigError

T = TypeVar("T")
_STACK = re.compile(r"^[a-z][a-z0-9-]{0,30}$")

# Ports inside the private network (fixed: the generated configuration refers to them).
SQL_PORT = 26257
RPC_PORT = 26357
HTTP_PORT = 8080
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
GRAFANA_PORT = 3000


@dataclass(frozen=True)
class Names:
    stack: str

    def __post_init__(self) -> None:
        if not _STACK.match(self.stack):
            raise ConfigError(f"stack name {self.stack!r} is not usable in resource names; use "
                              "lowercase letters, digits and '-' (e.g. dev, staging, production)")

    @property
    def prefix(self) -> str:
        return f"cesar-{self.stack}"

    def resource(self, what: str) -> str:
        """The Pulumi logical name (and Docker object name) of ``what``."""
        return f"{self.prefix}-{what}"

    @property
    def network(self) -> str:
        return self.resource("net")

    @staticmethod
    def node_host(index: int) -> str:
        """Hostname of node ``index`` (1-based) on the private network."""
        if index < 1:
            raise ValueError("nodes are numbered from 1")
        return f"roach-{index}"

    def node(self, index: int) -> str:
        return self.resource(self.node_host(index))

    def node_volume(self, index: int) -> str:
        return self.resource(f"{self.node_host(index)}-data")

    @property
    def cluster_init(self) -> str:
        return self.resource("roach-init")

    @property
    def bootstrap(self) -> str:
        return self.resource("sql-bootstrap")

    def service(self, name: str) -> str:
        """A monitoring container: prometheus, alertmanager or grafana."""
        return self.resource(name)


def docker_labels(stack: str, role: str, kind: Callable[..., T]) -> list[T]:
    """Docker labels saying which stack and role an object belongs to (``kind`` is the
    provider's label class: ContainerLabelArgs, NetworkLabelArgs or VolumeLabelArgs)."""
    return [kind(label="cesar.dev.stack", value=stack), kind(label="cesar.role", value=role)]
