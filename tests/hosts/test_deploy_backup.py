"""The backup role on a real host (Debian's PostgreSQL 15 in the image): after the deploy of
test_deploy.py, the host that owns the local database takes a backup through its systemd unit
while a writer writes, then runs the drill through its unit; the drill restores and matches
every table."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from cesar import deploy
from cesar.dev import testhosts
from tests.helpers import REPO

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(600)]


def _ssh(run: testhosts.Run, host: testhosts.Host, command: str,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*testhosts.ssh_command(run, host), command], capture_output=True,
                          text=True, timeout=timeout)


def _psql(run: testhosts.Run, host: testhosts.Host, db: str, sql: str) -> str:
    out = _ssh(run, host, f"cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {db} "
                          f"-c {shlex.quote(sql)}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def backup_host(host_run: testhosts.Run) -> testhosts.Host:
    # The deploy of test_deploy.py ran first (file order); deploy again only if it did not.
    host = host_run.hosts[0]
    if _ssh(host_run, host, "test -f /etc/systemd/system/cesar-backup.timer").returncode:
        plan = deploy.plan("development", inventory=host_run.inventory,
                           ansible_dir=REPO / "ansible")
        rc, output = deploy.run(plan)
        assert rc == 0, output[-3000:]
    return host


def test_backup_and_drill_through_the_systemd_units(host_run, backup_host) -> None:
    run, host = host_run, backup_host
    _psql(run, host, "postgres", "DROP DATABASE IF EXISTS cesar_local")
    _psql(run, host, "postgres", "CREATE DATABASE cesar_local")
    _psql(run, host, "cesar_local", "CREATE TABLE items (id bigint PRIMARY KEY, body text); "
                                    "INSERT INTO items SELECT g, md5(g::text) "
                                    "FROM generate_series(1, 5000) g")
    writer = subprocess.Popen(
        [*testhosts.ssh_command(run, host),
         "runuser -u postgres -- sh -c 'cd / && i=100000; while [ $i -lt 100400 ]; do "
         "psql -XAtq -d cesar_local -c \"INSERT INTO items VALUES ($i, md5($i::text))\" "
         "|| exit 1; i=$((i+1)); done'"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        took = _ssh(run, host, "systemctl start cesar-backup.service", timeout=600)
        assert took.returncode == 0, took.stderr + _ssh(
            run, host, "journalctl -u cesar-backup.service --no-pager -n 30").stdout
    finally:
        _, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err

    drilled = _ssh(run, host, "systemctl start cesar-backup-drill.service", timeout=600)
    journal = _ssh(run, host, "journalctl -u cesar-backup-drill.service --no-pager -n 40").stdout
    assert drilled.returncode == 0, journal
    state = _ssh(run, host, "cat /var/lib/cesar-backup/state/last-drill.json")
    result = json.loads(state.stdout)
    assert result["ok"] is True, result
    items = next(t for t in result["tables"] if t["table"] == "public.items")
    assert items["match"] and items["restored"]["rows"] == 5400
    assert result["rto_seconds"] > 0
    metrics = _ssh(run, host, "cat /var/lib/cesar-backup-metrics/cesar_backup.prom").stdout
    assert "cesar_backup_drill_success 1.0" in metrics
