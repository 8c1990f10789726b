"""A client's connection to a node, once its ``Hello`` is read: what the TCP transport does
with it (``framework/transport/tcp.py`` accepts it and runs the handshake).

An authenticated client is served (``serve_client``): its requests are read and submitted
to the node's ``ClientService`` with no task per request (the service answers through
``reply``, which queues the response for the connection's one writer; answers settled
together, a Ready's worth, leave in one write), and a client that stops reading its answers
is closed once ``max_unsent`` bytes wait for it. A client that did not authenticate gets
one answer, ``unauthorized`` naming what it asked for, and is closed
(``answer_unauthenticated``: it must not hold one of the listener's slots, rule 3a there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

import framework.auth as auth  # a module: auth imports this package (the wire types)
from framework.transport.base import ClientService, submit_request
from framework.transport.connection import Connection, guard
from framework.transport.streams import Outbox
from framework.transport.wire import (
    ClientResponse,
    ErrorReply,
    Goodbye,
    decode_client_request,
    encode_frame,
)

__all__ = ["answer_unauthenticated", "serve_client"]


async def answer_unauthenticated(
    conn: Connection, principal: auth.Principal, *, timeout: float
) -> None:
    """Read one request within ``timeout`` (under the small first-frame limit), answer it
    ``unauthorized``, and close ``conn``."""
    with anyio.move_on_after(timeout):
        request = decode_client_request(await conn.reader.receive())
        if isinstance(request, Goodbye):
            conn.close(f"client said goodbye: {request.reason}", level=logging.INFO)
            return
        refusal = auth.authorize(principal, request.body)
        await conn.writer.send(encode_frame(ClientResponse(id=request.id, ok=False, error=refusal)))
        conn.close("an unauthenticated client was answered and closed", level=logging.INFO)
        return
    conn.close(f"an unauthenticated client asked nothing within {timeout}s")


async def serve_client(
    conn: Connection, clients: ClientService, principal: auth.Principal, *, max_unsent: int
) -> None:
    """Serve ``conn``'s requests until it closes. Both of its tasks are guarded, as an
    exception raised in a task group's body would escape as a group."""
    outbox = Outbox(limit=max_unsent)

    def reply(response: ClientResponse) -> None:
        if not outbox.send(encode_frame(response), conn.writer) and not outbox.closed:
            outbox.close()
            conn.close(
                f"client is not reading its responses (over max_unsent_bytes={max_unsent} queued)"
            )

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(guard, conn, _write_outbox, conn, outbox)
            await guard(conn, _read_requests, conn, clients, reply, principal)
            tg.cancel_scope.cancel()
    finally:
        outbox.close()


async def _read_requests(
    conn: Connection,
    clients: ClientService,
    reply: Callable[[ClientResponse], None],
    principal: auth.Principal,
) -> None:
    while True:
        request = decode_client_request(await conn.reader.receive())
        if isinstance(request, Goodbye):
            conn.close(f"client said goodbye: {request.reason}", level=logging.INFO)
            return
        refusal: ErrorReply | None = auth.authorize(principal, request.body)
        if refusal is None:
            submit_request(clients, request, reply)
        else:
            reply(ClientResponse(id=request.id, ok=False, error=refusal))


async def _write_outbox(conn: Connection, outbox: Outbox) -> None:
    while True:
        await conn.writer.send(await outbox.take())
