"""The cesar_web role's nginx site, rendered from its template and run by Debian's nginx on the
controller in front of the test stack's API: the page loads under its Content-Security-Policy
with no violation, the security headers are there, and the live stream arrives through the
proxy unbuffered (a plain SQL write shows up on the open page)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jinja2
import pytest
import yaml
from playwright.sync_api import expect

from cesar.dev.embedded import free_port
from tests.helpers import REPO, require
from tests.web.helpers import WebStack

ROLE = REPO / "ansible" / "roles" / "cesar_web"
SNIPPET = "/etc/nginx/snippets/cesar-web-headers.conf"


def render(name: str, variables: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name).render(ansible_managed="managed by the test", **variables)


@pytest.fixture(scope="module")
def nginx(web_stack: WebStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    require(Path(binary).is_file(), "Debian's nginx: apt-get install nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    port = free_port()
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    variables = {**defaults, "cesar_web_root": str(tmp / "root"),
                 "cesar_web_listen": f"127.0.0.1:{port}",
                 "cesar_web_api_upstream": web_stack.api_url}
    shutil.copytree(web_stack.settings.state_dir / "web", tmp / "root" / "ui")
    (tmp / "headers.conf").write_text(render("cesar-web-headers.conf.j2", variables))
    site = render("cesar-web.conf.j2", variables).replace(SNIPPET, str(tmp / "headers.conf"))
    (tmp / "site.conf").write_text(site)
    temp = "".join(f"{kind}_temp_path {tmp / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp / "nginx.conf").write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'} warn;\nevents {{}}\n"
        f"http {{\ninclude /etc/nginx/mime.types;\naccess_log off;\n{temp}"
        f"include {tmp / 'site.conf'};\n}}\n")
    check = subprocess.run([binary, "-t", "-c", str(tmp / "nginx.conf")], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([binary, "-c", str(tmp / "nginx.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{url}/ui/", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_security_headers_and_redirect(nginx: str) -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    for path in ("/ui/", "/ui/agents/", "/health"):
        r = httpx.get(nginx + path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == defaults["cesar_web_csp"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == defaults["cesar_web_referrer_policy"]
    assert "server" not in r.headers or "nginx/" not in r.headers["server"]
    r = httpx.get(nginx + "/")
    assert r.status_code == 302 and r.headers["location"].endswith("/ui/")
    js = re.search(r'src="(/ui/_next/static/[^"]+\.js)"', httpx.get(nginx + "/ui/").text)
    assert js and "immutable" in httpx.get(nginx + js.group(1)).headers["cache-control"]


def test_page_obeys_its_csp_and_streams_through_nginx(browser: Any, nginx: str,
                                                       web_stack: WebStack) -> None:
    context = browser.new_context()
    violations: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: violations.append(m.text)
                if "Content Security Policy" in m.text else None)
        page.goto(f"{nginx}/ui/")
        page.get_by_label("API key").fill(web_stack.key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Agents").click()
        expect(page.locator("tbody tr")).to_have_count(24)
        expect(page.get_by_test_id("live-status")).to_have_text(re.compile(r"^\s*live"))
        alias = f"Through Nginx {uuid.uuid4().hex[:6]}"
        with web_stack.sql() as conn:
            old = conn.execute("SELECT mob_alias FROM agents WHERE name = 'Argus'").fetchone()
            conn.execute("UPDATE agents SET mob_alias = %s WHERE name = 'Argus'", (alias,))
        try:
            expect(page.locator("tr", has_text="Argus").locator(".alias")).to_have_text(alias)
        finally:
            with web_stack.sql() as conn:
                conn.execute("UPDATE agents SET mob_alias = %s WHERE name = 'Argus'", (old[0],))
        assert not violations, violations
    finally:
        context.close()




def test_ui_without_its_slash_is_redirected_by_nginx(nginx: str) -> None:
    """`/ui` is nginx's to answer: on a host the API holds no export, so a proxied `/ui` is a
    404 there (here the development API serves one and redirects with its own 307)."""
    r = httpx.get(nginx + "/ui")
    assert r.status_code == 301 and r.headers["location"].endswith("/ui/"), (
        r.status_code, r.headers)
    assert r.headers["x-content-type-options"] == "nosniff"
