"""The ``Transport`` protocol: how a node's runtime talks to its peers and serves clients.

The runtime owns one transport. ``serve`` runs inside the node's task group for the node's
whole life; ``send`` is called from the Ready loop and must never block it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from framework.core import Message
from framework.transport.wire import ClientRequest, ClientResponse, ErrorReply

__all__ = ["ClientService", "PeerInbox", "Transport", "answer_request", "submit_request"]

logger = logging.getLogger("raftmw.transport")


class PeerInbox(Protocol):
    """The node side of peer traffic."""

    def deliver(self, messages: Sequence[Message]) -> None:
        """Messages received from a peer, in the order sent. Called on the event loop;
        enqueues and returns at once."""
        ...

    def peer_unreachable(self, node_id: int) -> None:
        """Messages to ``node_id`` were lost (connection failed or its queue overflowed)."""
        ...


class ClientService(Protocol):
    """The node side of client and admin traffic."""

    def submit(self, request: ClientRequest, reply: Callable[[ClientResponse], None]) -> None:
        """Start answering ``request``; returns at once.

        ``reply`` is called exactly once with the response, on the event loop, now or later
        (within the request's own deadline), unless the node stops first. ``reply`` must
        not block or raise: a transport queues the response for its connection's writer, so
        many answers settled together leave in one write.
        """
        ...


def submit_request(
    clients: ClientService, request: ClientRequest, reply: Callable[[ClientResponse], None]
) -> None:
    """``clients.submit(request, reply)``; a service that raises answers ``retry`` instead
    of taking the connection (or the node) down with it. Shared by every transport."""
    try:
        clients.submit(request, reply)
    except Exception as exc:
        logger.exception("client service failed on request %d", request.id)
        reply(
            ClientResponse(
                id=request.id,
                ok=False,
                error=ErrorReply(kind="retry", message=f"internal error: {exc!r}"),
            )
        )


async def answer_request(clients: ClientService, request: ClientRequest) -> ClientResponse:
    """Submit ``request`` and wait for its response (for transports that answer in a task)."""
    done = anyio.Event()
    answers: list[ClientResponse] = []

    def reply(response: ClientResponse) -> None:
        answers.append(response)
        done.set()

    submit_request(clients, request, reply)
    await done.wait()
    return answers[0]


class Transport(Protocol):
    @property
    def listen_address(self) -> str:
        """``host:port`` (or another transport's address) where this node is reached;
        valid once ``serve`` has reported started."""
        ...

    async def serve(
        self, inbox: PeerInbox, clients: ClientService, *, task_status: TaskStatus[None]
    ) -> None:
        """Accept connections and keep peer links up until cancelled.

        Calls ``task_status.started()`` once accepting. On cancellation every connection
        and task it opened is closed before it returns.
        """
        ...

    def send(self, messages: Sequence[Message]) -> None:
        """Queue messages for their peers (``msg.dst``); never blocks or raises for a
        down peer: undeliverable messages are dropped and the peer reported unreachable."""
        ...

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        """Replace the peer address book (membership changed); links to removed peers
        close, links to new peers open."""
        ...
