"""``AdminOps``: status, membership, leadership transfer and flag changes of one node.

Theory of operation
-------------------
Admin requests are rare and slow: each runs as a task of the node's group (``ClientService``
starts it) and waits for what it changed to commit and apply before it answers, watching
the node's ``_changed`` event rather than polling. The role check (admin operations need the
admin role) happens in the transport before a request reaches the node; the leader check
happens here, before anything is proposed. Every wait is bounded by the client_request
timeout and ends in a ``retry`` answer naming what did not happen in time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from framework.core import ConfChange, ConfChangeType, EntryKind, Role
from framework.flags import FlagChange, FlagError, RolloutWire, encode_flag_change, validate_change
from framework.metrics import PerformanceMetrics
from framework.runtime.client_service import Refused
from framework.runtime.members import BadMemberAddress, check_member_address
from framework.runtime.shadow import shadow_status
from framework.seams import NodeStatus
from framework.services import ServiceError
from framework.transport.wire import (
    AdminFlags,
    AdminMembers,
    AdminService,
    AdminTransfer,
    ClientRequest,
    ClientResponse,
    ErrorReply,
    InvalidRequest,
    StatusRequest,
)

if TYPE_CHECKING:
    from framework.runtime.node import RaftNode

__all__ = ["AdminOps"]


class AdminOps:
    """The admin side of one node's client service."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node

    async def handle(self, request: ClientRequest) -> ClientResponse:
        node = self._node
        body = request.body
        try:
            if isinstance(body, StatusRequest):
                return ClientResponse(id=request.id, ok=True, status=await self.status())
            if isinstance(body, AdminMembers):
                await self.members(body)
                return ClientResponse(id=request.id, ok=True, status=await self.status())
            if isinstance(body, AdminFlags):
                return ClientResponse(id=request.id, ok=True, status=await self.flags(body))
            if isinstance(body, AdminTransfer):
                await self.transfer(body.to)
                return ClientResponse(id=request.id, ok=True)
            if isinstance(body, InvalidRequest):  # decoded, but out of the protocol's bounds
                raise Refused(ErrorReply(kind="bad_request", message=body.reason))
            if isinstance(body, AdminService):
                answer = await node.services.handle(body.service, body.action, body.payload)
                return ClientResponse(id=request.id, ok=True, status=answer)
        except Refused as refused:
            return ClientResponse(id=request.id, ok=False, error=refused.reply)
        except ServiceError as exc:
            return ClientResponse(
                id=request.id, ok=False, error=ErrorReply(kind="bad_request", message=str(exc))
            )
        return ClientResponse(  # pragma: no cover - the decoder admits no other body
            id=request.id,
            ok=False,
            error=ErrorReply(kind="bad_request", message=f"unknown request {body!r}"),
        )

    # == membership ===========================================================================

    async def members(self, req: AdminMembers) -> None:
        node = self._node
        node.clients.check_leader()
        if req.action in ("add", "add_learner"):
            try:
                check_member_address(req.node_id, req.address, node._address_problem)
            except BadMemberAddress as exc:
                raise Refused(ErrorReply(kind="bad_request", message=str(exc))) from None
            change = ConfChange(
                type=ConfChangeType.ADD_LEARNER, node_id=req.node_id, context=req.address.encode()
            )
            await self._change(change)
            if req.action == "add_learner":
                return
            await self._promote(req.node_id)
        elif req.action == "promote":
            await self._promote(req.node_id)
        else:
            await self._change(ConfChange(type=ConfChangeType.REMOVE, node_id=req.node_id))

    async def _change(self, change: ConfChange) -> None:
        clients = self._node.clients
        index = await clients.kernel_call(lambda k: k.propose_conf_change(change))
        assert isinstance(index, int)
        await clients.wait_applied(index)

    async def _promote(self, node_id: int) -> None:
        """Promote a learner once caught up. The kernel checks again when the change is
        proposed and the commit index may have moved meanwhile (writes keep coming), so a
        "not caught up" refusal is retried until the request's deadline."""
        node = self._node
        change = ConfChange(type=ConfChangeType.PROMOTE, node_id=node_id)
        with anyio.move_on_after(node.settings.client.request_timeout):
            while True:
                await self._wait_caught_up(node_id)
                try:
                    await self._change(change)
                    return
                except Refused as refused:
                    if "has not caught up" not in refused.reply.message:
                        raise
                await node._changed.wait()
        raise Refused(
            ErrorReply(kind="retry", message=f"learner {node_id} did not catch up in time")
        )

    async def _wait_caught_up(self, node_id: int) -> None:
        """Wait (within the request deadline) until a learner holds every committed entry."""
        node = self._node
        with anyio.move_on_after(node.settings.client.request_timeout):
            while True:
                kernel = node.kernel
                assert kernel is not None
                pr = kernel.progress.get(node_id)
                if (
                    kernel.role is Role.LEADER
                    and pr is not None
                    and (pr.match >= kernel.log.committed)
                ):
                    return
                await node._changed.wait()
        raise Refused(
            ErrorReply(
                kind="retry",
                message=(f"learner {node_id} has not caught up with the log yet; promote it later"),
            )
        )

    async def transfer(self, to: int) -> None:
        node = self._node
        node.clients.check_leader()
        await node.clients.kernel_call(lambda k: k.transfer_leader(to))
        with anyio.move_on_after(node.settings.client.request_timeout):
            while node.kernel is not None and node.kernel.leader != to:
                await node._changed.wait()
            return
        raise Refused(
            ErrorReply(kind="retry", message=(f"leadership did not move to node {to} in time"))
        )

    # == status ===============================================================================

    async def status(self) -> dict[str, Any]:
        """The status page: read through the status store, plus flags and components."""
        node = self._node
        ns: NodeStatus = await node.components.status_store.read()
        c = node.components
        performance = PerformanceMetrics.collect(c).to_dict()
        return {
            "node_id": node.id,
            "cluster_id": node.config.cluster_id,
            "address": node.transport.listen_address,
            "role": ns.role,
            "term": ns.term,
            "leader": ns.leader,
            "leader_address": node.addresses.get(ns.leader, ""),
            "commit": ns.commit,
            "applied": ns.applied,
            "first_index": ns.first_index,
            "last_index": ns.last_index,
            "log_entries": ns.last_index - ns.first_index + 1,
            "snapshot_index": ns.snapshot_index,
            "voters": list(ns.voters),
            "learners": list(ns.learners),
            "members": {str(k): v for k, v in sorted(node.addresses.items())},
            "progress": {
                str(nid): {"state": state, "match": match, "next": nxt}
                for nid, (state, match, nxt) in ns.progress.items()
            },
            "stored_peers": node.stored_peers.peers,
            "invalid_messages": node.invalid_messages + node.snapshots.rejected,
            "dropped_messages": node.dropped_messages + node.snapshots.dropped,
            "flags": self.flag_table(),
            "migration": node.flags.migration_summary(),
            "components": c.plugins(),
            "swaps": [
                {"slot": r.slot, "old": r.old, "new": r.new, "ok": r.ok, "error": r.error}
                for r in c.swaps[-10:]
            ],
            "performance": performance,
            "health": node.health.to_dict(
                commit=ns.commit,
                applied=ns.applied,
                performance=performance,
                modes=[name for name, ev in node.flags.current.items() if ev.value],
            ),
            "services": node.services.status(),
            "shadow": shadow_status(c.running()),
            "application": {
                "name": node.identity.ours[0],
                "version": node.identity.ours[1],
                "cluster": list(node.identity.cluster) if node.identity.cluster else None,
            },
        }

    def flag_table(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "value": ev.value,
                "reason": str(ev.reason),
                "source": ev.source.name,
                "detail": ev.detail,
                "log_index": ev.log_index,
            }
            for name, ev in self._node.flags.current.items()
        }

    # == flags ================================================================================

    async def propose_flag_change(self, change: FlagChange) -> int:
        """Validate, propose as one ``flags`` entry, wait until applied here (and the swap
        it causes, if any); returns the entry's index."""
        node = self._node
        node.clients.check_leader()
        problems = validate_change(node.flags.registry, change, state=node.flags.cluster)
        if problems:
            raise Refused(ErrorReply(kind="bad_request", message="; ".join(problems)))
        data = encode_flag_change(change)
        index = await node.clients.kernel_call(lambda k: k.propose(data, EntryKind.FLAGS))
        assert isinstance(index, int)
        await node.clients.wait_applied(index)
        await node._changed.wait()  # the swap, if any, happens in that loop iteration
        return index

    async def flags(self, req: AdminFlags) -> dict[str, Any]:
        node = self._node
        log_index = None
        if req.action in ("set", "unset") and req.scope == "cluster":
            change = FlagChange(set=dict(req.assignments), unset=list(req.names), reason=req.reason)
            log_index = await self.propose_flag_change(change)
        elif req.action in ("set", "unset"):
            try:
                if req.action == "set":
                    await node.flags.set_overrides(
                        {
                            k: v.to_rollout() if isinstance(v, RolloutWire) else v
                            for k, v in req.assignments.items()
                        }
                    )
                else:
                    await node.flags.unset_overrides(req.names)
            except FlagError as exc:
                raise Refused(ErrorReply(kind="bad_request", message=str(exc))) from None
            await node.flag_switch.request()
        return {
            "node_id": node.id,
            "flags": self.flag_table(),
            "components": node.components.plugins(),
            "history": [
                {
                    "log_index": index,
                    "set": {k: _wire_value(v) for k, v in ch.set.items()},
                    "unset": list(ch.unset),
                    "reason": ch.reason,
                }
                for index, ch in node.flags.cluster.history()
            ],
            "overrides": sorted(node.flags.overrides),
            "log_index": log_index,
            "outcome": node.flags.outcome(),
        }


def _wire_value(value: object) -> object:
    if isinstance(value, RolloutWire):
        return msgspec.to_builtins(value)
    return value
