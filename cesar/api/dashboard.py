"""The dashboard's static export, served by the API under ``/ui/`` (same origin as the API).

The API needs only this part of the dashboard; building the export and generating its client
(``cesar.web``) build on the API, never the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Where the dashboard lives in the API's URL space (``basePath`` in web/next.config.mjs).
BASE_PATH = "/ui"


def served_dir() -> Path:
    """The export the API serves: ``CESAR_WEB_DIR``, else ``<state dir>/web``."""
    explicit = os.environ.get("CESAR_WEB_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CESAR_STATE_DIR") or ".cesar") / "web"


#: The headers nginx sets on hosts (ansible/roles/cesar_web), set here too so the development
#: stack runs the page under the same Content-Security-Policy the tests check.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class _WithHeaders:
    """An ASGI wrapper adding fixed headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount(app: FastAPI) -> None:
    """Serve the export under ``/ui/`` when it exists (checked per request: a build made after
    the API started is served without a restart)."""
    static = StaticFiles(directory=served_dir(), html=True, check_dir=False)
    app.mount(BASE_PATH, _WithHeaders(static, SECURITY_HEADERS), name="dashboard")
