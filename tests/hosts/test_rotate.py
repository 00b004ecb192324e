"""A password rotation rolled out to the test hosts: the hosts' credential lives in an Ansible
Vault file, the rotation re-encrypts it and runs the playbook (one host at a time, each waiting
for /health), and the previous login is retired only after both hosts switched.

While it runs, the controller polls every host's /health: no answer may be anything but 200.
A host refuses connections for the second its own unit restarts (behind a load balancer that
is the drain window); those refusals are counted and reported, never a non-200 answer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from cesar import deploy
from cesar.dev import testhosts
from cesar.dev.embedded import EmbeddedPostgres
from cesar.rotate import Rotator
from cesar.rotate.stores import AnsibleVaultStore, EmbeddedStore
from tests.helpers import REPO

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(900)]

EXPOSE = ("cesar_api_host=0.0.0.0",)  # so the controller can poll /health over the veth link


def _template(url: str) -> str:
    """The run's URL with its credential taken from the vault variables."""
    rest = url.split("@", 1)[1]
    return ("postgresql://{{ vault_cesar_db_login }}:"
            "{{ vault_cesar_db_password | urlencode | replace('/', '%2F') }}@" + rest)


@pytest.fixture(scope="module")
def vaulted(host_run: testhosts.Run) -> tuple[Path, Path, Path]:
    """An inventory like the run's, but with the credential in an encrypted vault file."""
    base = Path(host_run.inventory)
    inv_dir = base.parent / "vaulted"
    (inv_dir / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    inventory = yaml.safe_load(base.read_text())
    variables = inventory["all"]["vars"]
    for key in ("cesar_api_cockroach_db_url", "cesar_sync_cockroach_db_url",
                "cesar_sync_local_db_url"):
        variables[key] = _template(variables[key])
    inv_path = inv_dir / "hosts.yml"
    inv_path.write_text(yaml.safe_dump(inventory, sort_keys=False, width=1000))
    state = EmbeddedPostgres(Path(host_run.pg_dir)).load_state()
    assert state is not None
    password_file = inv_dir / "vault-pass"
    password_file.write_text(os.urandom(24).hex())
    password_file.chmod(0o600)
    vault = inv_dir / "group_vars" / "all" / "vault.yml"
    vault.write_text(yaml.safe_dump({
        "vault_cesar_db_login": state.active_login,
        "vault_cesar_db_password": state.passwords[state.active_login]}))
    subprocess.run([str(Path(sys.executable).with_name("ansible-vault")), "encrypt", str(vault),
                    "--vault-password-file", str(password_file)], check=True,
                   capture_output=True)
    plan = deploy.plan("staging", inventory=inv_path, vault_password_file=str(password_file),
                       extra_vars=EXPOSE, ansible_dir=REPO / "ansible")
    rc, output = deploy.run(plan)
    assert rc == 0, output[-4000:]
    return inv_path, vault, password_file


class Poller:
    """GET /health on every host, from the controller, until stopped."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.answers: Counter[tuple[str, int]] = Counter()
        self.refused: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=3) as client:
            while not self._stop.is_set():
                for address in self.addresses:
                    try:
                        r = client.get(f"http://{address}:8000/health")
                        self.answers[(address, r.status_code)] += 1
                    except httpx.TransportError:
                        self.refused[address] += 1
                time.sleep(0.05)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_rotation_rolls_out_to_every_host(host_run: testhosts.Run, vaulted) -> None:
    inv_path, vault, password_file = vaulted
    pg = EmbeddedPostgres(Path(host_run.pg_dir))
    primary = EmbeddedStore(pg)
    before = primary.active()
    store = AnsibleVaultStore(vault, password_file, inventory=inv_path, environment="staging",
                              ansible_dir=REPO / "ansible", extra_vars=EXPOSE)
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    rotator = Rotator(primary, [store], state_dir=Path(host_run.dir) / "rotation",
                      environment="staging", grace_seconds=5)
    addresses = [h.address for h in host_run.hosts]
    with Poller(addresses) as poller:
        time.sleep(2)
        report = rotator.run()
        time.sleep(3)  # after the retire: both hosts keep answering with the new login
    print(f"\n/health answers: {dict(poller.answers)}; refused while restarting: "
          f"{dict(poller.refused)}")
    assert report.retired and report.to_login != before.login
    bad = {k: n for k, n in poller.answers.items() if k[1] != 200}
    assert not bad, f"non-200 /health answers during the rotation: {bad}"
    for address in addresses:
        assert poller.answers[(address, 200)] > 10
    # Both hosts now hold connections as the new login; the old one can no longer log in.
    with psycopg.connect(pg.superuser_conninfo(), autocommit=True) as su:
        users = {(str(addr).split("/")[0], user) for addr, user in su.execute(
            "SELECT client_addr, usename FROM pg_stat_activity WHERE client_addr IS NOT NULL")}
    for address in addresses:
        assert (address, report.to_login) in users, users
    state = pg.load_state()
    assert state is not None and state.active_login == report.to_login
    old_url = state.url("cesar_cluster", before.login, ca_file=pg.ca_file).replace(
        state.passwords[before.login], before.password)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(old_url, connect_timeout=5)
    # A restart of every host comes back healthy on the new credential alone.
    for host in host_run.hosts:
        ssh = testhosts.ssh_command(host_run, host)
        subprocess.run([*ssh, "systemctl", "restart", "cesar-api"], check=True, timeout=120)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{host.address}:8000/health", timeout=3).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{host.name} unhealthy after a restart"
            time.sleep(0.5)
