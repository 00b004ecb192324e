"""`ansible-playbook site.yml` over SSH against real hosts: converge, converge again with
nothing to change, `--check --diff` with nothing to change, the testinfra suite in checks/, and a
rolling deploy that stops at the first host whose /health fails, and cesar-api restarted when
(and only when) its environment file or CA certificate changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cesar import deploy
from cesar.dev import testhosts
from tests.helpers import REPO

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(900)]


def playbook(run: testhosts.Run, *args: str, check: bool = False) -> tuple[int, str]:
    """The deploy `invoke deploy --inventory RUN` runs (the harness built the wheelhouse)."""
    plan = deploy.plan("development", inventory=run.inventory, check=check,
                       extra_vars=args, ansible_dir=REPO / "ansible")
    return deploy.run(plan)


def _tail(output: str, lines: int = 60) -> str:
    return "\n".join(output.splitlines()[-lines:])


@pytest.fixture(scope="module")
def first_deploy(host_run: testhosts.Run) -> tuple[int, str]:
    return playbook(host_run)


def test_first_deploy_converges_every_host(host_run, first_deploy) -> None:
    rc, output = first_deploy
    assert rc == 0, _tail(output)
    counts = deploy.recap(output)
    assert set(counts) == {h.name for h in host_run.hosts}
    for host, c in counts.items():
        assert c["failed"] == 0 and c["unreachable"] == 0, (host, c)
        assert c["changed"] > 0, f"{host}: a first deploy changed nothing"


def test_second_run_reports_no_change(first_deploy, host_run) -> None:
    assert first_deploy[0] == 0, "the first deploy failed"
    rc, output = playbook(host_run)
    assert rc == 0, _tail(output)
    changed = {h: c["changed"] for h, c in deploy.recap(output).items() if c["changed"]}
    assert not changed, f"changed on a converged host: {deploy.changed_tasks(output)}"


def test_check_diff_reports_no_change(first_deploy, host_run) -> None:
    assert first_deploy[0] == 0, "the first deploy failed"
    rc, output = playbook(host_run, check=True)
    assert rc == 0, _tail(output)
    assert "--check" in " ".join(deploy.plan("development", inventory=host_run.inventory,
                                             check=True, ansible_dir=REPO / "ansible").argv)
    changed = {h: c["changed"] for h, c in deploy.recap(output).items() if c["changed"]}
    assert not changed, f"--check --diff would change: {deploy.changed_tasks(output)}"


def test_testinfra_checks_pass(first_deploy, host_run) -> None:
    assert first_deploy[0] == 0, "the first deploy failed"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "checks", "--hosts=ansible://all",
         f"--ansible-inventory={host_run.inventory}", "-p", "no:cacheprovider", "-q", "-rfEsx"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, _tail(result.stdout + result.stderr, 80)
    assert " passed" in result.stdout


def test_unhealthy_release_stops_the_rollout_at_the_first_host(first_deploy, host_run) -> None:
    """A configuration that passes validation but leaves /health at 503 (a wrong database
    password, sslmode=verify-full as staging requires) fails the first host after its retries;
    the second host is never touched. The next good deploy restores the first host."""
    assert first_deploy[0] == 0, "the first deploy failed"
    first, second = host_run.hosts[0].name, host_run.hosts[1].name
    wrong = (f"postgresql://cesar_app_a:wrong-password@{host_run.controller}:1/nowhere"
             f"?sslmode=verify-full&sslrootcert={testhosts.HOST_CA_FILE}")
    rc, output = playbook(
        host_run, f"cesar_api_cockroach_db_url={wrong}",
        "cesar_api_health_retries=4", "cesar_api_health_delay=1",
    )
    assert rc != 0, _tail(output)
    counts = deploy.recap(output)
    assert counts[first]["failed"] == 1, counts
    assert second not in counts or counts[second]["changed"] == 0, counts
    assert "Wait for the health endpoint to answer 200" in output

    rc, output = playbook(host_run)
    assert rc == 0, _tail(output)
    counts = deploy.recap(output)
    assert counts[first]["changed"] > 0 and counts[second]["changed"] == 0, counts


def _api_started(run: testhosts.Run, host: testhosts.Host) -> tuple[str, str]:
    """cesar-api's main process and when it last became active: both change on a restart."""
    result = subprocess.run(
        [*testhosts.ssh_command(run, host),
         "systemctl show --property=MainPID --property=ActiveEnterTimestamp --value cesar-api"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pid, since = result.stdout.splitlines()[:2]
    assert pid not in ("", "0"), f"cesar-api is not running on {host.name}"
    return pid, since


def test_api_restarts_when_only_its_env_file_or_ca_changes(first_deploy, host_run) -> None:
    """The API reads its environment file and the database CA only at start: a re-run that
    changes either of them alone restarts it on that host, a re-run that changes nothing
    leaves the running process alone. One host (--limit) keeps the re-runs short; the last
    run puts back the configuration every other test expects."""
    assert first_deploy[0] == 0, "the first deploy failed"
    host = host_run.hosts[-1]
    inventory = yaml.safe_load(Path(host_run.inventory).read_text())
    ca = inventory["all"]["vars"]["cesar_api_db_ca_cert"]

    def deploy_host(*extra: str) -> tuple[str, str]:
        plan = deploy.plan("development", inventory=host_run.inventory, limit=host.name,
                           extra_vars=extra, ansible_dir=REPO / "ansible")
        rc, output = deploy.run(plan)
        assert rc == 0, _tail(output)
        return _api_started(host_run, host)

    start = _api_started(host_run, host)
    assert deploy_host() == start, "a re-run with nothing changed restarted cesar-api"

    env_changed = json.dumps({"cesar_api_extra_env": {"CESAR_POOL_MAX_SIZE": "11"}})
    after_env = deploy_host(env_changed)
    assert after_env != start, "only the environment file changed, but cesar-api kept running"

    # Text outside the PEM block: the same CA to OpenSSL, another file to Ansible.
    ca_changed = json.dumps({"cesar_api_db_ca_cert": ca.rstrip("\n") + "\n# re-issued\n"})
    after_ca = deploy_host(env_changed, ca_changed)
    assert after_ca != after_env, "only the CA certificate changed, but cesar-api kept running"

    assert deploy_host() != after_ca  # back to the inventory's configuration (a change again)
