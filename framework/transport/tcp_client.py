"""``TcpClientConnection``: a client's connection to one node, pipelined.

Requests from many tasks share the connection: each is queued for the connection's one
writer task (so requests made together leave in one write), answered by id in any order,
and timed out by one expiry task (``_Timers``) rather than a cancel scope per request.

A request waits on a bare asyncio future when the connection runs on asyncio (an
``anyio.Event`` there is an ``asyncio.Event`` behind a wrapper: two objects, a loop lookup
and a future per request, a third of a load generator's CPU at 512 writers), and on an
``anyio.Event`` elsewhere (trio). The future is the whole waiter: its result is the
response, or why none came (``_End``); nothing else is allocated per request to wait.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
import ssl
from collections.abc import Generator
from types import TracebackType
from typing import Any, Self, TypeAlias

import anyio
import anyio.abc

from framework.transport.protocol_streams import connect
from framework.transport.streams import (
    DEFAULT_MAX_FRAME_SIZE,
    LOST,
    ConnectionLost,
    FrameReader,
    FrameWriter,
    Outbox,
    close_stream,
    parse_address,
    tune_socket,
)
from framework.transport.tls import identity_of
from framework.transport.wire import (
    PROTOCOL,
    PROTOCOL_VERSION,
    ClientRequest,
    ClientResponse,
    Goodbye,
    Hello,
    ProtocolError,
    RequestBody,
    decode_client_response,
    decode_hello,
    encode_frame,
)

__all__ = ["TcpClientConnection"]

logger = logging.getLogger("raftmw.transport")


class _End(enum.Enum):
    """Why a request's waiter was settled without a response."""

    TIMED_OUT = "timed out"
    LOST = "lost"
    """The connection failed or was closed."""


class _EventWaiter:
    """A request's answer off asyncio (trio): what a future gives the asyncio path
    (``done``, ``set_result``, ``result``, ``await``), on an ``anyio.Event``."""

    __slots__ = ("_event", "_result")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._result: ClientResponse | _End = _End.LOST

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, result: ClientResponse | _End) -> None:
        self._result = result
        self._event.set()

    def result(self) -> ClientResponse | _End:
        return self._result

    def __await__(self) -> Generator[Any, None, None]:
        return self._event.wait().__await__()


_Waiter: TypeAlias = "asyncio.Future[ClientResponse | _End] | _EventWaiter"
"""One request's answer, settled once (``done()``) with the response or an ``_End``; a
requester that was cancelled cancels its future, which settles it too."""


class _Timers:
    """Request deadlines of one connection, expired by one task instead of a cancel scope
    per request (a scope costs more than the rest of a request's client-side work).

    A heap by deadline with lazy removal: answered requests leave it when they reach the top
    or when answered entries outnumber the waiting ones (then it is rebuilt), so it holds
    about twice the requests in flight, whatever the traffic.
    """

    __slots__ = ("_heap", "_seq", "_wake")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Waiter]] = []
        self._seq = 0
        self._wake = anyio.Event()

    def add(self, waiter: _Waiter, deadline: float, in_flight: int) -> None:
        heap = self._heap
        self._seq += 1
        heapq.heappush(heap, (deadline, self._seq, waiter))
        if heap[0][2] is waiter:
            self._wake.set()  # a new earliest deadline: the expiry task sleeps too long
        if len(heap) > 2 * in_flight + 64:
            self._heap = [item for item in heap if not item[2].done()]
            heapq.heapify(self._heap)

    async def run(self) -> None:
        """Settle each waiter whose deadline passed unanswered with ``_End.TIMED_OUT``."""
        while True:
            heap = self._heap
            while heap and heap[0][2].done():
                heapq.heappop(heap)
            if not heap:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            delay = heap[0][0] - anyio.current_time()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = anyio.Event()
                continue
            _, _, waiter = heapq.heappop(heap)  # not done: checked just above, no await since
            waiter.set_result(_End.TIMED_OUT)


def _limit(timeout: float | None) -> str:
    return "by its deadline" if timeout is None else f"within {timeout:g}s"


class TcpClientConnection:
    """A client's connection to one node: concurrent requests, matched to responses by id.

    ``async with TcpClientConnection.connect(address, timeout=..., max_frame_size=...) as
    conn:`` connects and shakes hands (raising ``ConnectionLost`` if either fails), then
    ``await conn.request(body)`` sends one request and waits for its response. Requests may
    run concurrently; the server answers them in any order. If the connection dies or the
    server says ``Goodbye``, every waiting and later request raises ``ConnectionLost``.
    Cancelling a request (a caller's timeout) abandons its answer; the connection stays
    usable. Frames are written by one writer task, so requests made together (many tasks
    sharing the connection) leave together in one write.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        max_frame_size: int,
        ssl_context: ssl.SSLContext | None = None,
        token: str = "",
    ) -> None:
        self.address = address
        self._ssl_context = ssl_context
        self._token = token
        self.node_id = 0
        """The node at the other end, from its ``Hello``."""
        self._timeout = timeout
        self._max_frame_size = max_frame_size
        self._stream: anyio.abc.ByteStream | None = None
        self._writer: FrameWriter | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._pending: dict[int, _Waiter] = {}
        self._timers = _Timers()
        self._outbox: Outbox | None = None
        self._next_id = 1
        self._lost: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The running asyncio loop, for requests' futures (None on another backend)."""

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        token: str = "",
    ) -> TcpClientConnection:
        """A connection to ``address``, opened by ``async with``: over TLS if
        ``ssl_context`` is given (``framework.auth.ClientCredentials``), presenting
        ``token`` in its ``Hello`` if given."""
        return cls(
            address,
            timeout=timeout,
            max_frame_size=max_frame_size,
            ssl_context=ssl_context,
            token=token,
        )

    async def __aenter__(self) -> Self:
        if self._stream is not None:
            raise RuntimeError(f"connection to {self.address} was already opened")
        host, port = parse_address(self.address)
        try:
            with anyio.fail_after(self._timeout):
                stream = await connect(host, port, ssl_context=self._ssl_context)
        except ConnectionLost:  # the TLS handshake failed: it says so
            raise
        except OSError as exc:  # TimeoutError included
            raise ConnectionLost(self.address, f"cannot connect: {exc!r}") from exc
        tune_socket(stream)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio): requests wait on anyio events
            self._loop = None
        self._stream = stream
        self._writer = FrameWriter(stream)
        reader = FrameReader(stream, self._max_frame_size)
        try:
            hello = await self._handshake(reader)
        except BaseException:
            await close_stream(stream)
            raise
        if self._ssl_context is not None:
            identity = identity_of(stream)
            if identity is None or identity.node_id != hello.node_id:
                await close_stream(stream)
                shown = "no certificate" if identity is None else identity.describe()
                raise ConnectionLost(
                    self.address,
                    f"the server says it is node {hello.node_id} but its certificate names {shown}",
                )
        self.node_id = hello.node_id
        # Entered by hand (not in an @asynccontextmanager) so an exception from the caller's
        # block propagates as itself, not wrapped in an ExceptionGroup; the reader, the
        # writer and the timers never raise, so the group has nothing else to report.
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._outbox = Outbox()
        tg.start_soon(self._read_responses, reader)
        tg.start_soon(self._write_requests, self._outbox)
        tg.start_soon(self._timers.run)
        return self

    async def _handshake(self, reader: FrameReader) -> Hello:
        assert self._writer is not None
        hello_frame = encode_frame(
            Hello(protocol=PROTOCOL, version=PROTOCOL_VERSION, role="client", token=self._token)
        )
        try:
            with anyio.fail_after(self._timeout):
                await self._writer.send(hello_frame)
                hello = decode_hello(await reader.receive())
        except ProtocolError as exc:
            raise ConnectionLost(self.address, f"bad handshake: {exc}") from exc
        except anyio.EndOfStream as exc:
            raise ConnectionLost(self.address, "closed by the server") from exc
        except LOST as exc:
            raise ConnectionLost(self.address, f"handshake failed: {exc!r}") from exc
        if isinstance(hello, Goodbye):
            raise ConnectionLost(self.address, f"server said goodbye: {hello.reason}")
        return hello

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, stream = self._tg, self._stream
        self._tg = None
        self._fail("the connection was closed by the client")
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            if stream is not None:
                await close_stream(stream)

    async def request(
        self, body: RequestBody, *, timeout: float | None = None, deadline: float | None = None
    ) -> ClientResponse:
        """Send one request and wait for its response, at most ``timeout`` seconds or until
        ``deadline`` (on anyio's clock, ``anyio.current_time()``) if either is given.

        Raises ``ConnectionLost``, or ``TimeoutError`` when no answer came in time (the
        request may still take effect). The frame is queued for the connection's writer
        task, so concurrent requests leave together in one write (pipelining); a cancelled
        request never tears a frame.
        """
        if self._lost is not None or self._outbox is None or self._writer is None:
            raise ConnectionLost(self.address, self._lost or "not connected")
        request_id = self._next_id
        self._next_id += 1
        loop = self._loop
        waiter: _Waiter = loop.create_future() if loop is not None else _EventWaiter()
        pending = self._pending
        pending[request_id] = waiter
        try:
            self._outbox.send(encode_frame(ClientRequest(id=request_id, body=body)), self._writer)
            if timeout is not None:
                deadline = anyio.current_time() + timeout
            if deadline is not None:
                self._timers.add(waiter, deadline, len(pending))
            await waiter
        finally:
            del pending[request_id]
        result = waiter.result()
        if type(result) is ClientResponse:
            return result
        if result is _End.TIMED_OUT:
            raise TimeoutError(f"no answer from {self.address} in time ({_limit(timeout)})")
        raise ConnectionLost(self.address, self._lost or "closed")

    async def _write_requests(self, outbox: Outbox) -> None:
        assert self._writer is not None
        try:
            while True:
                await self._writer.send(await outbox.take())
        except LOST as exc:
            self._fail(f"send failed: {exc!r}")

    async def _read_responses(self, reader: FrameReader) -> None:
        try:
            while True:
                response = decode_client_response(await reader.receive())
                if isinstance(response, Goodbye):
                    self._fail(f"server said goodbye: {response.reason}")
                    return
                waiter = self._pending.get(response.id)
                # None or done: the answer to a request its caller abandoned (or timed out)
                if waiter is not None and not waiter.done():
                    waiter.set_result(response)
        except ProtocolError as exc:
            logger.warning("closing connection with %s: %s", self.address, exc)
            self._fail(str(exc))
        except anyio.EndOfStream:
            self._fail("closed by the server")
        except LOST as exc:
            self._fail(f"connection lost: {exc!r}")

    def _fail(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        if self._outbox is not None:
            self._outbox.close()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_result(_End.LOST)
