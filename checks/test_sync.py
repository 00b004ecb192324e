"""The two-way sync: a cron entry under the service user, every 5 minutes, under flock, logging
to a rotated file; only on the hosts of the cesar_sync group."""

from __future__ import annotations

import shlex

from conftest import run_json

SNAPSHOT = (
    "import json, os, psycopg\n"
    "with psycopg.connect(os.environ['COCKROACH_DB_URL'], connect_timeout=5) as c:\n"
    "    rows = c.execute('SELECT to_jsonb(s)::text FROM sync_state s ORDER BY 1').fetchall()\n"
    "print(json.dumps([r[0] for r in rows]))\n"
)


def _cron_file(expected) -> str:
    return f"/etc/cron.d/{expected.cesar_sync_cron_file}"


def _cron_job(host, expected) -> tuple[list[str], str]:
    """The schedule fields and user, and the command, of the cesar sync entry."""
    lines = [line for line in host.file(_cron_file(expected)).content_string.splitlines()
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(lines) == 1, f"expected one entry in {_cron_file(expected)}: {lines}"
    fields = lines[0].split(None, 6)
    return fields[:6], fields[6]


def test_cron_entry_every_5_minutes_under_flock_as_the_service_user(host, sync_host) -> None:
    f = host.file(_cron_file(sync_host))
    assert f.is_file and f.user == "root" and f.mode == 0o644
    schedule, command = _cron_job(host, sync_host)
    assert schedule[0] == "*/5"
    assert schedule[1:5] == ["*", "*", "*", "*"]
    assert schedule[5] == sync_host.cesar_release_user
    assert command.startswith("/usr/bin/flock --nonblock ")
    assert sync_host.cesar_sync_wrapper in command
    assert f">> {sync_host.cesar_sync_log_file} 2>&1" in command


def test_the_sync_cron_entry_exists_exactly_on_the_sync_group(host, expected) -> None:
    assert host.file(_cron_file(expected)).exists == ("cesar_sync" in expected.groups)


def test_cron_daemon_is_running(host, sync_host) -> None:
    assert host.service("cron").is_running


def test_wrapper_cannot_be_changed_by_the_service_user(host, sync_host) -> None:
    f = host.file(sync_host.cesar_sync_wrapper)
    assert f.user == "root" and f.mode == 0o755


def test_environment_file_is_private_to_the_service_user(host, sync_host) -> None:
    f = host.file(sync_host.cesar_sync_env_file)
    assert f.mode == 0o600
    assert f.user in ("root", sync_host.cesar_release_user)


def test_log_is_rotated_by_a_valid_logrotate_configuration(host, sync_host) -> None:
    conf = f"/etc/logrotate.d/{sync_host.cesar_sync_cron_file}"
    assert sync_host.cesar_sync_log_file in host.file(conf).content_string
    check = host.run(f"logrotate --debug {conf}")
    assert check.rc == 0, check.stderr
    assert host.file(sync_host.cesar_sync_log_file).user == sync_host.cesar_release_user


def test_forced_sync_pass_succeeds_and_advances_sync_state(host, sync_host) -> None:
    """Run the cron entry's command now, as cron would, and look at its effects."""
    cesar = f"{sync_host.venv}/bin/cesar"
    usable = host.run(f"{cesar} sync run --help")
    # A sync host whose release cannot run the sync is broken: a failure, never an xfail.
    assert usable.rc == 0, (f"`{cesar} sync run --help` fails on a sync host (exit {usable.rc}): "
                            f"{(usable.stderr or usable.stdout).strip()[-300:]}")
    before = run_json(host, sync_host.as_service_user(
        f"{sync_host.venv}/bin/python -c {shlex.quote(SNAPSHOT)}"))
    log = host.file(sync_host.cesar_sync_log_file)
    offset = int(host.run(f"stat -c %s {log.path}").stdout.strip() or 0)
    _schedule, command = _cron_job(host, sync_host)
    run = host.run(f"runuser -u {sync_host.cesar_release_user} -- /bin/sh -c "
                   f"{shlex.quote(command)}")
    assert run.rc == 0, f"the sync pass failed; log: {log.path}"
    new_lines = host.run(f"tail -c +{offset + 1} {log.path}").stdout
    assert "cesar-sync: start" in new_lines
    assert "cesar-sync: ok" in new_lines, new_lines
    after = run_json(host, sync_host.as_service_user(
        f"{sync_host.venv}/bin/python -c {shlex.quote(SNAPSHOT)}"))
    assert after, "sync_state is empty after a successful pass"
    assert after != before, "sync_state did not change during the pass"
