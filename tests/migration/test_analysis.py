"""Analysis maths: window figures from two cumulative status pages, the worst node of a
cohort, and checks against the old cohort, a baseline and absolute limits."""

from __future__ import annotations

from typing import Any

import pytest

from framework.runtime.node_health import BUCKET_BOUNDS_MS, Histogram, percentile_ms
from migration.analysis import BUILTIN_METRICS, cohort_value, measure, node_values
from migration.plan import Analysis, Check


def page(latencies_ms: list[float], *, timeouts: int = 0, lag: int = 0) -> dict[str, Any]:
    histogram = Histogram()
    for ms in latencies_ms:
        histogram.observe_ms(ms)
    return {
        "health": {
            "histograms": {"client_latency_ms": histogram.counts},
            "counters": {"timeouts": timeouts},
            "gauges": {"apply_lag": lag},
        }
    }


def test_histogram_buckets_bound_each_observation_from_above() -> None:
    for ms in (0.01, 0.05, 0.3, 1.0, 7.5, 200.0, 1e9):
        h = Histogram()
        h.observe_ms(ms)
        top = percentile_ms(h.counts, 1.0)
        assert top is not None and top >= min(ms, BUCKET_BOUNDS_MS[-1])
        assert top <= max(ms * 1.5, BUCKET_BOUNDS_MS[0])  # within one bucket (sqrt 2)
    assert percentile_ms([0] * 45, 0.5) is None


def test_a_window_is_the_difference_of_two_cumulative_pages() -> None:
    before = page([1.0] * 100, timeouts=3)
    # During the window: 10 slow requests (100 ms) and 2 timeouts; nothing else.
    after = page([1.0] * 100 + [100.0] * 10, timeouts=5, lag=7)
    values = node_values(
        BUILTIN_METRICS, ("client_latency_p50", "timeouts", "apply_lag"), before, after
    )
    p50 = values["client_latency_p50"]
    assert p50 is not None and 100.0 <= p50 < 150.0  # the window's requests only
    assert values["timeouts"] == 2.0 and values["apply_lag"] == 7.0


def test_a_restarted_node_counts_its_counters_from_zero() -> None:
    values = node_values(BUILTIN_METRICS, ("timeouts",), page([], timeouts=9), page([], timeouts=2))
    assert values["timeouts"] == 2.0


def test_missing_health_is_no_data_and_a_failing_metric_too() -> None:
    def broken(before: Any, after: Any) -> float:
        raise KeyError("x")

    metrics = {**BUILTIN_METRICS, "broken": broken}
    values = node_values(metrics, ("client_latency_p99", "broken"), {}, {})
    assert values == {"client_latency_p99": None, "broken": None}


def test_a_cohort_is_judged_by_its_worst_node() -> None:
    values = {1: {"m": 3.0}, 2: {"m": 9.0}, 3: {"m": None}}
    assert cohort_value(values, (1, 2, 3), "m") == 9.0
    assert cohort_value(values, (3,), "m") is None


def analysis(*checks: Check) -> Analysis:
    return Analysis(name="a", interval=1.0, measurements=3, failure_limit=0, checks=checks)


@pytest.mark.parametrize(
    ("check", "migrated", "old", "baseline", "ok", "reason"),
    [
        (Check(metric="m", max_ratio=2.0), 30.0, 10.0, None, False, "3.00 x the old cohort"),
        (Check(metric="m", max_ratio=2.0), 19.0, 10.0, None, True, "1.90 x old cohort"),
        # the reference is floored: 0.3 ms against 0.1 ms is no tripling
        (Check(metric="m", max_ratio=2.0), 0.3, 0.1, None, True, "0.30 x old cohort"),
        (Check(metric="m", max_ratio=2.0, min_reference=0.01), 0.3, 0.1, None, False, "3.00 x"),
        (Check(metric="m", max=50.0), 51.0, None, None, False, "51 > limit 50"),
        (Check(metric="m", max=50.0), 50.0, None, None, True, "within limit"),
        (Check(metric="m", max_baseline_ratio=1.5), 20.0, None, 10.0, False, "baseline"),
        (Check(metric="m", max_ratio=2.0), 50.0, None, None, True, "no old cohort data"),
        (Check(metric="m", max_ratio=2.0), None, 10.0, None, True, "no data from the migrated"),
    ],
)
def test_checks(
    check: Check,
    migrated: float | None,
    old: float | None,
    baseline: float | None,
    ok: bool,
    reason: str,
) -> None:
    values: dict[int, dict[str, float | None]] = {1: {"m": migrated}, 2: {"m": old}}
    result = measure(
        analysis(check),
        values,
        migrated=(1,),
        old=(2,),
        baseline={"m": baseline} if baseline is not None else None,
    )
    assert result.ok is ok
    assert reason in result.results[0].reason, result.results[0].reason


def test_a_measurement_fails_when_any_check_fails() -> None:
    values: dict[int, dict[str, float | None]] = {1: {"a": 1.0, "b": 99.0}, 2: {"a": 1.0, "b": 1.0}}
    result = measure(
        analysis(Check(metric="a", max_ratio=2.0), Check(metric="b", max=10.0)),
        values,
        migrated=(1,),
        old=(2,),
        baseline=None,
    )
    assert not result.ok and [r.metric for r in result.failures()] == ["b"]


def test_a_migrated_node_that_does_not_answer_fails_the_measurement() -> None:
    values: dict[int, dict[str, float | None]] = {2: {"m": 1.0}}
    check = Check(metric="m", max_ratio=2.0)
    silent_canary = measure(
        analysis(check), values, migrated=(1,), old=(2, 3), baseline=None, silent=(1, 3)
    )
    assert not silent_canary.ok
    assert "migrated node 1 did not answer" in silent_canary.failures()[0].reason
    silent_old = measure(
        analysis(check), values, migrated=(2,), old=(3,), baseline=None, silent=(3,)
    )
    assert silent_old.ok  # an old-cohort node away is only missing data
