"""``TickClock``: ticks due from a monotonic clock, so a paused leader knows it was paused."""

from __future__ import annotations

import time

import anyio
import pytest

from framework.runtime.tick_clock import TickClock


def test_ticks_due_are_whole_intervals_since_start_each_handed_out_once() -> None:
    clock = TickClock(0.01, now=100.0)
    assert clock.due(100.0) == 0
    assert clock.due(100.015) == 1
    assert clock.due(100.019) == 0  # the same tick is not handed out twice
    assert clock.due(100.031) == 2
    assert clock.delivered == 3


def test_a_pause_is_caught_up_in_full_not_as_one_tick_per_wake() -> None:
    """The runtime used to add one tick per timer wake-up: after a SIGSTOP of 5 s (500
    ticks of 10 ms) the kernel saw one tick, and a leader's lease outlived the pause."""
    clock = TickClock(0.01, now=0.0)
    assert clock.due(0.05) == 5
    assert clock.due(5.05) == 500


def test_a_clock_going_backward_hands_out_nothing() -> None:
    clock = TickClock(0.5, now=10.0)
    assert clock.due(11.0) == 2
    assert clock.due(10.2) == 0
    assert clock.due(11.6) == 1


@pytest.mark.parametrize("interval", [0.0, -1.0, float("inf"), float("nan")])
def test_the_interval_must_be_a_positive_duration(interval: float) -> None:
    with pytest.raises(ValueError, match="expected a positive duration"):
        TickClock(interval, now=0.0)


@pytest.mark.anyio
async def test_a_node_whose_loop_was_stalled_catches_up_every_tick() -> None:
    """A node whose event loop stalls (as under SIGSTOP) delivers, on its next wake-up, a
    tick for every interval of the stall, not one: its leader lease cannot outlive it."""
    from tests.runtime.inprocess_cluster import cluster

    async with cluster(1) as c:
        await c.wait_leader()
        node = c.nodes[1]
        kernel = node.kernel
        assert kernel is not None
        before = kernel.clock
        time.sleep(0.3)  # the whole event loop stops: no timer fires  # noqa: ASYNC251
        with anyio.fail_after(10):
            while kernel.clock == before:
                await anyio.sleep(0.001)
        # 0.3 s of 5 ms ticks is 60 ticks; one wake-up used to bring one.
        assert kernel.clock - before >= 55
