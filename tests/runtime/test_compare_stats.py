"""The statistics of ``raftmw compare`` on known samples: the run order is counterbalanced,
a real difference is found with an interval around it, equal distributions give "no
difference", and too few runs give no interval at all."""

from __future__ import annotations

import random

import pytest

from framework.runtime.comparison_stats import (
    METRICS,
    MetricSpec,
    compare_samples,
    interleaved_order,
)

THROUGHPUT = next(m for m in METRICS if m.key == "ops_per_second")
P99 = next(m for m in METRICS if m.key == "latency_ms.p99")


@pytest.mark.parametrize(
    ("repeat", "order"),
    [
        (1, "AB"),
        (2, "ABBA"),
        (3, "ABBAAB"),
        (5, "ABBAABBAAB"),
    ],
)
def test_runs_alternate_in_abba_blocks(repeat: int, order: str) -> None:
    assert "".join(interleaved_order(repeat)) == order


def test_a_linear_drift_costs_both_sides_the_same_over_whole_blocks() -> None:
    order = interleaved_order(4)
    slot = {"A": 0, "B": 0}
    for position, side in enumerate(order):
        slot[side] += position  # a machine that slows by one unit per run
    assert slot["A"] == slot["B"]


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True])
def test_a_repeat_out_of_range_is_refused_naming_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match=f"repeat={bad!r}"):
        interleaved_order(bad)  # type: ignore[arg-type]


def _noisy(rng: random.Random, centre: float, n: int, noise: float = 0.05) -> list[float]:
    return [centre * (1 + rng.uniform(-noise, noise)) for _ in range(n)]


def test_a_real_difference_is_found_with_an_interval_around_it() -> None:
    rng = random.Random(7)
    a = _noisy(rng, 10_000, 7)
    b = _noisy(rng, 12_000, 7)  # 20 % faster, noise ±5 %
    result = compare_samples(a, b, THROUGHPUT, name_b="actors")
    assert result.difference is not None and 0.12 < result.difference < 0.28
    assert result.ci is not None and 0.0 < result.ci[0] <= result.difference <= result.ci[1]
    assert result.verdict.startswith("actors faster by ")
    assert "(CI " in result.verdict


def test_lower_is_better_for_latency_and_the_words_say_so() -> None:
    rng = random.Random(3)
    result = compare_samples(_noisy(rng, 20.0, 6), _noisy(rng, 30.0, 6), P99, name_b="B")
    assert result.verdict.startswith("B higher by ")
    result = compare_samples(_noisy(rng, 30.0, 6), _noisy(rng, 20.0, 6), P99, name_b="B")
    assert result.verdict.startswith("B lower by ")


def test_equal_distributions_give_no_difference() -> None:
    rng = random.Random(11)
    found = 0
    for _ in range(20):
        a = _noisy(rng, 10_000, 5, noise=0.10)
        b = _noisy(rng, 10_000, 5, noise=0.10)
        result = compare_samples(a, b, THROUGHPUT)
        found += result.verdict != "no difference detectable at this noise"
    assert found <= 2  # a 95 % interval misses the truth about 1 time in 20


def test_a_small_difference_inside_the_noise_is_not_called_a_difference() -> None:
    rng = random.Random(5)
    a = _noisy(rng, 10_000, 5, noise=0.10)
    b = _noisy(rng, 10_400, 5, noise=0.10)  # the README's old "4 % gain" at ±10 % noise
    assert compare_samples(a, b, THROUGHPUT).verdict == "no difference detectable at this noise"


def test_the_interval_is_the_same_for_the_same_seed() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]
    assert compare_samples(a, b, THROUGHPUT, seed=1) == compare_samples(a, b, THROUGHPUT, seed=1)


def test_too_few_runs_give_no_interval_and_say_how_many_are_needed() -> None:
    result = compare_samples([100.0, 101.0], [200.0, 199.0], THROUGHPUT)
    assert result.ci is None and result.difference == pytest.approx(0.98, abs=0.01)
    assert "--repeat 3" in result.verdict


def test_runs_without_a_value_are_left_out_and_none_at_all_is_no_data() -> None:
    spec = MetricSpec(key="failover_ms", label="failover", better="lower", words=("a", "b"))
    assert compare_samples([None, None], [None], spec).verdict == "no data"
    result = compare_samples([5.0, None, 5.0, 5.0], [5.0, 5.0, 5.1], spec)
    assert result.median_a == 5.0 and result.spread_a == (5.0, 5.0)
    assert result.difference == 0.0
    assert result.verdict == "no difference detectable at this noise"


def test_identical_figures_in_every_run_say_so() -> None:
    spec = next(m for m in METRICS if m.key == "term_changes")
    result = compare_samples([0, 0, 0], [0, 0, 0], spec)
    assert (result.difference, result.verdict) == (0.0, "the same in every run (0)")


def test_a_zero_reference_has_no_relative_difference() -> None:
    spec = next(m for m in METRICS if m.key == "client_error_count")
    result = compare_samples([0, 0, 0], [3, 4, 5], spec)
    assert result.difference is None and "A is 0" in result.verdict


def test_a_run_without_an_acknowledged_write_has_no_latency_rather_than_zero() -> None:
    from framework.runtime.compare import _summary, summary_value
    from framework.runtime.workload import WorkloadResult

    empty = _summary(WorkloadResult(seconds=2.0, errors={"Timeout": 3}), 2.0, 1, [0, 0], None)
    assert empty["latency_ms"] == {"p50": None, "p99": None, "p999": None, "max": None}
    assert summary_value(empty, "latency_ms.p99") is None
    assert (summary_value(empty, "ops_per_second"), empty["client_error_count"]) == (0.0, 3)
    some = _summary(WorkloadResult(seconds=1.0, latencies=[0.001, 0.003]), 1.0, 0, [2, 2], 0.5)
    assert summary_value(some, "latency_ms.max") == 3.0
    assert summary_value(some, "cpu_seconds_per_1000_writes") == 250.0
