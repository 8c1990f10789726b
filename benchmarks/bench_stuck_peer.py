"""Legacy vs actor connection pool, healthy and with one stuck follower.

    python benchmarks/bench_stuck_peer.py [--seconds 10] [--clients 16] [--payload 100]
        [--hole accepts-never-reads|connect-never-completes] [--sync os|always]

Four runs of a 3-node cluster of real ``raftmw node`` processes on loopback
(``LocalCluster``): flag ``actors`` off (the legacy ``LockedConnectionPool``) and on (the
``ConnectionPoolActor``), each with every node up (healthy) and with node 3's address
leading to a stuck peer instead (``stuck``: only nodes 1 and 2 run; both dial node 3, whose
connect or handshake never completes; see ``tests/runtime/test_stuck_peer.py``).

``--clients`` writers each put one ``--payload``-byte value at a time for ``--seconds``.
Printed per run: acknowledged writes per second, p50/p99/max latency of an acknowledged
write, client errors (a write retried past its deadline), and elections during the run
(how far the term moved: every election that gets past pre-vote takes a new term).
"""

from __future__ import annotations

import argparse
import platform
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import anyio
import tomli_w

from framework.client import KVClient
from framework.errors import RaftError
from framework.runtime.localcluster import LocalCluster
from framework.runtime.workload import percentile


@dataclass(frozen=True, slots=True)
class Row:
    mode: str
    scenario: str
    writes_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    elections: int


@contextmanager
def stuck_peer(kind: str) -> Iterator[str]:
    """A listening socket that never answers: accepted and never read, or (full backlog)
    never even accepted, so a connect hangs."""
    listener = socket.socket()
    parked: socket.socket | None = None
    try:
        listener.bind(("127.0.0.1", 0))
        if kind == "accepts-never-reads":
            listener.listen(64)
        else:
            listener.listen(0)
            parked = socket.create_connection(listener.getsockname(), timeout=2)
        host, port = listener.getsockname()
        yield f"{host}:{port}"
    finally:
        if parked is not None:
            parked.close()
        listener.close()


async def _max_term(client: KVClient, node_ids: list[int]) -> int:
    terms = []
    for node_id in node_ids:
        with suppress(RaftError):
            terms.append((await client.status(node_id))["term"])
    return max(terms, default=0)


async def _settle(client: KVClient, node_ids: list[int]) -> None:
    """A write acknowledged, then the same (term, leader) on every live node."""
    with anyio.fail_after(60):
        while True:
            try:
                await client.put("settle", "1")
                break
            except RaftError:
                await anyio.sleep(0.1)
        while True:
            views = set()
            for node_id in node_ids:
                status = await client.status(node_id)
                views.add((status["term"], status["leader"]))
            if len(views) == 1 and next(iter(views))[1]:
                return
            await anyio.sleep(0.05)


async def _workload(
    peers: dict[int, str], *, clients: int, seconds: float, payload: int
) -> tuple[list[float], int, int]:
    """(latencies, errors, elections) of ``clients`` writers over ``seconds``."""
    live = sorted(peers)
    value = "v" * payload
    latencies: list[float] = []
    errors = 0
    async with KVClient(peers, timeout=5.0) as admin:
        await _settle(admin, live)
        term_before = await _max_term(admin, live)
        stop_at = time.perf_counter() + seconds

        async def writer(n: int) -> None:
            nonlocal errors
            async with KVClient(peers, timeout=5.0) as client:
                i = 0
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    try:
                        await client.put(f"c{n}-{i}", value)
                    except RaftError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - t0)
                    i += 1

        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(writer, n)
        term_after = await _max_term(admin, live)
    return latencies, errors, term_after - term_before


def run(mode: str, scenario: str, args: argparse.Namespace) -> Row:
    with tempfile.TemporaryDirectory(prefix="raftmw-stuck-") as tmp:
        root = Path(tmp)
        settings = root / "settings.toml"
        settings.write_text(tomli_w.dumps({"storage": {"sync": args.sync}}))
        cluster = LocalCluster(
            root,
            nodes=3,
            flags=[f"actors={'true' if mode == 'actors' else 'false'}"],
            settings_files=[str(settings)],
            cluster_id="stuck-bench",
            tls=False,  # the pools as measured before TLS: the hole speaks no TLS
        )
        try:
            with stuck_peer(args.hole) as hole:
                if scenario == "healthy":
                    cluster.start_all()
                    live = [1, 2, 3]
                    peers = cluster.peers
                else:
                    book = {**cluster.peers, 3: hole}
                    for node_id in (1, 2):
                        cluster.start(node_id, peers=book)
                    live = [1, 2]
                    peers = {i: cluster.peers[i] for i in live}
                latencies, errors, elections = anyio.run(
                    _serve_and_measure, cluster, live, peers, args, backend="asyncio"
                )
        finally:
            cluster.stop_all()
    return Row(
        mode=mode,
        scenario=scenario,
        writes_per_second=len(latencies) / args.seconds,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=max(latencies, default=0.0) * 1000,
        errors=errors,
        elections=elections,
    )


async def _serve_and_measure(
    cluster: LocalCluster, live: list[int], peers: dict[int, str], args: argparse.Namespace
) -> tuple[list[float], int, int]:
    await cluster.wait_serving(live)
    return await _workload(peers, clients=args.clients, seconds=args.seconds, payload=args.payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument(
        "--hole",
        choices=["accepts-never-reads", "connect-never-completes"],
        default="accepts-never-reads",
    )
    parser.add_argument("--sync", choices=["os", "always"], default="os")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{args.clients} clients x {args.seconds:g}s, {args.payload}-byte values, "
        f"storage.sync={args.sync}, stuck peer: {args.hole}"
    )
    rows = [
        run(mode, scenario, args)
        for scenario in ("healthy", "stuck")
        for mode in ("legacy", "actors")
    ]
    header = (
        f"{'mode':<8} {'scenario':<8} {'writes/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>7} {'elections':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.mode:<8} {r.scenario:<8} {r.writes_per_second:>9.0f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.max_ms:>8.0f} {r.errors:>7} {r.elections:>9}"
        )


if __name__ == "__main__":
    main()
