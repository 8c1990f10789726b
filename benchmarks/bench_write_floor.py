"""The floor under one replicated write on this machine: what the parts a write cannot skip
cost here, with no Raft and no raftmw code around them.

    python benchmarks/bench_write_floor.py [--round-trips 3000] [--store-seconds 1.0] [--rounds 3]

A write acknowledged after a durable store on a majority of three needs, at the least: the
request to the leader, the append to a follower, the follower's durable store (handed to a
thread: no blocking call on the event loop), its answer, and the answer to the writer. The
leader's own store runs beside the follower's. So, at the least:

- a writer in a process of its own: two round trips between processes, plus a hand-over
  to a thread and back, plus one store (``sync = always``);
- a writer inside the leader's process (PySyncObj's shape, ``raftmw.embed``): one round
  trip, plus the hand-over, plus the store.

Measured here, each ``--rounds`` times (medians of each, then the median of the rounds):
the round trip of 100 bytes between two processes over loopback TCP with bare asyncio
protocols on uvloop (TCP_NODELAY; no framing, no decoding, no TLS); the hand-over to the
node's ``StoreThread`` and back with nothing to do; and ``SQLiteLogStore.save_ready`` of
one 100-byte entry with its hard state, ``sync="always"``, called directly (as
``bench_sqlite_store.py`` times it, for ``--store-seconds``). The sums are a
floor, not a prediction: every process and thread wake-up costs more when the machine's
two cores are busy, as they are when three nodes and a writer run on them.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from bench_sqlite_store import run as store_run  # this directory: the same store timing

from framework.runtime.store_thread import StoreThread

MESSAGE = b"x" * 100


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._transport.write(data)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)  # the port, to the parent
    await asyncio.Event().wait()


class _Pinger(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiting: asyncio.Future[None] | None = None
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= len(MESSAGE) and self.waiting is not None:
            self.received -= len(MESSAGE)
            self.waiting.set_result(None)
            self.waiting = None


async def _round_trips(port: int, count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    transport, pinger = await loop.create_connection(_Pinger, "127.0.0.1", port)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(count):
        began = time.perf_counter()
        pinger.waiting = loop.create_future()
        transport.write(MESSAGE)
        await pinger.waiting
        times.append(time.perf_counter() - began)
    transport.close()
    return times


async def _hand_overs(count: int) -> list[float]:
    worker = StoreThread("floor-store")
    times = []
    async with worker.running():
        for _ in range(count):
            began = time.perf_counter()
            await worker.call(int)
            times.append(time.perf_counter() - began)
    return times


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=3000)
    parser.add_argument("--store-seconds", type=float, default=1.0, help="of stores a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the echo
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve())
        return
    rtt: list[float] = []
    hop: list[float] = []
    store: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-floor-") as tmp:
        echo = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert echo.stdout is not None
            port = int(echo.stdout.readline())
            for r in range(args.rounds):
                rtt.append(_ms(uvloop.run(_round_trips(port, args.round_trips))))
                hop.append(_ms(uvloop.run(_hand_overs(args.round_trips))))
                store_dir = Path(tmp) / f"store-{r}"
                store_dir.mkdir()
                _, latencies = store_run(store_dir, "always", 1, args.store_seconds)
                store.append(_ms(latencies))
                print(
                    f"round {r + 1}: round trip {rtt[-1]:.3f} ms, hand-over {hop[-1]:.3f} ms, "
                    f"store {store[-1]:.3f} ms (medians)"
                )
        finally:
            echo.kill()
            echo.wait()
    one_rtt, one_hop, one_store = (statistics.median(x) for x in (rtt, hop, store))
    print(
        f"median of rounds: round trip {one_rtt:.3f} ms, hand-over {one_hop:.3f} ms, "
        f"store {one_store:.3f} ms"
    )
    print(f"floor, writer a process of its own: {2 * one_rtt + one_hop + one_store:.3f} ms")
    print(f"floor, writer in the leader's process: {one_rtt + one_hop + one_store:.3f} ms")


if __name__ == "__main__":
    main()
