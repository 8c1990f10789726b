"""``raftmw demo --migrate``: staged migrations on a local cluster under write load.

Two plans run one after the other against three nodes while clients write: the first
moves the cluster to the new mode (``actors`` and ``backpressure`` on) through a canary
step with analysis and then every node, the leader last; the second tries a mode that
the ``chaos`` plugin degrades (every log write 300 ms slower where it is on), which the
canary's analysis catches and rolls back by itself. The demo drives both through the
``migration`` node service, as ``raftmw migrate`` does, prints each record as the
cluster commits it, then reads back acknowledged writes and shows every node's mode.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from framework.errors import RaftError
from framework.runtime.eventloop import run_async
from framework.runtime.localcluster import LocalCluster
from framework.runtime.workload import WorkloadResult, percentile, run_workload

__all__ = ["DEGRADED_PLAN", "NEW_MODE_PLAN", "run_migration_demo"]

_SETTINGS = """\
[plugins]
enabled = ["chaos"]

[plugin.chaos]
persist_latency = "300ms"   # only where the chaos flag is on
"""

_ANALYSIS = """
[analysis.canary]
interval = "1s"
measurements = 2
failure_limit = 0
checks = [
  { metric = "ready_pause_p99", max_ratio = 3.0, min_reference = 25, max = 150 },
  { metric = "commit_latency_p99", max = 2000 },
  { metric = "timeouts", max = 50 },
]
"""

NEW_MODE_PLAN = (
    """\
[migration]
id = "new-mode"
description = "actors and backpressure on, canary first, the leader last"

[migration.target]
actors = true
backpressure = true
"""
    + _ANALYSIS
    + """
[[steps]]
cohort = { count = 1 }
gate = { analysis = "canary" }

[[steps]]
cohort = { role = "all" }
gate = { pause = "1s" }
"""
)

DEGRADED_PLAN = (
    """\
[migration]
id = "degraded-mode"
description = "a mode whose disk writes are 300 ms slow (the chaos plugin)"

[migration.target]
chaos = true
"""
    + _ANALYSIS
    + """
[[steps]]
cohort = { count = 1 }
gate = { analysis = "canary" }

[[steps]]
cohort = { role = "all" }
"""
)


def run_migration_demo(*, seconds: float, clients: int, data_dir: Path | None) -> None:
    console = Console()
    root = data_dir or Path(tempfile.mkdtemp(prefix="raftmw-migrate-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    settings = root / "chaos.toml"
    settings.write_text(_SETTINGS)
    cluster = LocalCluster(root, nodes=3, cluster_id="demo", settings_files=[str(settings)])
    try:
        run_async(_demo, cluster, console, seconds, clients, root)
    finally:
        cluster.stop_all()


async def _demo(
    cluster: LocalCluster, console: Console, seconds: float, clients: int, root: Path
) -> None:
    console.print(f"[bold]raftmw demo --migrate[/]: 3 nodes on loopback, data in {root}")
    cluster.start_all()
    await cluster.wait_serving()
    console.print(f"node {await cluster.leader()} leads; {clients} clients write for {seconds:g}s")
    outcomes: dict[str, dict[str, Any]] = {}
    workload: list[WorkloadResult] = []

    async def write() -> None:
        workload.append(await run_workload(cluster, clients=clients, seconds=seconds, payload=100))

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        await anyio.sleep(min(1.0, seconds / 4))
        for plan in (NEW_MODE_PLAN, DEGRADED_PLAN):
            outcome = await _migrate(cluster, console, plan)
            outcomes[outcome["migration"]] = outcome
    result = workload[0]
    missing = 0
    async with cluster.client(timeout=10.0) as client:
        keys = sorted(result.acknowledged)
        sample = keys[:: max(1, len(keys) // 300)]
        for key in sample:
            if await client.get(key) != result.acknowledged[key]:
                missing += 1
        modes = {n: (await client.status(n))["health"]["mode"] for n in sorted(cluster.nodes)}
    table = Table(title="raftmw demo --migrate summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, outcome in outcomes.items():
        detail = outcome.get("detail", "")
        reason = ""
        if outcome["outcome"] == "rollback":
            reason = " - " + str(json.loads(detail).get("reason", ""))[:140]
        table.add_row(
            f"migration {name}",
            f"{outcome['outcome']} at log index {outcome['log_index']}{reason}",
        )
    for node_id, mode in modes.items():
        table.add_row(f"node {node_id} flags on", ", ".join(mode) or "-")
    lat = result.latencies
    table.add_row("acknowledged writes", f"{result.ops} ({result.throughput:,.0f}/s)")
    table.add_row(
        "write latency p50 / p99",
        f"{percentile(lat, 0.5) * 1e3:.1f} / {percentile(lat, 0.99) * 1e3:.1f} ms",
    )
    table.add_row(
        "client errors (retried)",
        ", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none",
    )
    table.add_row("acknowledged writes read back", f"{len(sample) - missing}/{len(sample)}")
    console.print(table)
    if missing:
        raise SystemExit(f"{missing} acknowledged writes are missing")


async def _migrate(cluster: LocalCluster, console: Console, plan: str) -> dict[str, Any]:
    """Start ``plan``, print its records as they commit; return how it ended."""
    async with cluster.client(timeout=10.0) as client:
        started = await client.service(
            "migration", "start", json.dumps({"plan": plan, "reason": "demo"}).encode()
        )
        name = started["migration"]
        console.print(f"\n[bold]migration {name!r}[/] started at log index {started['log_index']}")
        for line in started.get("plan", [])[1:]:
            console.print(line)
        seen: set[int] = set()
        with anyio.fail_after(120):
            while True:
                try:
                    history = await client.service("migration", "history", b"{}")
                except RaftError:
                    await anyio.sleep(0.3)
                    continue
                for record in history["records"]:
                    if record["migration"] != name or record["log_index"] in seen:
                        continue
                    seen.add(record["log_index"])
                    console.print(_describe(record))
                ended = [o for o in history["outcomes"] if o["migration"] == name]
                if ended:
                    return dict(ended[-1])
                await anyio.sleep(0.3)


def _describe(record: dict[str, Any]) -> str:
    event, step = record["event"], record["step"] + 1
    detail = record.get("detail", "")
    text = f"  [{record['log_index']:>6}] {event}"
    if event == "step":
        nodes = json.loads(detail).get("nodes") if detail.startswith("{") else None
        text += f" {step}: nodes on the new mode {nodes}"
    elif event == "verdict":
        if detail.startswith("{"):
            verdict = json.loads(detail)
            last = verdict["measurements"][-1]["checks"]
            shown = "; ".join(
                f"{c['metric']} {_ms(c['migrated'])} vs {_ms(c['old'])}" for c in last
            )
            text += f" {step}: analysis passed ({shown})"
        else:
            text += f" {step}: {detail}"
    elif event == "rollback":
        reason = json.loads(detail).get("reason", detail) if detail.startswith("{") else detail
        text += f" at step {step}: [red]{reason}[/]"
    elif event == "complete":
        text += ": every node on the new mode"
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
