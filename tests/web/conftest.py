"""The dashboard's tiers: a session-wide development stack (embedded PostgreSQL, the API serving
the static export under /ui/) and Debian's headless Chromium driven by Playwright.

Needs Node.js 20 with npm (the build) and the `chromium` package (the browser tests); missing,
they fail in CI and skip elsewhere. The build is made once per change of web/ (a hash stamp) and
shared by every state directory, so a session pays for it at most once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cesar import db, keys, web
from cesar.dev import stack
from cesar.dev.embedded import free_port
from tests.helpers import make_settings, new_state_dir, require
from tests.web.helpers import CHROMIUM, SCOPES, WebStack, require_node


@pytest.fixture(scope="session")
def web_modules() -> Path:
    """web/node_modules from the committed lock file (npm ci only when the lock changed)."""
    require_node()
    web.install()
    return web.WEB_SOURCE


@pytest.fixture(scope="session")
def web_stack(web_modules: Path) -> Iterator[WebStack]:
    state_dir = new_state_dir("web")
    port = free_port()
    saved = {k: os.environ.get(k) for k in ("CESAR_API_PORT", "CESAR_WEB")}
    os.environ["CESAR_API_PORT"] = str(port)
    os.environ.pop("CESAR_WEB", None)
    settings = make_settings(state_dir=state_dir)
    try:
        stack.up(settings)
        with db.connect(db.route(settings).primary, settings, autocommit=True) as conn:
            key = keys.create(conn, "dashboard-tests", SCOPES, actor="tests").key
            read_key = keys.create(conn, "dashboard-reader", ["agents:read"], actor="tests").key
        yield WebStack(settings, port, key, read_key)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stack.down(settings)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def browser(web_stack: WebStack) -> Iterator[Any]:
    require(Path(CHROMIUM).is_file(), "Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    violations: list[str] = []
    pg.on("console", lambda m: violations.append(m.text)
          if "Content Security Policy" in m.text else None)
    try:
        yield pg
    finally:
        context.close()
    # The API serves the page under the CSP nginx sets on hosts: nothing may break it.
    assert not violations, violations
