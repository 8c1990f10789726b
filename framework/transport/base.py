"""The ``Transport`` protocol: how a node's runtime talks to its peers and serves clients.

The runtime owns one transport. ``serve`` runs inside the node's task group for the node's
whole life; ``send`` is called from the Ready loop and must never block it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from anyio.abc import TaskStatus

from framework.core import Message
from framework.transport.wire import ClientRequest, ClientResponse

__all__ = ["ClientService", "PeerInbox", "Transport"]


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

    async def handle(self, request: ClientRequest) -> ClientResponse:
        """Answer one request; may take as long as the request's own deadline."""
        ...


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
