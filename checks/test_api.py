"""The API service: a hardened systemd unit running the current release, healthy."""

from __future__ import annotations

import shlex

import pytest
from conftest import run_json

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictSUIDSGID": "yes",
    "Restart": "on-failure",
}
# The monitoring credential, when the environment file has one, goes in a header read from the
# process environment: it never appears in a command line or in this check's output.
PROBE = (
    "import json, os, sys, urllib.error, urllib.request\n"
    "token = os.environ.get('CESAR_PROBE_TOKEN')\n"
    "headers = {'Authorization': 'Bearer ' + token} if token else {}\n"
    "try:\n"
    "    r = urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=headers),"
    " timeout=5)\n"
    "except urllib.error.HTTPError as e:\n"
    "    r = e\n"
    "print(json.dumps({'status': r.status, 'body': json.loads(r.read() or b'null')}))\n"
)


def _unit(expected) -> str:
    return f"{expected.cesar_api_service_name}.service"


def _probe_host(expected) -> str:
    listen = expected.cesar_api_host
    return "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen


def test_unit_is_active_and_enabled(host, api_host) -> None:
    service = host.service(api_host.cesar_api_service_name)
    assert service.is_running
    assert service.is_enabled


def test_unit_file_is_valid(host, api_host) -> None:
    verify = host.run(f"systemd-analyze verify {_unit(api_host)}")
    assert verify.rc == 0, verify.stderr


def test_hardening_is_in_force(host, api_host) -> None:
    props = host.run(f"systemctl show {_unit(api_host)} "
                     f"--property={','.join([*HARDENING, 'User', 'MainPID'])}")
    assert props.rc == 0, props.stderr
    shown = dict(line.split("=", 1) for line in props.stdout.splitlines() if "=" in line)
    for name, value in HARDENING.items():
        assert shown.get(name) == value, f"{name}={shown.get(name)!r}, expected {value!r}"
    assert shown["User"] == api_host.cesar_release_user
    owner = host.run(f"ps -o user= -p {shown['MainPID']}")
    assert owner.stdout.strip() == api_host.cesar_release_user


def test_unit_runs_the_current_release(host, api_host) -> None:
    current = host.file(f"{api_host.cesar_release_root}/current").linked_to
    exec_start = host.run(f"systemctl show {_unit(api_host)} --property=ExecStart").stdout
    assert f"path={current}/venv/bin/cesar " in exec_start
    assert f"--port {api_host.cesar_api_port}" in exec_start


def test_port_is_listening(host, api_host) -> None:
    address = api_host.cesar_api_host
    assert host.socket(f"tcp://{address}:{api_host.cesar_api_port}").is_listening


def test_health_answers_200_with_the_expected_engine(host, api_host) -> None:
    url = f"http://{_probe_host(api_host)}:{api_host.cesar_api_port}{api_host.cesar_api_health_path}"
    env_file = shlex.quote(api_host.cesar_api_env_file)
    token = f"\"$(sed -n \"s/^CESAR_API_METRICS_TOKEN='\\(.*\\)'$/\\1/p\" {env_file})\""
    answer = run_json(host, f"CESAR_PROBE_TOKEN={token} python3 -c {shlex.quote(PROBE)} "
                            f"{shlex.quote(url)}")
    assert answer["status"] == 200, answer["body"]
    body = answer["body"]
    if api_host.cesar_api_metrics_token:  # the monitoring credential sees the whole document
        assert body["environment"] == api_host.cesar_api_environment
    else:  # anonymous: the status and the engine only
        assert set(body) == {"status", "components"}
        assert f"ENVIRONMENT='{api_host.cesar_api_environment}'" in host.run(
            f"cat {env_file}").stdout
    engine = api_host.cesar_api_expected_engine or (
        "cockroachdb" if api_host.cesar_api_environment in ("staging", "production") else None
    )
    if engine is None:
        pytest.skip("development hosts: no engine is expected (set cesar_api_expected_engine)")
    assert body["components"]["database"] == engine


def test_environment_file_is_private(host, api_host) -> None:
    f = host.file(api_host.cesar_api_env_file)
    assert f.is_file
    assert f.mode == 0o600
    assert f.user in ("root", api_host.cesar_release_user)
    assert "ENVIRONMENT=" in host.run(f"cat {shlex.quote(f.path)}").stdout
