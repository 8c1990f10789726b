"""The floor under one writer's latency: a replicated write with nothing but its I/O.

Issue #15 asks raftmw for one writer's p50 at most 1.0 ms (three node processes on
loopback, ``sync = always``, the settings of peak throughput). This program measures what
the same shape of work costs with no Raft, no framework and no encoding: the fastest way
Python has to do it (asyncio protocols on uvloop, one frame per message, a dedicated store
thread per process), so that raftmw's figure can be split into what the work itself costs
on this machine and what raftmw adds.

One write, as raftmw does it (and any Raft with durable acknowledgements must):

1. the client sends a 100-byte value to the leader process (a length-prefixed frame);
2. the leader sends it to both followers at once and stores it on its own (§10.2.1);
3. each follower stores it (SQLite, WAL, ``synchronous=FULL``: one transaction with an
   fsync, in a thread of its own, as raftmw's store thread), then answers;
4. once its own store and one follower's answer are in, the leader answers the client.

With ``--tls`` every connection is TLS (uvloop's own TLS on a self-signed certificate
made at start with ``trustme``), as raftmw's default; without it, plain TCP. ``--sync
off`` leaves out the fsync (``synchronous=OFF``), to show what the disk costs.

Usage::

    python benchmarks/latency_floor.py --seconds 5 [--tls] [--sync off] [--json]

It prints p50, p99 and p999 of the client's round trips (the first fifth of the run left
out as warm-up) and the CPU seconds of each process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import resource
import socket
import sqlite3
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">I")


class Framed(asyncio.Protocol):
    """Length-prefixed frames in, ``on_frame(self, frame)`` out."""

    def __init__(self, on_frame: Callable[[Framed, bytes], None]) -> None:
        self.on_frame = on_frame
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            (size,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < 4 + size:
                return
            frame = bytes(self.buffer[4 : 4 + size])
            del self.buffer[: 4 + size]
            self.on_frame(self, frame)

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(HEADER.pack(len(frame)) + frame)


class QueuedFramed(Framed):
    """``Framed`` whose frames a writer task sends, as raftmw's connections do (``send``
    queues and wakes it): what a task switch per message costs."""

    def __init__(self, on_frame: Callable[[Framed, bytes], None]) -> None:
        super().__init__(on_frame)
        self.queued: list[bytes] = []
        self.wake = asyncio.Event()
        self.writer = asyncio.ensure_future(self._write())

    def send(self, frame: bytes) -> None:
        self.queued.append(HEADER.pack(len(frame)) + frame)
        self.wake.set()

    async def _write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            data, self.queued = b"".join(self.queued), []
            assert self.transport is not None
            self.transport.write(data)


class StreamConn:
    """The same framing on anyio streams, as raftmw's connections are built: a reader task
    per connection, and a writer task that sends whatever ``send`` queued in one write."""

    def __init__(self, stream: Any, on_frame: Callable[[Any, bytes], None]) -> None:
        import anyio

        self.stream, self.on_frame = stream, on_frame
        self.queued: list[bytes] = []
        self.wake = anyio.Event()

    def send(self, frame: bytes) -> None:
        self.queued.append(HEADER.pack(len(frame)) + frame)
        self.wake.set()

    async def run(self) -> None:
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write)
            buffer = bytearray()
            while True:
                buffer += await self.stream.receive()
                while len(buffer) >= 4:
                    (size,) = HEADER.unpack_from(buffer)
                    if len(buffer) < 4 + size:
                        break
                    frame = bytes(buffer[4 : 4 + size])
                    del buffer[: 4 + size]
                    self.on_frame(self, frame)

    async def _write(self) -> None:
        import anyio

        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            data, self.queued = b"".join(self.queued), []
            await self.stream.send(data)


class Net:
    """Listening and dialling, with asyncio protocols (``protocols``; ``tasks``: the same,
    written by a writer task per connection) or anyio streams (``anyio``: ``TLSStream`` for
    TLS, as raftmw's connections were until session 10)."""

    def __init__(
        self, kind: str, server_ctx: ssl.SSLContext | None, client_ctx: ssl.SSLContext | None
    ) -> None:
        self.kind, self.server_ctx, self.client_ctx = kind, server_ctx, client_ctx
        self.framed = QueuedFramed if kind == "tasks" else Framed
        self.tasks: list[asyncio.Future[Any]] = []  # they run as long as the process

    async def listen(
        self,
        on_frame: Callable[[Any, bytes], None],
        on_conn: Callable[[Any], None] = lambda _conn: None,
    ) -> int:
        if self.kind in ("protocols", "tasks"):

            def make() -> Framed:
                conn = self.framed(on_frame)
                on_conn(conn)
                return conn

            loop = asyncio.get_running_loop()
            server = await loop.create_server(make, "127.0.0.1", 0, ssl=self.server_ctx)
            return int(server.sockets[0].getsockname()[1])
        import anyio
        from anyio.streams.tls import TLSStream

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

        async def handle(stream: Any) -> None:
            if self.server_ctx is not None:
                stream = await TLSStream.wrap(
                    stream, server_side=True, ssl_context=self.server_ctx, standard_compatible=False
                )
            conn = StreamConn(stream, on_frame)
            on_conn(conn)
            await conn.run()

        self._spawn(listener.serve(handle))
        return int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def dial(self, port: int, on_frame: Callable[[Any, bytes], None]) -> Any:
        if self.kind in ("protocols", "tasks"):
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(
                lambda: self.framed(on_frame),
                "127.0.0.1",
                port,
                ssl=self.client_ctx,
                server_hostname="127.0.0.1" if self.client_ctx else None,
            )
            return conn
        import anyio
        from anyio.streams.tls import TLSStream

        stream: Any = await anyio.connect_tcp("127.0.0.1", port)
        if self.client_ctx is not None:
            stream = await TLSStream.wrap(
                stream,
                server_side=False,
                hostname="127.0.0.1",
                ssl_context=self.client_ctx,
                standard_compatible=False,
            )
        conn = StreamConn(stream, on_frame)
        self._spawn(conn.run())
        return conn

    def _spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.ensure_future(coro))


class Store:
    """A SQLite log written by a thread of its own; ``append`` returns at once and
    ``done(index)`` is called on the event loop once the entry is durable."""

    def __init__(self, path: Path, sync: bool, done: Callable[[int], None]) -> None:
        self.path, self.sync, self.done = path, sync, done
        self.loop = asyncio.get_running_loop()
        self.jobs: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def append(self, index: int, data: bytes) -> None:
        self.jobs.put((index, data))

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.sync else 'OFF'}")
        db.execute("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, data BLOB)")
        while (job := self.jobs.get()) is not None:
            batch = [job]
            while True:  # what queued meanwhile goes in the same transaction
                try:
                    more = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.jobs.put(None)
                    break
                batch.append(more)
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO log VALUES (?, ?)", batch)
            db.execute("COMMIT")
            self.loop.call_soon_threadsafe(self.done, batch[-1][0])


def make_certificates(directory: Path) -> None:
    """One CA and one certificate, shared by every process of the run."""
    import trustme  # a test dependency: only the --tls runs need it

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "node.pem")
    )


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "node.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(directory / "ca.pem")
    client.check_hostname = False
    return server, client


async def follower(net: Net, directory: Path, sync: bool) -> None:
    conns: list[Any] = []

    def on_frame(conn: Any, frame: bytes) -> None:
        index = int.from_bytes(frame[:8], "big")
        store.append(index, frame[8:])

    def stored(index: int) -> None:
        for conn in conns:
            conn.send(index.to_bytes(8, "big"))

    store = Store(directory / "log.db", sync, stored)
    print(await net.listen(on_frame, conns.append), flush=True)
    await asyncio.Event().wait()


async def leader(net: Net, follower_ports: list[int], directory: Path, sync: bool) -> None:
    state = {"index": 0, "stored": 0, "acked": {}}
    waiting: dict[int, Any] = {}  # index -> the client connection to answer

    def answer_ready() -> None:
        done = min(state["stored"], max(state["acked"].values(), default=0))
        for index in [i for i in waiting if i <= done]:
            waiting.pop(index).send(index.to_bytes(8, "big"))

    def on_ack(conn: Any, frame: bytes) -> None:
        state["acked"][id(conn)] = int.from_bytes(frame, "big")
        answer_ready()

    def stored(index: int) -> None:
        state["stored"] = index
        answer_ready()

    store = Store(directory / "log.db", sync, stored)
    followers = []
    for port in follower_ports:
        followers.append(await net.dial(port, on_ack))

    def on_request(conn: Any, frame: bytes) -> None:
        state["index"] += 1
        index = state["index"]
        waiting[index] = conn
        message = index.to_bytes(8, "big") + frame
        for f in followers:
            f.send(message)
        store.append(index, frame)

    print(await net.listen(on_request), flush=True)
    await asyncio.Event().wait()


async def client(net: Net, port: int, seconds: float) -> list[float]:
    answers: asyncio.Queue[bytes] = asyncio.Queue()
    conn = await net.dial(port, lambda _c, frame: answers.put_nowait(frame))
    value = b"v" * 100
    latencies = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        conn.send(value)
        await answers.get()
        latencies.append(time.perf_counter() - start)
    return latencies


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--sync", choices=["always", "off"], default="always")
    parser.add_argument("--net", choices=["protocols", "tasks", "anyio"], default="protocols")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", choices=["leader", "follower"], help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    sync = args.sync == "always"

    def net(certificates: Path) -> Net:
        contexts = tls_contexts(certificates) if args.tls else (None, None)
        return Net(args.net, *contexts)

    if args.role == "follower":
        directory = Path(args.dir)
        uvloop.run(follower(net(directory.parent), directory, sync))
        return
    if args.role == "leader":
        directory = Path(args.dir)
        ports = [int(p) for p in args.ports.split(",")]
        uvloop.run(leader(net(directory.parent), ports, directory, sync))
        return
    with tempfile.TemporaryDirectory() as tmp:
        procs: list[subprocess.Popen[str]] = []
        if args.tls:
            make_certificates(Path(tmp))
        try:

            def start(role: str, name: str, ports: str = "") -> int:
                directory = Path(tmp, name)
                directory.mkdir()
                cmd = [
                    sys.executable,
                    __file__,
                    "--role",
                    role,
                    "--dir",
                    str(directory),
                    "--sync",
                    args.sync,
                    "--net",
                    args.net,
                    "--ports",
                    ports,
                ] + (["--tls"] if args.tls else [])
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                procs.append(proc)
                assert proc.stdout is not None
                return int(proc.stdout.readline())

            ports = [start("follower", "f1"), start("follower", "f2")]
            leader_port = start("leader", "leader", ",".join(map(str, ports)))
            before = [cpu_seconds(p.pid) for p in procs]
            own_before = resource.getrusage(resource.RUSAGE_SELF)
            latencies = uvloop.run(client(net(Path(tmp)), leader_port, args.seconds))
            own = resource.getrusage(resource.RUSAGE_SELF)
            cpu = [cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True)]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    kept = sorted(latencies[len(latencies) // 5 :])
    writes = len(latencies)
    client_cpu = (own.ru_utime + own.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    report = {
        "net": args.net,
        "tls": args.tls,
        "sync": args.sync,
        "writes": writes,
        "p50_ms": round(statistics.median(kept) * 1000, 3),
        "p99_ms": round(kept[int(len(kept) * 0.99)] * 1000, 3),
        "p999_ms": round(kept[int(len(kept) * 0.999)] * 1000, 3),
        "cpu_ms_per_write": {
            "followers": [round(c / writes * 1000, 3) for c in cpu[:2]],
            "leader": round(cpu[2] / writes * 1000, 3),
            "client": round(client_cpu / writes * 1000, 3),
        },
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"floor ({args.net}): TLS {'on' if args.tls else 'off'}, sync {args.sync}: "
            f"{writes} writes, "
            f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, "
            f"p999 {report['p999_ms']} ms; CPU ms per write {report['cpu_ms_per_write']}"
        )


if __name__ == "__main__":
    main()
