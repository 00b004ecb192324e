"""Helpers of the dashboard's tests: the development stack a session serves it from, signing in
through the page, and the requirements (Node.js, Debian's Chromium). Fixtures live in
conftest.py beside this file."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

import psycopg

from cesar import db, web
from cesar.config import Settings
from cesar.dev.service import ApiService
from tests.helpers import require

CHROMIUM = "/usr/bin/chromium"
SCOPES = ["agents:read", "tasks:write", "health:detail"]


def require_node() -> None:
    require(shutil.which("node") is not None and shutil.which("npm") is not None,
            "Node.js 20 with npm: apt-get install nodejs npm (the dashboard's build and tests)")


@dataclass
class WebStack:
    settings: Settings
    port: int
    key: str
    read_key: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"{self.api_url}{web.BASE_PATH}/"

    def api(self) -> ApiService:
        return ApiService(self.settings.state_dir, port=self.port)

    def sql(self) -> psycopg.Connection[Any]:
        """A plain connection to the database the API serves (the local one), autocommit."""
        endpoint = db.route(self.settings).primary
        return db.connect(endpoint, self.settings, autocommit=True)


def sign_in(page: Any, stack_: WebStack, key: str | None = None, path: str = "") -> None:
    page.goto(stack_.dashboard_url + path)
    page.get_by_label("API key").fill(key or stack_.key)
    page.get_by_role("button", name="Sign in").click()
