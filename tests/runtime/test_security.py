"""The trust boundary on real ``raftmw node`` processes with TLS (as ``LocalCluster`` runs
them): forged peers, a giant pre-authentication frame and a connection flood leave the
cluster serving with no acknowledged write lost; the command line refuses admin
operations to unauthenticated and read-write clients, naming the operation and the role;
and a node refuses to start on a certificate of another node or on a non-loopback address
without TLS."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from framework.auth import ClientCredentials
from framework.cli import main
from framework.core import Heartbeat
from framework.runtime.localcluster import LocalCluster, free_ports
from framework.transport import PROTOCOL, PROTOCOL_VERSION, Hello, PeerBatch, encode_frame
from framework.transport.tls import client_context

pytestmark = pytest.mark.anyio

RAFTMW = [sys.executable, "-m", "framework.cli"]
FORGED_TERM = 10**12


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def secure(tmp_path: Path):  # type: ignore[no-untyped-def]
    caps = tmp_path / "caps.toml"
    caps.write_text("[security]\nmax_connections_per_address = 16\n")
    local = LocalCluster(
        tmp_path / "cluster", nodes=3, cluster_id="sec", settings_files=[str(caps)]
    )
    local.start_all()
    yield local
    codes = local.stop_all()
    # Every node still running exits on SIGTERM (-9: it took over 10 s on a loaded machine).
    assert all(code in (0, None, -9) for code in codes.values()), codes


async def _attack(address: str, payload: bytes, *, tls: ClientCredentials | None) -> None:
    """Send ``payload`` and read until the node hangs up. It does so after its handshake
    timeout at the latest; the 60 s bound only keeps a broken node from hanging the suite
    (a loaded machine once took over 10 s)."""
    host, _, port = address.rpartition(":")
    ctx = None if tls is None else client_context(ca=tls.ca, cert=tls.cert, key=tls.key)
    try:
        with anyio.fail_after(60):
            async with await anyio.connect_tcp(
                host, int(port), ssl_context=ctx, tls_standard_compatible=False
            ) as stream:
                await stream.send(payload)
                while True:
                    await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return


async def test_forged_peers_a_giant_frame_and_a_flood_leave_the_cluster_serving(
    secure: LocalCluster,
) -> None:
    await secure.wait_serving()
    tls = secure.tls
    assert tls is not None
    read_write = ClientCredentials(
        ca=str(tls.ca),
        cert=str(tls.client_cert("read-write")),
        key=str(tls.client_key("read-write")),
    )
    acked: dict[str, str] = {}
    async with secure.client(timeout=30.0) as client:
        for node_id in secure.nodes:  # every connection is open before the flood
            await client.status(node_id)

        async def serves(key: str) -> None:
            await client.put(key, key)
            acked[key] = key
            terms = {(await client.status(n))["term"] for n in secure.nodes}
            assert max(terms) < FORGED_TERM, terms

        await serves("before")
        forged = encode_frame(
            Hello(
                protocol=PROTOCOL,
                version=PROTOCOL_VERSION,
                role="peer",
                node_id=1,
                cluster_id="sec",
            )
        ) + encode_frame(PeerBatch(messages=[Heartbeat(src=1, dst=2, term=FORGED_TERM)]))
        # A valid client certificate is not node 1's; plain TCP proves nothing at all.
        await _attack(secure.nodes[2].address, forged, tls=read_write)
        await _attack(secure.nodes[2].address, forged, tls=None)
        await serves("after-forgery")

        # 64 MiB announced, 1 MiB sent: refused after the 4-byte header.
        await _attack(secure.nodes[3].address, b"\x03\xff\xff\xff" + b"x" * (1 << 20), tls=None)
        await serves("after-giant-frame")

        host, _, port = secure.nodes[1].address.rpartition(":")
        flood = [socket.create_connection((host, int(port)), timeout=5) for _ in range(100)]
        try:
            await serves("during-flood")
        finally:
            for sock in flood:
                sock.close()
        # The node may accept the backlog of the flood later than the sockets connected.
        with anyio.fail_after(60):
            while "refused a connection from 127.0.0.1" not in (
                log := secure.nodes[1].log_path.read_text()
            ):
                await anyio.sleep(0.1)
        assert "max_connections_per_address" in log
    # A new client gets in once the flood is gone, and nothing acknowledged was lost.
    async with secure.client(timeout=30.0) as fresh:
        await fresh.put("after-flood", "after-flood")
        for key, value in acked.items():
            assert await fresh.get(key) == value
    for node in secure.nodes.values():
        assert node.alive()


def test_the_command_line_refuses_admin_operations_without_the_admin_role(
    secure: LocalCluster,
) -> None:
    anyio.run(secure.wait_serving)
    tls = secure.tls
    assert tls is not None
    base = {"RAFTMW_PEERS": secure.peers_arg(), "RAFTMW_TLS_CA": str(tls.ca)}
    nobody = CliRunner(env=base)
    read_write = CliRunner(
        env={
            **base,
            "RAFTMW_TLS_CERT": str(tls.client_cert("read-write")),
            "RAFTMW_TLS_KEY": str(tls.client_key("read-write")),
        }
    )
    admin = CliRunner(env=secure.environment())

    refused = nobody.invoke(main, ["members", "add", "4", "127.0.0.1:9", "--timeout", "30"])
    assert refused.exit_code == 1
    assert "Unauthorized: members add needs role admin" in refused.output
    assert "not authenticated" in refused.output
    assert (
        "Unauthorized: kv put needs role read-write"
        in nobody.invoke(main, ["kv", "put", "k", "v"]).output
    )

    assert read_write.invoke(main, ["kv", "put", "k", "v", "--timeout", "30"]).exit_code == 0
    assert read_write.invoke(main, ["kv", "get", "k"]).output.strip() == "v"
    for command, operation in [
        (["transfer-leader", "2"], "transfer-leader"),
        (["members", "remove", "3"], "members remove"),
        (["flags", "set", "backpressure=on"], "flags set"),
        (["flags", "set", "backpressure=on", "--node", "2"], "flags set --node"),
    ]:
        result = read_write.invoke(main, [*command, "--timeout", "30"])
        assert result.exit_code == 1, result.output
        assert f"Forbidden: {operation} needs role admin" in result.output
        assert "has role read-write" in result.output

    leader = anyio.run(secure.leader)
    target = 1 if leader != 1 else 2
    moved = admin.invoke(main, ["transfer-leader", str(target), "--timeout", "30"])
    assert moved.exit_code == 0, moved.output
    listed = admin.invoke(main, ["status", "--json"])
    assert listed.exit_code == 0 and '"role": "leader"' in listed.output


def _start_node(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RAFTMW, "node", "--id", "1", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_node_refuses_to_start_insecure_or_with_another_nodes_certificate(
    tmp_path: Path,
) -> None:
    (port,) = free_ports(1)
    listen = f"0.0.0.0:{port}"
    plain = _start_node(["--listen", listen, "--peers", f"1={listen}"], tmp_path / "a")
    assert plain.returncode != 0
    assert f"listen on {listen} without TLS" in plain.stderr and "--insecure" in plain.stderr

    local = LocalCluster(tmp_path / "c", nodes=2)
    assert local.tls is not None
    loopback = f"127.0.0.1:{port}"
    wrong = _start_node(
        [
            "--listen",
            loopback,
            "--peers",
            f"1={loopback}",
            "--tls-ca",
            str(local.tls.ca),
            "--tls-cert",
            str(local.tls.node_cert(2)),
            "--tls-key",
            str(local.tls.node_key(2)),
        ],
        tmp_path / "b",
    )
    assert wrong.returncode != 0
    assert "certificate of node 2, not of this node (1)" in wrong.stderr
