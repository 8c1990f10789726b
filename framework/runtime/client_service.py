"""``ClientService``: how a node answers client requests around its Ready loop.

Theory of operation
-------------------
A client write or read costs no task: ``submit`` parks it as a ``Waiter`` with a deadline
and hands it to the Ready loop (a proposal on the proposals queue, a ReadIndex request on
the node's read list); the loop settles the waiter once the entry is applied or the read
index is reached, and this module turns the settled waiter into the one ``ClientResponse``
the transport writes back. Requests past their deadline are answered ``retry`` (the outcome
is unknown, the client's session makes its retry safe).

The node knows no application's requests: the state machine's ``client_request`` turns a
request body (``KVOp`` for the KV machine, ``AppCall`` for replicated objects, whatever an
application takes) into a proposal or a read, so every application gets the same path:
writes through the log with the caller's session (the machine's ``ClientSessions``), reads
through ReadIndex, stale reads when the application offers them.

Admin and status requests are rare and slow (they wait for changes to commit); each runs as
a task of the node's group and is answered by ``AdminOps``.

This module owns the deadlines, the read sequence and the rejection tally; the Ready loop
owns the kernel and the queues it drains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio

from framework.core import ConfChangeRejected, NotLeader, ProposalRejected, RawNode, Role
from framework.runtime.pending import Deadlines, Waiter
from framework.runtime.redirect import redirect_target
from framework.seams import Priority, QueueFull
from framework.statemachine import (
    BadClientRequest,
    ClientCommand,
    CommandError,
    StaleRequest,
)
from framework.transport.wire import (
    AppCall,
    ClientRequest,
    ClientResponse,
    ErrorReply,
    KVOp,
)

if TYPE_CHECKING:
    from framework.runtime.node import RaftNode

__all__ = ["MAX_ADMIN_REQUESTS", "ClientService", "Refused", "answer"]

MAX_ADMIN_REQUESTS = 256
"""Status and admin requests running at once (each is a task); more are ``overloaded``."""

log = logging.getLogger("raftmw.node")

APPLICATION_REQUESTS: Final = (KVOp, AppCall)
"""Request bodies handed to the application (``StateMachine.client_request``); the rest are
status and admin requests, which the node answers itself."""


class Refused(Exception):
    """A request answered with ``reply`` instead of a result."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.message)
        self.reply = reply


class ClientService:
    """The node side of client traffic (``framework.transport.ClientService``)."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self.deadlines = Deadlines()
        """Client requests answered by callback, in arrival order, to expire when late."""
        self.rejections: dict[str, int] = {}
        """Client requests answered with an error, per reason, not yet reported."""
        self._read_seq = 0
        self._admin_running = 0

    # == requests =============================================================================

    def submit(self, request: ClientRequest, reply: Callable[[ClientResponse], None]) -> None:
        """Answer ``request`` by calling ``reply`` once, on the event loop.

        A command or read is parked as a ``Waiter`` with a deadline and the Ready loop
        answers it (applied, read, refused or expired). Status and admin requests run as a
        task of the node's group each. If the node stops first, queued commands are
        answered ``retry`` and admin tasks are cancelled unanswered, as their connection
        closes with the node.
        """
        node = self._node
        body = request.body
        if not isinstance(body, APPLICATION_REQUESTS):
            assert node._tg is not None, "submit() before the node serves"
            if self._admin_running >= MAX_ADMIN_REQUESTS:  # a task each: bounded too
                message = f"node {node.id}: {MAX_ADMIN_REQUESTS} status/admin requests are running"
                error = ErrorReply(kind="overloaded", message=f"{message}; retry later")
                reply(ClientResponse(id=request.id, ok=False, error=error))
                return
            self._admin_running += 1
            node._tg.start_soon(self._answer_admin, request, reply)
            return
        request_id = request.id
        timeouts = node.components.timeouts
        started = node._now

        def done(waiter: Waiter) -> None:
            finished = node._now
            # Only outcomes feed the estimate: a completed request, or one that expired (a
            # timeout). An instant refusal (not the leader, overloaded, bad request) says
            # nothing about how long requests take and would drag the estimate to zero.
            if waiter.error is None or finished >= waiter.deadline:
                ok = waiter.error is None and finished < waiter.deadline
                timeouts.observe("client_request", finished - started, ok=ok)
            if waiter.error is None:
                node.health.on_request(finished - started, None)
                value = waiter.value
                if isinstance(value, bytes):  # an application's encoded result
                    reply(ClientResponse(id=request_id, ok=True, data=value))
                else:
                    reply(ClientResponse(id=request_id, ok=True, value=value))  # type: ignore[arg-type]
            else:
                # Tallied here, reported once per Ready-loop iteration (never per request).
                reason = "timeout" if finished >= waiter.deadline else waiter.error.kind
                self.rejections[reason] = self.rejections.get(reason, 0) + 1
                node.health.on_request(finished - started, reason)
                reply(ClientResponse(id=request_id, ok=False, error=waiter.error))

        waiter = Waiter(done, started + timeouts.timeout("client_request"))
        try:
            self.start(body, waiter)
        except Refused as refused:
            waiter.error = refused.reply
            waiter.done = True
            done(waiter)
            return
        self.deadlines.add(waiter)

    def start(self, body: KVOp | AppCall, waiter: Waiter) -> None:
        """Queue ``body`` for the Ready loop, which settles ``waiter``; raises ``Refused``.

        The application decodes it (``StateMachine.client_request``): a write is proposed
        with the leader's clock, a read goes through ReadIndex, and a stale read (an
        application's explicit opt-in) is answered here and now by any node."""
        node = self._node
        try:
            request = node.sm.client_request(body, now=time.time())
        except BadClientRequest as exc:
            raise Refused(
                ErrorReply(kind="bad_request", message=f"node {node.id}: {exc}")
            ) from None
        if isinstance(request, ClientCommand):
            self.check_leader()
            self.propose(request.data, waiter)
        elif request.stale:
            waiter.succeed(node.sm.read(request.query))
        else:
            self.check_leader()
            self.read(request.query, waiter)

    def read(self, query: object, waiter: Waiter) -> None:
        """A linearizable read (ReadIndex): ``waiter`` gets ``app.read(query)`` once this
        node has applied everything committed when the read arrived."""
        node = self._node
        self.check_read_capacity()
        self._read_seq += 1
        context = f"{node.id}:{self._read_seq}".encode()
        node._reads.append((context, query, waiter))
        node._wake.set()

    def serve_reads(self) -> None:
        """Answer the reads whose read index the state machine has reached."""
        node = self._node
        if not node._ready_reads:
            return
        applied = node.sm.applied_index
        keep = []
        for index, context in node._ready_reads:
            if index > applied:
                keep.append((index, context))
                continue
            entry = node._waiting_reads.pop(context, None)
            if entry is not None:
                key, waiter = entry
                waiter.succeed(node.sm.read(key))
        node._ready_reads = keep

    def propose(self, data: bytes, waiter: Waiter) -> None:
        """Propose ``data``; ``waiter`` gets the machine's result once it is applied."""
        node = self._node
        try:
            node.components.proposals.put_nowait((data, waiter), Priority.NORMAL)
        except QueueFull as exc:
            raise Refused(ErrorReply(kind="overloaded", message=str(exc))) from None
        node._wake.set()

    async def _answer_admin(
        self, request: ClientRequest, reply: Callable[[ClientResponse], None]
    ) -> None:
        node = self._node
        try:
            response = await node.admin.handle(request)
        except Exception as exc:  # a bug must not take the node down with it
            log.exception("node %d failed on request %d", node.id, request.id)
            response = ClientResponse(
                id=request.id,
                ok=False,
                error=ErrorReply(kind="retry", message=f"internal error: {exc!r}"),
            )
        finally:
            self._admin_running -= 1
        reply(response)

    # == deadlines ============================================================================

    def expire_requests(self) -> None:
        """Answer ``retry`` to client requests past their deadline (checked every tick)."""
        node = self._node
        if not len(self.deadlines):
            return
        expired = self.deadlines.expire(node._now)
        if not expired:
            return
        for waiter in expired:
            waiter.fail(
                "retry",
                f"node {node.id}: no outcome within the client_request timeout; outcome unknown",
            )
        # An expired read's ReadIndex may never be answered (its leader lost a quorum).
        node._waiting_reads = {
            context: entry for context, entry in node._waiting_reads.items() if not entry[1].done
        }

    def report_rejections(self) -> None:
        """Hand the rejection tally to the instruments (once per Ready-loop iteration)."""
        if self.rejections:
            self._node.instruments.on_rejections(self.rejections)
            self.rejections = {}

    async def wait(self, waiter: Waiter) -> object:
        """Wait for ``waiter`` within the client_request timeout; its value or ``Refused``."""
        timeouts = self._node.components.timeouts
        limit = timeouts.timeout("client_request")
        started = anyio.current_time()
        with anyio.move_on_after(limit):
            await waiter.wait()
        timeouts.observe("client_request", anyio.current_time() - started, ok=waiter.done)
        if not waiter.done:
            raise Refused(
                ErrorReply(
                    kind="retry",
                    message=(
                        f"node {self._node.id}: no outcome within {limit:g}s; outcome unknown"
                    ),
                )
            )
        if waiter.error is not None:
            raise Refused(waiter.error)
        return waiter.value

    # == checks ===============================================================================

    def check_read_capacity(self) -> None:
        """Pending reads are bounded like any queue between tasks (a leader cut off from its
        quorum would otherwise hold every read sent to it until its deadline)."""
        node = self._node
        limit = node.settings.performance.backpressure.max_pending
        if (pending := len(node._reads) + len(node._waiting_reads)) >= limit:
            message = (
                f"node {node.id}: {pending} linearizable reads are pending, the limit "
                f"(performance.backpressure.max_pending) is {limit}; retry later"
            )
            raise Refused(ErrorReply(kind="overloaded", message=message))

    def check_leader(self) -> None:
        kernel = self._node.kernel
        if kernel is None or kernel.role is not Role.LEADER:
            waiter = Waiter()
            self.fail_not_leader(waiter)
            assert waiter.error is not None
            raise Refused(waiter.error)

    def fail_not_leader(self, waiter: Waiter) -> None:
        node = self._node
        leader = redirect_target(node.kernel) if node.kernel is not None else 0
        address = node.addresses.get(leader, "") if leader else ""
        where = f"node {leader} at {address}" if address else "unknown"
        waiter.fail(
            "not_leader",
            f"node {node.id} is not the leader; leader: {where}",
            leader if address else 0,
            address,
        )

    # == kernel calls for admin operations ====================================================

    async def kernel_call(self, call: Callable[[RawNode], object]) -> object:
        """Run ``call`` on the kernel inside the Ready loop and return its result."""
        node = self._node
        waiter = Waiter()

        def action(kernel: RawNode) -> None:
            try:
                waiter.succeed(call(kernel))
            except NotLeader:
                self.fail_not_leader(waiter)
            except (ConfChangeRejected, ProposalRejected) as exc:
                waiter.fail("bad_request", str(exc))

        node._actions.append(action)
        node._wake.set()
        return await self.wait(waiter)

    async def wait_applied(self, index: int) -> None:
        node = self._node
        waiter = Waiter()
        if node.sm.applied_index >= index:
            return
        node._apply_watchers.append((index, waiter))
        await self.wait(waiter)


def answer(waiter: Waiter, result: object) -> None:
    """Settle a writer's ``waiter`` with the state machine's ``result``."""
    if isinstance(result, StaleRequest):
        waiter.fail(
            "bad_request",
            (
                f"request seq {result.seq} of client {result.client_id} is older than its last "
                f"applied seq {result.last_seq}"
            ),
        )
    elif isinstance(result, CommandError):
        waiter.fail("bad_request", result.message)
    else:
        waiter.succeed(result)
