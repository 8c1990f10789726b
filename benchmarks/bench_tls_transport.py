"""What TLS costs the transport itself: CPU time per client request, TLS on and off.

    python benchmarks/bench_tls_transport.py [--rounds 7] [--requests 20000]
        [--concurrency 64] [--payload 100]

One process runs a ``TcpTransport`` (answering every request at once, no Raft behind it)
and a ``TcpClientConnection`` that keeps ``--concurrency`` ``put`` requests of
``--payload`` bytes in flight until ``--requests`` are answered. Each round measures TLS on
and off in alternating order. CPU time (``time.process_time``) is what it reports first:
unlike wall time it hardly moves when other processes load the machine. Printed: each run,
the medians with their range, and the ratio TLS/plain of CPU per request with the range of
the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from framework.transport import ClientRequest, ClientResponse, KVOp, TcpClientConnection
from framework.transport.certificates import TlsDirectory, init_tls_directory
from framework.transport.tcp import TcpTransport
from framework.transport.tls import client_context, load_node_tls


class _Inbox:
    def deliver(self, messages: object) -> None:
        pass

    def peer_unreachable(self, node_id: int) -> None:
        pass


class _Answer:
    def submit(self, request: ClientRequest, reply: Callable[[ClientResponse], None]) -> None:
        reply(ClientResponse(id=request.id, ok=True, value="ok"))


async def _run(certs: TlsDirectory | None, args: argparse.Namespace) -> tuple[float, float]:
    tls = None
    ctx = None
    if certs is not None:
        tls = load_node_tls(
            1, ca=str(certs.ca), cert=str(certs.node_cert(1)), key=str(certs.node_key(1))
        )
        ctx = client_context(
            ca=str(certs.ca),
            cert=str(certs.client_cert("admin")),
            key=str(certs.client_key("admin")),
        )
    server = TcpTransport(node_id=1, cluster_id="b", listen="127.0.0.1:0", peers={}, tls=tls)
    value = "v" * args.payload
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, _Inbox(), _Answer())
        async with TcpClientConnection.connect(server.listen_address, ssl_context=ctx) as conn:
            left = args.requests
            cpu0, wall0 = time.process_time(), time.perf_counter()

            async def worker(n: int) -> None:
                nonlocal left
                i = 0
                while left > 0:
                    left -= 1
                    i += 1
                    await conn.request(KVOp(op="put", key=f"k{n}-{i}", value=value), timeout=30)

            async with anyio.create_task_group() as load:
                for n in range(args.concurrency):
                    load.start_soon(worker, n)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        tg.cancel_scope.cancel()
    return cpu / args.requests * 1e6, args.requests / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--payload", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = init_tls_directory(Path(tmp), (1,))
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for on in (True, False) if round_ % 2 == 0 else (False, True):
                cpu_us, rate = anyio.run(_run, certs if on else None, args, backend="asyncio")
                runs[on].append((cpu_us, rate))
                print(
                    f"round {round_ + 1} TLS {'on ' if on else 'off'}: {cpu_us:6.1f} us CPU per "
                    f"request, {rate:8.0f} requests/s",
                    flush=True,
                )
    print()
    for on in (True, False):
        cpu = [r[0] for r in runs[on]]
        rate = [r[1] for r in runs[on]]
        print(
            f"TLS {'on ' if on else 'off'}: median {statistics.median(cpu):.1f} us CPU/request "
            f"(range {min(cpu):.1f}-{max(cpu):.1f}), median {statistics.median(rate):.0f} "
            f"requests/s (range {min(rate):.0f}-{max(rate):.0f})"
        )
    ratios = [a[0] / b[0] for a, b in zip(runs[True], runs[False], strict=True)]
    median_ratio = statistics.median(r[0] for r in runs[True]) / statistics.median(
        r[0] for r in runs[False]
    )
    print(
        f"CPU per request TLS/plain: {median_ratio:.2f} (per-round {min(ratios):.2f}-"
        f"{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
