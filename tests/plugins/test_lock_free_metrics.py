"""Lock-free metrics: exact counters, bounded-error percentiles, no lock, swaps with the
legacy metrics in both directions; and a node in actor + lock_free mode takes no lock."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from framework.config import load_settings
from framework.hooks import BuildContext
from legacy.metrics import LockedMetrics
from plugins.lock_free import plugin as lock_free_plugin
from plugins.lock_free.metrics import BUCKETS_PER_DOUBLING, LockFreeMetrics


def test_counters_are_exact_and_no_lock_is_counted() -> None:
    m = LockFreeMetrics()
    for _ in range(1000):
        m.add("proposals")
    m.add("proposals", 24)
    assert m.snapshot()["proposals"] == 1024
    assert m.lock_stats().acquisitions == 0


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_are_within_one_bucket(seed: int) -> None:
    rng = random.Random(seed)
    samples = [rng.lognormvariate(0, 2) for _ in range(5000)]
    m = LockFreeMetrics()
    for s in samples:
        m.record("latency", s)
    snap = m.snapshot()["latency"]
    ordered = sorted(samples)
    step = 2 ** (1 / BUCKETS_PER_DOUBLING)
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        exact = ordered[int(q * len(ordered)) - 1]
        assert exact / step <= snap[key] <= exact * step * step, (q, exact, snap[key])
    assert snap["count"] == 5000 and snap["max"] == max(samples)


def test_a_name_is_either_a_counter_or_a_histogram() -> None:
    m = LockFreeMetrics()
    m.add("x")
    with pytest.raises(ValueError, match="counter"):
        m.record("x", 1.0)


def test_state_moves_to_and_from_the_legacy_metrics() -> None:
    legacy = LockedMetrics()
    legacy.add("applied", 7)
    for v in (1.0, 2.0, 3.0):
        legacy.record("batch", v)
    new = LockFreeMetrics()
    new.import_state(legacy.export_state())
    snap = new.snapshot()
    assert snap["applied"] == 7
    assert snap["batch"]["count"] == 3 and snap["batch"]["sum"] == 6.0
    back = LockedMetrics()
    back.import_state(new.export_state())
    again = back.snapshot()
    assert again["applied"] == 7 and again["batch"]["count"] == 3


def test_the_plugin_answers_only_when_its_flag_is_on() -> None:
    settings = load_settings()
    on = BuildContext(
        node_id=1, settings=settings, flags={"lock_free": SimpleNamespace(value=True)}
    )  # type: ignore[dict-item]
    off = BuildContext(node_id=1, settings=settings, flags={})
    assert isinstance(lock_free_plugin.raftmw_make_metrics(ctx=on), LockFreeMetrics)
    assert lock_free_plugin.raftmw_make_metrics(ctx=off) is None
    assert [s.name for s in lock_free_plugin.raftmw_declare_flags()] == ["lock_free"]


def test_an_update_from_a_second_thread_fails_loudly() -> None:
    import threading

    from plugins.lock_free.metrics import WrongWriterThread

    m = LockFreeMetrics()
    m.add("proposals")
    errors: list[BaseException] = []

    def other() -> None:
        for update in (lambda: m.add("proposals"), lambda: m.record("latency", 1.0)):
            try:
                update()
            except WrongWriterThread as exc:
                errors.append(exc)

    t = threading.Thread(target=other, name="intruder")
    t.start()
    t.join()
    assert len(errors) == 2
    assert "'proposals'" in str(errors[0]) and "intruder" in str(errors[0])
    assert m.snapshot()["proposals"] == 1  # the refused update changed nothing
    m.add("proposals")  # the owner keeps writing
    assert m.snapshot()["proposals"] == 2


@pytest.mark.parametrize("make", [LockedMetrics, LockFreeMetrics], ids=["legacy", "lock_free"])
def test_both_metrics_refuse_the_same_bad_states_and_change_nothing(make: type) -> None:
    """One reading of the swap state (``framework.metrics_state``) for both: a name that
    would be a counter and a histogram, or a counter that is not an int, is refused."""
    m = make()
    m.add("ops", 2)
    m.record("latency", 1.0)
    before = m.snapshot()
    with pytest.raises(ValueError, match=r"\['ops'\] would be both counters and histograms"):
        m.import_state({"histograms": {"ops": {"count": 1, "sum": 1.0, "max": 1.0}}})
    with pytest.raises(ValueError, match=r"\['latency'\] would be both counters and histograms"):
        m.import_state({"counters": {"latency": 1}})
    with pytest.raises(TypeError, match="counter 'n' is True; expected an int"):
        m.import_state({"counters": {"n": True}})
    with pytest.raises(TypeError, match="counter 'n' is '3'; expected an int"):
        m.import_state({"counters": {"n": "3"}})
    assert m.snapshot() == before
