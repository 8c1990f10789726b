"""raftmw against PySyncObj, side by side: node processes on loopback, runs interleaved.

    python benchmarks/bench_vs_pysyncobj.py [--rounds 3] [--seconds 8] [--clients 512]
        [--connections 4] [--outstanding 2000] [--payload 100] [--single-seconds 3]
        [--no-tls] [--no-all-flags] [--no-many] [--json FILE]

Many writers, each round, in an order rotated from round to round so that a drift of the
shared machine's speed falls on every system:

- **PySyncObj** (0.3.17, the ``bench`` extra): three node processes on loopback with its
  defaults (log in memory, no journal file, no fsync); every node submits ``set(key,
  value)`` commands with a callback, keeping ``--outstanding`` commands in flight each
  (a follower forwards them to the leader). A write counts when its callback reports
  success inside the window.
- **raftmw, default flags** and **raftmw, all flags on** (``actors``, ``backpressure``,
  ``circuit_breaker``, ``adaptive_timeout``, ``lock_free``): ``raftmw bench`` (three node
  processes, ``sync = always``: fsync before every acknowledgement, ``--clients`` writers
  sharing ``--connections`` clients, TLS as ``raftmw bench`` has it unless ``--no-tls``).

Then one writer, one write at a time, interleaved the same way: PySyncObj's leader with its
defaults (its batched appends wait for a tick) and with ``appendEntriesUseBatch = False``
(its setting for latency); raftmw with the settings above and one client process (what a
``KVClient`` user sees: four process hops a write); and raftmw in PySyncObj's shape, the
writer inside the leader's process (``raftmw.embed``: three node processes, the leader's
calls a ``@replicated`` ``put(key, value)`` of a ``--payload``-byte value on its own node;
``sync = always``, TLS and default flags as above).

Printed: every run (writes/s, p50/p99, CPU seconds per 1,000 committed writes for the
whole cluster: for raftmw the three nodes and the load generator, for PySyncObj its three
processes, which hold its load generators; and the share of the machine other processes
took during the run; and each node's idle RSS before the load, the failed PySyncObj
commands by reason and the number of its "state machine may have diverged" warnings), then
per system the median with the range, and raftmw/PySyncObj per round with the median of
those ratios. The machine is shared: only the ratios mean much. Not a test: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from framework.runtime.bench import BenchOptions, run_bench
from framework.runtime.localcluster import LocalCluster, free_ports
from framework.runtime.machine_load import busy_jiffies, process_jiffies
from framework.runtime.workload import percentile

ALL_FLAGS = ("actors", "backpressure", "circuit_breaker", "adaptive_timeout", "lock_free")
_READY_TIMEOUT = 60.0
_SETTLE_SECONDS = 1.0
"""After a leader is elected and before the workload (as ``raftmw bench`` waits)."""


# -- one PySyncObj node process (this script, run with --pysyncobj-node) --------------------------


def pysyncobj_node(args: argparse.Namespace) -> None:
    """A PySyncObj node that, told "go" on stdin, submits writes for ``--seconds`` and
    prints one JSON line with what it measured; it exits at "stop" (so its peers keep a
    quorum until every node has finished)."""
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]  # no stubs

    class KV(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, others: list[str], conf: SyncObjConf) -> None:
            super().__init__(me, others, conf)
            self._data: dict[str, str] = {}

        @replicated  # type: ignore[untyped-decorator]  # pysyncobj is untyped
        def set(self, key: str, value: str) -> None:
            self._data[key] = value

    conf = SyncObjConf(dynamicMembershipChange=False, appendEntriesUseBatch=not args.unbatched)
    node = KV(args.address, args.peers.split(","), conf)
    deadline = time.monotonic() + _READY_TIMEOUT
    while not (node.isReady() and node._getLeader() is not None):
        if time.monotonic() > deadline:
            raise SystemExit(f"PySyncObj node {args.address}: no leader in {_READY_TIMEOUT}s")
        time.sleep(0.02)
    leader = node._getLeader()
    print(json.dumps({"leader": str(leader)}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    value = "v" * args.payload
    latencies: list[float] = []
    failures: dict[str, int] = {}
    reasons = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
    window = threading.BoundedSemaphore(args.outstanding)
    cpu0 = time.process_time()
    started = time.perf_counter()
    stop_at = started + args.seconds
    submit = args.outstanding > 0 and (not args.single or node._isLeader())

    def done(t0: float) -> Any:
        def callback(_result: object, error: int) -> None:
            t1 = time.perf_counter()
            if error == FAIL_REASON.SUCCESS:
                if t1 <= stop_at:
                    latencies.append(t1 - t0)
            else:
                name = reasons.get(error, str(error))
                failures[name] = failures.get(name, 0) + 1
            window.release()

        return callback

    i = 0
    while submit and time.perf_counter() < stop_at:
        if not window.acquire(timeout=0.1):
            continue
        node.set(f"{args.address}-{i}", value, callback=done(time.perf_counter()))
        i += 1
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {"ops": len(latencies), "latencies": latencies, "cpu": cpu, "failures": failures}
        ),
        flush=True,
    )
    sys.stdin.readline()
    node.destroy()


# -- one raftmw node with its writer embedded (this script, run with --raftmw-embedded-node) ------


def raftmw_embedded_node(args: argparse.Namespace) -> None:
    """A raftmw node in this process (``raftmw.embed``) that, told "go" on stdin, writes
    one ``put`` at a time for ``--seconds`` if it leads, and prints one JSON line with what
    it measured; it exits at "stop" (so its peers keep a quorum until every node is done)."""
    from framework.runtime.eventloop import run_async

    run_async(_raftmw_embedded_node, args)


async def _raftmw_embedded_node(args: argparse.Namespace) -> None:
    import anyio

    from framework.auth import ClientCredentials
    from framework.config import load_settings
    from framework.transport.certificates import TlsDirectory
    from raftmw import ReplicatedObject, embed, replicated

    class Store(ReplicatedObject):
        """PySyncObj's ``KV.set``: a value stored under a key."""

        app_name = "bench.store"
        data: dict[str, str]

        def __init__(self) -> None:
            self.data = {}

        @replicated
        def put(self, key: str, value: str) -> None:
            self.data[key] = value

    peers = {int(i): a for i, a in (p.split("=", 1) for p in args.peers.split(","))}
    overrides: dict[str, object] = {"storage.sync": "always"}
    credentials = ClientCredentials()
    if args.tls_dir:  # the files LocalCluster made for this run
        tls = TlsDirectory(Path(args.tls_dir))
        overrides |= {
            "tls.ca": str(tls.ca),
            "tls.cert": str(tls.node_cert(args.node_id)),
            "tls.key": str(tls.node_key(args.node_id)),
        }
        credentials = ClientCredentials(
            ca=str(tls.ca), cert=str(tls.client_cert("admin")), key=str(tls.client_key("admin"))
        )
    settings = load_settings(overrides=overrides)
    async with embed(
        Store,
        node_id=args.node_id,
        peers=peers,
        data_dir=args.data_dir,
        cluster_id="bench",
        settings=settings,
        credentials=credentials,
    ) as node:
        with anyio.fail_after(_READY_TIMEOUT):
            while node.node.kernel is None or not node.node.kernel.leader:  # noqa: ASYNC110 (polls the role)
                await anyio.sleep(0.02)
        print(json.dumps({"leader": node.node.kernel.leader}), flush=True)
        if (await anyio.to_thread.run_sync(sys.stdin.readline)).strip() != "go":
            return
        store = node.object(Store)
        value = "v" * args.payload
        latencies: list[float] = []
        errors: dict[str, int] = {}
        cpu0 = time.process_time()
        stop_at = time.perf_counter() + args.seconds
        if node.is_leader():
            i = 0
            while (t0 := time.perf_counter()) < stop_at:
                try:
                    await store.put(f"{args.node_id}-{i}", value)
                except Exception as exc:  # counted and reported, as the other rows do
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                t1 = time.perf_counter()
                if t1 <= stop_at:
                    latencies.append(t1 - t0)
                i += 1
        await anyio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu = time.process_time() - cpu0
        print(
            json.dumps(
                {"ops": len(latencies), "latencies": latencies, "cpu": cpu, "failures": errors}
            ),
            flush=True,
        )
        await anyio.to_thread.run_sync(sys.stdin.readline)


# -- the runs -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    system: str
    round: int
    ops_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_1000: float | None
    other_share: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        cpu = f"{self.cpu_ms_per_1000:6.1f}" if self.cpu_ms_per_1000 is not None else "     -"
        load = f"{self.other_share:4.0%}" if self.other_share is not None else "   -"
        return (
            f"round {self.round} {self.system:<34} {self.ops_per_second:9,.0f} writes/s  "
            f"p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms  "
            f"CPU {cpu} ms/1000 writes  others' load {load}  {self.extra or ''}"
        )


def run_pysyncobj(args: argparse.Namespace, *, round_: int, single: bool, unbatched: bool) -> Run:
    # PySyncObj logs to stderr; kept aside and counted (its "may have diverged" warnings).
    with tempfile.TemporaryFile(mode="w+") as log:
        return _run_pysyncobj(args, log, round_=round_, single=single, unbatched=unbatched)


def _run_pysyncobj(
    args: argparse.Namespace, log: IO[str], *, round_: int, single: bool, unbatched: bool
) -> Run:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    commands = []
    for address in addresses:
        command = [
            sys.executable,
            __file__,
            "--pysyncobj-node",
            "--address",
            address,
            "--peers",
            ",".join(a for a in addresses if a != address),
            "--seconds",
            str(args.single_seconds if single else args.seconds),
            "--outstanding",
            str(1 if single else args.outstanding),
            "--payload",
            str(args.payload),
        ]
        if single:
            command.append("--single")
        if unbatched:
            command.append("--unbatched")
        commands.append(command)
    name = "PySyncObj" + (" (appendEntriesUseBatch=False)" if unbatched else " (defaults)")
    return _run_node_processes(args, log, commands, name=name, round_=round_, single=single)


def run_raftmw_embedded(args: argparse.Namespace, *, round_: int) -> Run:
    """One writer inside the leader's process (PySyncObj's shape): three node processes of
    this script (``--raftmw-embedded-node``), each a ``raftmw.embed`` node."""
    with (
        tempfile.TemporaryDirectory(prefix="raftmw-embedded-") as tmp,
        tempfile.TemporaryFile(mode="w+") as log,
    ):
        # Only its ports, data directories and certificates: the nodes are started here.
        cluster = LocalCluster(Path(tmp), nodes=3, cluster_id="bench", tls=args.tls)
        peers = cluster.peers_arg()
        commands = []
        for node_id, node in cluster.nodes.items():
            command = [
                sys.executable,
                __file__,
                "--raftmw-embedded-node",
                "--node-id",
                str(node_id),
                "--peers",
                peers,
                "--data-dir",
                str(node.data_dir),
                "--seconds",
                str(args.single_seconds),
                "--payload",
                str(args.payload),
            ]
            if cluster.tls is not None:
                command += ["--tls-dir", str(cluster.tls.root)]
            commands.append(command)
        return _run_node_processes(
            args, log, commands, name="raftmw (embedded writer)", round_=round_, single=True
        )


def _run_node_processes(
    args: argparse.Namespace,
    log: IO[str],
    commands: list[list[str]],
    *,
    name: str,
    round_: int,
    single: bool,
) -> Run:
    """Start one node process per command; each prints a line once it knows a leader,
    then at "go" runs its writers and prints its JSON result, and exits at "stop"."""
    procs = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
        for command in commands
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise RuntimeError(f"a {name} node exited before electing (rc {proc.wait()})")
        time.sleep(_SETTLE_SECONDS)
        idle_rss = [_rss_mib(p.pid) for p in procs]
        busy0 = busy_jiffies()
        ours0 = sum(process_jiffies(p.pid) or 0 for p in procs) + _own_jiffies()
        t0 = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
        elapsed = time.monotonic() - t0
        busy1 = busy_jiffies()
        ours1 = sum(process_jiffies(p.pid) or 0 for p in procs) + _own_jiffies()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        for proc in procs:
            proc.wait(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        diverged = sum("may have diverged" in line for line in log)
    latencies = [x for r in results for x in r["latencies"]]
    ops = sum(r["ops"] for r in results)
    seconds = args.single_seconds if single else args.seconds
    failures: dict[str, int] = {}
    for r in results:
        for reason, count in r["failures"].items():
            failures[reason] = failures.get(reason, 0) + count
    share = None
    if busy0 is not None and busy1 is not None:
        others = max(0, (busy1 - busy0) - (ours1 - ours0)) / os.sysconf("SC_CLK_TCK")
        share = others / (elapsed * (os.cpu_count() or 1))
    return Run(
        system=name,
        round=round_,
        ops_per_second=ops / seconds,
        p50_ms=percentile(latencies, 0.5) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        cpu_ms_per_1000=sum(r["cpu"] for r in results) / ops * 1e6 if ops else None,
        other_share=share,
        extra={
            "idle_rss_mib": max(idle_rss),
            **({"failures": failures} if failures else {}),
            **({"divergence_warnings": diverged} if diverged else {}),
        },
    )


def _rss_mib(pid: int) -> float:
    """A process's resident set size now (Linux ``VmRSS``), in MiB (0.0 if unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _own_jiffies() -> int:
    return process_jiffies(os.getpid()) or 0


def run_raftmw(args: argparse.Namespace, *, round_: int, single: bool, all_flags: bool) -> Run:
    report = run_bench(
        BenchOptions(
            clients=1 if single else args.clients,
            connections=1 if single else args.connections,
            payload=args.payload,
            seconds=args.single_seconds if single else args.seconds,
            sync="always",
            tls=args.tls,
            flags=tuple(f"{f}=on" for f in ALL_FLAGS) if all_flags else (),
        ),
        progress=False,
    )
    extra: dict[str, Any] = {}
    if report["client_errors"]:
        extra["errors"] = report["client_errors"]
    if not single:
        extra["idle_rss_mib"] = max(report["idle_rss_mib"].values(), default=None)
        extra["peak_rss_mib"] = max(report["peak_rss_mib"].values(), default=None)
    return Run(
        system="raftmw (" + ("all flags on" if all_flags else "default flags") + ")",
        round=round_,
        ops_per_second=report["ops_per_second"],
        p50_ms=report["latency_ms"]["p50"],
        p99_ms=report["latency_ms"]["p99"],
        cpu_ms_per_1000=report["cluster_cpu_ms_per_1000_writes"],
        other_share=report["machine_load"]["other_share"],
        extra=extra,
    )


# -- the summary ----------------------------------------------------------------------------------


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def summarize(title: str, runs: list[Run], reference: str) -> None:
    print(f"\n{title}")
    systems = list(dict.fromkeys(r.system for r in runs))
    for system in systems:
        mine = [r for r in runs if r.system == system]
        cpu = [r.cpu_ms_per_1000 for r in mine if r.cpu_ms_per_1000 is not None]
        load = [r.other_share * 100 for r in mine if r.other_share is not None]
        print(
            f"  {system:<36} writes/s {_spread([r.ops_per_second for r in mine], ',.0f')}"
            f"  p50 {_spread([r.p50_ms for r in mine], '.2f')} ms"
            f"  p99 {_spread([r.p99_ms for r in mine], '.2f')} ms"
            f"  CPU/1000 writes {_spread(cpu, '.1f')} ms"
            f"  others' load {_spread(load, '.0f')} %"
        )
    base = {r.round: r for r in runs if r.system == reference}
    for system in systems:
        if system == reference:
            continue
        pairs = [(r, base[r.round]) for r in runs if r.system == system and r.round in base]
        ops = [r.ops_per_second / b.ops_per_second for r, b in pairs if b.ops_per_second]
        p50 = [r.p50_ms / b.p50_ms for r, b in pairs if b.p50_ms]
        cpu = [
            r.cpu_ms_per_1000 / b.cpu_ms_per_1000
            for r, b in pairs
            if r.cpu_ms_per_1000 is not None and b.cpu_ms_per_1000
        ]
        if not ops:
            continue
        print(
            f"  {system} / {reference}, per round: writes/s "
            + ", ".join(f"{x:.2f}" for x in ops)
            + f" (median {statistics.median(ops):.2f}); p50 "
            + ", ".join(f"{x:.2f}" for x in p50)
            + f" (median {statistics.median(p50):.2f})"
        )
        if cpu:
            print(
                "      CPU per write "
                + ", ".join(f"{x:.2f}" for x in cpu)
                + f" (median {statistics.median(cpu):.2f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=512, help="raftmw writers")
    parser.add_argument("--connections", type=int, default=4, help="raftmw shared clients")
    parser.add_argument(
        "--outstanding", type=int, default=2000, help="PySyncObj commands in flight per node"
    )
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument(
        "--single-seconds",
        type=float,
        default=3.0,
        help="one writer, one write at a time, per run (0: skip)",
    )
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--all-flags",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run raftmw with every performance flag on",
    )
    parser.add_argument(
        "--many",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the many-writer rounds (--no-many: the one-writer rows alone)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every run here")
    # A PySyncObj node process (started by this script).
    parser.add_argument("--pysyncobj-node", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unbatched", action="store_true", help=argparse.SUPPRESS)
    # A raftmw node with the writer embedded (started by this script).
    parser.add_argument("--raftmw-embedded-node", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pysyncobj_node:
        pysyncobj_node(args)
        return
    if args.raftmw_embedded_node:
        raftmw_embedded_node(args)
        return
    for name, value in (("--rounds", args.rounds), ("--seconds", args.seconds)):
        if value <= 0:
            parser.error(f"{name} must be positive, got {value}")
    print("command:", " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), flush=True)
    many: list[Run] = []
    single: list[Run] = []
    systems: list[tuple[str, bool]] = [("pysyncobj", False), ("raftmw", False)]
    if args.all_flags:
        systems.append(("raftmw", True))
    for round_ in range(1, args.rounds + 1 if args.many else 1):
        shift = (round_ - 1) % len(systems)
        for kind, flag in systems[shift:] + systems[:shift]:
            if kind == "pysyncobj":
                run = run_pysyncobj(args, round_=round_, single=False, unbatched=False)
            else:
                run = run_raftmw(args, round_=round_, single=False, all_flags=flag)
            many.append(run)
            print(run.line(), flush=True)
    if args.single_seconds > 0:
        singles: list[tuple[str, bool]] = [("pysyncobj", True), ("pysyncobj", False)]
        singles += [("raftmw", False), ("raftmw-embedded", False)]
        for round_ in range(1, args.rounds + 1):
            shift = (round_ - 1) % len(singles)
            for kind, flag in singles[shift:] + singles[:shift]:
                try:
                    if kind == "pysyncobj":
                        run = run_pysyncobj(args, round_=round_, single=True, unbatched=flag)
                    elif kind == "raftmw-embedded":
                        run = run_raftmw_embedded(args, round_=round_)
                    else:
                        run = run_raftmw(args, round_=round_, single=True, all_flags=False)
                except (TimeoutError, RuntimeError) as exc:  # a starved machine: say so, go on
                    print(f"single writer: round {round_} {kind}: no result: {exc!r}", flush=True)
                    continue
                single.append(run)
                print("single writer:", run.line(), flush=True)
    tls = "TLS" if args.tls else "plain TCP"
    if many:
        summarize(
            f"Many writers (raftmw: {args.clients} writers on {args.connections} clients, {tls}, "
            f"sync=always; PySyncObj: {args.outstanding} in flight per node, in memory), "
            f"{args.rounds} rounds of {args.seconds:g}s: median (range)",
            many,
            "PySyncObj (defaults)",
        )
    if single:
        summarize(
            f"One writer, one write at a time, {args.rounds} rounds of {args.single_seconds:g}s",
            single,
            "PySyncObj (appendEntriesUseBatch=False)",
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "many": [_as_dict(r) for r in many],
                    "single": [_as_dict(r) for r in single],
                },
                indent=2,
            )
        )


def _as_dict(run: Run) -> dict[str, Any]:
    return {
        "system": run.system,
        "round": run.round,
        "ops_per_second": run.ops_per_second,
        "p50_ms": run.p50_ms,
        "p99_ms": run.p99_ms,
        "cpu_ms_per_1000": run.cpu_ms_per_1000,
        "other_share": run.other_share,
        "extra": run.extra,
    }


if __name__ == "__main__":
    main()
