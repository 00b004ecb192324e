"""`invoke up` serves the dashboard and says where; `invoke status --json` has `dashboard_url`
while it is served (the contract); an unchanged web/ is not rebuilt; no Node.js, no build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from cesar import web
from tests.helpers import REPO, child_env
from tests.web.helpers import WebStack


def test_status_json_has_dashboard_url_while_served(web_stack: WebStack) -> None:
    env = {**child_env(), "CESAR_STATE_DIR": str(web_stack.settings.state_dir),
           "CESAR_API_PORT": str(web_stack.port)}
    out = subprocess.run([sys.executable, "-m", "cesar.cli", "status", "--json"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["dashboard_url"] == web_stack.dashboard_url
    page = httpx.get(info["dashboard_url"])
    assert page.status_code == 200 and "/ui/_next/static/" in page.text


def test_served_with_the_headers_nginx_sets_on_hosts(web_stack: WebStack) -> None:
    role = yaml.safe_load((REPO / "ansible" / "roles" / "cesar_web" / "defaults" / "main.yml")
                          .read_text())
    page = httpx.get(web_stack.dashboard_url)
    assert page.headers["content-security-policy"] == role["cesar_web_csp"]
    assert page.headers["referrer-policy"] == role["cesar_web_referrer_policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_no_dashboard_url_when_nothing_serves_it(tmp_path: Path) -> None:
    served = {"api_url": "http://127.0.0.1:1", "api": {"answers": False}}
    assert web.status_fields(served, tmp_path)["dashboard_url"] is None
    (tmp_path / "index.html").write_text("<html></html>")
    assert web.status_fields(served, tmp_path)["dashboard_url"] is None
    served["api"]["answers"] = True  # said to answer, but nothing serves /ui/ there
    assert web.status_fields(served, tmp_path)["dashboard_url"] is None


def test_unchanged_sources_are_not_rebuilt(web_stack: WebStack) -> None:
    target = web_stack.settings.state_dir / "web"
    before = (target / "index.html").stat().st_mtime_ns
    assert web.build(target) == []
    assert (target / "index.html").stat().st_mtime_ns == before


def test_a_changed_source_changes_the_hash(tmp_path: Path) -> None:
    copy = tmp_path / "web"
    shutil.copytree(web.WEB_SOURCE, copy, ignore=shutil.ignore_patterns(
        "node_modules", ".next", "out"))
    first = web.sources_hash(copy)
    page = copy / "src" / "pages" / "agents.tsx"
    page.write_text(page.read_text() + "\n// changed\n")
    assert web.sources_hash(copy) != first


def test_without_node_the_stack_comes_up_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm
    actions = web.stack_up(tmp_path / "web")
    assert len(actions) == 1 and "install Node.js" in actions[0]
    assert not (tmp_path / "web").exists()
    monkeypatch.setenv("CESAR_WEB", "off")
    assert web.stack_up(tmp_path / "web") == []
