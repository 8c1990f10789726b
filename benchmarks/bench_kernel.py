"""Kernel micro-benchmark: 3 RawNodes in one process, messages passed in memory, proposals in
batches of 64; reports committed entries per second. No storage, no network, no asyncio:
this measures the kernel alone (the runtime adds SQLite, sockets and the event loop).

    python benchmarks/bench_kernel.py [--seconds 5] [--batch 64] [--payload 100] [--nodes 3]
    python benchmarks/bench_kernel.py --against CHECKOUT [--rounds 5]

With ``--against``, this tree's kernel and the one in CHECKOUT (an export of main, say) run
alternately, each in a fresh process started from a neutral directory with PYTHONPATH set
to its tree, in an order swapped each round; every run is printed with the machine's load
average, then the medians with their ranges and this/against per round. Entries per second
are per wall second and per CPU second of the measured loop (interpreter start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from framework.core import ConfState, RaftConfig, RawNode, Role

HERE = Path(__file__).resolve().parent.parent


def run(seconds: float, batch: int, payload: int, nodes: int) -> tuple[int, float, float]:
    """Committed entries, wall seconds and CPU seconds of the measured loop."""
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
    cpu_started = time.process_time()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        leader.propose_batch(datas)
        pump()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    committed = leader.log.committed - start_commit
    assert min(applied.values()) == leader.log.committed, "followers did not apply everything"
    return committed, elapsed, cpu


def _one_run(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """This script, in a fresh process importing the kernel of ``tree``."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--json",
        *("--seconds", str(args.seconds), "--batch", str(args.batch)),
        *("--payload", str(args.payload), "--nodes", str(args.nodes)),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as neutral:  # a cwd that shadows neither tree
        out = subprocess.run(command, env=env, cwd=neutral, check=True, capture_output=True)
    result: dict[str, float] = json.loads(out.stdout)
    result["load"] = load
    return result


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def compare(args: argparse.Namespace) -> None:
    trees = {"this": HERE, "against": Path(args.against).resolve()}
    if not (trees["against"] / "framework" / "core").is_dir():
        sys.exit(f"--against {args.against}: expected a checkout holding framework/core")
    print(f"this = {trees['this']}, against = {trees['against']}")
    runs: dict[str, list[dict[str, float]]] = {"this": [], "against": []}
    for round_no in range(args.rounds):
        order = ("this", "against") if round_no % 2 == 0 else ("against", "this")
        for name in order:
            r = _one_run(trees[name], args)
            runs[name].append(r)
            print(
                f"round {round_no + 1} {name:7}: {r['per_second']:>9,.0f} entries/s, "
                f"{r['per_cpu_second']:>9,.0f} per CPU second (load average {r['load']:.2f})",
                flush=True,
            )
    for key, what in (("per_second", "per wall second"), ("per_cpu_second", "per CPU second")):
        this = [r[key] for r in runs["this"]]
        against = [r[key] for r in runs["against"]]
        ratios = [a / b for a, b in zip(this, against, strict=True)]
        print(
            f"entries {what}: this {_spread(this)}, against {_spread(against)}; "
            f"this/against per round {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--against", help="a reference checkout to run alternately with")
    parser.add_argument("--rounds", type=int, default=5, help="rounds with --against")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.against:
        compare(args)
        return
    committed, elapsed, cpu = run(args.seconds, args.batch, args.payload, args.nodes)
    if args.json:
        per_second, per_cpu = committed / elapsed, committed / cpu
        print(json.dumps({"per_second": per_second, "per_cpu_second": per_cpu}))
        return
    print(
        f"{args.nodes} nodes, batches of {args.batch} x {args.payload} B: {committed} entries "
        f"committed in {elapsed:.2f} s = {committed / elapsed:,.0f} entries/s "
        f"({committed / cpu:,.0f} per CPU second)"
    )


if __name__ == "__main__":
    main()
