"""``raftmw compare``: the same workload and fault against two flag sets, side by side.

Each mode gets a fresh local cluster (node processes on loopback, new data directories) so
neither run inherits the other's state or warm caches; the workload (writers, clients,
payload, duration) and the fault (what happens, and when) are the same for both. After
each run the fault is undone (a stopped follower continued, a killed leader restarted) and
a sample of the acknowledged writes is read back, so a mode that is faster because it lost
writes shows up as such.

Faults:

- ``none``;
- ``kill-leader``: SIGKILL the leader half-way through (failover time is reported);
- ``stop-follower``: SIGSTOP one follower for the middle third of the run and SIGCONT it
  afterwards. Its socket keeps accepting until the buffers fill and then stalls: the
  "stuck peer" of the async plan, which hurts modes whose sends to one peer can hold up
  the others.
"""

from __future__ import annotations

import random
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import tomli_w
from rich.console import Console
from rich.table import Table

from framework.runtime.eventloop import run_async
from framework.runtime.localcluster import LocalCluster
from framework.runtime.workload import WorkloadResult, percentile, run_workload

__all__ = ["FAULTS", "CompareOptions", "Mode", "run_compare"]

Fault = Literal["none", "kill-leader", "stop-follower"]
FAULTS: tuple[Fault, ...] = ("none", "kill-leader", "stop-follower")

_SAMPLE = 200
"""Acknowledged writes read back after each run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Mode:
    name: str
    flags: tuple[str, ...] = ()
    """``NAME=VALUE`` assignments, as ``raftmw node --flag`` takes them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareOptions:
    a: Mode
    b: Mode
    fault: Fault = "stop-follower"
    nodes: int = 3
    clients: int = 64
    connections: int = 4
    payload: int = 100
    seconds: float = 10.0
    sync: str = "always"
    profile: str | None = None
    seed: int = 0
    """Picks the follower to stop and the writes to read back, identically for both modes."""


def run_compare(options: CompareOptions, *, progress: bool = True) -> dict[str, Any]:
    """Run both modes one after the other; print a table unless ``progress`` is off."""
    console = Console()
    runs = []
    for mode in (options.a, options.b):
        if progress:
            console.print(
                f"mode [bold]{mode.name}[/] ({', '.join(mode.flags) or 'defaults'}): "
                f"{options.clients} writers, fault {options.fault}, {options.seconds:g}s"
            )
        runs.append(_run_mode(mode, options))
    report = {"options": asdict(options), "a": runs[0], "b": runs[1]}
    if progress:
        _print(console, report)
    return report


def _run_mode(mode: Mode, options: CompareOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raftmw-compare-") as tmp:
        root = Path(tmp)
        settings = root / "compare-settings.toml"
        settings.write_text(tomli_w.dumps({"storage": {"sync": options.sync}}))
        cluster = LocalCluster(
            root,
            nodes=options.nodes,
            profile=options.profile,
            flags=mode.flags,
            settings_files=[str(settings)],
            cluster_id="compare",
        )
        try:
            return run_async(_measure, cluster, mode, options)
        finally:
            cluster.stop_all()


async def _measure(cluster: LocalCluster, mode: Mode, options: CompareOptions) -> dict[str, Any]:
    rng = random.Random(options.seed)
    cluster.start_all()
    await cluster.wait_serving()
    leader = await cluster.leader()
    async with cluster.client() as client:
        term_before = (await client.status(leader))["term"]
    stopped: list[int] = []

    async def stop_a_follower() -> None:
        await anyio.sleep(options.seconds / 3)
        followers = sorted(n for n in cluster.nodes if n != leader)
        victim = rng.choice(followers)
        cluster.signal(victim, signal.SIGSTOP)
        stopped.append(victim)
        await anyio.sleep(options.seconds / 3)
        cluster.signal(victim, signal.SIGCONT)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        if options.fault == "stop-follower" and options.nodes > 1:
            tg.start_soon(stop_a_follower)
        result = await run_workload(
            cluster,
            clients=options.clients,
            connections=options.connections,
            seconds=options.seconds,
            payload=options.payload,
            kill_leader_after=options.seconds / 2 if options.fault == "kill-leader" else None,
        )
    elapsed = time.perf_counter() - started
    if result.killed_leader:
        cluster.start(result.killed_leader)
        await cluster.wait_serving([result.killed_leader])
    verified = await _verify(cluster, result, rng)
    new_leader = await cluster.leader()
    async with cluster.client() as client:
        term_after = (await client.status(new_leader))["term"]
    return _summary(mode, result, elapsed, term_after - term_before, stopped, verified)


async def _verify(cluster: LocalCluster, result: WorkloadResult, rng: random.Random) -> list[int]:
    """Read back a sample of acknowledged writes: [found, sampled]."""
    keys = sorted(result.acknowledged)
    sample = rng.sample(keys, min(_SAMPLE, len(keys)))
    found = 0
    async with cluster.client(timeout=10.0) as client:
        for key in sample:
            if await client.get(key) == result.acknowledged[key]:
                found += 1
    return [found, len(sample)]


def _summary(
    mode: Mode,
    result: WorkloadResult,
    elapsed: float,
    terms: int,
    stopped: Sequence[int],
    verified: list[int],
) -> dict[str, Any]:
    lat = result.latencies
    return {
        "mode": mode.name,
        "flags": list(mode.flags),
        "acknowledged_writes": result.ops,
        "ops_per_second": round(result.throughput, 1),
        "latency_ms": {
            "p50": round(percentile(lat, 0.5) * 1e3, 3),
            "p99": round(percentile(lat, 0.99) * 1e3, 3),
            "p999": round(percentile(lat, 0.999) * 1e3, 3),
            "max": round(max(lat, default=0.0) * 1e3, 3),
        },
        "client_errors": dict(result.errors),
        "term_changes": terms,
        "failover_ms": None
        if result.failover_seconds is None
        else round(result.failover_seconds * 1e3, 1),
        "killed_leader": result.killed_leader or None,
        "stopped_follower": stopped[0] if stopped else None,
        "verified": verified,
        "elapsed_seconds": round(elapsed, 2),
        "peak_rss_mib": {str(k): round(v / 1024, 1) for k, v in result.peak_rss_kib.items()},
    }


def _print(console: Console, report: dict[str, Any]) -> None:
    a, b = report["a"], report["b"]
    o = report["options"]
    table = Table(
        title=f"raftmw compare: {o['clients']} writers on {o['connections']} connections, "
        f"{o['payload']} B values, sync={o['sync']}, fault {o['fault']}, {o['seconds']:g}s"
    )
    table.add_column("measure")
    table.add_column(f"A: {a['mode']}", justify="right")
    table.add_column(f"B: {b['mode']}", justify="right")
    table.add_column("B vs A", justify="right")

    def row(label: str, x: float | None, y: float | None, fmt: str) -> None:
        change = f"{(y - x) / x * 100:+.0f}%" if x and y is not None else ""
        table.add_row(
            label,
            "-" if x is None else format(x, fmt),
            "-" if y is None else format(y, fmt),
            change,
        )

    row("committed writes/s", a["ops_per_second"], b["ops_per_second"], ",.0f")
    for q in ("p50", "p99", "p999", "max"):
        row(f"latency {q} (ms)", a["latency_ms"][q], b["latency_ms"][q], ".2f")
    row("term changes (elections)", a["term_changes"], b["term_changes"], "d")
    if o["fault"] == "kill-leader":
        row("failover (ms)", a["failover_ms"], b["failover_ms"], ".0f")
    table.add_row(
        "client errors",
        ", ".join(f"{k}: {v}" for k, v in a["client_errors"].items()) or "none",
        ", ".join(f"{k}: {v}" for k, v in b["client_errors"].items()) or "none",
        "",
    )
    table.add_row(
        "acknowledged writes read back",
        "{}/{}".format(*a["verified"]),
        "{}/{}".format(*b["verified"]),
        "",
    )
    console.print(table)
