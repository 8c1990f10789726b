"""Mutual TLS, roles and the pre-authentication bounds of ``TcpTransport`` over 127.0.0.1.

Each attack from issue #9 that concerns the connection itself has a test here, and after
each one the nodes still talk to each other and serve clients: a forged ``Hello`` (with no
certificate, another node's certificate, or one from another CA) is refused and the real
peer's connection stays; a dialler that reaches the wrong node hangs up; a giant first
frame is refused unread; a connection flood is capped at accept; an unauthenticated or
read-write client is refused admin operations; a certificate that names another node, or
a non-loopback listener without TLS, is refused at start.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from test_tcp_transport import exchange, fully_connected, hb, wait_until
from transport_harness import Node

from framework.auth import ClientCredentials, TokenBook, hash_token
from framework.client import KVClient
from framework.errors import Forbidden, Unauthorized
from framework.transport import (
    PROTOCOL,
    PROTOCOL_VERSION,
    AdminMembers,
    AdminTransfer,
    ClientRequest,
    ConnectionLost,
    FrameDecoder,
    Goodbye,
    Hello,
    KVOp,
    PeerBatch,
    StatusRequest,
    TcpClientConnection,
    TcpTransport,
    decode_hello,
    encode_frame,
    parse_address,
)
from framework.transport.certificates import CertificateAuthority, TlsDirectory, init_tls_directory
from framework.transport.tls import TlsError, client_context, load_node_tls

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "correct horse battery staple, but longer and random"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsDirectory:
    """A CA, nodes 1-3, admin and read-write clients (``raftmw tls init``'s code)."""
    return init_tls_directory(tmp_path_factory.mktemp("tls"), (1, 2, 3))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TlsDirectory:
    """Another cluster's CA and certificates, with the same node ids."""
    return init_tls_directory(tmp_path_factory.mktemp("other-tls"), (1, 2, 3))


def make(certs: TlsDirectory, node_id: int, **options: Any) -> TcpTransport:
    options = {"connect_timeout": 1.0, "backoff_min": 0.02, "backoff_max": 0.2, **options}
    return TcpTransport(
        node_id=node_id,
        cluster_id="test",
        listen="127.0.0.1:0",
        peers={},
        tls=load_node_tls(
            node_id,
            ca=str(certs.ca),
            cert=str(certs.node_cert(node_id)),
            key=str(certs.node_key(node_id)),
        ),
        **options,
    )


@asynccontextmanager
async def tls_cluster(
    certs: TlsDirectory, ids: Sequence[int] = (1, 2, 3), **options: Any
) -> AsyncIterator[dict[int, Node[TcpTransport]]]:
    async with anyio.create_task_group() as tg:
        nodes = {i: Node(make(certs, i, **options)) for i in ids}
        for node in nodes.values():
            await node.start(tg)
        book = {i: node.address for i, node in nodes.items()}
        for node in nodes.values():
            node.transport.set_peers(book)
        await wait_until(lambda: all(fully_connected(n, ids) for n in nodes.values()), "mesh")
        yield nodes
        tg.cancel_scope.cancel()


def credentials(certs: TlsDirectory, role: str | None = None, token: str = "") -> ClientCredentials:
    if role is None:
        return ClientCredentials(ca=str(certs.ca), token=token)
    return ClientCredentials(
        ca=str(certs.ca),
        cert=str(certs.client_cert(role)),
        key=str(certs.client_key(role)),
        token=token,
    )


def context(certs: TlsDirectory, who: str | None) -> ssl.SSLContext:
    """A client context presenting node ``who``'s or client role ``who``'s certificate."""
    if who is None:
        return client_context(ca=str(certs.ca))
    if who.isdigit():
        cert, key = certs.node_cert(int(who)), certs.node_key(int(who))
    else:
        cert, key = certs.client_cert(who), certs.client_key(who)
    return client_context(ca=str(certs.ca), cert=str(cert), key=str(key))


def hello(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "protocol": PROTOCOL,
        "version": PROTOCOL_VERSION,
        "role": "peer",
        "node_id": 1,
        "cluster_id": "test",
    }
    return encode_frame(Hello(**{**base, **fields}))


async def session(
    address: str, payload: bytes, ssl_context: ssl.SSLContext | None
) -> list[Hello | Goodbye]:
    """Connect (TLS if a context is given), send ``payload``, read until the server closes;
    the frames it sent. A handshake the server refuses reads as no frames."""
    host, port = parse_address(address)
    data = b""
    try:
        stream: anyio.abc.ByteStream
        if ssl_context is None:
            stream = await anyio.connect_tcp(host, port)
        else:
            stream = await anyio.connect_tcp(
                host, port, ssl_context=ssl_context, tls_standard_compatible=False
            )
        async with stream:
            await stream.send(payload)
            with anyio.fail_after(10):
                while True:
                    data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError):
        pass
    return [decode_hello(body) for body in FrameDecoder(1 << 20).feed(data)]


# -- forged peers ---------------------------------------------------------------------------------

FORGERS = {
    # who the forger's certificate says it is (None: no certificate), the reason logged
    "no-certificate": (None, "presented no certificate"),
    "another-node": ("3", "claiming to be node 1 presented node 3"),
    "a-client": ("admin", "claiming to be node 1 presented client"),
    "plain-tcp": ("plain", "TLS handshake failed"),
    "another-ca": ("stranger", "TLS handshake failed"),
}


@pytest.mark.parametrize("forger", list(FORGERS))
async def test_a_forged_hello_is_refused_and_the_real_peer_keeps_its_connection(
    forger: str,
    certs: TlsDirectory,
    stranger: TlsDirectory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    who, reason = FORGERS[forger]
    caplog.set_level(logging.INFO, logger="raftmw.transport")
    async with tls_cluster(certs) as nodes:
        target = nodes[2]
        if who == "plain":
            ctx = None
        elif who == "stranger":
            ctx = context(stranger, "1")  # node 1's certificate, from another CA
        else:
            ctx = context(certs, who)
        forged = hb(1, 2, 999_999)  # a term that would depose anyone who believed it
        frames = await session(
            target.address, hello() + encode_frame(PeerBatch(messages=[forged])), ctx
        )

        assert not any(isinstance(f, Hello) for f in frames)  # it learnt nothing
        await wait_until(lambda: reason in caplog.text, f"a warning saying {reason!r}")
        assert "replaced by a newer connection" not in caplog.text
        assert 999_999 not in target.inbox.terms()
        assert fully_connected(target, (1, 2, 3))
        assert 2 not in nodes[1].inbox.unreachable  # node 1's connection never dropped
        await exchange(nodes[1], target)
        await exchange(target, nodes[3])


async def test_a_dialler_that_reaches_another_node_hangs_up(
    certs: TlsDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="raftmw.transport")
    async with tls_cluster(certs, (1, 3)) as nodes:
        # Node 1 is told node 2 lives where node 3 listens.
        nodes[1].transport.set_peers({2: nodes[3].address, 3: nodes[3].address})
        await wait_until(
            lambda: "expected node 2 at" in caplog.text and "names node 3" in caplog.text,
            "node 1 to refuse node 3's certificate",
        )
        assert 2 not in nodes[1].transport.connected_peers
        await exchange(nodes[1], nodes[3])


# -- bounds before authentication -----------------------------------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_a_giant_first_frame_is_refused_unread(
    tls: bool, certs: TlsDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="raftmw.transport")
    async with anyio.create_task_group() as tg:
        if tls:
            node = Node(make(certs, 2))
        else:
            node = Node(TcpTransport(node_id=2, cluster_id="test", listen="127.0.0.1:0", peers={}))
        await node.start(tg)
        # A header announcing 64 MiB - 1 bytes, then 1 MiB of them: nothing past the header
        # is read before the connection is refused.
        payload = b"\x03\xff\xff\xff" + b"x" * (1 << 20)
        ctx = context(certs, "admin") if tls else None
        frames = await session(node.address, payload, ctx)
        assert frames == [Goodbye(reason=frames[0].reason)] if frames else True
        assert "67108863 bytes exceeds the 4096-byte limit of a handshake" in caplog.text
        await wait_until(lambda: node.transport.open_connections == 0, "the socket closed")
        # And it still serves.
        async with TcpClientConnection.connect(node.address, timeout=5, ssl_context=ctx) as conn:
            answer = await conn.request(KVOp(op="get", key="k"), timeout=5)
            assert answer.ok and answer.value == "node 2: k"
        tg.cancel_scope.cancel()


async def test_an_unauthenticated_client_keeps_the_small_frame_limit(
    certs: TlsDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="raftmw.transport")
    async with tls_cluster(certs, (1, 2)) as nodes:
        big = ClientRequest(id=1, body=KVOp(op="put", key="k", value="x" * 8192))
        client_hello = hello(role="client", node_id=0, cluster_id="")
        frames = await session(
            nodes[2].address, client_hello + encode_frame(big), context(certs, None)
        )
        assert isinstance(frames[0], Hello)
        assert "exceeds max_frame_size=4096" in caplog.text
        await exchange(nodes[1], nodes[2])


async def test_a_connection_flood_is_capped_at_accept_and_the_node_keeps_serving(
    certs: TlsDirectory,
) -> None:
    async with tls_cluster(
        certs, (1, 2), max_connections=64, max_connections_per_address=8
    ) as nodes:
        target = nodes[2]
        host, port = parse_address(target.address)
        # A client connected before the flood keeps working through it.
        async with TcpClientConnection.connect(
            target.address, timeout=5, ssl_context=context(certs, "read-write")
        ) as early:
            flood = [await anyio.connect_tcp(host, port) for _ in range(20)]
            try:
                # 1 peer + 1 client + 6 silent ones fill the 8 allowed from 127.0.0.1;
                # the other 14 are closed at accept, without a byte read.
                await wait_until(lambda: target.transport.refused_at_accept == 14, "refusals")
                closed = 0
                for stream in flood:
                    with anyio.move_on_after(0.2):
                        try:
                            await stream.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            closed += 1
                assert closed >= 14
                await exchange(nodes[1], target)
                answer = await early.request(StatusRequest(), timeout=5)
                assert answer.ok
            finally:
                for stream in flood:
                    await stream.aclose()
        # Once the flood is gone (and the silent ones timed out), new clients get in.
        await wait_until(lambda: target.transport.open_connections <= 2, "the flood to drain")
        async with TcpClientConnection.connect(
            target.address, timeout=5, ssl_context=context(certs, "read-write")
        ) as late:
            assert (await late.request(KVOp(op="get", key="k"), timeout=5)).ok


# -- client roles --------------------------------------------------------------------------------

ADMIN_OPS = [
    (AdminMembers(action="add", node_id=4, address="127.0.0.1:9"), "members add"),
    (AdminMembers(action="remove", node_id=3), "members remove"),
    (AdminTransfer(to=1), "transfer-leader"),
]


@pytest.mark.parametrize(
    ("who", "token", "kind"),
    [
        (None, "", "unauthorized"),
        (None, "not the token", "unauthorized"),
        ("read-write", "", "forbidden"),
    ],
    ids=["no-credentials", "wrong-token", "read-write"],
)
async def test_admin_operations_need_the_admin_role(
    who: str | None, token: str, kind: str, certs: TlsDirectory
) -> None:
    tokens = TokenBook({"ops": ("admin", hash_token(ADMIN_TOKEN))})
    async with tls_cluster(certs, (1, 2), tokens=tokens) as nodes:
        server = nodes[2]
        for body, operation in ADMIN_OPS:
            async with TcpClientConnection.connect(
                server.address, timeout=5, ssl_context=context(certs, who), token=token
            ) as conn:
                answer = await conn.request(body, timeout=5)
                assert not answer.ok and answer.error is not None
                assert answer.error.kind == kind
                assert f"{operation} needs role admin" in answer.error.message
                kv = conn.request(KVOp(op="get", key="k"), timeout=5)
                if who == "read-write":
                    assert (await kv).ok  # and the connection serves what its role allows
                else:
                    # One answer, then an unauthenticated client is hung up on: it may not
                    # hold a slot of the listener.
                    with pytest.raises(ConnectionLost):
                        await kv
        assert server.service.held == {}  # the node never saw a refused request
        # KVClient raises the matching error, naming the operation and the role.
        error = Unauthorized if kind == "unauthorized" else Forbidden
        peers = {2: server.address}
        async with KVClient(peers, credentials=credentials(certs, who, token), timeout=3) as c:
            with pytest.raises(error, match="members add needs role admin"):
                await c.members("add", 4, "127.0.0.1:9")


@pytest.mark.parametrize(
    ("who", "token"), [("admin", ""), (None, ADMIN_TOKEN)], ids=["admin-cert", "admin-token"]
)
async def test_an_admin_certificate_or_token_may_do_anything(
    who: str | None, token: str, certs: TlsDirectory
) -> None:
    tokens = TokenBook({"ops": ("admin", hash_token(ADMIN_TOKEN))})
    async with (
        tls_cluster(certs, (1, 2), tokens=tokens) as nodes,
        TcpClientConnection.connect(
            nodes[2].address, timeout=5, ssl_context=context(certs, who), token=token
        ) as conn,
    ):
        for body, _ in ADMIN_OPS:
            answer = await conn.request(body, timeout=5)
            assert answer.ok, answer.error


async def test_a_client_checks_the_node_certificate(
    certs: TlsDirectory, stranger: TlsDirectory
) -> None:
    async with tls_cluster(certs, (1, 2)) as nodes:
        with pytest.raises(ConnectionLost, match="TLS handshake failed"):
            async with TcpClientConnection.connect(
                nodes[2].address, timeout=5, ssl_context=context(stranger, "admin")
            ):
                pass
        # Plain TCP to a TLS node: its Hello is not a TLS handshake, and it is hung up on.
        with pytest.raises(ConnectionLost, match="closed by the server"):
            async with TcpClientConnection.connect(nodes[2].address, timeout=5):
                pass


# -- refused at start -----------------------------------------------------------------------------


def test_a_non_loopback_listener_needs_tls_or_insecure() -> None:
    for listen in ("0.0.0.0:0", ":0", "192.0.2.1:7000", "example.com:7000"):
        with pytest.raises(TlsError, match=f"listen on {listen} without TLS.*--insecure"):
            TcpTransport(node_id=1, cluster_id="c", listen=listen, peers={})
        TcpTransport(node_id=1, cluster_id="c", listen=listen, peers={}, insecure=True)
    for listen in ("127.0.0.1:0", "localhost:0", "[::1]:0"):
        TcpTransport(node_id=1, cluster_id="c", listen=listen, peers={})


def test_bad_certificates_are_named_at_start(
    certs: TlsDirectory, stranger: TlsDirectory, tmp_path: Path
) -> None:
    ca, cert, key = str(certs.ca), str(certs.node_cert(1)), str(certs.node_key(1))
    (tmp_path / "junk.pem").write_text("not a certificate")
    cases = [
        (
            {"cert": str(certs.node_cert(2)), "key": str(certs.node_key(2))},
            "node 2, not of this node (1)",
        ),
        ({"cert": str(certs.client_cert("admin"))}, "client"),
        ({"cert": str(tmp_path / "missing.pem")}, "missing.pem' cannot be read"),
        ({"cert": str(tmp_path / "junk.pem")}, "junk.pem' is not PEM"),
        ({"key": str(certs.node_key(2))}, "tls.key"),
        ({"ca": str(stranger.ca)}, "was not issued by the CA"),
        ({"ca": ""}, "tls.ca is not set"),
    ]
    for change, expected in cases:
        files = {"ca": ca, "cert": cert, "key": key, **change}
        with pytest.raises(TlsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            load_node_tls(1, **files)
    load_node_tls(1, ca=ca, cert=cert, key=key)


def test_certificates_name_their_node_or_role(certs: TlsDirectory) -> None:
    from framework.transport.tls import read_certificate_identity

    assert read_certificate_identity(certs.node_cert(3)).node_id == 3
    assert read_certificate_identity(certs.client_cert("admin")).role == "admin"
    assert read_certificate_identity(certs.client_cert("read-write")).role == "read-write"
    ca = CertificateAuthority.load(certs.ca, certs.ca_key)
    with pytest.raises(TlsError, match="role 'root'"):
        ca.issue_client("root")
    with pytest.raises(TlsError, match="exists"):
        init_tls_directory(certs.root, (1,))  # never overwrites without force
