"""The ticker reports how late each tick woke: a held event loop shows on the status page.

On trio's virtual clock, a jump of the clock while the ticker sleeps is a loop held for that
long (the sleep could not return sooner): the lateness reported is exactly the jump past the
tick that was due. These are values of a virtual clock, not measurements.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from framework.runtime.node_health import BUCKET_BOUNDS_MS, NodeHealth
from framework.runtime.ticker import run_ticker

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> object:
    return ("trio", {"clock": trio.testing.MockClock()})  # time moves only when jumped


async def test_a_tick_after_a_held_loop_reports_how_late_it_woke() -> None:
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    ticks: list[float] = []
    late: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_ticker, 0.01, lambda: ticks.append(trio.current_time()), late.append)
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(0.01)  # on time
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(0.25)  # the loop held for 0.25 s: the tick due at 0.02 wakes at 0.26
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(ticks) == 2
    assert late == pytest.approx([0.0, 0.24])


def test_the_status_page_carries_the_late_ticks_and_the_largest() -> None:
    health = NodeHealth()
    for late in (0.0, 0.002, 0.3):
        health.on_tick(late)
    page = health.to_dict(commit=0, applied=0, performance={}, modes=[])
    counts = page["histograms"]["tick_late_ms"]
    assert sum(counts) == 3
    top = max(i for i, n in enumerate(counts) if n)
    assert BUCKET_BOUNDS_MS[top - 1] < 300.0 <= BUCKET_BOUNDS_MS[top]
    assert page["gauges"]["tick_late_max_ms"] == 300.0
