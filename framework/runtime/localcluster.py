"""``LocalCluster``: real ``raftmw node`` processes on loopback, supervised.

Used by ``raftmw cluster``, ``raftmw demo``, ``raftmw bench`` and the multi-process tests:
one home for starting nodes, waiting until they serve, killing them (SIGKILL, SIGSTOP) and
restarting them on the same data directory.

TLS is on unless ``tls=False``: the cluster makes its own CA and certificates in
``root/tls`` (kept across restarts of the same root, so a supervised cluster can be reached
again with the same files), and its clients connect as ``admin``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from framework.auth import ClientCredentials
from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.errors import RaftError
from framework.transport.certificates import TlsDirectory, init_tls_directory

__all__ = ["LocalCluster", "NodeProcess", "free_ports"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS reports free right now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(slots=True)
class NodeProcess:
    node_id: int
    address: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def peak_rss_kib(self) -> int | None:
        """VmHWM of the process (Linux), while it runs."""
        if self.process is None:
            return None
        try:
            text = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used so far (Linux), while it runs."""
        if self.process is None:
            return None
        try:
            text = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the command name (which may hold spaces) close with ")".
        fields = text.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalCluster:
    def __init__(
        self,
        root: Path,
        *,
        nodes: int = 3,
        host: str = "127.0.0.1",
        profile: str | None = None,
        settings_files: Sequence[str] = (),
        flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cluster_id: str = "local",
        tls: bool = True,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.profile = profile
        self.settings_files = list(settings_files)
        self.flags = list(flags)
        self.cluster_id = cluster_id
        self.env = {**os.environ, **(env or {})}
        self._settings: Settings | None = None
        ports = free_ports(nodes, host)
        self.nodes: dict[int, NodeProcess] = {}
        for node_id, port in enumerate(ports, start=1):
            self.nodes[node_id] = self._node_process(node_id, f"{host}:{port}")
        self.tls: TlsDirectory | None = self._certificates(self.root / "tls") if tls else None
        self.credentials = (
            ClientCredentials(
                ca=str(self.tls.ca),
                cert=str(self.tls.client_cert("admin")),
                key=str(self.tls.client_key("admin")),
            )
            if self.tls is not None
            else ClientCredentials()
        )
        """How this cluster's clients connect: TLS as admin (plain TCP without TLS)."""

    def _certificates(self, where: Path) -> TlsDirectory:
        """This cluster's CA and certificates: made once, then reused (new nodes added)."""
        hosts = sorted({self.host, "localhost", "127.0.0.1"})
        directory = TlsDirectory(where)
        if not directory.ca.exists():
            return init_tls_directory(where, self.nodes, hosts=hosts)
        for node_id in self.nodes:
            if not directory.node_cert(node_id).exists():
                directory.add_node(node_id, hosts)
        return directory

    def _node_process(self, node_id: int, address: str) -> NodeProcess:
        data_dir = self.root / f"node{node_id}"
        return NodeProcess(
            node_id=node_id,
            address=address,
            data_dir=data_dir,
            log_path=self.root / f"node{node_id}.log",
        )

    @property
    def peers(self) -> dict[int, str]:
        return {nid: n.address for nid, n in self.nodes.items()}

    def peers_arg(self, peers: dict[int, str] | None = None) -> str:
        return ",".join(f"{nid}={addr}" for nid, addr in sorted((peers or self.peers).items()))

    def command(self, node: NodeProcess, peers: dict[int, str] | None = None) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "framework.cli",
            "node",
            "--id",
            str(node.node_id),
            "--listen",
            node.address,
            "--peers",
            self.peers_arg(peers),
            "--data-dir",
            str(node.data_dir),
            "--cluster-id",
            self.cluster_id,
        ]
        if self.tls is not None:
            cmd += [
                "--tls-ca",
                str(self.tls.ca),
                "--tls-cert",
                str(self.tls.node_cert(node.node_id)),
                "--tls-key",
                str(self.tls.node_key(node.node_id)),
            ]
        if self.profile:
            cmd += ["--profile", self.profile]
        for path in self.settings_files:
            cmd += ["--settings", path]
        for flag in self.flags:
            cmd += ["--flag", flag]
        if not {"--join", "--initial-cluster"} & set(node.extra_args):
            cmd += ["--initial-cluster", "new"]  # the harness creates its clusters
        return cmd + node.extra_args

    def start(self, node_id: int, peers: dict[int, str] | None = None) -> NodeProcess:
        node = self.nodes[node_id]
        if node.alive():
            return node
        self.root.mkdir(parents=True, exist_ok=True)
        log = node.log_path.open("ab")
        try:
            node.process = subprocess.Popen(
                self.command(node, peers),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        finally:
            log.close()
        return node

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)

    def add_node(self, *, join: bool = True) -> NodeProcess:
        node_id = max(self.nodes) + 1
        (port,) = free_ports(1, self.host)
        node = self._node_process(node_id, f"{self.host}:{port}")
        if self.tls is not None and not self.tls.node_cert(node_id).exists():
            self.tls.add_node(node_id, sorted({self.host, "localhost", "127.0.0.1"}))
        if join:
            node.extra_args.append("--join")
        self.nodes[node_id] = node
        return node

    def signal(self, node_id: int, sig: signal.Signals) -> None:
        node = self.nodes[node_id]
        if node.process is not None and node.alive():
            node.process.send_signal(sig)

    def kill(self, node_id: int) -> None:
        """SIGKILL: the process gets no chance to flush or close anything."""
        node = self.nodes[node_id]
        if node.process is not None and node.alive():
            node.process.kill()
            node.process.wait()

    def stop(self, node_id: int, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; returns the exit code (SIGKILL after ``timeout``)."""
        node = self.nodes[node_id]
        proc = node.process
        if proc is None:
            return None
        if proc.poll() is None:
            with _resume_if_stopped(proc):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> dict[int, int | None]:
        return {node_id: self.stop(node_id) for node_id in self.nodes}

    def client(self, **kwargs: Any) -> KVClient:
        """A client timed by the nodes' own settings (their profile and files: the attempt
        timeout follows their election timeout), connected as admin; keyword arguments
        override (``credentials=`` to connect otherwise)."""
        kwargs.setdefault("credentials", self.credentials)
        return KVClient.from_settings(self.peers, self.settings(), **kwargs)

    def settings(self) -> Settings:
        """The settings the nodes start with (without their ``--flag`` overrides)."""
        if self._settings is None:
            self._settings = load_settings(
                profile=self.profile or "default", files=self.settings_files, env=self.env
            )
        return self._settings

    def environment(self) -> dict[str, str]:
        """``RAFTMW_`` variables that let the ``raftmw`` commands reach this cluster."""
        env = {"RAFTMW_PEERS": self.peers_arg()}
        if self.tls is not None:
            env["RAFTMW_TLS_CA"] = self.credentials.ca
            env["RAFTMW_TLS_CERT"] = self.credentials.cert
            env["RAFTMW_TLS_KEY"] = self.credentials.key
        return env

    async def wait_serving(
        self, node_ids: Sequence[int] | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until each node answers a status request; ``TimeoutError`` naming the
        first node that did not within ``timeout`` seconds."""
        pending = list(node_ids or self.nodes)
        try:
            with anyio.fail_after(timeout):
                async with self.client(timeout=1.0) as client:
                    while pending:
                        await self._wait_serving(client, pending[0])
                        pending.pop(0)
        except TimeoutError:
            node_id = pending[0]
            raise TimeoutError(
                f"node {node_id} was not serving within {timeout:g}s (a starved machine may "
                f"need longer); see {self.nodes[node_id].log_path}"
            ) from None

    async def _wait_serving(self, client: KVClient, node_id: int) -> None:
        node = self.nodes[node_id]
        while True:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(
                    f"node {node_id} exited with {node.process.returncode}; "
                    f"see {node.log_path}:\n{node.log_path.read_text()[-2000:]}"
                )
            try:
                await client.status(node_id)
                return
            except RaftError:
                await anyio.sleep(0.05)

    async def leader(self, timeout: float = 30.0) -> int:
        """The node id that a majority of live nodes reports as leader."""
        with anyio.fail_after(timeout):
            async with self.client(timeout=0.5) as client:
                while True:
                    votes: dict[int, int] = {}
                    for node_id, node in self.nodes.items():
                        if not node.alive():
                            continue
                        try:
                            status = await client.status(node_id)
                        except RaftError:
                            continue
                        if status.get("role") == "leader":
                            votes[node_id] = votes.get(node_id, 0) + 1
                    if votes:
                        return max(votes, key=lambda k: votes[k])
                    await anyio.sleep(0.05)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


class _resume_if_stopped:
    """SIGCONT a process before signalling it, so a SIGSTOPped node can exit."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def __enter__(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        return None
