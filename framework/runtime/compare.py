"""``raftmw compare``: two whole configurations, the same workload and the same faults,
repeated and interleaved, with an answer you can act on.

A mode is a whole configuration: flags, a profile and settings files. Each run gets a
fresh local cluster (node processes on loopback, new data directories) so no run inherits
another's state or warm caches; the runs alternate in ABBA blocks
(`comparison_stats.interleaved_order`) so a machine that drifts slower hurts both sides
alike. Every run plays the same `FaultSchedule` (planned once, before the first run) on
the same seeded workload (writers, clients, payload, duration), then undoes the fault (a
stopped follower continued, a killed node restarted) and reads back a sample of the
acknowledged writes, so a mode that is faster because it lost writes shows up as such.

Per metric the report gives each side's median and spread (min-max over its runs), the
relative difference of the medians with a 95 % bootstrap interval, and a verdict in words
(`comparison_stats.compare_samples`). Each run's raw figures, the faults it played and
how busy the machine was meanwhile (`machine_load`) stay in the JSON report; busy runs are
warned about, not dropped (dropping them would choose the answer).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import tomli_w
from rich.console import Console
from rich.table import Table

from framework.runtime.comparison_stats import (
    METRICS,
    compare_samples,
    describe_change,
    interleaved_order,
)
from framework.runtime.eventloop import run_async
from framework.runtime.fault_schedule import FAULTS, Fault, FaultPlayer, FaultSchedule, plan_faults
from framework.runtime.localcluster import LocalCluster
from framework.runtime.machine_load import LoadSampler
from framework.runtime.workload import Overload, WorkloadResult, percentile, run_workload

__all__ = ["FAULTS", "CompareOptions", "Mode", "run_compare", "summary_value"]

_SAMPLE = 200
"""Acknowledged writes read back after each run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Mode:
    name: str
    flags: tuple[str, ...] = ()
    """``NAME=VALUE`` assignments, as ``raftmw node --flag`` takes them."""
    profile: str | None = None
    settings: tuple[str, ...] = ()
    """Settings files, layered over the comparison's own (``storage.sync``)."""

    def describe(self) -> str:
        parts = list(self.flags)
        if self.profile:
            parts.append(f"profile {self.profile}")
        parts += [f"settings {Path(s).name}" for s in self.settings]
        return ", ".join(parts) or "defaults"


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
    repeat: int = 1
    """Runs of each side (interleaved ABBA)."""
    overload_rate: float = 20_000.0
    """Open-loop writes/s during an ``overload`` fault."""
    seed: int = 0
    """Picks the faulted follower, the writes read back and the bootstrap's resamples,
    identically for both modes."""


def run_compare(options: CompareOptions, *, progress: bool = True) -> dict[str, Any]:
    """Run both modes ``repeat`` times, interleaved; print the table unless ``progress``
    is off. Returns the report (``--json``)."""
    order = interleaved_order(options.repeat)
    schedule = plan_faults(
        options.fault,
        seconds=options.seconds,
        seed=options.seed,
        nodes=options.nodes,
        overload_rate=options.overload_rate,
    )
    console = Console(stderr=not progress)
    runs: list[dict[str, Any]] = []
    for index, side in enumerate(order, start=1):
        mode = options.a if side == "A" else options.b
        if progress:
            console.print(
                f"run {index}/{len(order)}: {side} [bold]{mode.name}[/] ({mode.describe()}), "
                f"{options.clients} writers, fault {options.fault}, {options.seconds:g}s"
            )
        run = _run_once(mode, options, schedule)
        runs.append({"run": index, "side": side, **run})
    report = {
        "options": asdict(options),
        "schedule": schedule.to_dict(),
        "order": order,
        "a": _side(options.a),
        "b": _side(options.b),
        "runs": runs,
        "metrics": _statistics(runs, options),
        "busy_runs": [r["run"] for r in runs if r["machine"]["busy"]],
    }
    if progress:
        _print(console, report)
    return report


def _side(mode: Mode) -> dict[str, Any]:
    return {
        "mode": mode.name,
        "flags": list(mode.flags),
        "profile": mode.profile,
        "settings": list(mode.settings),
    }


def summary_value(run: dict[str, Any], key: str) -> float | None:
    """A run summary's figure by dotted key (``latency_ms.p99``); None if absent."""
    value: Any = run
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, int | float) else None


def _statistics(runs: Sequence[dict[str, Any]], options: CompareOptions) -> dict[str, Any]:
    out = {}
    for spec in METRICS:
        a = [summary_value(r, spec.key) for r in runs if r["side"] == "A"]
        b = [summary_value(r, spec.key) for r in runs if r["side"] == "B"]
        if all(v is None for v in a + b):
            continue
        result = compare_samples(a, b, spec, name_b=options.b.name, seed=options.seed)
        out[spec.key] = {"label": spec.label, "better": spec.better, **result.to_dict()}
    return out


def _run_once(mode: Mode, options: CompareOptions, schedule: FaultSchedule) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raftmw-compare-") as tmp:
        root = Path(tmp)
        base = root / "compare-settings.toml"
        base.write_text(tomli_w.dumps({"storage": {"sync": options.sync}}))
        files = [str(base), *mode.settings]
        if schedule.settings():
            faults = root / "compare-faults.toml"
            faults.write_text(tomli_w.dumps(schedule.settings()))
            files.append(str(faults))
        cluster = LocalCluster(
            root,
            nodes=options.nodes,
            profile=mode.profile,
            flags=mode.flags,
            settings_files=files,
            cluster_id="compare",
        )
        try:
            return run_async(_measure, cluster, options, schedule)
        finally:
            cluster.stop_all()


async def _measure(
    cluster: LocalCluster, options: CompareOptions, schedule: FaultSchedule
) -> dict[str, Any]:
    rng = random.Random(options.seed)
    cluster.start_all()
    await cluster.wait_serving()
    leader = await cluster.leader()
    async with cluster.client() as client:
        term_before = (await client.status(leader))["term"]
    player = FaultPlayer(cluster, schedule, leader)
    sampler = LoadSampler(lambda: [p for n in cluster.nodes.values() if (p := n.pid)])
    kill_at = next((e.at for e in schedule.events if e.target == "leader"), None)
    overload = next(
        (
            Overload(start=e.at, seconds=options.seconds / 3, rate=schedule.overload_rate)
            for e in schedule.events
            if e.action == "overload"
        ),
        None,
    )
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        async with anyio.create_task_group() as run:
            run.start_soon(player.play, started)
            result = await run_workload(
                cluster,
                clients=options.clients,
                connections=options.connections,
                seconds=options.seconds,
                payload=options.payload,
                kill_leader_after=kill_at,
                overload=overload,
            )
            sampler.sample()
        tg.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    node_cpu = sampler.owned_cpu_seconds()
    await player.undo()
    if result.killed_leader:
        player.played.append(
            {"at": kill_at, "action": "kill", "target": "leader", "node": result.killed_leader}
        )
        cluster.start(result.killed_leader)
    if overload is not None:
        player.played.append(
            {"at": overload.start, "action": "overload", "target": "cluster", "node": None}
        )
    await cluster.wait_serving()
    verified = await _verify(cluster, result, rng)
    new_leader = await cluster.leader()
    async with cluster.client() as client:
        term_after = (await client.status(new_leader))["term"]
    summary = _summary(result, elapsed, term_after - term_before, verified, node_cpu)
    return {**summary, "faults_played": player.played, "machine": sampler.report()}


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
    result: WorkloadResult,
    elapsed: float,
    terms: int,
    verified: list[int],
    node_cpu: float | None,
) -> dict[str, Any]:
    lat = result.latencies
    rss = {str(k): round(v / 1024, 1) for k, v in result.peak_rss_kib.items()}
    return {
        "acknowledged_writes": result.ops,
        "ops_per_second": round(result.throughput, 1),
        # no acknowledged write: no latency (not 0 ms, which would pull a median down)
        "latency_ms": {
            "p50": round(percentile(lat, 0.5) * 1e3, 3) if lat else None,
            "p99": round(percentile(lat, 0.99) * 1e3, 3) if lat else None,
            "p999": round(percentile(lat, 0.999) * 1e3, 3) if lat else None,
            "max": round(max(lat) * 1e3, 3) if lat else None,
        },
        "client_errors": dict(result.errors),
        "client_error_count": sum(result.errors.values()),
        "term_changes": terms,
        "failover_ms": None
        if result.failover_seconds is None
        else round(result.failover_seconds * 1e3, 1),
        "killed_leader": result.killed_leader or None,
        "overload": None
        if not result.overload_started
        else {"started": result.overload_started, "shed": result.overload_shed},
        "recovery_ms": None
        if result.recovery_seconds is None
        else round(result.recovery_seconds * 1e3, 1),
        "verified": verified,
        "elapsed_seconds": round(elapsed, 2),
        "peak_rss_mib": rss,
        "peak_rss_mib_max": max(rss.values(), default=None),
        "node_cpu_seconds": None if node_cpu is None else round(node_cpu, 3),
        "cpu_seconds_per_1000_writes": round(node_cpu / result.ops * 1000, 4)
        if node_cpu is not None and result.ops
        else None,
    }


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print(console: Console, report: dict[str, Any]) -> None:
    a, b, o = report["a"], report["b"], report["options"]
    runs = report["runs"]
    table = Table(
        title=f"raftmw compare: {o['repeat']} runs a side (ABBA), {o['clients']} writers on "
        f"{o['connections']} connections, {o['payload']} B values, sync={o['sync']}, "
        f"fault {o['fault']}, {o['seconds']:g}s a run"
    )
    table.add_column("measure")
    table.add_column(f"A: {a['mode']}\nmedian (min-max)", justify="right")
    table.add_column(f"B: {b['mode']}\nmedian (min-max)", justify="right")
    table.add_column("B vs A\n(95 % CI)", justify="right")
    table.add_column("verdict")
    specs = {s.key: s for s in METRICS}
    for key, stats in report["metrics"].items():
        fmt = specs[key].fmt

        def cell(median: float | None, spread: list[float] | None, fmt: str = fmt) -> str:
            if median is None:
                return "-"
            text = _fmt(median, fmt)
            if spread and len(runs) > 2:
                text += f" ({_fmt(spread[0], fmt)}-{_fmt(spread[1], fmt)})"
            return text

        change = describe_change(stats["difference"], stats["ci95"], sep="\n")
        table.add_row(
            stats["label"],
            cell(stats["median_a"], stats["spread_a"]),
            cell(stats["median_b"], stats["spread_b"]),
            change,
            stats["verdict"],
        )
    for side, label in (("A", a["mode"]), ("B", b["mode"])):
        found = sum(r["verified"][0] for r in runs if r["side"] == side)
        sampled = sum(r["verified"][1] for r in runs if r["side"] == side)
        table.add_row(
            f"writes read back ({side}: {label})", f"{found}/{sampled}", "", "",
            "all found" if found == sampled else "WRITES LOST",
        )  # fmt: skip
    console.print(table)
    busy = [r for r in runs if r["machine"]["busy"]]
    if busy:
        worst = max(r["machine"]["other_share"] for r in busy)
        console.print(
            f"[yellow]warning[/]: the machine was busy during {len(busy)} of {len(runs)} runs "
            f"(runs {', '.join(str(r['run']) for r in busy)}: other processes took up to "
            f"{worst * 100:.0f} % of the CPU); their figures measure the neighbours too "
            "(per run in --json: runs[].machine)"
        )
