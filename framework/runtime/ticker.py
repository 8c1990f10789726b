"""The node's ticker, and what its lateness says: how long the event loop was held.

Every heartbeat interval the ticker wakes the Ready loop, which delivers every tick due
(``TickClock``), and keeps a leader's and a follower's time while that loop waits on I/O
(``kernel_inputs.TimeKeeper``). A sleep of ``interval`` that returns
later than that could not run sooner: something held the event loop (a callback or a task
that did not yield, the GIL taken by another thread, the process not scheduled by the
machine). So the lateness of each wake-up is the node's longest loop pause in that interval,
measured where a pause does its harm: a leader's heartbeats leave from this task. The
Ready loop's own durations (``ready_pause_ms``) are not that: a Ready awaits its disk
write, and the loop runs other tasks meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

__all__ = ["run_ticker"]


async def run_ticker(
    interval: float, on_tick: Callable[[], None], on_late: Callable[[float], None]
) -> None:
    """Call ``on_tick`` every ``interval`` seconds until cancelled, after ``on_late`` with
    how many seconds late the wake-up was (0 or more)."""
    while True:
        asleep = anyio.current_time()
        await anyio.sleep(interval)
        on_late(max(0.0, anyio.current_time() - asleep - interval))
        on_tick()
