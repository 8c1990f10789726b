"""``StatusPublisher``: how often a node publishes its status, and the role-change events
that fall out of comparing one status with the last.

Theory of operation
-------------------
The status store (a seam: ``RwLock``-guarded or an actor) holds what ``raftmw status``
and the admin API read; the gauges (``GaugeReadings``) are what the OpenTelemetry
callbacks read. Building a status costs a ``kernel.status()``, a gauge collection and a
publish, so under load it is built at most once per tick, unless the role, term, leader,
membership or snapshot changed: a commit or applied index on a status page may be a tick
stale, who leads and who is a member never are. Writers are answered after
``publish_changes`` (the status they read next shows any change of leader, term or
membership their write made) and before the indexes are published at the end of the Ready
loop's pass, so a write waits for no status build (issue #15). An idle node (no index
moved) publishes once a second, for its gauges, instead of at every wake of its Ready loop
(issue #15: idle CPU). Role, election and leader-change events are raised here, once per change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from framework.core import RawNode, Role
from framework.metrics import GaugeReadings
from framework.seams import NodeStatus

if TYPE_CHECKING:
    from framework.runtime.node import RaftNode

__all__ = ["StatusPublisher"]

_IDLE_REPUBLISH = 1.0
"""Seconds between two publications of an idle node's status (its gauges may move)."""


class StatusPublisher:
    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self.gauges = GaugeReadings()
        """The node's gauges as of the last publication (read by the OTel callbacks)."""
        self._identity: tuple[object, ...] = ()
        self._indexes = (0, 0, 0)
        self._next = 0.0
        self._idle_next = 0.0
        self._last_role = ""

    async def publish_changes(self) -> None:
        """Publish now if the role, term, leader, membership or snapshot changed since the
        last publication; moving indexes wait for the next ``publish(force=False)``."""
        kernel = self._node.kernel
        assert kernel is not None
        if _identity(kernel) != self._identity:
            await self.publish()

    async def publish(self, *, force: bool = True) -> None:
        """Publish the node status (``force``: now; otherwise as the module says)."""
        node = self._node
        kernel = node.kernel
        assert kernel is not None
        now = anyio.current_time()
        identity = _identity(kernel)
        indexes = (kernel.log.committed, kernel.log.last_index(), node.sm.applied_index)
        idle = indexes == self._indexes and now < self._idle_next
        if not force and identity == self._identity and (now < self._next or idle):
            return
        self._identity = identity
        self._indexes = indexes
        self._idle_next = now + _IDLE_REPUBLISH
        self._next = now + node.settings.raft.tick_interval
        st = kernel.status()
        node.stored_peers.observe(st.progress)
        components = node.components
        self.gauges = GaugeReadings.collect(
            components,
            term=st.term,
            is_leader=st.role is Role.LEADER,
            commit=st.commit,
            applied=node.sm.applied_index,
        )
        await components.status_store.publish(
            NodeStatus(
                node_id=node.id,
                role=st.role.value,
                term=st.term,
                leader=st.leader,
                commit=st.commit,
                applied=node.sm.applied_index,
                first_index=st.first_index,
                last_index=st.last_index,
                snapshot_index=kernel.snapshot.meta.index,
                voters=st.conf_state.voters,
                learners=st.conf_state.learners,
                progress=st.progress,
            )
        )
        role = f"{st.role.value}:{st.leader}:{st.term}"
        if role == self._last_role:
            return
        previous_leader = self._last_role.split(":")[1] if self._last_role else ""
        self._last_role = role
        node.host.notify(
            "raftmw_on_role_change",
            node_id=node.id,
            role=st.role.value,
            term=st.term,
            leader=st.leader,
        )
        if st.role is Role.LEADER:
            components.metrics.add("elections_won")
            node.instruments.on_election_won()
        if previous_leader != str(st.leader):
            components.metrics.add("leader_changes")
            node.instruments.on_leader_change()
            node.host.notify(
                "raftmw_on_leader_change", node_id=node.id, leader=st.leader, term=st.term
            )


def _identity(kernel: RawNode) -> tuple[object, ...]:
    """What a status page may never show stale: who leads, in which term, and who is a member."""
    return (kernel.role, kernel.term, kernel.leader, kernel.conf_state, kernel.snapshot.meta.index)
