"""``RaftNode``: the anyio runtime that drives one kernel with a real disk and network.

Theory of operation
-------------------
One task, the Ready loop, owns the kernel: nothing else calls it. Everything that wants the
kernel's attention (a tick, messages from peers, client proposals and reads, admin changes)
appends to an input list and sets the wake-up event; the loop drains all inputs, then
performs every ``Ready`` the kernel has, in the order ``Ready`` documents:

1. send ``messages`` (leader appends leave before the local write, dissertation §10.2.1);
2. persist snapshot + entries + hard state in one store transaction, in a worker thread;
3. send ``persisted_messages`` (votes and acknowledgements promise durability);
4. restore/apply to the state machine, answer waiting clients and reads;
5. ``advance``.

Inputs that arrive while a Ready is being persisted wait for the next iteration and go into
the kernel together: that is where batching comes from (many proposals, one fsync). A
leader steps the peer messages among them as soon as its store returns: a follower's ack
of the entries just stored commits them in the same iteration (issue #15).

A client write is answered only after its entry is applied, which happens only after it
committed, which the leader only counts once the entry is durable on a majority (the kernel
counts its own copy after step 2). A retried write carries the same ``(client_id, seq)``
and the state machine applies it once. Reads use ReadIndex.

Snapshots wrap the state machine's bytes in a ``NodeSnapshot`` that also carries the member
address book, so a node restored from a snapshot knows how to reach everyone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from opentelemetry.metrics import MeterProvider

from framework.config import Settings
from framework.core import (
    ConfChangeType,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InvalidMessage,
    Message,
    NotLeader,
    RawNode,
    Ready,
    Role,
    TimeoutNow,
    TransferInProgress,
    UncommittedSizeExceeded,
    VoteRequest,
    VoteResponse,
    decode_conf_change,
)
from framework.metrics import NodeInstruments
from framework.plugins import PluginHost
from framework.runtime.admin import AdminOps
from framework.runtime.app_identity import AppIdentity
from framework.runtime.client_service import MAX_ADMIN_REQUESTS, ClientService, Refused, answer
from framework.runtime.components import Components
from framework.runtime.flag_switch import FlagSwitch
from framework.runtime.kernel_inputs import TimeKeeper
from framework.runtime.local_snapshots import LocalSnapshots
from framework.runtime.members import address_check_for, address_of
from framework.runtime.node_flags import NodeFlags
from framework.runtime.node_health import NodeHealth
from framework.runtime.node_services import NodeServices
from framework.runtime.pending import Waiter
from framework.runtime.ready_store import ReadyStore
from framework.runtime.restart import build_kernel, open_store
from framework.runtime.snapshots import (
    InboundSnapshots,
    NodeSnapshot,
    adopt_snapshot_head,
    restore_snapshot,
)
from framework.runtime.status_publisher import StatusPublisher
from framework.runtime.stored_peers import StoredPeers
from framework.runtime.tick_clock import TickClock
from framework.runtime.ticker import run_ticker
from framework.seams import Priority, QueueFull
from framework.statemachine import KVStateMachine, StateMachine
from framework.storage import LogStore, StorageError
from framework.transport.base import Transport
from framework.transport.snapshot_stream import ReceivedSnapshot
from framework.transport.wire import ClientRequest, ClientResponse

__all__ = ["MAX_ADMIN_REQUESTS", "NodeConfig", "NodeSnapshot", "RaftNode"]

log = logging.getLogger("raftmw.node")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    node_id: int
    cluster_id: str
    peers: Mapping[int, str]
    """Known member addresses, this node's own included."""
    settings: Settings
    join: bool = False
    """Start with no membership and wait to be added (instead of bootstrapping ``peers``)."""
    plugin_host: PluginHost | None = None
    """The plugins to build components with; by default the installed ones, minus
    ``settings.plugins.blocked``."""
    data_dir: Path | None = None
    """The node's data directory, for node-local state kept beside the log (flag
    overrides); None keeps that state in memory."""


class RaftNode:
    def __init__(
        self,
        config: NodeConfig,
        *,
        store: LogStore,
        transport: Transport,
        state_machine: StateMachine | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self.settings = config.settings
        self.store = store
        self.transport = transport
        self.sm: StateMachine = KVStateMachine() if state_machine is None else state_machine
        """The application this node runs (``framework.statemachine.StateMachine``)."""
        self.identity = AppIdentity(config.node_id, self.sm)
        self.addresses: dict[int, str] = dict(config.peers)
        self._address_problem = address_check_for(transport)
        self.kernel: RawNode | None = None
        self._wake = anyio.Event()
        self._tick_clock = TickClock(config.settings.raft.tick_interval, 0.0)
        self._time_keeper = TimeKeeper(
            take_inbox=self._take_inbox,
            ticks_due=self._ticks_due,
            send=self._send,
            on_invalid=self._on_invalid_message,
        )
        self._unreachable: set[int] = set()
        self.host = config.plugin_host or PluginHost(
            blocked=self.settings.plugins.blocked, enabled=self.settings.plugins.enabled
        )
        self.flags = NodeFlags(
            self.host, node_id=self.id, settings=self.settings, data_dir=config.data_dir
        )
        self.stored_peers = StoredPeers(config.data_dir, node_id=self.id)
        self.store, self.transport = self.host.wrap_io(
            node_id=self.id, settings=self.settings, store=store, transport=transport
        )
        transport = self.transport
        self.components = Components(
            self.host,
            node_id=self.id,
            settings=self.settings,
            on_shed=self._on_shed,
            transport=transport,
            meter_provider=meter_provider,
        )
        self._down_peers: set[int] = set()
        """Peers reported unreachable and not heard from since (for peer up/down hooks)."""
        self._settlements: list[Callable[[], None]] = []
        """Answers to writers, released after the Ready's status is published."""
        self._reads: list[tuple[bytes, object, Waiter]] = []
        self._actions: list[Callable[[RawNode], None]] = []
        self._waiting_apply: dict[int, tuple[int, Waiter]] = {}
        self._waiting_reads: dict[bytes, tuple[object, Waiter]] = {}
        self._ready_reads: list[tuple[int, bytes]] = []
        self._apply_watchers: list[tuple[int, Waiter]] = []
        self.local_snapshots = LocalSnapshots(
            node_id=self.id,
            store=self.store,
            state_machine=self.sm,
            threshold=self.settings.raft.snapshot_threshold_entries,
            trailing=self.settings.raft.snapshot_trailing_entries,
            wake=self._wake_loop,
        )
        self._now = 0.0
        """The event loop's clock as of the Ready loop's last wake or write: request
        deadlines and latencies are measured with it (one clock read per Ready, not two per
        request). A request that arrives while the loop idles is timed from the last wake,
        at most a tick earlier."""
        self._tg: TaskGroup | None = None
        self._changed = anyio.Event()
        """Set (and replaced) after every Ready: admin waits watch state without polling."""
        self.invalid_messages = 0
        self.dropped_messages = 0
        self.snapshots = InboundSnapshots(
            node_id=self.id,
            state_machine=self.sm,
            address_problem=self._address_problem,
            deliver=self._deliver_checked,
        )
        self.health = NodeHealth(self._time_keeper.role_changes)
        self.status_publisher = StatusPublisher(self)
        self.ready_store = ReadyStore(
            self.store,
            time_keeper=self._time_keeper,
            on_persisted=self.health.on_persisted,
            idle_after=self.settings.election_timeout,
        )
        self.services = NodeServices(self)
        self.clients = ClientService(self)
        self.admin = AdminOps(self)
        self.instruments = NodeInstruments(
            node_id=self.id,
            cluster_id=config.cluster_id,
            readings=lambda: self.status_publisher.gauges,
            meter_provider=meter_provider,
        )
        self.flag_switch = FlagSwitch(
            node_id=self.id,
            flags=self.flags,
            components=self.components,
            instruments=self.instruments,
            host=self.host,
            wake=self._wake_loop,
        )

    # == lifecycle ============================================================================

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Reports started once it serves peers and clients."""
        async with self.ready_store.thread.running():  # its stores' thread, for its lifetime
            await self._run(task_status)

    async def _run(self, task_status: TaskStatus[None]) -> None:
        try:
            state = await open_store(self)  # the snapshot restored from the store's file
            self.kernel = build_kernel(self.id, self.settings.raft, state)
            self.instruments.start(commit_index=self.kernel.log.committed)
            # The cluster's flag state is known before the node serves anyone: from the
            # snapshot, then from committed flag entries it will re-apply.
            self.flags.replay_committed(state.entries, state.hard_state.commit)
            await anyio.to_thread.run_sync(self.flags.load_overrides)
            await anyio.to_thread.run_sync(self.stored_peers.load)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self.snapshots.start(tg, self.transport, self.config.data_dir, self.store)
                self.local_snapshots.start(
                    tg, self.transport, self.config.data_dir, self.ready_store.thread
                )
                tg.start_soon(self.stored_peers.run)
                self._now = anyio.current_time()
                self._tick_clock = TickClock(self.settings.raft.tick_interval, self._now)
                await self.components.start(tg, self.flags.evaluate())
                self.flag_switch.started()
                await self.status_publisher.publish()
                self.transport.set_peers(self._peer_addresses())
                await tg.start(self.transport.serve, self, self)
                # Once per heartbeat interval, not per tick: every wake delivers all the
                # ticks due by the clock (TickClock), and a leader only acts every
                # heartbeat_tick ticks, so waking more often only costs an idle node CPU.
                raft = self.settings.raft
                interval = raft.tick_interval * raft.heartbeat_tick
                tg.start_soon(run_ticker, interval, self._on_tick, self.health.on_tick)
                tg.start_soon(self._ready_loop)
                self.services.build()
                await self.services.start(tg)
                log.info("node %d serving at %s", self.id, self.transport.listen_address)
                task_status.started()
        finally:
            self.instruments.close()
            with anyio.CancelScope(shield=True):
                if self.kernel is not None:
                    with contextlib.suppress(StorageError):  # already reported by the loop
                        await self.ready_store.flush(self.kernel)
                await anyio.to_thread.run_sync(self.store.close)
                self._fail_all("retry", f"node {self.id} is shutting down")

    def _peer_addresses(self) -> dict[int, str]:
        return {nid: addr for nid, addr in self.addresses.items() if nid != self.id}

    # == transport callbacks (PeerInbox) ======================================================

    def deliver(self, messages: Any) -> None:
        inbox = self.components.inbox
        for msg in messages:
            if isinstance(msg, InstallSnapshot):
                self.snapshots.receive(msg)  # checked off the loop before the kernel sees it
                continue
            try:
                inbox.put_nowait(msg, priority_of(msg))
            except QueueFull:
                # Raft retransmits what is lost; shedding here protects the node.
                self.dropped_messages += 1
        if messages:
            # A batch from a peer is the send guard's evidence that the peer is reachable
            # (a circuit breaker's half-open probes are judged by it), once per batch.
            peer = messages[0].src
            self.components.send_guard.record(peer, ok=True)
            if peer in self._down_peers:
                self._down_peers.discard(peer)
                self.host.notify("raftmw_on_peer_up", node_id=self.id, peer=peer)
        self._wake.set()

    def deliver_snapshot(self, received: ReceivedSnapshot) -> None:
        self.snapshots.receive_file(received)

    def _deliver_checked(self, msg: InstallSnapshot) -> None:
        try:
            self.components.inbox.put_nowait(msg, priority_of(msg))
        except QueueFull:
            self.dropped_messages += 1
        self._wake.set()

    def peer_unreachable(self, node_id: int) -> None:
        self._unreachable.add(node_id)
        self.components.send_guard.record(node_id, ok=False)
        if node_id not in self._down_peers:
            self._down_peers.add(node_id)
            self.host.notify("raftmw_on_peer_down", node_id=self.id, peer=node_id)
        self._wake.set()

    def _send(self, messages: Sequence[Message]) -> None:
        """Send through the send guard, which may hold back messages to a failing peer."""
        guard = self.components.send_guard
        by_peer: dict[int, list[Message]] = {}
        for msg in messages:
            by_peer.setdefault(msg.dst, []).append(msg)
        allowed: list[Message] = []
        for peer, batch in by_peer.items():
            allowed.extend(guard.allow(peer, batch))
        if allowed:
            self.transport.send(allowed)

    def _on_shed(self, queue: str, item: Any) -> None:
        """A bounded queue dropped an item it had accepted: tell its owner."""
        if queue == "proposals":
            _data, waiter = item
            waiter.fail("overloaded", f"node {self.id} shed the request under load")
        else:
            self.dropped_messages += 1

    # == the loop =============================================================================

    def _on_tick(self) -> None:
        self._time_keeper.keep()  # heartbeats and their answers while the loop waits on I/O
        self._wake.set()

    async def _ready_loop(self) -> None:
        kernel = self.kernel
        assert kernel is not None
        while True:
            await self._wake.wait()
            # A new event first: inputs that arrive while we work wake the next round.
            self._wake = anyio.Event()
            self._now = anyio.current_time()
            self._drain_inputs(kernel)
            self.clients.expire_requests()
            while kernel.has_ready():
                rd = kernel.ready()
                started = time.perf_counter()
                await self._handle_ready(kernel, rd)
                if rd.must_sync and kernel.role is Role.LEADER:
                    self._step_arrivals(kernel)  # acks that came meanwhile commit in this pass
                self.health.on_ready(time.perf_counter() - started)
                self.instruments.on_ready(
                    entries_persisted=len(rd.entries),
                    commit_index=kernel.log.committed,
                    applied=len(rd.committed_entries),
                    duration_s=time.perf_counter() - started,
                )
                if self.flag_switch.pending:
                    # Between two Ready iterations: the kernel sees no half-swapped node.
                    await self.flag_switch.apply()
            if self.flag_switch.pending:  # a node-local override, with no Ready to wait for
                await self.flag_switch.apply()
            if self.local_snapshots.pending:
                with self._time_keeper.keeping(kernel):  # a store without prune deletes too
                    await self.local_snapshots.step(kernel)
            if self.ready_store.idle(self._now):
                await self.ready_store.flush(kernel)
            await self.status_publisher.publish(force=False)
            self.clients.report_rejections()
            self._changed.set()
            self._changed = anyio.Event()

    def _drain_inputs(self, kernel: RawNode) -> None:
        if self._unreachable:
            for node_id in self._unreachable:
                kernel.report_unreachable(node_id)
                kernel.report_snapshot(node_id, success=False)  # one in flight is lost
            self._unreachable.clear()
        self._step_arrivals(kernel)
        if self._actions:
            actions, self._actions = self._actions, []
            for action in actions:
                action(kernel)
        if len(self.components.proposals):
            self._propose(kernel)
        if self._reads:
            reads, self._reads = self._reads, []
            for context, key, waiter in reads:
                self._waiting_reads[context] = (key, waiter)
                kernel.read_index(context)

    def _step_arrivals(self, kernel: RawNode) -> None:
        """Peer messages, then the ticks due, then the reads among them (kernel_inputs)."""
        self._time_keeper.step_arrivals(kernel, self._tick_clock.due(self._now))

    def _wake_loop(self) -> None:
        self._wake.set()

    def _take_inbox(self, limit: int | None) -> list[Message]:
        inbox = self.components.inbox
        return inbox.drain(limit) if len(inbox) else []

    def _ticks_due(self) -> int:
        return self._tick_clock.due(anyio.current_time())

    def _on_invalid_message(self, exc: InvalidMessage) -> None:
        self.invalid_messages += 1
        log.debug("node %d dropped a message: %s", self.id, exc)

    def _propose(self, kernel: RawNode) -> None:
        queue = self.components.proposals
        batch: list[tuple[bytes, Waiter]] = queue.drain(self.settings.raft.max_batch_proposals)
        if len(queue):
            self._wake.set()
        try:
            indexes = kernel.propose_batch([data for data, _ in batch])
        except NotLeader:
            for _, waiter in batch:
                self.clients.fail_not_leader(waiter)
            return
        except TransferInProgress as exc:
            for _, waiter in batch:
                waiter.fail("retry", str(exc))
            return
        except UncommittedSizeExceeded as exc:
            for _, waiter in batch:
                waiter.fail("overloaded", str(exc))
            return
        self.components.metrics.add("proposals", len(indexes))
        self.components.metrics.record("proposal_batch", len(indexes))
        if indexes:
            self.instruments.on_proposals(len(indexes))
        term = kernel.term
        for index, (_, waiter) in zip(indexes, batch, strict=False):
            self._waiting_apply[index] = (term, waiter)
        for _, waiter in batch[len(indexes) :]:
            waiter.fail("overloaded", "uncommitted entries exceed max_uncommitted_entries_size")

    async def _handle_ready(self, kernel: RawNode, rd: Ready) -> None:
        if rd.messages and rd.must_sync:  # appends leave before the local write (§10.2.1)
            self._send(rd.messages)
        staged = self.snapshots.take(rd.snapshot, kernel.log.committed)  # its file, its state
        if rd.must_sync:  # entries, a snapshot, a term or a vote: before anything else
            self._now = await self.ready_store.write(kernel, rd, staged.file)
        if rd.persisted_messages:
            self._send(rd.persisted_messages)
        if rd.snapshot is not None:
            restore = partial(restore_snapshot, store=self.store, node=self, decoded=staged.decoded)
            with self._time_keeper.keeping(kernel):
                head = await anyio.to_thread.run_sync(restore, rd.snapshot)
            adopt_snapshot_head(self, head)
            self.flag_switch.mark()  # the restored flag state may select other plugins
            self.transport.set_peers(self._peer_addresses())
            log.info("node %d installed a snapshot at index %d", self.id, rd.snapshot.meta.index)
        metrics = self.components.metrics
        if rd.entries:
            metrics.add("entries_persisted", len(rd.entries))
        if rd.committed_entries:
            self._apply(rd.committed_entries)
            last = rd.committed_entries[-1].index
            self.health.on_applied(last, self._now)
            metrics.add("entries_applied", len(rd.committed_entries))
            self.host.notify("raftmw_on_commit", node_id=self.id, commit_index=kernel.log.committed)
            self.host.notify(
                "raftmw_on_apply",
                node_id=self.id,
                applied_index=last,
                entries=len(rd.committed_entries),
            )
        if rd.soft_state is not None:
            self._on_soft_state(kernel, rd)
        if rd.read_states:
            self._ready_reads.extend((rs.index, rs.context) for rs in rd.read_states)
        for context in rd.dropped_reads:
            entry = self._waiting_reads.pop(context, None)
            if entry is not None:
                self.clients.fail_not_leader(entry[1])
        kernel.advance(rd)
        self.clients.serve_reads()
        if self._settlements:
            # Writers are answered once the status they may read next shows a change of
            # leader or membership their write made; indexes follow at the pass's end.
            await self.status_publisher.publish_changes()
            settlements, self._settlements = self._settlements, []
            for settle in settlements:
                settle()
        if rd.messages and not rd.must_sync:
            # Nothing is stored first: the answers leave before these (a commit's broadcast,
            # heartbeats), which no client waits on.
            self._send(rd.messages)
        if not rd.must_sync and rd.hard_state is not None:
            self.ready_store.defer(rd)  # only a commit index: stored later (ready_store.py)
        await self._maybe_snapshot(kernel)

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        sm = self.sm
        waiting = self._waiting_apply
        for entry in entries:
            self.identity.check(entry)  # before a command of another application applies
            result: object = sm.apply(entry)
            if entry.kind is EntryKind.CONF_CHANGE:
                self._on_conf_change(entry)
            elif entry.kind is EntryKind.FLAGS:
                result = self.flags.apply_entry(entry)
                self.flag_switch.mark()
            if waiting:
                pending = waiting.pop(entry.index, None)
                if pending is not None:
                    term, waiter = pending
                    if term == entry.term:
                        self._settlements.append(partial(answer, waiter, result))
                    else:
                        self._settlements.append(
                            partial(
                                waiter.fail,
                                "retry",
                                "leadership changed before the write committed",
                            )
                        )
        if self._apply_watchers:
            applied = entries[-1].index
            keep = []
            for index, waiter in self._apply_watchers:
                if index <= applied:
                    self._settlements.append(partial(waiter.succeed, None))
                else:
                    keep.append((index, waiter))
            self._apply_watchers = keep

    def _on_conf_change(self, entry: Entry) -> None:
        change = decode_conf_change(entry.data)
        if change.type is ConfChangeType.REMOVE:
            self.addresses.pop(change.node_id, None)
        elif address := address_of(
            change, node_id=self.id, index=entry.index, problem_of=self._address_problem
        ):
            self.addresses[change.node_id] = address
        self.transport.set_peers(self._peer_addresses())
        log.info("node %d applied %s %d", self.id, change.type.value, change.node_id)

    def _on_soft_state(self, kernel: RawNode, rd: Ready) -> None:
        assert rd.soft_state is not None
        log.info(
            "node %d is %s in term %d (leader %d)",
            self.id,
            rd.soft_state.role.value,
            kernel.term,
            rd.soft_state.leader,
        )
        if rd.soft_state.role is Role.LEADER and self.identity.cluster is None:
            with contextlib.suppress(Refused):  # a full queue: the next leader proposes it
                self.clients.propose(self.identity.marker(), Waiter())  # see app_identity.py
        if rd.soft_state.role is not Role.LEADER and self._waiting_apply:
            # Their entries may still commit under the next leader; the client retries with
            # the same session and the state machine applies the write once.
            for _term, waiter in self._waiting_apply.values():
                waiter.fail("retry", "leadership changed; outcome unknown, retry")
            self._waiting_apply.clear()

    async def _maybe_snapshot(self, kernel: RawNode) -> None:
        if self.local_snapshots.due(kernel):
            await self.ready_store.flush(kernel)  # the commit index reaches the snapshot's
            with self._time_keeper.keeping(kernel):
                await self.local_snapshots.begin(
                    kernel, members=dict(self.addresses), flags=self.flags.snapshot()
                )

    def _fail_all(self, kind: str, message: str) -> None:
        for _term, waiter in self._waiting_apply.values():
            waiter.fail(kind, message)
        for _key, waiter in self._waiting_reads.values():
            waiter.fail(kind, message)
        if self.components.ready:
            for _data, waiter in self.components.proposals.drain():
                waiter.fail(kind, message)
        for _ctx, _key, waiter in self._reads:
            waiter.fail(kind, message)
        for _index, waiter in self._apply_watchers:
            waiter.fail(kind, message)
        for waiter in self.clients.deadlines.drain():
            waiter.fail(kind, message)

    # == client service (``ClientService``, ``AdminOps``) ========================================

    def submit(self, request: ClientRequest, reply: Callable[[ClientResponse], None]) -> None:
        """``framework.transport.ClientService``: see ``ClientService.submit``."""
        self.clients.submit(request, reply)

    async def status(self) -> dict[str, Any]:
        """The status page (``AdminOps.status``)."""
        return await self.admin.status()


_CRITICAL = (VoteRequest, VoteResponse, Heartbeat, HeartbeatResponse, TimeoutNow)


def priority_of(msg: Message) -> Priority:
    """Messages that keep leadership alive go first and are shed last."""
    if isinstance(msg, _CRITICAL):
        return Priority.CRITICAL
    return Priority.HIGH
