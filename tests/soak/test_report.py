"""The soak's figures and verdict: what counts, what is left out, what fails."""

from __future__ import annotations

from cesar.soak import report
from cesar.soak.report import FaultResult, Sample


def _minute(samples: list[Sample], windows: list[tuple[float, float]]) -> list[dict]:
    return report.per_minute(samples, windows, origin=1000.0)


def test_p95_is_nearest_rank_over_each_minute() -> None:
    fast = [Sample(1000.0 + i * 0.5, 10.0 + (i % 20), True) for i in range(100)]  # minute 0
    slow = [Sample(1060.0 + i * 0.5, 300.0, True) for i in range(40)]  # minute 1
    minutes = _minute(fast + slow, [])
    assert [(m["minute"], m["samples"], m["p95_ms"]) for m in minutes] == [
        (0, 100, 28.0), (1, 40, 300.0)]
    assert report.p95([1.0] * 94 + [50.0] * 6) == 50.0  # 6 % above: p95 lands on them
    assert report.p95([1.0] * 95 + [50.0] * 5) == 1.0


def test_reads_inside_a_fault_window_are_left_out_and_failures_outside_count_as_slow() -> None:
    samples = [Sample(1000.0 + i, 10.0, True) for i in range(60)]
    samples += [Sample(1030.0 + i * 0.01, 4000.0, False) for i in range(20)]  # in the window
    minutes = _minute(samples, [(1029.0, 1031.0)])
    assert minutes == [{"minute": 0, "samples": 57, "excluded": 23, "p95_ms": 10.0}]
    # The same failures with no fault window: a minute of errors is not a fast minute.
    assert _minute(samples, [])[0]["p95_ms"] == 5000.0


def test_outage_spans_first_failure_to_first_success_after_the_last() -> None:
    probes = [(10.0, True), (11.0, False), (12.0, True), (13.0, False), (14.5, True),
              (20.0, False)]
    assert report.outage(probes, 10.0, 15.0) == 3.5
    assert report.outage(probes, 15.0, 25.0) == 5.0  # no success after: until the end
    assert report.outage([(1.0, True)], 0.0, 5.0) == 0.0


def _fault(outage: float, recovery: float | None) -> FaultResult:
    return FaultResult("pg_restart", 100.0, 101.0, None if recovery is None else 101.0 + recovery,
                       outage)


def test_the_verdict_fails_on_each_broken_promise_alone() -> None:
    good = {"unexplained": 0, "lost_rows": 0, "max_p95_ms": 40.0, "faults": [_fault(2, 5)],
            "max_lag_s": 400.0, "reads": 100}
    assert report.verdict(**good).ok
    broken = {
        "unexplained_errors": {"unexplained": 1},
        "lost_rows": {"lost_rows": 1},
        "p95": {"max_p95_ms": 200.0},
        "fault:pg_restart": {"faults": [_fault(15.5, 5)]},
        "sync_lag": {"max_lag_s": 600.5},
        "reads": {"reads": 0},
    }
    for check, change in broken.items():
        v = report.verdict(**{**good, **change})
        assert not v.ok, check
        assert [name for name, passed in v.checks.items() if not passed] == [check]
        assert len(v.failures) == 1
    for fault in (_fault(1, 30.5), _fault(1, None)):  # too slow, never recovered
        assert not report.verdict(**{**good, "faults": [fault]}).ok
    assert report.verdict(**{**good, "faults": [_fault(15, 30)]}).ok  # limits are inclusive
    assert not report.verdict(**{**good, "max_p95_ms": None}).ok  # nothing measured


def test_the_plot_is_written(tmp_path) -> None:
    samples = [Sample(1000.0 + i, 10.0 + i % 7, i % 50 != 0) for i in range(150)]
    minutes = _minute(samples, [(1100.0, 1110.0)])
    out = tmp_path / "soak.png"
    report.plot(out, origin=1000.0, minutes=minutes, samples=samples,
                lag=[(1000.0 + i, float(i)) for i in range(150)],
                faults=[FaultResult("pg_restart", 1100.0, 1102.0, 1110.0, 1.0)], title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
