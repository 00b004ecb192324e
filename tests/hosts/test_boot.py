"""The harness's boot check on a real host: a unit that fails at boot (before any role runs)
is started once more and why it failed is reported; a unit that fails again stops the run
with its result and journal. Runs on h2 with a unit of its own, removed afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from cesar.dev import testhosts
from cesar.errors import OperationFailed

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(300)]

UNIT = "cesar-boot-probe.service"
# Fails while its marker is absent and says why; the test decides how many times.
SERVICE = """[Unit]
Description=cesar test: fails {times} time(s), then starts

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'n=$(cat /run/cesar-boot-probe 2>/dev/null || echo 0); \\
  echo $((n + 1)) > /run/cesar-boot-probe; \\
  if [ "$n" -lt {times} ]; then echo "probe: failure $((n + 1)) of {times}"; exit 3; fi'
"""


def _ssh(run: testhosts.Run, host: testhosts.Host, script: str) -> subprocess.CompletedProcess:
    """``script`` run by the host's shell (ssh hands the remote shell one command line)."""
    return subprocess.run([*testhosts.ssh_command(run, host), script],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def probe(host_run: testhosts.Run) -> Iterator[Callable[[int], testhosts.Host]]:
    host = host_run.hosts[1]

    def install(times: int) -> testhosts.Host:
        unit = SERVICE.format(times=times)
        assert _ssh(host_run, host,
                    f"cat > /etc/systemd/system/{UNIT} <<'END'\n{unit}END\n"
                    "rm -f /run/cesar-boot-probe && systemctl daemon-reload").returncode == 0
        started = _ssh(host_run, host, f"systemctl start {UNIT}")
        assert started.returncode != 0, "the probe unit was meant to fail its first start"
        state = _ssh(host_run, host, "systemctl is-system-running").stdout.strip()
        assert state == "degraded", state
        return host

    try:
        yield install
    finally:
        _ssh(host_run, host,
             f"systemctl stop {UNIT}; rm -f /etc/systemd/system/{UNIT} /run/cesar-boot-probe; "
             f"systemctl daemon-reload; systemctl reset-failed {UNIT}")
        assert _ssh(host_run, host, "systemctl is-system-running --wait").stdout.strip() \
            == "running"


def test_a_unit_that_failed_at_boot_is_started_again_and_the_reason_reported(
        host_run: testhosts.Run, probe: Callable[[int], testhosts.Host]) -> None:
    host = probe(1)
    said: list[str] = []
    testhosts.wait_ready(host_run, host, progress=said.append)
    assert _ssh(host_run, host, f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert len(said) == 1, said
    assert UNIT in said[0] and "Result=exit-code" in said[0] and "ExecMainStatus=3" in said[0]
    assert "probe: failure 1 of 1" in said[0], said[0]


def test_a_unit_that_fails_again_stops_the_run_with_its_journal(
        host_run: testhosts.Run, probe: Callable[[int], testhosts.Host]) -> None:
    host = probe(5)
    said: list[str] = []
    with pytest.raises(OperationFailed) as failed:
        testhosts.wait_ready(host_run, host, progress=said.append)
    message = str(failed.value)
    assert f"{host.name} booted degraded; failed units: {UNIT}" in message, message
    assert "probe: failure 2 of 5" in message and "Result=exit-code" in message, message
    assert len(said) == 1 and "probe: failure 1 of 5" in said[0], said
