"""The soak's figures and verdict: p95 per minute outside fault windows, each fault's outage
and recovery, lost rows, sync lag, unexplained errors; and the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Targets: each is a check of the verdict.
P95_LIMIT_MS = 200.0
OUTAGE_LIMIT_S = 15.0
RECOVERY_LIMIT_S = 30.0
LAG_LIMIT_S = 600.0  # compressed seconds


@dataclass
class Sample:
    """One read: when it started (epoch seconds), how long it took, whether it succeeded."""

    at: float
    ms: float
    ok: bool


@dataclass
class FaultResult:
    name: str
    started_at: float  # epoch seconds: injection began
    ended_at: float  # the fault was removed (server back, link restored, process continued)
    recovered_at: float | None  # every check passed again; None: never within the deadline
    outage_s: float
    detail: str = ""

    @property
    def recovery_s(self) -> float | None:
        if self.recovered_at is None:
            return None
        return max(0.0, self.recovered_at - self.ended_at)

    @property
    def window(self) -> tuple[float, float]:
        """Where reads are not counted in the p95 and errors may be explained by this fault."""
        end = self.recovered_at if self.recovered_at is not None else self.ended_at
        return self.started_at, max(end, self.ended_at)

    def as_dict(self) -> dict[str, Any]:
        recovery = self.recovery_s
        return {"name": self.name, "started_at": self.started_at,
                "outage_s": round(self.outage_s, 2),
                "recovery_s": None if recovery is None else round(recovery, 2),
                "ok": self.ok, "detail": self.detail}

    @property
    def ok(self) -> bool:
        recovery = self.recovery_s
        return (self.outage_s <= OUTAGE_LIMIT_S and recovery is not None
                and recovery <= RECOVERY_LIMIT_S)


def p95(values: Sequence[float]) -> float:
    """The 95th percentile, nearest-rank (no interpolation: a value that was measured)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def in_any(at: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(start <= at <= end for start, end in windows)


def per_minute(samples: Sequence[Sample], windows: Sequence[tuple[float, float]],
               origin: float) -> list[dict[str, Any]]:
    """p95 of the successful reads of each minute since ``origin``, fault windows left out.

    A failed read counts as a read that took its full time (it is not dropped: a minute of
    timeouts must not look fast); only reads inside a fault window are left out."""
    minutes: dict[int, list[float]] = {}
    excluded: dict[int, int] = {}
    for s in samples:
        minute = int((s.at - origin) // 60)
        if in_any(s.at, windows):
            excluded[minute] = excluded.get(minute, 0) + 1
            continue
        minutes.setdefault(minute, []).append(s.ms if s.ok else max(s.ms, 5000.0))
    out = []
    for minute in sorted(set(minutes) | set(excluded)):
        values = minutes.get(minute, [])
        out.append({"minute": minute, "samples": len(values),
                    "excluded": excluded.get(minute, 0),
                    "p95_ms": None if not values else round(p95(values), 1)})
    return out


def outage(samples: Sequence[tuple[float, bool]], start: float, end: float) -> float:
    """Seconds from the first failed probe in [start, end] to the first success after the last
    failure (to ``end`` when none follows); 0 when no probe failed."""
    inside = sorted((at, ok) for at, ok in samples if start <= at <= end)
    failures = [at for at, ok in inside if not ok]
    if not failures:
        return 0.0
    after = [at for at, ok in inside if ok and at > failures[-1]]
    return (after[0] if after else end) - failures[0]


@dataclass
class Verdict:
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, name: str, passed: bool, why: str) -> None:
        self.checks[name] = passed
        if not passed:
            self.failures.append(why)

    @property
    def ok(self) -> bool:
        return all(self.checks.values()) and bool(self.checks)


def verdict(*, unexplained: int, lost_rows: int, max_p95_ms: float | None,
            faults: Sequence[FaultResult], max_lag_s: float | None,
            reads: int) -> Verdict:
    v = Verdict()
    v.check("unexplained_errors", unexplained == 0,
            f"{unexplained} error line(s) in the logs that no fault explains")
    v.check("lost_rows", lost_rows == 0,
            f"{lost_rows} acknowledged write(s) missing or not in their last-written state")
    v.check("reads", reads > 0, "no read was measured")
    v.check("p95", max_p95_ms is not None and max_p95_ms < P95_LIMIT_MS,
            f"read p95 {max_p95_ms} ms in a minute outside fault windows (limit "
            f"{P95_LIMIT_MS:g} ms)")
    for f in faults:
        v.check(f"fault:{f.name}", f.ok,
                f"fault {f.name}: outage {f.outage_s:.1f} s (limit {OUTAGE_LIMIT_S:g}), "
                f"recovery {f.recovery_s if f.recovery_s is None else round(f.recovery_s, 1)} s"
                f" (limit {RECOVERY_LIMIT_S:g}){': ' + f.detail if f.detail else ''}")
    v.check("sync_lag", max_lag_s is not None and max_lag_s <= LAG_LIMIT_S,
            f"sync lag reached {max_lag_s} s compressed outside fault windows (limit "
            f"{LAG_LIMIT_S:g} s)")
    return v


def plot(path: Path, *, origin: float, minutes: Sequence[dict[str, Any]],
         samples: Sequence[Sample], lag: Sequence[tuple[float, float]],
         faults: Sequence[FaultResult], title: str) -> None:
    """p95 per minute (and per 10 s, for shape), sync lag (compressed s), faults shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    buckets: dict[int, list[float]] = {}
    for s in samples:
        if s.ok:
            buckets.setdefault(int((s.at - origin) // 10), []).append(s.ms)
    xs = sorted(buckets)
    top.plot([(x * 10 + 5) / 60 for x in xs], [p95(buckets[x]) for x in xs],
             color="0.6", lw=0.8, label="read p95 per 10 s (all)")
    ms = [m for m in minutes if m["p95_ms"] is not None]
    top.step([m["minute"] for m in ms] + ([ms[-1]["minute"] + 1] if ms else []),
             [m["p95_ms"] for m in ms] + ([ms[-1]["p95_ms"]] if ms else []),
             where="post", color="tab:blue", lw=2, label="read p95 per minute (outside faults)")
    top.axhline(P95_LIMIT_MS, color="tab:red", ls="--", lw=1, label="limit 200 ms")
    top.set_ylabel("GET /agents p95 (ms)")
    top.set_yscale("log")
    top.legend(loc="upper left", fontsize=8)
    bottom.plot([(t - origin) / 60 for t, _ in lag], [v for _, v in lag], color="tab:green",
                lw=1.2, label="max sync lag (compressed s)")
    bottom.axhline(LAG_LIMIT_S, color="tab:red", ls="--", lw=1, label="limit 600 s")
    bottom.set_ylabel("sync lag (compressed s)")
    bottom.set_xlabel("minutes since start")
    bottom.legend(loc="upper left", fontsize=8)
    for i, f in enumerate(faults):
        start, end = f.window
        for ax in (top, bottom):
            ax.axvspan((start - origin) / 60, (end - origin) / 60, color="tab:orange",
                       alpha=0.25)
        top.annotate(f.name, ((start - origin) / 60, 1.0), xycoords=("data", "axes fraction"),
                     rotation=90, va="top", ha="right", fontsize=7,
                     xytext=(0, -2 - (i % 2) * 0), textcoords="offset points")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
