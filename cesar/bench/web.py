"""``invoke bench --suite web``: the dashboard on the running development stack (`invoke up`).

In Debian's headless Chromium (``/usr/bin/chromium``, driven by Playwright):

1. **commit-to-screen**: ``--writes`` (100) plain SQL updates of one agent's mob alias, one at a
   time; each is timed from the moment its COMMIT returned to the moment the agents page's DOM
   shows the new text (a MutationObserver stamps ``Date.now()``; browser and benchmark share the
   machine's clock). Target: p95 <= 250 ms.
2. **first render** of the overview: a fresh tab (key already in session storage) until its
   figures are on screen (``performance.now()`` from navigation start), ``--loads`` (10) times.
3. **built JavaScript**: the bytes of every ``.js`` file of the export, raw and gzip.

Needs ``uv run invoke up`` first; makes an ``agents:read,health:detail`` key named
``bench-web`` each run (revoke with ``invoke keys.revoke``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from cesar import db, keys
from cesar.config import load_settings
from cesar.dev import stack

CHROMIUM = "/usr/bin/chromium"
TARGET_P95_MS = 250.0

_OBSERVE = """() => {
  window.__seen = {};
  new MutationObserver(() => {
    const text = document.querySelector('tbody')?.textContent ?? '';
    for (const m of text.matchAll(/bench-([0-9a-f]{8})-(\\d+)/g)) {
      window.__seen[m[2]] ??= Date.now();
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
}"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def js_size(export: Path) -> dict[str, int]:
    files = list(export.rglob("*.js"))
    raw = sum(f.stat().st_size for f in files)
    zipped = sum(len(gzip.compress(f.read_bytes(), 6)) for f in files)
    return {"files": len(files), "bytes": raw, "gzip_bytes": zipped}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite web")
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    settings = load_settings()
    info = stack.status(settings)
    url = info.get("dashboard_url")
    if not url:
        print("cesar: error: the dashboard is not served; run `uv run invoke up` first")
        return 2
    endpoint = db.route(settings).primary
    with db.connect(endpoint, settings, autocommit=True) as conn:
        key = keys.create(conn, "bench-web", ["agents:read", "health:detail"],
                          actor="invoke bench --suite web").key
        old = conn.execute("SELECT mob_alias FROM agents WHERE name = 'Atlas'").fetchone()
    tag = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    renders: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context()
        context.add_init_script(f"sessionStorage.setItem('cesar.apiKey', {json.dumps(key)})")
        for _ in range(args.loads):
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("[data-rendered=yes]")
            renders.append(page.evaluate("() => performance.now()"))
            page.close()
        page = context.new_page()
        page.goto(url + "agents/")
        page.wait_for_selector("tbody tr")
        page.get_by_test_id("live-status").filter(has_text="live").wait_for()
        page.evaluate(_OBSERVE)
        try:
            with db.connect(endpoint, settings, autocommit=True) as conn:
                for n in range(args.writes):
                    conn.execute("UPDATE agents SET mob_alias = %s WHERE name = 'Atlas'",
                                 (f"bench-{tag}-{n}",))
                    committed = time.time() * 1000
                    page.wait_for_function(f"() => window.__seen['{n}'] !== undefined",
                                           timeout=10_000)
                    latencies.append(page.evaluate(f"() => window.__seen['{n}']") - committed)
        finally:
            with db.connect(endpoint, settings, autocommit=True) as conn:
                conn.execute("UPDATE agents SET mob_alias = %s WHERE name = 'Atlas'",
                             (old[0] if old else "The Architect",))
            browser.close()
    result: dict[str, Any] = {
        "writes": len(latencies),
        "commit_to_screen_ms": {"p50": round(statistics.median(latencies), 1),
                                "p95": round(percentile(latencies, 95), 1),
                                "max": round(max(latencies), 1)},
        "target_p95_ms": TARGET_P95_MS,
        "first_render_ms": {"p50": round(statistics.median(renders), 1),
                            "max": round(max(renders), 1), "loads": len(renders)},
        "javascript": js_size(settings.state_dir / "web"),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        c, r, j = result["commit_to_screen_ms"], result["first_render_ms"], result["javascript"]
        print(f"commit-to-screen over {result['writes']} writes: p50 {c['p50']} ms, "
              f"p95 {c['p95']} ms (target <= {TARGET_P95_MS:.0f}), max {c['max']} ms")
        print(f"overview first render over {r['loads']} loads: p50 {r['p50']} ms, "
              f"max {r['max']} ms")
        print(f"built JavaScript: {j['files']} files, {j['bytes'] / 1024:.1f} KiB "
              f"({j['gzip_bytes'] / 1024:.1f} KiB gzip)")
    return 0 if result["commit_to_screen_ms"]["p95"] <= TARGET_P95_MS else 1
