"""Shadow mode (framework/runtime/shadow.py): with the ``shadow`` flag on, the legacy
component answers every call exactly as it would alone, while the new one decides beside
it; agreements and mismatches are counted per decision kind with samples, on constructed
cases for each seam; switching shadow on and off swaps like any flag."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from framework.config import load_settings
from framework.core.entries import Entry
from framework.core.messages import AppendEntries, Heartbeat
from framework.flags import Evaluation, Reason, Source
from framework.plugins import PluginHost
from framework.runtime.components import Components
from framework.runtime.shadow import ShadowTally, ShadowTimeouts, shadow_pair, shadow_status
from framework.seams import Priority
from legacy.queue import UnboundedQueue
from legacy.send_guard import NoGuard
from legacy.timeouts import FixedTimeouts

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def flags(**values: bool) -> dict[str, Evaluation]:
    return {
        name: Evaluation(
            flag=name, value=value, reason=Reason.STATIC, source=Source.CLUSTER, detail=""
        )
        for name, value in values.items()
    }


def test_only_the_seams_whose_own_flag_is_off_are_shadowed() -> None:
    on = flags(shadow=True, adaptive_timeout=False, circuit_breaker=True, backpressure=False)
    assert shadow_pair("timeouts", on) == "adaptive_timeout"
    assert shadow_pair("send_guard", on) is None  # the new guard already answers
    assert shadow_pair("queue", on) == "backpressure"
    assert shadow_pair("status_store", on) is None  # not a decision made twice safely
    assert shadow_pair("timeouts", flags(shadow=False, adaptive_timeout=False)) is None


async def _components(settings: Any, shed: list[Any]) -> Components:
    return Components(
        PluginHost(), node_id=1, settings=settings, on_shed=lambda q, item: shed.append(item)
    )


FLAGS_OFF = dict(adaptive_timeout=False, circuit_breaker=False, backpressure=False)


async def test_shadow_components_count_what_the_new_ones_would_have_decided() -> None:
    settings = load_settings(
        overrides={
            "performance.backpressure.max_pending": 4,
            "performance.circuit_breaker.failure_threshold": 2,
        }
    )
    shed: list[Any] = []
    components = await _components(settings, shed)
    async with anyio.create_task_group() as tg:
        await components.start(tg, flags(shadow=True, **FLAGS_OFF))
        plugins = components.plugins()
        assert plugins["timeouts"] == "legacy+shadow:adaptive_timeout"
        assert plugins["send_guard"] == "legacy+shadow:circuit_breaker"
        assert plugins["queue:proposals"] == "legacy+shadow:backpressure"

        # queue admission: legacy is unbounded, backpressure holds 4
        queue = components.proposals
        for n in range(10):
            queue.put_nowait(n, Priority.NORMAL)
        assert queue.drain() == list(range(10))  # legacy's answer: everything, in order
        assert shed == []  # the shadow's evictions reach no client

        # send guard: after failures to peer 2 its breaker would hold the appends back
        guard = components.send_guard
        for _ in range(3):
            guard.record(2, ok=False)
        to_2 = [_append(2, 1), Heartbeat(src=1, dst=2, term=1)]
        assert list(guard.allow(2, to_2)) == to_2  # legacy sends them all
        assert list(guard.allow(3, [_append(3, 1)])) == [_append(3, 1)]

        # timeouts: fixed against adaptive, fed the same observations
        timeouts = components.timeouts
        fixed = timeouts.timeout("raft_message")
        for _ in range(50):
            timeouts.observe("raft_message", 0.4, ok=True)  # a slow link: 400 ms round trips
        assert timeouts.timeout("raft_message") == fixed  # legacy answers

        status = shadow_status(components.running())
        tg.cancel_scope.cancel()
    admit = status["queue:proposals"]["decisions"]["admit:proposals"]
    assert admit["agree"] >= 4 and admit["mismatch"] >= 1
    assert admit["agree"] + admit["mismatch"] == 10
    sample = status["queue:proposals"]["mismatch_samples"][0]
    assert sample["legacy"] == "admitted" and sample["new"].startswith("refused")
    send = status["send_guard"]["decisions"]["send"]
    assert send == {"agree": 1, "mismatch": 1, "error": 0}
    assert status["send_guard"]["mismatch_samples"][0] == {
        "kind": "send",
        "legacy": "2/2 to 2",
        "new": "1/2",
    }
    timeout = status["timeouts"]["decisions"]["timeout:raft_message"]
    assert timeout["agree"] >= 1  # before it learnt anything: both say base_timeout
    assert timeout["mismatch"] >= 1  # then the adaptive one learnt the 400 ms round trips


def _append(dst: int, index: int) -> AppendEntries:
    entry = Entry(term=1, index=index, data=b"x")
    return AppendEntries(
        src=1, dst=dst, term=1, prev_index=index - 1, prev_term=1, entries=(entry,)
    )


class Broken:
    async def run(self, *, task_status: Any) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def timeout(self, operation: str, attempt: int = 0) -> float:
        raise RuntimeError("shadow bug")

    def observe(self, operation: str, seconds: float, *, ok: bool) -> None:
        raise RuntimeError("shadow bug")


async def test_a_shadow_that_raises_is_counted_and_never_reaches_the_caller() -> None:
    legacy = FixedTimeouts(load_settings())
    wrapper = ShadowTimeouts(legacy, Broken(), ShadowTally(1, "timeouts"))
    assert wrapper.timeout("connect") == legacy.timeout("connect")
    wrapper.observe("connect", 0.1, ok=True)
    counts = wrapper.tally.to_dict()["decisions"]
    assert counts["timeout:connect"] == {"agree": 0, "mismatch": 0, "error": 1}
    assert counts["observe:connect"]["error"] == 1


async def test_shadow_mode_leaves_every_answer_unchanged() -> None:
    """The same random calls to a legacy component alone and to a shadowed one give the
    same answers, call for call (the shadow's own answers differ often on purpose)."""
    settings = load_settings(overrides={"performance.backpressure.max_pending": 3})
    rng = random.Random(5)
    calls = [(rng.randrange(4), rng.randrange(1, 4), rng.random() < 0.3) for _ in range(400)]
    shadowed = await _components(settings, [])
    plain = (UnboundedQueue("proposals"), NoGuard(), FixedTimeouts(settings))
    async with anyio.create_task_group() as tg:
        await shadowed.start(tg, flags(shadow=True, **FLAGS_OFF))
        s = (shadowed.proposals, shadowed.send_guard, shadowed.timeouts)
        for what, n, fail in calls:
            answers = []
            for queue, guard, timeouts in (plain, s):
                if what == 0:
                    queue.put_nowait(n, Priority.NORMAL)
                    answers.append(len(queue))
                elif what == 1:
                    answers.append(queue.drain(n))
                elif what == 2:
                    guard.record(n, ok=not fail)
                    answers.append(list(guard.allow(n, [_append(n, 1), _append(n, 2)])))
                else:
                    timeouts.observe("client_request", 0.002 * n, ok=not fail)
                    answers.append(timeouts.timeout("client_request", attempt=n))
            assert answers[0] == answers[1]
        counts = shadow_status(shadowed.running())
        tg.cancel_scope.cancel()
    assert sum(c["mismatch"] for t in counts.values() for c in t["decisions"].values()) > 0


async def test_shadow_switches_on_and_off_like_any_flag_and_keeps_the_queue() -> None:
    components = await _components(load_settings(), [])
    async with anyio.create_task_group() as tg:
        await components.start(tg, flags(shadow=False, **FLAGS_OFF))
        components.proposals.put_nowait("w1", Priority.NORMAL)
        reports = await components.reconfigure(flags(shadow=True, **FLAGS_OFF))
        assert all(r.ok for r in reports) and len(reports) == 4  # 2 queues, guard, timeouts
        components.proposals.put_nowait("w2", Priority.NORMAL)
        await components.reconfigure(flags(shadow=False, **FLAGS_OFF))
        assert components.plugins()["queue:proposals"] == "legacy"
        assert components.proposals.drain() == ["w1", "w2"]  # nothing lost either way
        assert shadow_status(components.running()) == {}
        tg.cancel_scope.cancel()


async def test_the_counts_reach_opentelemetry_by_seam_kind_and_outcome() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    components = Components(
        PluginHost(),
        node_id=4,
        settings=load_settings(overrides={"performance.backpressure.max_pending": 2}),
        on_shed=lambda q, item: None,
        meter_provider=provider,
    )
    async with anyio.create_task_group() as tg:
        await components.start(tg, flags(shadow=True, **FLAGS_OFF))
        for n in range(5):
            components.proposals.put_nowait(n, Priority.NORMAL)
        data = reader.get_metrics_data()
        tg.cancel_scope.cancel()
    points = {
        (p.attributes["seam"], p.attributes["kind"], p.attributes["outcome"]): p.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "raftmw.shadow.decisions"
        for p in metric.data.data_points
        if p.attributes["raftmw.node_id"] == 4
    }
    agreed = points[("queue:proposals", "admit:proposals", "agree")]
    refused = points[("queue:proposals", "admit:proposals", "mismatch")]
    assert agreed >= 2 and refused >= 1 and agreed + refused == 5
