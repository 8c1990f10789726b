"""The cost of shadow mode per decision: the legacy components alone against the same
components wrapped in shadow mode (the new one fed every call and compared), interleaved
in one run, as a ratio of medians of CPU time (process time: steadier than wall time
on a shared machine).

    python benchmarks/bench_shadow.py [--rounds 21] [--calls 20000]

Per round and per seam, the same calls: queue admission (put of one item, drained in
batches of 64, as the Ready loop drains), the send guard (allow of an append batch to a
peer), the timeout policy (observe, then timeout). This is the CPU a node adds per
decision; what that is per write depends on how many decisions a write makes (one or two
queue puts and a few sends), which ``raftmw compare --b-flag shadow=on`` measures whole
(node CPU per 1,000 writes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from framework.config import load_settings
from framework.core.entries import Entry
from framework.core.messages import AppendEntries
from framework.runtime.shadow import ShadowQueue, ShadowSendGuard, ShadowTally, ShadowTimeouts
from framework.seams import Priority
from legacy.queue import UnboundedQueue
from legacy.send_guard import NoGuard
from legacy.timeouts import FixedTimeouts
from plugins.adaptive_timeout.policy import AdaptiveTimeouts
from plugins.backpressure.queue import BoundedPriorityQueue
from plugins.circuit_breaker.guard import BreakerGuard


def _workloads(calls: int) -> dict[str, tuple[Callable[[Any], None], Callable[[], Any]]]:
    settings = load_settings()
    batch = [
        AppendEntries(src=1, dst=2, term=3, prev_index=i, prev_term=3,
                      entries=(Entry(3, i + 1, data=b"x" * 100),))
        for i in range(4)
    ]  # fmt: skip

    def queue_calls(queue: Any) -> None:
        for n in range(calls):
            queue.put_nowait(n, Priority.NORMAL)
            if n % 64 == 63:
                queue.drain()
        queue.drain()

    def guard_calls(guard: Any) -> None:
        for n in range(calls):
            guard.allow(2 + n % 2, batch)

    def timeout_calls(timeouts: Any) -> None:
        for n in range(calls):
            timeouts.observe("raft_message", 0.002, ok=True)
            timeouts.timeout("raft_message", n % 3)

    bp = settings.performance.backpressure
    return {
        "queue admission": (
            queue_calls,
            lambda: ShadowQueue(
                UnboundedQueue("inbox"), BoundedPriorityQueue("inbox", bp, on_shed=lambda i: None),
                ShadowTally(1, "queue:inbox"), "inbox",
            ),
        ),
        "send guard": (
            guard_calls,
            lambda: ShadowSendGuard(
                NoGuard(), BreakerGuard.from_settings(settings), ShadowTally(1, "send_guard")
            ),
        ),
        "timeout policy": (
            timeout_calls,
            lambda: ShadowTimeouts(
                FixedTimeouts(settings), AdaptiveTimeouts(settings), ShadowTally(1, "timeouts")
            ),
        ),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    legacy_of: dict[str, Callable[[], Any]] = {
        "queue admission": lambda: UnboundedQueue("inbox"),
        "send guard": NoGuard,
        "timeout policy": lambda: FixedTimeouts(load_settings()),
    }
    for name, (calls, shadowed) in _workloads(args.calls).items():
        plain_ns: list[float] = []
        shadow_ns: list[float] = []
        for _ in range(args.rounds):
            for make, out in ((legacy_of[name], plain_ns), (shadowed, shadow_ns)):
                component = make()
                t0 = time.process_time_ns()
                calls(component)
                out.append((time.process_time_ns() - t0) / args.calls)
        p, s = statistics.median(plain_ns), statistics.median(shadow_ns)
        spread = lambda xs: f"{min(xs):.0f}-{max(xs):.0f}"  # noqa: E731
        print(
            f"{name:16} legacy {p:7.0f} ns/decision ({spread(plain_ns)}), "
            f"shadow {s:7.0f} ns ({spread(shadow_ns)}): ratio {s / p:.2f}, "
            f"+{s - p:.0f} ns per decision"
        )


if __name__ == "__main__":
    main()
