"""What handing a store to a thread costs: ``anyio.to_thread.run_sync`` against the node's
``StoreThread``, interleaved, on the event loop a node runs (uvloop).

    python benchmarks/bench_store_thread.py [--calls 3000] [--rounds 3] [--work-us 0]

Each round times ``--calls`` round trips of each, one after the other (the order swapped
every round): the wall time from the call to the caller resuming, and the process CPU per
call (both threads). ``--work-us`` makes the function busy-wait that long, as a store would
hold the thread (0: the hand-over alone). Prints each round and the medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

from framework.runtime.store_thread import StoreThread


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _time(call: object, calls: int, work: float) -> tuple[float, float, float]:
    waits = []
    cpu = time.process_time()
    for _ in range(calls):
        began = time.perf_counter()
        await call(_busy, work)  # type: ignore[operator]
        waits.append(time.perf_counter() - began)
    cpu = (time.process_time() - cpu) / calls
    waits.sort()
    return waits[len(waits) // 2], waits[int(len(waits) * 0.99)], cpu


async def main(calls: int, rounds: int, work: float) -> None:
    worker = StoreThread("bench-store")
    results: dict[str, list[tuple[float, float, float]]] = {"to_thread": [], "StoreThread": []}
    async with worker.running():
        sides = {"to_thread": anyio.to_thread.run_sync, "StoreThread": worker.call}
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                p50, p99, cpu = await _time(sides[name], calls, work)
                results[name].append((p50, p99, cpu))
                print(
                    f"round {r + 1} {name:>11}: round trip p50 {p50 * 1e6:6.0f} us, "
                    f"p99 {p99 * 1e6:6.0f} us, CPU {cpu * 1e6:5.0f} us a call"
                )
    for name, rows in results.items():
        p50 = statistics.median(row[0] for row in rows)
        cpu = statistics.median(row[2] for row in rows)
        print(f"median {name:>11}: p50 {p50 * 1e6:.0f} us, CPU {cpu * 1e6:.0f} us a call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-us", type=float, default=0.0)
    args = parser.parse_args()
    anyio.run(
        main, args.calls, args.rounds, args.work_us / 1e6, backend_options={"use_uvloop": True}
    )
