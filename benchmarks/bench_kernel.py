"""Kernel micro-benchmark: 3 RawNodes in one process, messages passed in memory, proposals in
batches of 64; reports committed entries per second. No storage, no network, no asyncio:
this measures the kernel alone (the runtime adds SQLite, sockets and the event loop).

    python benchmarks/bench_kernel.py [--seconds 5] [--batch 64] [--payload 100] [--nodes 3]
"""

from __future__ import annotations

import argparse
import random
import time

from framework.core import ConfState, RaftConfig, RawNode, Role


def run(seconds: float, batch: int, payload: int, nodes: int) -> tuple[int, float]:
    ids = tuple(range(1, nodes + 1))
    cluster = {
        i: RawNode(
            RaftConfig(id=i, max_inflight_msgs=256),
            rng=random.Random(i),
            conf_state=ConfState(voters=ids),
        )
        for i in ids
    }
    applied = dict.fromkeys(ids, 0)

    def pump() -> None:
        busy = True
        while busy:
            busy = False
            for nid, node in cluster.items():
                if not node.has_ready():
                    continue
                busy = True
                rd = node.ready()
                if rd.committed_entries:
                    applied[nid] = rd.committed_entries[-1].index
                node.advance(rd)
                for msg in rd.messages:
                    cluster[msg.dst].step(msg)
                for msg in rd.persisted_messages:
                    cluster[msg.dst].step(msg)

    pump()
    leader = cluster[1]
    leader.campaign()
    pump()
    assert leader.role is Role.LEADER
    datas = [b"x" * payload] * batch
    start_commit = leader.log.committed
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        leader.propose_batch(datas)
        pump()
    elapsed = time.perf_counter() - started
    committed = leader.log.committed - start_commit
    assert min(applied.values()) == leader.log.committed, "followers did not apply everything"
    return committed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    committed, elapsed = run(args.seconds, args.batch, args.payload, args.nodes)
    print(
        f"{args.nodes} nodes, batches of {args.batch} x {args.payload} B: {committed} entries "
        f"committed in {elapsed:.2f} s = {committed / elapsed:,.0f} entries/s"
    )


if __name__ == "__main__":
    main()
