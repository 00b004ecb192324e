"""`invoke up` starts the API (detached, pid and log recorded), a second `up` finds it,
`invoke status` reports it, `invoke down` stops it; a taken port is said plainly."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cesar import smoke
from cesar.config import Settings
from cesar.dev import stack
from cesar.dev.embedded import free_port
from cesar.errors import OperationFailed
from tests.helpers import make_settings, new_state_dir


@pytest.fixture
def dev_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, int]]:
    state_dir = new_state_dir("api-stack")
    port = free_port()
    monkeypatch.setenv("CESAR_API_PORT", str(port))
    settings = make_settings(state_dir=state_dir)
    try:
        yield settings, port
    finally:
        stack.down(settings)
        shutil.rmtree(state_dir, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def test_up_status_down(dev_stack: tuple[Settings, int]) -> None:
    settings, port = dev_stack
    url = f"http://127.0.0.1:{port}"
    state = Path(settings.state_dir)
    state.joinpath("api.pid").write_text(f"{os.getpid()}\n")  # stale: a pid that is not an API
    state.joinpath("api.json").write_text(json.dumps(
        {"pid": os.getpid(), "host": "127.0.0.1", "port": port, "started_at": 0}))

    first = stack.up(settings)
    assert first.api is not None
    api = first.api["api"]
    assert first.api["api_url"] == url
    assert api["answers"] and api["health_status"] == 200 and api["database"] == "postgresql"
    pid = api["pid"]
    assert pid != os.getpid() and alive(pid)
    assert f"started the API on {url} (pid {pid}," in " ".join(first.actions)
    assert int(state.joinpath("api.pid").read_text()) == pid
    assert "Application startup complete" in state.joinpath("log", "api.log").read_text()
    assert httpx.get(f"{url}/agents").status_code == 401  # no key, no agents
    key = smoke.development_key(settings)  # what `invoke smoke` finds or makes
    assert key and (state / smoke.SMOKE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert smoke.development_key(settings) == key  # found, not made again
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{url}/agents", headers=headers).json()["total"] == 24

    second = stack.up(settings)
    assert f"the API is already running on {url} (pid {pid})" in second.actions
    assert not [a for a in second.actions if a.startswith("started the API")]

    info = stack.status(settings)
    assert info["api_url"] == url
    assert info["api"]["answers"] is True and info["api"]["pid"] == pid

    lines = stack.down(settings)
    assert lines[0] == f"stopped the API (pid {pid})"
    assert not alive(pid)
    assert not state.joinpath("api.pid").exists()
    after = stack.status(settings)
    assert after["api_url"] == url
    assert after["api"]["answers"] is False and after["api"]["running"] is False


def test_a_taken_port_is_named_with_the_fix(dev_stack: tuple[Settings, int]) -> None:
    settings, port = dev_stack
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(OperationFailed, match=rf"127\.0\.0\.1:{port} is already in use .* "
                                                  "CESAR_API_PORT"):
            stack.up(settings)
    assert not Path(settings.state_dir, "api.pid").exists()
