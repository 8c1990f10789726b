"""Embedded ``@replicated`` calls: raftmw against PySyncObj, same machine, same run.

    python benchmarks/bench_objects.py [--rounds 5] [--calls 300] [--callers 1] \
        [--payload 100] [--sync always|os]

Three raftmw nodes embedded in this process (``raftmw.embed``, loopback TCP, SQLite logs)
and three PySyncObj nodes in this process (its own threads, loopback TCP, log in memory:
PySyncObj's default, no journal file) each replicate the same class: ``add(note)`` appends
a ``--payload``-byte string and returns the count. Each round times ``--calls`` calls on
each system's leader from ``--callers`` concurrent callers, in alternating order so that a
drift of the shared machine's speed falls on both. Printed: every round, then per system the
median calls/s with its range, and the median of the per-round ratios raftmw/PySyncObj with
their range. Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from framework.config import load_settings
from framework.runtime.localcluster import free_ports
from raftmw import ReplicatedObject, embed, query, replicated


class Notes(ReplicatedObject):
    app_name = "bench.notes"
    notes: list[str]

    def __init__(self) -> None:
        self.notes = []

    @replicated
    def add(self, note: str) -> int:
        self.notes.append(note)
        return len(self.notes)

    @query
    def count(self) -> int:
        return len(self.notes)


def pysyncobj_cluster() -> list[object]:
    from pysyncobj import SyncObj, SyncObjConf
    from pysyncobj import replicated as p_replicated

    class PNotes(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, others: list[str]) -> None:
            super().__init__(me, others, SyncObjConf(dynamicMembershipChange=False))
            self.notes: list[str] = []

        @p_replicated
        def add(self, note: str) -> int:
            self.notes.append(note)
            return len(self.notes)

    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    return [PNotes(a, [b for b in addresses if b != a]) for a in addresses]


def pysyncobj_leader(nodes: list[object]) -> object:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in nodes:
            if node._isLeader():  # type: ignore[attr-defined]
                return node
        time.sleep(0.05)
    raise RuntimeError("PySyncObj elected no leader in 30s")


def time_pysyncobj(leader: object, calls: int, callers: int, note: str) -> float:
    per = calls // callers

    def run() -> None:
        for _ in range(per):
            leader.add(note, sync=True, timeout=10)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=run) for _ in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * callers / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace) -> None:
    note = "x" * args.payload
    settings = load_settings(overrides={"storage.sync": args.sync})
    peers = {i: f"127.0.0.1:{port}" for i, port in enumerate(free_ports(3), start=1)}
    p_nodes = pysyncobj_cluster()
    with tempfile.TemporaryDirectory() as root:
        async with AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(
                    embed(
                        Notes,
                        node_id=i,
                        peers=peers,
                        data_dir=Path(root) / f"n{i}",
                        settings=settings,
                        timeout=10.0,
                    )
                )
                for i in peers
            ]
            with anyio.fail_after(30):
                while not any(n.is_leader() for n in nodes):  # noqa: ASYNC110 (polls roles)
                    await anyio.sleep(0.05)
            leader = next(n for n in nodes if n.is_leader())
            obj = leader.object(Notes)
            p_leader = await anyio.to_thread.run_sync(pysyncobj_leader, p_nodes)
            await obj.add(note)  # warm up both
            await anyio.to_thread.run_sync(lambda: p_leader.add(note, sync=True, timeout=10))  # type: ignore[attr-defined]

            async def time_raftmw() -> float:
                per = args.calls // args.callers

                async def run() -> None:
                    for _ in range(per):
                        await obj.add(note)

                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(args.callers):
                        tg.start_soon(run)
                return per * args.callers / (time.perf_counter() - started)

            results: dict[str, list[float]] = {"raftmw": [], "pysyncobj": []}
            for round_ in range(args.rounds):
                order = ("raftmw", "pysyncobj") if round_ % 2 == 0 else ("pysyncobj", "raftmw")
                for system in order:
                    if system == "raftmw":
                        rate = await time_raftmw()
                    else:
                        rate = await anyio.to_thread.run_sync(
                            time_pysyncobj, p_leader, args.calls, args.callers, note
                        )
                    results[system].append(rate)
                    print(f"round {round_ + 1} {system:9s} {rate:8.0f} calls/s", flush=True)
    for node in p_nodes:
        node.destroy()  # type: ignore[attr-defined]
    for system, rates in results.items():
        print(
            f"{system:9s} median {statistics.median(rates):8.0f} calls/s "
            f"(range {min(rates):.0f}-{max(rates):.0f})"
        )
    ratios = [r / p for r, p in zip(results["raftmw"], results["pysyncobj"], strict=True)]
    print(
        f"raftmw/pysyncobj median ratio {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}), sync={args.sync}, "
        f"callers={args.callers}, payload={args.payload}B"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--sync", choices=["always", "os"], default="always")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
