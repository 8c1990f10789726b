"""Catch-up time and peak memory of a follower behind by a large snapshot, this tree
against a reference (another checkout, or this tree's inline path), side by side in one run.

    nice python benchmarks/bench_snapshot_transfer.py [--keys 200000] [--value-size 100]
        [--trials 3] [--against CHECKOUT] [--modes main,stream] [--writers 0]

Each trial runs three node processes (this script with ``--node``) on loopback, SQLite
stores in a fresh temporary directory, ``storage.sync = "os"``. Nodes 1 and 2 start with
``--keys`` keys put straight into their KV state machines (the same keys on both; not
through the log, so that a large state exists without writing a million entries), then
2 x ``--snapshot-every`` (100) writes go through the log, which make the leader take
snapshots (that threshold, no trailing entries) holding the whole state; once the last is
recorded (none is due any more, so none is taken unless writes go on), node 3 starts on an
empty directory: it can only be caught up by a snapshot. Measured: the seconds from
starting node 3 until it has applied the leader's commit index (Python's start-up
included, the same in both modes; a trial gives up after ``--limit`` seconds and says so),
the elections meanwhile (terms),
node 3's peak RSS (``VmHWM``) and its RSS once caught up (the state it holds), and the
leader's peak RSS above what it held just before node 3 started (its ``VmHWM`` is reset
through ``/proc/<pid>/clear_refs``).

Modes: ``stream`` is this tree (the snapshot streamed from the leader's file on a
connection of its own, checked and restored from the follower's file); ``inline`` is this
tree with the sender's ``TcpTransport(stream_snapshots=False)`` (the ``InstallSnapshot`` in
one ``PeerBatch`` on the peer connection, carried whole); ``main`` runs the node processes
from the checkout given with ``--against`` (``PYTHONPATH``; e.g. ``git archive main | tar
-x -C /tmp/main``), streaming as that checkout does. Modes alternate within each trial, the
first of each pair alternating between trials; medians and ranges are printed at the end.

``--writers N``: N clients keep writing to the leader while node 3 catches up (the leader
committing meanwhile); their acknowledged writes are counted. The leader's peak RSS is
reported too (its ``VmHWM`` from just before node 3 started). Not a test: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

MODES = ("main", "inline", "stream")


# -- one node (a child process) ----------------------------------------------------------------


async def _node(
    node_id: int,
    ports: list[int],
    data_dir: Path,
    mode: str,
    keys: int,
    value_size: int,
    every: int,
) -> None:
    from framework.config import load_settings
    from framework.runtime.node import NodeConfig, RaftNode
    from framework.statemachine import KVStateMachine
    from framework.storage.sqlite import SQLiteLogStore
    from framework.transport.tcp import TcpTransport

    settings = load_settings(
        overrides={
            "raft.snapshot_threshold_entries": every,
            "raft.snapshot_trailing_entries": 0,
            "storage.sync": "os",
            "client.request_timeout": "60s",
        }
    )
    book = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
    transport = TcpTransport(
        node_id=node_id,
        cluster_id="bench",
        listen=book[node_id],
        peers=book,
        stream_snapshots=mode != "inline",
    )
    sm = KVStateMachine()
    if keys:
        value = "v" * value_size
        sm._data.update((f"key-{i:08d}", value) for i in range(keys))
    config = NodeConfig(
        node_id=node_id, cluster_id="bench", peers=book, settings=settings, data_dir=data_dir
    )
    node = RaftNode(
        config, store=SQLiteLogStore(data_dir, sync="os"), transport=transport, state_machine=sm
    )
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            await tg.start(node.run)
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


# -- the driver ----------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


async def _status(client: Any, node_id: int) -> dict[str, Any] | None:
    try:
        with anyio.fail_after(2):
            status: dict[str, Any] = await client.status(node_id)
            return status
    except Exception:
        return None


async def _trial(
    mode: str,
    keys: int,
    value_size: int,
    limit: float,
    against: str | None,
    writers: int,
    every: int,
) -> dict[str, float]:
    from framework.client import KVClient

    ports = _free_ports(3)
    book = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
    procs: dict[int, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def spawn(node_id: int, preload: int) -> subprocess.Popen[bytes]:
            log = open(Path(tmp) / f"node{node_id}.log", "wb")  # noqa: SIM115 - the child owns it
            env = dict(os.environ)
            if mode == "main":
                assert against is not None, "--against CHECKOUT runs the main mode"
                env["PYTHONPATH"] = against
            return subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--node",
                    str(node_id),
                    "--ports",
                    ",".join(map(str, ports)),
                    "--dir",
                    str(Path(tmp) / f"n{node_id}"),
                    "--mode",
                    mode,
                    "--keys",
                    str(preload),
                    "--value-size",
                    str(value_size),
                    "--snapshot-every",
                    str(every),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

        try:
            procs[1], procs[2] = spawn(1, keys), spawn(2, keys)
            async with KVClient({1: book[1], 2: book[2]}, timeout=60.0) as client:
                with anyio.fail_after(120):
                    leader = 0
                    while not leader:
                        for nid in (1, 2):
                            status = await _status(client, nid)
                            if status is not None and status["role"] == "leader":
                                leader = nid
                        await anyio.sleep(0.1)
                    async with anyio.create_task_group() as tg:
                        for w in range(8):

                            async def write(w: int = w) -> None:
                                for i in range(every // 4):
                                    await client.put(f"w{w}-{i}", "x")

                            tg.start_soon(write)
                    # Until no further snapshot is due (fewer than the threshold's 100
                    # entries past the last), so that none is taken during the measure.
                    while True:
                        status = await _status(client, leader)
                        if (
                            status is not None
                            and status["snapshot_index"] >= every
                            and status["commit"] - status["snapshot_index"] < every
                        ):
                            break
                        await anyio.sleep(0.1)
                    await anyio.sleep(1.0)  # the snapshot recorded, its file written
                    target = status["commit"]
                    term = status["term"]
                pid = procs[leader].pid
                rss_before = _proc_kib(pid, "VmRSS")
                _reset_peak(pid)
                started = time.perf_counter()
                procs[3] = spawn(3, 0)
            caught_up = False
            written = 0

            async def keep_writing(client: Any, w: int) -> None:
                nonlocal written
                i = 0
                while True:
                    try:
                        await client.put(f"during-{w}-{i}", "x" * value_size)
                        written += 1
                    except Exception:  # a timeout or an election: keep going
                        await anyio.sleep(0.1)
                    i += 1

            async with (
                KVClient({3: book[3]}, timeout=60.0) as client,
                KVClient({1: book[1], 2: book[2]}, timeout=10.0) as writing,
                anyio.create_task_group() as background,
            ):
                for w in range(writers):
                    background.start_soon(keep_writing, writing, w)
                with anyio.move_on_after(limit):
                    while True:
                        status = await _status(client, 3)
                        if status is not None and status["applied"] >= target:
                            caught_up = True
                            break
                        await anyio.sleep(0.02)
                elapsed = time.perf_counter() - started
                follower_now = _proc_kib(procs[3].pid, "VmRSS")
                last = await _status(client, 3)
                background.cancel_scope.cancel()
            leader_status = await _leader_status(book, leader)
            follower_log = (Path(tmp) / "node3.log").read_text()
            stored = sum(f.stat().st_size for f in (Path(tmp) / "n3" / "snapshots").glob("*.bin"))
            return {
                "caught_up": float(caught_up),
                "elections": float((last or {"term": term})["term"] - term),
                "snapshots_installed": float(follower_log.count("installed a snapshot")),
                "streams_received": float(follower_log.count("received the snapshot")),
                "catch_up_s": elapsed,
                "follower_peak_mib": _proc_kib(procs[3].pid, "VmHWM") / 1024,
                "follower_after_mib": follower_now / 1024,
                "snapshot_mib": stored / 2**20,
                "leader_extra_mib": (_proc_kib(pid, "VmHWM") - rss_before) / 1024,
                "leader_peak_mib": _proc_kib(pid, "VmHWM") / 1024,
                "writes_during": float(written),
                "leader_elections": float((leader_status or {"term": term})["term"] - term),
                "snapshot_index": float((last or {"snapshot_index": 0})["snapshot_index"]),
            }
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


async def _leader_status(book: dict[int, str], leader: int) -> dict[str, Any] | None:
    from framework.client import KVClient

    async with KVClient({leader: book[leader]}, timeout=5.0) as client:
        return await _status(client, leader)


def _summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--limit", type=float, default=180.0, help="seconds to wait for the follower to catch up"
    )
    parser.add_argument(
        "--against", help="a checkout whose code the main mode runs (PYTHONPATH)", default=None
    )
    parser.add_argument(
        "--modes",
        help="comma-separated, of main, inline, stream (default: main,stream with "
        "--against, else inline,stream)",
        default=None,
    )
    parser.add_argument(
        "--writers", type=int, default=0, help="clients writing while the follower catches up"
    )
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=100,
        help="raft.snapshot_threshold_entries; the setup writes twice as many entries",
    )
    parser.add_argument("--node", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        ports = [int(p) for p in args.ports.split(",")]
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        anyio.run(
            _node,
            args.node,
            ports,
            Path(args.dir),
            args.mode,
            args.keys,
            args.value_size,
            args.snapshot_every,
        )
        return
    default = "main,stream" if args.against else "inline,stream"
    modes = tuple((args.modes or default).split(","))
    if not set(modes) <= set(MODES) or ("main" in modes and not args.against):
        parser.error(f"--modes {args.modes!r}: expected some of {MODES} (main needs --against)")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    print(
        f"{args.keys} keys of {args.value_size}-byte values, {args.trials} trials a mode, "
        f"interleaved, {args.writers} writers during the catch-up; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    for trial in range(args.trials):
        order = modes if trial % 2 == 0 else modes[::-1]
        for mode in order:
            result = anyio.run(
                _trial,
                mode,
                args.keys,
                args.value_size,
                args.limit,
                args.against,
                args.writers,
                args.snapshot_every,
            )
            results[mode].append(result)
            print(
                f"trial {trial + 1} {mode:>6}: "
                + ("" if result["caught_up"] else f"NOT caught up within {args.limit:g} s, ")
                + f"catch-up {result['catch_up_s']:.2f} s, elections {result['elections']:.0f}, "
                f"follower "
                f"peak RSS {result['follower_peak_mib']:.0f} MiB (RSS once caught up "
                f"{result['follower_after_mib']:.0f} MiB), leader peak "
                f"{result['leader_peak_mib']:.0f} MiB (extra "
                f"{result['leader_extra_mib']:.0f} MiB), snapshots installed by the follower "
                f"{result['snapshots_installed']:.0f}, streams received "
                f"{result['streams_received']:.0f}, writes acknowledged meanwhile "
                f"{result['writes_during']:.0f}, leader's term moved "
                f"{result['leader_elections']:.0f}, snapshot stored by the follower "
                f"{result['snapshot_mib']:.0f} MiB; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for mode in modes:
        rows = results[mode]
        caught = sum(int(r["caught_up"]) for r in rows)
        print(
            f"{mode:>6}: caught up {caught}/{len(rows)}; elections "
            f"{_summary([r['elections'] for r in rows])}; catch-up s "
            f"{_summary([r['catch_up_s'] for r in rows])}; follower peak "
            f"MiB {_summary([r['follower_peak_mib'] for r in rows])}; follower once caught up "
            f"MiB {_summary([r['follower_after_mib'] for r in rows])}; leader peak MiB "
            f"{_summary([r['leader_peak_mib'] for r in rows])}; leader extra MiB "
            f"{_summary([r['leader_extra_mib'] for r in rows])}"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
