"""The API worker's garbage collector: start-up objects frozen, young collections rarer.

With CPython's defaults a worker serving ``/agents`` at 50 clients spent its tail in the
collector: every full collection scans every object the process holds, and most of those are
what start-up allocated and never frees (FastAPI, pydantic's validators, psycopg, the models,
the routes). ``invoke bench --suite api_levers`` measured p50 12 ms against p95 50-65 ms on an
idle machine, and 15-25 ms p95 once those objects were frozen (docs/performance.md, section 1d).

``tuned`` (``CESAR_API_GC``, the default): once the application has started, collect once (the
start-up garbage is not frozen with the rest), ``gc.freeze()`` what is left (moved out of
every later collection; nothing of it is freed until the worker ends, which it would not be
anyway), and raise the first generation's threshold from 700 to 50,000 allocations (young
collections about 70 times rarer; what they collect is the same). ``default`` leaves CPython's
collector as it is. Undone when the application stops (the tests serve it in their process).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Literal

MODES = ("tuned", "default")
#: (generation 0, 1, 2) thresholds of the tuned collector; CPython's are (700, 10, 10).
THRESHOLDS = (50_000, 50, 100)


def tune(mode: Literal["tuned", "default"]) -> Callable[[], None]:
    """Apply ``mode``; returns what restores the collector as it was."""
    if mode == "default":
        return lambda: None
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)

    def restore() -> None:
        gc.unfreeze()
        gc.set_threshold(*before)

    return restore
