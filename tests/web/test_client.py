"""The typed client (web/src/lib/api-schema.ts) is what openapi-typescript makes of the API's
/openapi.json today: a route or field changed without regenerating fails here."""

from __future__ import annotations

from pathlib import Path

from cesar import web


def test_generated_client_matches_the_api(web_modules: Path, tmp_path: Path) -> None:
    fresh = web.generate_client(out=tmp_path / "api-schema.ts")
    committed = web.CLIENT_SCHEMA.read_text()
    assert fresh.read_text() == committed, (
        "web/src/lib/api-schema.ts is stale: regenerate it with "
        "`uv run invoke web.client` and commit it")
