"""A fake ``ClientService`` shared by the transport tests (TCP and in-memory)."""

from __future__ import annotations

from collections.abc import Callable

from framework.transport import ClientRequest, ClientResponse, KVOp


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
