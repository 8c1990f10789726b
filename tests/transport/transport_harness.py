"""What the transport tests (TCP and in-memory) share: a fake node side of a transport (the
``PeerInbox`` and ``ClientService`` it serves) and a ``Node`` that serves a transport in its
own cancel scope, so a test can stop and restart it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio
import anyio.abc

from framework.core import Message
from framework.transport import ClientRequest, ClientResponse, KVOp, Transport

T = TypeVar("T", bound=Transport)


class Inbox:
    """Records what a transport delivers and which peers it reports unreachable."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.deliveries = 0
        self.unreachable: list[int] = []

    def deliver(self, messages: Sequence[Message]) -> None:
        self.messages.extend(messages)
        self.deliveries += 1

    def peer_unreachable(self, node_id: int) -> None:
        self.unreachable.append(node_id)

    def terms(self) -> list[int]:
        return [m.term for m in self.messages]

    def terms_from(self, src: int) -> list[int]:
        return [m.term for m in self.messages if m.src == src]


class Service:
    """Answers ``get k`` with ``"node N: k"`` at once; a key put on ``hold`` is answered
    when ``release``d; the key ``"boom"`` raises."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.held: dict[str, list[tuple[ClientRequest, Callable[[ClientResponse], None]]]] = {}

    def hold(self, key: str) -> None:
        self.held.setdefault(key, [])

    def release(self, key: str) -> None:
        for request, reply in self.held.pop(key, []):
            reply(self.answer(request, key))

    def submit(self, request: ClientRequest, reply: Callable[[ClientResponse], None]) -> None:
        body = request.body
        key = body.key if isinstance(body, KVOp) else type(body).__name__
        if key == "boom":
            raise RuntimeError("the service broke")
        if key in self.held:
            self.held[key].append((request, reply))
        else:
            reply(self.answer(request, key))

    def answer(self, request: ClientRequest, key: str) -> ClientResponse:
        return ClientResponse(id=request.id, ok=True, value=f"node {self.node_id}: {key}")


class Node(Generic[T]):
    """One transport serving in its own cancel scope, so a test can stop and restart it."""

    def __init__(self, transport: T) -> None:
        self.transport = transport
        self.inbox = Inbox()
        self.service = Service(transport.node_id)  # type: ignore[attr-defined]
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None

    @property
    def address(self) -> str:
        return self.transport.listen_address

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._scope, self._stopped = anyio.CancelScope(), anyio.Event()
        await tg.start(self._serve, self._scope, self._stopped)

    async def _serve(
        self,
        scope: anyio.CancelScope,
        stopped: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        try:
            with scope:
                await self.transport.serve(self.inbox, self.service, task_status=task_status)
        finally:
            stopped.set()

    async def stop(self) -> None:
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        await self._stopped.wait()
