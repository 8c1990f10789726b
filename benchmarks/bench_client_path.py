"""The client library's own cost per request on its common path (a leader known, every
request answered on the first attempt): CPU time per ``KVClient.put``.

    python benchmarks/bench_client_path.py [--requests 40000] [--writers 256] [--payload 100]

One process runs a ``TcpTransport`` on loopback that answers every request at once (no
Raft behind it) and one ``KVClient`` whose ``--writers`` tasks each put, wait and put again
until ``--requests`` are answered. It prints one line: CPU (``time.process_time``, the
server's share included, the same for every client version) and wall time per request,
and the machine's load average. Run it alternately against two trees to compare them,
for example 7 pairs, each run timed as a whole process:

    for i in 1 2 3 4 5 6 7; do
        PYTHONPATH=NEW /usr/bin/time -f "new %U %S" python benchmarks/bench_client_path.py
        PYTHONPATH=OLD /usr/bin/time -f "old %U %S" python benchmarks/bench_client_path.py
    done
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import anyio

from framework.client import KVClient
from framework.transport import ClientRequest, ClientResponse
from framework.transport.tcp import TcpTransport


class _Inbox:
    def deliver(self, messages: object) -> None:
        pass

    def peer_unreachable(self, node_id: int) -> None:
        pass


class _Answer:
    def submit(self, request: ClientRequest, reply: Callable[[ClientResponse], None]) -> None:
        reply(ClientResponse(id=request.id, ok=True))


async def _run(args: argparse.Namespace) -> tuple[float, float]:
    server = TcpTransport(node_id=1, cluster_id="b", listen="127.0.0.1:0", peers={}, tls=None)
    value = "v" * args.payload
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, _Inbox(), _Answer())
        async with KVClient({1: server.listen_address}, timeout=30.0) as client:
            await client.put("warm-up", value)  # connect and learn the leader first
            left = args.requests
            cpu0, wall0 = time.process_time(), time.perf_counter()

            async def writer(n: int) -> None:
                nonlocal left
                key = f"k{n}"
                while left > 0:
                    left -= 1
                    await client.put(key, value)

            async with anyio.create_task_group() as load:
                for n in range(args.writers):
                    load.start_soon(writer, n)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        tg.cancel_scope.cancel()
    return cpu / args.requests * 1e6, wall / args.requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=40000)
    parser.add_argument("--writers", type=int, default=256)
    parser.add_argument("--payload", type=int, default=100)
    args = parser.parse_args()
    if args.requests < 1 or args.writers < 1 or args.payload < 0:
        parser.error("--requests and --writers must be at least 1, --payload at least 0")
    cpu_us, wall_us = anyio.run(_run, args, backend="asyncio")
    load = os.getloadavg()[0]
    print(f"cpu_us_per_request={cpu_us:.2f} wall_us_per_request={wall_us:.2f} load1={load:.2f}")


if __name__ == "__main__":
    main()
