"""The served worker's collector: start-up objects frozen and young collections rarer
(``CESAR_API_GC=tuned``, the default), or CPython's as it is (``default``); undone when the
application stops. What it buys is a benchmark (``invoke bench --suite api_levers
--args=--gc-default``), not a test."""

from __future__ import annotations

import gc
from pathlib import Path

import httpx
import pytest

from cesar.api import worker_gc
from tests.api.helpers import serve, settings_for


@pytest.mark.parametrize("mode", ["", "default"])
def test_a_serving_worker_tunes_its_collector_and_undoes_it_when_it_stops(
        migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    if mode:
        monkeypatch.setenv("CESAR_API_GC", mode)
    else:
        monkeypatch.delenv("CESAR_API_GC", raising=False)
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert before != worker_gc.THRESHOLDS
    with serve(settings_for(migrated_db, tmp_path)) as server, \
            httpx.Client(headers=server.headers, timeout=5) as client:
        assert client.get(f"{server.url}/agents").status_code == 200
        if mode == "default":
            assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)
        else:
            assert gc.get_threshold() == worker_gc.THRESHOLDS
            # The application's own objects are among the frozen ones, not only the test's.
            assert gc.get_freeze_count() > frozen + 10_000
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)
