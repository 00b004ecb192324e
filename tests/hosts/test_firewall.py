"""The host firewall on real hosts: h1's API answers the controller (an allowed network) and
refuses h2 (another address on the same bridge, outside the allowed range); allowing h2's
address lets it in, which shows the refusal was the firewall's. Traffic goes only between the
run's own hosts and its controller."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from cesar import deploy
from cesar.dev import testhosts
from tests.helpers import REPO

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(900)]

EXPOSE = "cesar_api_host=0.0.0.0"  # the API listens on the veth link, not only on loopback
CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
           "    print('connected')\n"
           "except ConnectionRefusedError:\n"
           "    print('refused')\n"
           "except OSError as exc:\n"
           "    print(f'error {exc}')\n")


def deploy_with(run: testhosts.Run, *extra: str, firewall_only: bool = True) -> None:
    """Deploy h1 (only the firewall's tasks, unless asked for the whole play)."""
    plan = deploy.plan("development", inventory=run.inventory, ansible_dir=REPO / "ansible",
                       extra_vars=(EXPOSE, *extra), limit=run.hosts[0].name,
                       tags="firewall" if firewall_only else None)
    rc, output = deploy.run(plan)
    assert rc == 0, "\n".join(output.splitlines()[-40:])


def connect_from(host: testhosts.Host, address: str, port: int = 8000) -> str:
    """A TCP connection opened inside ``host``'s network namespace (its address on the bridge)."""
    out = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", CONNECT,
                          address, str(port)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_api_port_answers_only_the_allowed_networks(host_run: testhosts.Run) -> None:
    h1, h2 = host_run.hosts[0], host_run.hosts[1]
    deploy_with(host_run, firewall_only=False)  # the inventory allows the controller only
    assert httpx.get(f"http://{h1.address}:8000/health", timeout=10).status_code == 200
    assert connect_from(h2, h1.address) == "refused"
    # Another port of h1 is not the firewall's business (mtail listens where the API does).
    assert connect_from(h2, h1.address, 3903) == "connected"

    allow_both = json.dumps({"cesar_firewall_api_allowed_cidrs": [
        f"{host_run.controller}/32", f"{h2.address}/32"]})
    try:
        deploy_with(host_run, allow_both)
        assert connect_from(h2, h1.address) == "connected"
    finally:
        deploy_with(host_run)
    assert connect_from(h2, h1.address) == "refused"


def test_the_whole_internet_is_refused_and_the_ruleset_stays(host_run: testhosts.Run) -> None:
    """The test hosts run as staging: 0.0.0.0/0 stops the play at the firewall's preflight,
    before its ruleset changes."""
    plan = deploy.plan("development", inventory=host_run.inventory,
                       ansible_dir=REPO / "ansible", limit=host_run.hosts[0].name,
                       tags="firewall", extra_vars=(EXPOSE, json.dumps(
                           {"cesar_firewall_api_allowed_cidrs": ["0.0.0.0/0"]})))
    rc, output = deploy.run(plan)
    assert rc != 0
    assert "opens the API to the whole Internet" in output
    h1, h2 = host_run.hosts[0], host_run.hosts[1]
    assert connect_from(h2, h1.address) == "refused"  # the previous ruleset still holds
