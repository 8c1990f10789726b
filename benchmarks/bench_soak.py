"""Soak: many writers on a 3-process cluster for minutes, snapshots on, then leader kills.

    nice python benchmarks/bench_soak.py [--writers 512] [--seconds 600]
        [--snapshot-every 100000] [--keys 10000] [--kills 5] [--raft KEY=VALUE]...
        [--flag NAME=VALUE]...
        [--client-nice N]

A ``LocalCluster`` of 3 nodes on loopback (TLS, SQLite, default profile: election timeout
200-400 ms, heartbeat every 20 ms) with ``raft.snapshot_threshold_entries =
--snapshot-every``. ``--writers`` writers share 8 clients and put keys out of ``--keys``
(100-byte values) for ``--seconds``.

Reported for the soak: writes acknowledged, errors by kind, p50/p99/p999/max client latency
(measured by the client, from the call to the answer), elections (terms begun: the largest
term after less before; and the nodes' ``elections`` counters) and leader changes, the
largest event-loop pause of each node (the latest tick, ``tick_late_max_ms``: see
``framework/runtime/ticker.py``) and the longest Ready (its disk write included: not a loop
pause), snapshots taken, and how busy the machine was with other work
(``framework.runtime.machine_load``, and the load average).

Why an election happened: every ``--watch`` seconds the script reads each node's status
(term, role, histograms) and the run-queue wait of its event-loop thread (the process's main
thread, ``/proc/PID/schedstat``: time runnable with no CPU free). When the term moves it
prints, for the interval before, each node's longest late tick and its run-queue wait: a
loop held by the node itself (late tick, little run-queue wait) or a node starved of CPU
(run-queue wait about as long as the late tick); and the role changes each node recorded in
it, with their reasons (the status page's ``health.role_changes``:
``framework/runtime/role_changes.py``): an election timeout with the ticks since the node
last heard its leader and how many ticks came in one burst, a leader's check-quorum
step-down, or a later term seen from which node.

``--client-nice N`` lowers the CPU priority of the writers (this script's event-loop thread,
which runs them) by N while they write, so the nodes get a CPU first, as they would with
their clients on other machines; without it the writers, three nodes and anything else on a
2-core machine take turns, and a node's loop can wait for a CPU longer than an election
timeout (the watch says when). The priority is raised back for the failover when the
process may (``CAP_SYS_NICE``); otherwise the nodes restarted there inherit it (they then
serve no writers' load).

Then the failover, ``--kills`` times: the writers stopped, the leader is killed with SIGKILL;
measured are the time to a new leader (a surviving node reports itself leader of a later
term, polled every 10 ms) and to the first write acknowledged (a write retried from the
kill on); the killed node is restarted and caught up before the next kill. Medians and
ranges over the kills.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tomllib
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import click
import tomli_w

from framework.cli_options import check_flags
from framework.client import KVClient
from framework.errors import RaftError
from framework.runtime.localcluster import LocalCluster
from framework.runtime.machine_load import LoadSampler
from framework.runtime.node_health import BUCKET_BOUNDS_MS

Status = dict[str, Any]


def _top_ms(counts: list[int]) -> float:
    """The upper bound of the highest non-empty bucket (0 when empty)."""
    top = max((i for i, n in enumerate(counts) if n), default=None)
    if top is None:
        return 0.0
    return BUCKET_BOUNDS_MS[top] if top < len(BUCKET_BOUNDS_MS) else float("inf")


def _since(now: Status, before: Status | None, name: str) -> list[int]:
    """A node's histogram ``name`` counted from ``before`` (another page of it) to ``now``."""
    counts = list(now["health"]["histograms"][name])
    if before is None:
        return counts
    return [a - b for a, b in zip(counts, before["health"]["histograms"][name], strict=True)]


def _run_queue_ms(pid: int | None) -> float | None:
    """Milliseconds the process's main thread (a node's event loop) has waited runnable."""
    if pid is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class _Watch:
    """Polls every node's status; prints what each node went through when the term moves."""

    cluster: LocalCluster
    period: float
    started: float = field(default_factory=time.perf_counter)
    last: dict[int, Status] = field(default_factory=dict)
    run_queue: dict[int, float] = field(default_factory=dict)
    term: int = 0
    events: list[str] = field(default_factory=list)
    worst_interval_run_queue_ms: dict[int, float] = field(default_factory=dict)

    async def run(self, client: KVClient) -> None:
        self.started = time.perf_counter()
        while True:
            await self.sample(client)
            await anyio.sleep(self.period)

    async def sample(self, client: KVClient) -> None:
        lines = []
        terms = {}
        for nid, proc in self.cluster.nodes.items():
            if not proc.alive():
                continue
            try:
                st = await client.status(nid)
            except RaftError:
                lines.append(f"node {nid}: no status")
                continue
            before = self.last.get(nid)
            late = _top_ms(_since(st, before, "tick_late_ms"))
            ready = _top_ms(_since(st, before, "ready_pause_ms"))
            queued_now = _run_queue_ms(proc.pid)
            queued = None
            if queued_now is not None and nid in self.run_queue:
                queued = queued_now - self.run_queue[nid]
            if queued_now is not None:
                self.run_queue[nid] = queued_now
            if before is not None and queued is not None:  # the first covers the start-up
                self.worst_interval_run_queue_ms[nid] = max(
                    self.worst_interval_run_queue_ms.get(nid, 0.0), queued
                )
            self.last[nid] = st
            terms[nid] = st["term"]
            snapshot = ""
            if before is not None and st["snapshot_index"] != before["snapshot_index"]:
                snapshot = f", took or installed a snapshot (at index {st['snapshot_index']})"
            lines.append(
                f"node {nid} {st['role']:<9} term {st['term']} late tick <= {late:.0f} ms,"
                f" longest Ready <= {ready:.0f} ms, loop thread waited for a CPU "
                + ("?" if queued is None else f"{queued:.0f} ms")
                + snapshot
            )
            lines.extend(f"  node {nid} {line}" for line in _new_role_changes(st, before))
        newest = max(terms.values(), default=0)
        if self.term and newest > self.term:
            at = time.perf_counter() - self.started
            event = (
                f"t={at:.1f} s into the soak: term {self.term} -> {newest}; the interval before:"
            )
            self.events.append("\n    ".join([event, *lines]))
            print(self.events[-1], flush=True)
        self.term = max(self.term, newest)


def _new_role_changes(now: Status, before: Status | None) -> list[str]:
    """The node's role changes recorded since ``before`` (its health's ``role_changes``:
    ``framework/runtime/role_changes.py``), one line each."""
    changes = now["health"].get("role_changes", {})
    seen = 0 if before is None else before["health"].get("role_changes", {}).get("total", 0)
    if changes.get("total", 0) < seen:
        seen = 0  # the node restarted
    out = []
    for c in changes.get("last", []):
        if c["n"] <= seen:
            continue
        extra = {k: v for k, v in c.items() if k not in ("n", "tick", "term", "from", "to")}
        extra.pop("reason", None)
        detail = ", ".join(f"{k} {v}" for k, v in extra.items())
        out.append(
            f"{c['from']} -> {c['to']} at tick {c['tick']} (term {c['term']}): {c['reason']}"
            + (f" ({detail})" if detail else "")
        )
    missed = changes.get("total", 0) - seen - len(out)
    if missed > 0:
        out.append(f"and {missed} older role changes not kept")
    return out


def _role_change_counts(after: Status, before: Status | None) -> dict[str, int]:
    """Role changes by ``from->to reason`` between two statuses of one node."""
    now = after["health"].get("role_changes", {}).get("counts", {})
    then = {} if before is None else before["health"].get("role_changes", {}).get("counts", {})
    return {k: n - then.get(k, 0) for k, n in now.items() if n - then.get(k, 0) > 0}


def _ticks_dropped(after: Status, before: Status | None) -> int:
    """Ticks a node was not given as a follower between two statuses (bursts past the cap:
    its own loop held, ``framework/runtime/kernel_inputs.py`` point 5)."""

    def dropped(status: Status | None) -> int:
        if status is None:
            return 0
        return int(status["health"].get("role_changes", {}).get("ticks_dropped", 0))

    return dropped(after) - dropped(before)


async def _statuses(cluster: LocalCluster) -> dict[int, Status]:
    out = {}
    async with cluster.client(timeout=10.0) as client:
        for nid, proc in cluster.nodes.items():
            if proc.alive():
                out[nid] = await client.status(nid)
    return out


def _counter(statuses: dict[int, Status], name: str) -> int:
    return sum(int(st["health"]["counters"][name]) for st in statuses.values())


@dataclass
class _Kill:
    leader: int
    elected_s: float
    write_s: float
    caught_up_s: float


async def _failover(cluster: LocalCluster, client: KVClient, round_: int) -> _Kill:
    """Kill the leader; time a new leader and the first write; restart it, wait caught up."""
    leader = await cluster.leader()
    statuses = await _statuses(cluster)
    term = max(st["term"] for st in statuses.values())
    elected_s = write_s = 0.0
    async with cluster.client(timeout=0.5) as watcher:
        killed_at = time.perf_counter()
        cluster.kill(leader)

        async def elected() -> None:
            nonlocal elected_s
            while True:
                for nid, proc in cluster.nodes.items():
                    if nid == leader or not proc.alive():
                        continue
                    try:
                        st = await watcher.status(nid)
                    except RaftError:
                        continue
                    if st["role"] == "leader" and st["term"] > term:
                        elected_s = time.perf_counter() - killed_at
                        return
                await anyio.sleep(0.01)

        async def written() -> None:
            nonlocal write_s
            while True:
                try:
                    await client.put(f"failover-{round_}", "x")
                except RaftError:
                    continue
                write_s = time.perf_counter() - killed_at
                return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(elected)
                tg.start_soon(written)
    restarted = time.perf_counter()
    cluster.start(leader)
    await cluster.wait_serving([leader], timeout=60)
    async with cluster.client(timeout=5.0) as reader:
        target = (await reader.status(await cluster.leader()))["commit"]
        with anyio.fail_after(120):
            while (await reader.status(leader))["applied"] < target:  # noqa: ASYNC110 - another process
                await anyio.sleep(0.05)
    return _Kill(leader, elected_s, write_s, time.perf_counter() - restarted)


def _spread(values: list[float]) -> str:
    ms = [v * 1e3 for v in values]
    return f"median {statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f})"


async def _soak(root: Path, args: argparse.Namespace) -> None:
    path = root / "soak.toml"
    raft = {"snapshot_threshold_entries": args.snapshot_every, **args.raft}
    path.write_text(tomli_w.dumps({"raft": raft}))
    cluster = LocalCluster(
        root / "cluster",
        nodes=3,
        settings_files=[str(path)],
        cluster_id="soak",
        flags=args.flags,
    )
    load = LoadSampler(pids=lambda: [p.pid for p in cluster.nodes.values() if p.pid])
    watch = _Watch(cluster, args.watch)
    cluster.start_all()
    kills: list[_Kill] = []
    try:
        await cluster.wait_serving()
        await cluster.leader()
        before = await _statuses(cluster)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        load_average = [os.getloadavg()]
        base_nice = os.getpriority(os.PRIO_PROCESS, 0)
        if args.client_nice:
            os.setpriority(os.PRIO_PROCESS, 0, base_nice + args.client_nice)  # this thread
        stop_at = time.perf_counter() + args.seconds

        async def writer(n: int) -> None:
            client = clients[n % len(clients)]
            i = n
            while time.perf_counter() < stop_at:
                begun = time.perf_counter()
                try:
                    await client.put(f"k{i % args.keys}", "x" * 100)
                except RaftError as exc:
                    kind = type(exc).__name__
                    if kind not in errors:
                        print(f"first {kind}: {exc}", flush=True)
                    errors[kind] = errors.get(kind, 0) + 1
                    continue
                latencies.append(time.perf_counter() - begun)
                i += args.writers

        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(cluster.client(timeout=10.0)) for _ in range(8)
            ]
            watcher = await stack.enter_async_context(cluster.client(timeout=2.0))
            async with anyio.create_task_group() as outer:
                outer.start_soon(load.run)
                outer.start_soon(watch.run, watcher)
                async with anyio.create_task_group() as tg:
                    for n in range(args.writers):
                        tg.start_soon(writer, n)
                outer.cancel_scope.cancel()
            writers_nice = os.getpriority(os.PRIO_PROCESS, 0)
            if args.client_nice:
                try:
                    os.setpriority(os.PRIO_PROCESS, 0, base_nice)
                except PermissionError:
                    print(f"writers' priority kept (nice {writers_nice}) for the failover")
            load_average.append(os.getloadavg())
            after = await _statuses(cluster)
            for round_ in range(1, args.kills + 1):
                kills.append(await _failover(cluster, clients[0], round_))
                k = kills[-1]
                print(
                    f"kill {round_}: leader {k.leader}; new leader after "
                    f"{k.elected_s * 1e3:.0f} ms,"
                    f" first write after {k.write_s * 1e3:.0f} ms; restarted node caught up in"
                    f" {k.caught_up_s:.1f} s",
                    flush=True,
                )
                await anyio.sleep(2.0)  # heartbeats settle before the next kill
    finally:
        cluster.stop_all()
    latencies.sort()
    if not latencies:
        raise SystemExit(f"no write was acknowledged ({errors} errors)")

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3

    terms = max(st["term"] for st in after.values()) - max(st["term"] for st in before.values())

    def window_top(name: str) -> dict[int, float]:
        """Per node: the largest observation of the soak (bucket bound), start-up excluded."""
        return {nid: round(_top_ms(_since(st, before.get(nid), name))) for nid, st in after.items()}

    late, ready = window_top("tick_late_ms"), window_top("ready_pause_ms")
    late_since_start = {
        nid: st["health"]["gauges"]["tick_late_max_ms"] for nid, st in after.items()
    }
    machine = load.report()
    print(
        f"writers {args.writers}, {args.seconds:.0f} s, snapshot every {args.snapshot_every}, "
        f"raft settings {args.raft or 'default'}: "
        f"{len(latencies)} writes acked ({len(latencies) / args.seconds:.0f}/s), errors {errors}\n"
        f"latency ms p50 {q(0.5):.1f}  p99 {q(0.99):.1f}  p999 {q(0.999):.1f}  "
        f"max {latencies[-1] * 1e3:.1f}\n"
        f"elections: {terms} terms begun; elections won "
        f"{_counter(after, 'elections') - _counter(before, 'elections')}, changes of the known "
        f"leader (to none included) "
        f"{_counter(after, 'leader_changes') - _counter(before, 'leader_changes')}"
        f" (summed over the nodes' counters: about 2 per node per election)\n"
        f"largest event-loop pause (latest tick) per node during the soak <= ms {late} (exact,"
        f" since each node started: {late_since_start}); longest Ready (disk write included)"
        f" <= ms {ready}\n"
        f"largest per-{args.watch:g}-s-interval run-queue wait of a node's loop thread ms "
        f"{ {n: round(v) for n, v in watch.worst_interval_run_queue_ms.items()} }\n"
        f"role changes during the soak per node (health.role_changes) "
        f"{ {nid: _role_change_counts(st, before.get(nid)) for nid, st in after.items()} }; "
        f"follower ticks dropped past the burst cap "
        f"{ {nid: _ticks_dropped(st, before.get(nid)) for nid, st in after.items()} }\n"
        f"snapshot index per node {[st['snapshot_index'] for st in after.values()]}, "
        f"commit {max(st['commit'] for st in after.values())}\n"
        f"machine: other processes took {machine['other_cpu_seconds']} CPU-s, "
        f"{machine['other_share']} of the machine (busy: {machine['busy']}); load average "
        f"(1/5/15 min) at start {load_average[0]}, at end {load_average[-1]}; "
        f"{os.cpu_count()} CPUs; the nodes at nice {base_nice}, the writers at nice "
        f"{writers_nice}",
        flush=True,
    )
    if kills:
        print(
            f"failover over {len(kills)} kills: new leader "
            f"{_spread([k.elected_s for k in kills])}; first write "
            f"{_spread([k.write_s for k in kills])}",
            flush=True,
        )


def _raft_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with a TOML value, for the nodes' ``[raft]`` table."""
    key, sep, value = text.partition("=")
    try:
        if not sep or not key.strip():
            raise ValueError("no KEY=")
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise argparse.ArgumentTypeError(
            f"--raft {text!r}: expected KEY=VALUE with a TOML value, like election_tick=30 ({exc})"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--snapshot-every", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument(
        "--raft",
        type=_raft_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [raft] setting for the nodes, a TOML value: election_tick=30, check_quorum=false",
    )
    parser.add_argument(
        "--flag",
        dest="flags",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a feature flag for the nodes, as raftmw bench --flag: actors=on",
    )
    parser.add_argument("--watch", type=float, default=1.0, help="status poll period, s")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the writers N nice levels below the nodes (clients on other machines)",
    )
    args = parser.parse_args()
    args.raft = dict(args.raft)
    try:
        args.flags = check_flags("--flag", args.flags)
    except click.BadParameter as exc:
        parser.error(exc.format_message())
    for name in ("writers", "keys", "snapshot_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    if args.seconds <= 0 or args.kills < 0 or args.watch <= 0:
        parser.error("--seconds and --watch must be > 0, --kills >= 0")
    if not 0 <= args.client_nice <= 19:
        parser.error(f"--client-nice {args.client_nice}: expected 0 to 19")
    with tempfile.TemporaryDirectory(prefix="raftmw-soak-") as tmp:
        anyio.run(_soak, Path(tmp), args)


if __name__ == "__main__":
    main()
