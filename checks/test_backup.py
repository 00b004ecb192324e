"""Backups of the local PostgreSQL: archiving on into the repository, three timers (backup
daily, drill weekly, figures every 5 minutes) running the services as the server's user; only
on the hosts of the cesar_backup group."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import Expected, _resolve

ROLE = Path(__file__).resolve().parent.parent / "ansible" / "roles" / "cesar_backup"
UNITS = ("cesar-backup", "cesar-backup-drill", "cesar-backup-status")


@pytest.fixture
def backup_host(host, expected: Expected) -> Expected:
    if "cesar_backup" not in expected.groups:
        pytest.skip("not in the cesar_backup group")
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return Expected(_resolve({**defaults, **expected}))


def _timer_property(host, unit: str, prop: str) -> str:
    return host.check_output(f"systemctl show -P {prop} {unit}")


@pytest.mark.parametrize("unit", UNITS)
def test_timer_is_enabled_and_waiting(host, backup_host, unit: str) -> None:
    timer = host.service(f"{unit}.timer")
    assert timer.is_enabled and timer.is_running
    assert _timer_property(host, f"{unit}.timer", "Unit") == f"{unit}.service"


def test_timers_run_on_their_calendars(host, backup_host) -> None:
    calendars = {
        "cesar-backup": backup_host.cesar_backup_on_calendar,
        "cesar-backup-drill": backup_host.cesar_backup_drill_on_calendar,
    }
    for unit, calendar in calendars.items():
        text = host.file(f"{backup_host.cesar_backup_unit_dir}/{unit}.timer").content_string
        assert f"OnCalendar={calendar}" in text and "Persistent=true" in text
        assert _timer_property(host, f"{unit}.timer", "NextElapseUSecRealtime")


@pytest.mark.parametrize("unit", UNITS)
def test_services_run_as_the_server_user_hardened(host, backup_host, unit: str) -> None:
    assert _timer_property(host, f"{unit}.service", "User") == backup_host.cesar_backup_pg_user
    assert _timer_property(host, f"{unit}.service", "ProtectSystem") == "strict"
    assert _timer_property(host, f"{unit}.service", "Type") == "oneshot"


def test_repository_belongs_to_the_server_user(host, backup_host) -> None:
    repo = host.file(backup_host.cesar_backup_repo)
    assert repo.is_directory and repo.user == backup_host.cesar_backup_pg_user
    assert repo.mode == 0o700
    env = host.file(backup_host.cesar_backup_env_file)
    assert env.user == "root" and env.mode == 0o640


def test_the_server_archives_into_the_repository(host, backup_host) -> None:
    user = backup_host.cesar_backup_pg_user
    mode = host.check_output(f"runuser -u {user} -- psql -XAtc 'SHOW archive_mode'")
    command = host.check_output(f"runuser -u {user} -- psql -XAtc 'SHOW archive_command'")
    assert mode == "on"
    assert f"{backup_host.cesar_backup_repo}/bin/archive-wal" in command


def test_no_backup_timers_outside_the_group(host, expected) -> None:
    if "cesar_backup" in expected.groups:
        pytest.skip("a backup host")
    for unit in UNITS:
        assert not host.file(f"/etc/systemd/system/{unit}.timer").exists
