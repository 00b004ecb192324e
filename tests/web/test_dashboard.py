"""The dashboard in Debian's headless Chromium against the running development stack: what a
person sees, what a plain SQL write does to the open page, and what a signed-out page asks for."""

from __future__ import annotations

import re
import uuid
from typing import Any

from playwright.sync_api import expect

from tests.helpers import REPO
from tests.web.helpers import WebStack, sign_in

#: The API paths that return data (anything outside the static export under /ui/).
DATA_PATHS = re.compile(r"^/(agents|tasks|runs|events|conflicts|health|dispatch|metrics)\b")


def test_signed_out_shows_sign_in_and_asks_for_no_data(page: Any, web_stack: WebStack) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(web_stack.dashboard_url + "agents/")
    form = page.locator("form")
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.locator("input").count() == 1
    expect(form.get_by_role("button", name="Sign in")).to_be_visible()
    page.wait_for_timeout(1500)  # a page that would fetch has done so by now
    paths = [re.sub(r"^https?://[^/]+", "", u) for u in requests]
    assert paths and all(p.startswith("/ui/") for p in paths), paths
    assert not [p for p in paths if DATA_PATHS.match(p)]
    assert "Hundred Eyes" not in page.content()


def test_agents_page_lists_the_24_with_mob_aliases(page: Any, web_stack: WebStack) -> None:
    with web_stack.sql() as conn:
        aliases = [r[0] for r in conn.execute("SELECT mob_alias FROM agents ORDER BY name")]
    assert len(aliases) == 24
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    sign_in(page, web_stack, key=web_stack.read_key)  # agents:read only: the contract's key
    page.get_by_role("link", name="Agents").click()
    expect(page.locator("tbody tr")).to_have_count(24)
    body = page.locator("tbody").inner_text()
    for alias in aliases:
        assert alias in body
    # The key is in this tab's session storage and the Authorization header only.
    stored = page.evaluate("() => [sessionStorage.getItem('cesar.apiKey'), localStorage.length,"
                           " document.cookie]")
    assert stored == [web_stack.read_key, 0, ""]
    assert not [u for u in seen if web_stack.read_key in u]
    shots = REPO / ".cesar" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "agents.png"), full_page=True)


def _mark(page: Any) -> None:
    """A marker that a reload would wipe: proves a change arrived without one."""
    page.evaluate("() => { window.__noReload = true; }")


def _not_reloaded(page: Any) -> bool:
    return bool(page.evaluate("() => window.__noReload === true"))


def test_a_row_written_with_sql_appears_without_a_reload(page: Any, web_stack: WebStack) -> None:
    sign_in(page, web_stack, path="agents/")
    expect(page.get_by_test_id("live-status")).to_have_text(re.compile(r"^\s*live"))
    expect(page.locator("tbody tr")).to_have_count(24)
    _mark(page)
    alias = f"Night Owl {uuid.uuid4().hex[:6]}"
    with web_stack.sql() as conn:
        old = conn.execute("SELECT mob_alias FROM agents WHERE name = 'Atlas'").fetchone()
        conn.execute("UPDATE agents SET mob_alias = %s WHERE name = 'Atlas'", (alias,))
    try:
        expect(page.locator("tr", has_text="Atlas").locator(".alias")).to_have_text(alias)
        assert _not_reloaded(page)
    finally:
        with web_stack.sql() as conn:
            conn.execute("UPDATE agents SET mob_alias = %s WHERE name = 'Atlas'", (old[0],))


def test_task_created_in_the_ui_and_cancelled_in_the_db(page: Any, web_stack: WebStack) -> None:
    sign_in(page, web_stack, path="tasks/")
    expect(page.get_by_test_id("live-status")).to_have_text(re.compile(r"^\s*live"))
    title = f"ui task {uuid.uuid4().hex[:8]}"
    page.get_by_label("Title").fill(title)
    page.get_by_role("button", name="Create task").click()
    row = page.locator("tr", has_text=title)
    expect(row).to_have_count(1)
    with web_stack.sql() as conn:
        found = conn.execute("SELECT id, status FROM tasks WHERE title = %s", (title,)).fetchall()
    assert len(found) == 1 and found[0][1] == "queued"
    _mark(page)
    with web_stack.sql() as conn:
        conn.execute("UPDATE tasks SET status = 'cancelled', updated_at = now() WHERE id = %s",
                     (found[0][0],))
    expect(row.get_by_test_id("task-status")).to_have_text("cancelled")
    expect(row.get_by_role("button", name=f"Cancel {title}")).to_have_count(0)
    assert _not_reloaded(page)


def test_api_restart_reconnects_and_shows_what_changed(page: Any, web_stack: WebStack) -> None:
    sign_in(page, web_stack, path="tasks/")
    status = page.get_by_test_id("live-status")
    expect(status).to_have_text(re.compile(r"^\s*live"))
    _mark(page)
    api = web_stack.api()
    api.stop()
    title = f"made while the API was down {uuid.uuid4().hex[:6]}"
    try:
        expect(status).to_have_text(re.compile(r"reconnecting|offline since \d\d:\d\d"))
        with web_stack.sql() as conn:
            conn.execute("INSERT INTO tasks (title, requested_by) VALUES (%s, 'tests')", (title,))
    finally:
        api.start()
    expect(status).to_have_text(re.compile(r"live \(reconnected at \d\d:\d\d\)"), timeout=30_000)
    expect(page.locator("tr", has_text=title)).to_have_count(1)
    assert _not_reloaded(page)


def test_overview_shows_engine_migrations_and_lag(page: Any, web_stack: WebStack) -> None:
    sign_in(page, web_stack)
    with web_stack.sql() as conn:
        applied = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    expect(page.get_by_test_id("engine")).to_have_text("postgresql")
    expect(page.get_by_test_id("migrations")).to_have_text(re.compile(rf"^{applied}/\d+$"))
    expect(page.get_by_role("row", name=re.compile(r"tasks\s+local to cluster"))).to_have_count(1)
    page.wait_for_timeout(300)
    docs = REPO / ".cesar" / "screenshots"
    docs.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(docs / "overview.png"), full_page=False)


def test_phone_width_has_no_horizontal_scroll(browser: Any, web_stack: WebStack) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740})
    try:
        page = context.new_page()
        sign_in(page, web_stack, path="agents/")
        expect(page.locator("tbody tr")).to_have_count(24)
        width = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
        assert width[0] <= width[1], width
        page.keyboard.press("Tab")  # the first stop is the skip link
        assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    finally:
        context.close()


