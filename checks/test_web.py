"""The dashboard behind nginx (role cesar_web): nginx running, the export in place, the security
headers on the page and on proxied answers, and the live stream working through the proxy (a
task created through nginx arrives on an /events stream read through nginx); only on the hosts
of the cesar_web group."""

from __future__ import annotations

import json
import shlex
import uuid

from conftest import run_json

# Reads /events through nginx on one connection while it creates a task through nginx on
# another; prints what the stream carried. Standard library only (the host's python3).
STREAM = r"""
import http.client, json, os, sys, threading, time
port, title = int(sys.argv[1]), sys.argv[2]
auth = {"Authorization": "Bearer " + os.environ["CESAR_PROBE_KEY"]}
out = {"events": [], "status": None, "headers": {}}
def read():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    c.request("GET", "/events", headers={**auth, "Accept": "text/event-stream"})
    r = c.getresponse()
    out["status"], out["headers"] = r.status, {k.lower(): v for k, v in r.getheaders()}
    while True:
        line = r.fp.readline().decode()
        if not line:
            return
        if line.startswith("data:") and title in line:
            out["events"].append(json.loads(line[5:]))
            return
t = threading.Thread(target=read, daemon=True)
t.start()
time.sleep(1.5)
c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
c.request("POST", "/tasks", body=json.dumps({"title": title}),
          headers={**auth, "Content-Type": "application/json"})
out["created"] = c.getresponse().status
t.join(12)
print(json.dumps(out))
"""


def _port(web_host) -> int:
    listen = str(web_host.cesar_web_listen)
    return int(listen.rsplit(":", 1)[-1])


def _as_api_user(web_host, command: str) -> str:
    """A command with the API's environment (root reads it: the file is root's, systemd hands
    it to the service)."""
    inner = f"set -a; . {shlex.quote(web_host.cesar_api_env_file)}; set +a; {command}"
    return f"/bin/sh -c {shlex.quote(inner)}"


def test_nginx_runs_and_serves_the_export(host, web_host) -> None:
    assert host.package("nginx").is_installed
    nginx = host.service("nginx")
    assert nginx.is_running and nginx.is_enabled
    assert host.file(f"{web_host.cesar_web_root}/ui/index.html").is_file
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.run("nginx -t").rc == 0


def test_security_headers_on_the_page_and_the_api(host, web_host) -> None:
    for path in ("/ui/", "/health/live"):
        headers = run_json(host, "python3 -c " + shlex.quote(
            "import json, urllib.request; r = urllib.request.urlopen("
            f"'http://127.0.0.1:{_port(web_host)}{path}', timeout=10); "
            "print(json.dumps({'status': r.status, **{k.lower(): v for k, v in r.getheaders()}}))"))
        assert headers["status"] == 200, path
        assert headers["content-security-policy"] == web_host.cesar_web_csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == web_host.cesar_web_referrer_policy


def test_the_live_stream_works_through_nginx(host, web_host) -> None:
    created = run_json(host, _as_api_user(
        web_host, f"{web_host.cesar_release_root}/current/venv/bin/cesar keys create "
                  "--name testinfra-web --scopes agents:read,tasks:write --json"))
    try:
        title = f"through nginx {uuid.uuid4().hex[:8]}"
        result = host.run(
            f"CESAR_PROBE_KEY={shlex.quote(created['key'])} python3 -c {shlex.quote(STREAM)} "
            f"{_port(web_host)} {shlex.quote(title)}")
        assert result.rc == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["status"] == 200 and out["created"] == 201, out
        assert out["headers"]["content-type"].startswith("text/event-stream")
        assert [e["table"] for e in out["events"]] == ["tasks"], out
    finally:
        host.run(_as_api_user(web_host, f"{web_host.cesar_release_root}/current/venv/bin/cesar "
                                        f"keys revoke {shlex.quote(created['prefix'])}"))
