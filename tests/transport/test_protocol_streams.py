"""``protocol_streams``: anyio's byte-stream rules on asyncio transports, on both event loops
a node may run (asyncio's own and uvloop, whose TLS transport behaves differently)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import pytest

from framework.transport.certificates import TlsDirectory, init_tls_directory
from framework.transport.protocol_streams import (
    READ_BUFFER_LIMIT,
    Accepted,
    ProtocolStream,
    accept,
    connect,
)
from framework.transport.streams import ConnectionLost
from framework.transport.tls import NodeTls, identity_of, load_node_tls

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsDirectory:
    return init_tls_directory(tmp_path_factory.mktemp("tls"), (1, 2))


def node_tls(certs: TlsDirectory, node_id: int) -> NodeTls:
    return load_node_tls(
        node_id,
        ca=str(certs.ca),
        cert=str(certs.node_cert(node_id)),
        key=str(certs.node_key(node_id)),
    )


@asynccontextmanager
async def pair(
    server_ctx: ssl.SSLContext | None = None, client_ctx: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[anyio.abc.ByteStream, anyio.abc.ByteStream]]:
    """A connected (dialled, accepted) pair of streams on loopback."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        sub = listener.listeners[0]
        assert isinstance(sub, anyio.abc.SocketListener)
        accepted: list[anyio.abc.ByteStream] = []

        async def server() -> None:
            accepted.append(await (await accept(sub)).open(server_ctx))

        with anyio.fail_after(10):  # a guard against a hang, not a timing assertion
            async with anyio.create_task_group() as tg:
                tg.start_soon(server)
                dialled = await connect("127.0.0.1", port, ssl_context=client_ctx)
        try:
            yield dialled, accepted[0]
        finally:
            await dialled.aclose()
            await accepted[0].aclose()


async def receive_exactly(stream: anyio.abc.ByteStream, count: int) -> bytes:
    data = bytearray()
    with anyio.fail_after(10):
        while len(data) < count:
            data += await stream.receive()
    return bytes(data)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_frames_cross_both_ways_and_a_tls_peer_is_identified(
    certs: TlsDirectory, tls: bool
) -> None:
    one, two = node_tls(certs, 1), node_tls(certs, 2)
    server_ctx, client_ctx = (two.server, one.client) if tls else (None, None)
    async with pair(server_ctx, client_ctx) as (dialled, acceptor):
        assert isinstance(dialled, ProtocolStream) and isinstance(acceptor, ProtocolStream)
        for i in range(50):  # many small sends in a row: none may wait for a later one
            with anyio.fail_after(10):
                await dialled.send(b"ping %d;" % i)
        expected = b"".join(b"ping %d;" % i for i in range(50))
        assert await receive_exactly(acceptor, len(expected)) == expected
        await acceptor.send(b"pong")
        assert await receive_exactly(dialled, 4) == b"pong"
        if tls:
            who_dialled, who_accepted = identity_of(acceptor), identity_of(dialled)
            assert who_dialled is not None and who_dialled.node_id == 1
            assert who_accepted is not None and who_accepted.node_id == 2
        else:
            assert identity_of(acceptor) is None
        remote = acceptor.extra(anyio.abc.SocketAttribute.remote_address)
        assert remote == dialled.extra(anyio.abc.SocketAttribute.local_address)


async def test_bytes_sent_before_the_acceptor_opens_the_connection_are_not_lost(
    certs: TlsDirectory,
) -> None:
    """A TLS ClientHello arrives as soon as the caller connects, before the handler
    opens the accepted socket (rule 3): the handshake must still see it."""
    one, two = node_tls(certs, 1), node_tls(certs, 2)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        sub = listener.listeners[0]
        assert isinstance(sub, anyio.abc.SocketListener)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                dialled: list[anyio.abc.ByteStream] = []

                async def dial() -> None:
                    dialled.append(await connect("127.0.0.1", port, ssl_context=one.client))
                    await dialled[0].send(b"first words")

                tg.start_soon(dial)
                pending = await accept(sub)
                await anyio.sleep(0.2)  # the ClientHello waits in the socket meanwhile
                acceptor = await pending.open(two.server)
                assert await receive_exactly(acceptor, 11) == b"first words"
        await acceptor.aclose()
        await dialled[0].aclose()


async def test_the_other_ends_close_is_end_of_stream_after_what_it_sent() -> None:
    async with pair() as (dialled, acceptor):
        await dialled.send(b"last words")
        await dialled.aclose()
        assert await receive_exactly(acceptor, 10) == b"last words"
        with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await acceptor.receive()


async def test_closing_wakes_a_waiting_receiver_with_closed_resource() -> None:
    async with pair() as (_dialled, acceptor):
        outcome: list[BaseException] = []

        async def wait_for_data() -> None:
            try:
                await acceptor.receive()
            except BaseException as exc:
                outcome.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_data)
                await anyio.wait_all_tasks_blocked()
                await acceptor.aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], anyio.ClosedResourceError)
        with pytest.raises(anyio.ClosedResourceError):
            await acceptor.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await acceptor.receive()


async def test_bytes_still_buffered_are_not_read_once_this_end_closed() -> None:
    async with pair() as (dialled, acceptor):
        await dialled.send(b"unread")
        assert isinstance(acceptor, ProtocolStream)
        with anyio.fail_after(10):
            while not acceptor._protocol.chunks:  # a state, no event to wait on
                await anyio.sleep(0.01)
        await acceptor.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await acceptor.receive()


async def test_a_reader_that_falls_behind_pauses_the_transport_and_loses_nothing() -> None:
    payload = bytes(range(256)) * (4 * READ_BUFFER_LIMIT // 256)
    async with pair() as (dialled, acceptor):
        assert isinstance(acceptor, ProtocolStream)
        async with anyio.create_task_group() as tg:
            tg.start_soon(dialled.send, payload)
            with anyio.fail_after(10):
                while not acceptor._protocol.reading_paused:  # a state, no event to wait on
                    await anyio.sleep(0.01)
            # Paused with at least the limit buffered: the sender is held back by TCP.
            assert acceptor._protocol.buffered >= READ_BUFFER_LIMIT
            assert await receive_exactly(acceptor, len(payload)) == payload
        assert not acceptor._protocol.reading_paused


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_send_waits_while_the_peer_does_not_read_and_goes_on_when_it_does(
    certs: TlsDirectory, tls: bool
) -> None:
    """Rule 4: a sender is held back once the kernel's buffers (and, with TLS, the
    transport's 64 KiB) are full, so the timeout policy above it can bound the write."""
    one, two = node_tls(certs, 1), node_tls(certs, 2)
    server_ctx, client_ctx = (two.server, one.client) if tls else (None, None)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    async with pair(server_ctx, client_ctx) as (dialled, acceptor):
        sent = 0
        with anyio.move_on_after(1) as held:  # nobody reads: some send must wait
            while sent < 64 * len(chunk):
                await dialled.send(chunk)
                sent += len(chunk)
        assert held.cancelled_caught and sent < 64 * len(chunk)
        # The reader catches up: everything handed to the transport arrives, in order (the
        # send cut short had handed over its whole chunk before it waited), and sends go on.
        async with anyio.create_task_group() as tg:
            tg.start_soon(dialled.send, b"end")
            data = await receive_exactly(acceptor, sent + len(chunk) + 3)
        assert data == chunk * (sent // len(chunk) + 1) + b"end"


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_write_now_keeps_its_place_among_sends_and_waits_for_nothing(
    certs: TlsDirectory, tls: bool
) -> None:
    """Rule 6: ``write_now`` hands bytes over in the order given, mixed with ``send``s,
    and is offered only while nothing is held back; after the other end reads, it is
    offered again; after ``aclose``, never."""
    one, two = node_tls(certs, 1), node_tls(certs, 2)
    server_ctx, client_ctx = (two.server, one.client) if tls else (None, None)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    async with pair(server_ctx, client_ctx) as (dialled, acceptor):
        assert isinstance(dialled, ProtocolStream)
        assert dialled.writable_now
        dialled.write_now(b"a")
        await dialled.send(b"b")
        dialled.write_now(b"c")
        assert await receive_exactly(acceptor, 3) == b"abc"

        written = 0
        while dialled.writable_now:  # nobody reads: the transport holds bytes back
            assert written < 256 * len(chunk), "the transport never held anything back"
            dialled.write_now(chunk)
            written += len(chunk)
        with pytest.raises(anyio.BusyResourceError):
            dialled.write_now(b"x")
        async with anyio.create_task_group() as tg:
            tg.start_soon(dialled.send, b"end")  # waits behind the held bytes, in order
            assert (
                await receive_exactly(acceptor, written + 3)
                == chunk * (written // len(chunk)) + b"end"
            )
        assert dialled.writable_now

        await dialled.aclose()
        assert not dialled.writable_now
        with pytest.raises(anyio.ClosedResourceError):
            dialled.write_now(b"x")


async def test_a_failed_tls_handshake_is_an_error_on_both_sides(
    certs: TlsDirectory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stranger = init_tls_directory(tmp_path_factory.mktemp("stranger"), (1,))
    foreign = node_tls(stranger, 1)
    two = node_tls(certs, 2)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        sub = listener.listeners[0]
        assert isinstance(sub, anyio.abc.SocketListener)
        refused: list[BaseException] = []

        async def serve() -> None:
            pending: Accepted = await accept(sub)
            try:
                await pending.open(two.server)
            except OSError as exc:  # ssl.SSLError, or the caller's reset after its own
                refused.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                with pytest.raises(ConnectionLost, match="TLS handshake failed") as failed:
                    await connect("127.0.0.1", port, ssl_context=foreign.client)
                assert isinstance(failed.value.__cause__, ssl.SSLError)
        assert len(refused) == 1


async def test_a_context_that_checks_host_names_is_given_the_host_dialled() -> None:
    """raftmw's own contexts check no host name (tls rule 1); a caller's context that does
    (a public CA's certificate for the host) gets the name it dialled, and a mismatch fails."""
    import trustme

    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname on by default
    ca.configure_trust(client_ctx)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        sub = listener.listeners[0]
        assert isinstance(sub, anyio.abc.SocketListener)

        async def serve_two() -> None:
            for _ in range(2):
                with suppress(OSError):
                    stream = await (await accept(sub)).open(server_ctx)
                    await stream.aclose()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_two)
                stream = await connect("localhost", port, ssl_context=client_ctx)
                await stream.aclose()
                with pytest.raises(ConnectionLost) as mismatch:
                    await connect("127.0.0.1", port, ssl_context=client_ctx)
                assert isinstance(mismatch.value.__cause__, ssl.SSLCertVerificationError)


def test_the_trio_fallback_speaks_the_same_streams() -> None:
    """Off asyncio (rule 5) both functions fall back to anyio's own streams."""

    async def on_trio() -> bytes:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            sub = listener.listeners[0]
            assert isinstance(sub, anyio.abc.SocketListener)
            async with anyio.create_task_group() as tg:
                got: list[bytes] = []

                async def serve() -> None:
                    stream = await (await accept(sub)).open()
                    got.append(await stream.receive())
                    await stream.aclose()

                tg.start_soon(serve)
                stream = await connect("127.0.0.1", port)
                assert not isinstance(stream, ProtocolStream)
                await stream.send(b"hello trio")
                await stream.aclose()
            return got[0]

    assert anyio.run(on_trio, backend="trio") == b"hello trio"
