"""Outage after a leader pause (SIGSTOP) and after a leader kill (SIGKILL), under writes.

    python benchmarks/bench_leader_pause.py [--trials 10] [--clients 8] [--pause 3]
        [--setups election-1s,low-latency] [--faults pause,kill]

A 3-process cluster on loopback (``LocalCluster``) per setup: ``election-1s`` is the default
profile with ``raft.tick_interval = "50ms"`` (election timeout 20 ticks = 1s, randomised up
to 2s), ``low-latency`` the ``low_latency`` profile (5ms ticks: 100ms). ``--clients``
writers share one client (request deadline 5s, the default; ``client.attempt_timeout`` as
the settings make it) and put one key at a time. Each trial faults the current leader:

- ``pause``: SIGSTOP for ``--pause`` seconds, then SIGCONT (it rejoins as a follower);
- ``kill``: SIGKILL, then restart it once the outage is measured.

The outage is the time from the signal to the first acknowledged write that was *started*
after it (bench's failover measure), and beside it the longest gap between two
acknowledgements around the fault. Reported per setup and fault: median and worst over the
trials, and each trial. The script only uses what main also has (``LocalCluster``,
``KVClient``), so running it with ``PYTHONPATH`` set to a checkout of another commit
measures that commit's client and nodes in the same way.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import tomli_w

from framework.client import KVClient
from framework.errors import RaftError
from framework.runtime.localcluster import LocalCluster


@dataclass(frozen=True)
class Setup:
    profile: str | None
    settings: dict[str, dict[str, str]]


SETUPS = {
    "election-1s": Setup(profile=None, settings={"raft": {"tick_interval": "50ms"}}),
    "low-latency": Setup(profile="low_latency", settings={}),
}


@dataclass
class Trial:
    fault: str
    victim: int
    outage: float
    longest_gap: float


@dataclass
class Acks:
    times: list[float] = field(default_factory=list)
    """When each acknowledged write (begun at ``started``) was acknowledged."""
    started: list[float] = field(default_factory=list)
    errors: int = 0
    fault_at: float = float("inf")
    warm: anyio.Event = field(default_factory=anyio.Event)
    """Set at the 200th acknowledgement."""
    recovered: anyio.Event = field(default_factory=anyio.Event)
    """Set at the first acknowledgement of a write begun after ``fault_at``."""

    def record(self, begun: float) -> None:
        self.started.append(begun)
        self.times.append(time.perf_counter())
        if len(self.times) >= 200:
            self.warm.set()
        if begun >= self.fault_at:
            self.recovered.set()


async def _writers(client: KVClient, count: int, acks: Acks, stop: anyio.Event) -> None:
    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            begun = time.perf_counter()
            try:
                await client.put(f"w{n}-{i}", "x" * 100)
            except RaftError:
                acks.errors += 1
                continue
            acks.record(begun)
            i += 1

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(writer, n)


def _measure(acks: Acks, fault_at: float) -> tuple[float, float] | None:
    after = [t for s, t in zip(acks.started, acks.times, strict=True) if s >= fault_at]
    if not after:
        return None
    around = sorted(t for t in acks.times if t >= fault_at - 1.0)
    gaps = [b - a for a, b in itertools.pairwise(around)]
    return min(after) - fault_at, max(gaps, default=0.0)


async def _trial(cluster: LocalCluster, fault: str, clients: int, pause: float) -> Trial:
    acks = Acks()
    stop = anyio.Event()
    leader = await cluster.leader()
    async with cluster.client(timeout=5.0) as client, anyio.create_task_group() as tg:
        tg.start_soon(_writers, client, clients, acks, stop)
        with anyio.fail_after(30):
            await acks.warm.wait()
        acks.fault_at = fault_at = time.perf_counter()
        cluster.signal(leader, signal.SIGSTOP if fault == "pause" else signal.SIGKILL)
        try:
            with anyio.fail_after(60):
                await acks.recovered.wait()
            if fault == "pause":
                await anyio.sleep(max(0.0, fault_at + pause - time.perf_counter()))
        finally:
            if fault == "pause":
                cluster.signal(leader, signal.SIGCONT)
        await anyio.sleep(1.0)  # the gap measure looks past the first acknowledgement
        stop.set()
    if fault == "kill":
        cluster.nodes[leader].process.wait()  # type: ignore[union-attr]
        cluster.start(leader)
        await cluster.wait_serving([leader])
    measured = _measure(acks, fault_at)
    assert measured is not None
    return Trial(fault=fault, victim=leader, outage=measured[0], longest_gap=measured[1])


async def _setup(name: str, root: Path, args: argparse.Namespace) -> list[Trial]:
    setup = SETUPS[name]
    files = []
    if setup.settings:
        path = root / f"{name}.toml"
        path.write_text(tomli_w.dumps(setup.settings))
        files.append(str(path))
    cluster = LocalCluster(
        root / name,
        nodes=3,
        profile=setup.profile,
        settings_files=files,
        cluster_id="pause",
    )
    trials = []
    cluster.start_all()
    try:
        await cluster.wait_serving()
        for i in range(args.trials):
            for fault in args.faults.split(","):
                trial = await _trial(cluster, fault, args.clients, args.pause)
                trials.append(trial)
                print(
                    f"{name} {fault} #{i + 1}: node {trial.victim}, outage "
                    f"{trial.outage * 1e3:.0f} ms, longest gap {trial.longest_gap * 1e3:.0f} ms",
                    flush=True,
                )
    finally:
        cluster.stop_all()
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pause", type=float, default=5.0, help="seconds the leader stays stopped")
    parser.add_argument("--setups", default="election-1s,low-latency")
    parser.add_argument("--faults", default="pause,kill")
    args = parser.parse_args()
    import framework

    print(f"framework from {Path(framework.__file__).parent}", file=sys.stderr)
    summary = []
    with tempfile.TemporaryDirectory(prefix="raftmw-pause-") as tmp:
        for name in args.setups.split(","):
            trials = anyio.run(_setup, name, Path(tmp), args)
            for fault in args.faults.split(","):
                outages = [t.outage * 1e3 for t in trials if t.fault == fault]
                gaps = [t.longest_gap * 1e3 for t in trials if t.fault == fault]
                summary.append(
                    f"{name:12} {fault:5} n={len(outages):2}  outage median "
                    f"{statistics.median(outages):6.0f} ms  worst {max(outages):6.0f} ms  | "
                    f"longest gap median {statistics.median(gaps):6.0f} ms  "
                    f"worst {max(gaps):6.0f} ms"
                )
    print("\n".join(summary))


if __name__ == "__main__":
    main()
