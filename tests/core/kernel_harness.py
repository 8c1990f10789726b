"""A pure, in-memory cluster of ``RawNode`` kernels for the core tests (no I/O, no clock).

``Cluster`` owns, per node, the kernel, a ``MemoryLogStore`` playing the disk, and a toy
state machine (the list of applied payloads). It performs every ``Ready`` exactly as the
runtime must (``Ready`` documents the order): send ``messages``, persist snapshot, entries
and hard state, send ``persisted_messages``, restore/apply, collect reads, ``advance``.

Messages travel through ``Network``, a FIFO queue with cut links: a message whose link is
cut when it is *delivered* is dropped, so isolating a node also loses what was queued.

``restart(node)`` throws the kernel away and rebuilds it from the store alone, which is
what a crash keeps. Every action appends human-readable lines to ``Cluster.out``; the
transcript runner prints them, table tests ignore them or assert on the structured
records (``applied``, ``read_states``, ``dropped_reads``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from framework.core import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RaftConfig,
    RawNode,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_conf_change,
)
from framework.core.errors import InvalidMessage
from framework.storage import MemoryLogStore

__all__ = [
    "Cluster",
    "Network",
    "NodeRecord",
    "ack",
    "drain",
    "fingerprint",
    "fmt_entry",
    "fmt_ids",
    "fmt_message",
    "fmt_ready",
    "make_leader",
    "make_node",
    "make_stable_leader",
]

CLUSTER_ID = "kernel-tests"


# == formatting ================================================================================


def _data(data: bytes) -> str:
    return '"' + data.decode("utf-8", "backslashreplace") + '"'


def fmt_entry(entry: Entry) -> str:
    """``index@tTERM`` followed by what the entry carries."""
    head = f"{entry.index}@t{entry.term}"
    if entry.kind is EntryKind.NOOP:
        return f"{head} noop"
    if entry.kind is EntryKind.CONF_CHANGE:
        change = decode_conf_change(entry.data)
        return f"{head} conf:{change.type.value}({change.node_id})"
    if entry.kind is EntryKind.FLAGS:
        return f"{head} flags:{_data(entry.data)}"
    return f"{head} {_data(entry.data)}"


def fmt_ids(ids: Iterable[int]) -> str:
    return "(" + ",".join(str(i) for i in ids) + ")"


def fmt_message(msg: Message) -> str:
    route = f"{msg.src}->{msg.dst}"
    if isinstance(msg, VoteRequest):
        kind = "PreVote" if msg.pre_vote else "Vote"
        extra = " transfer" if msg.transfer else ""
        return f"{route} {kind} t{msg.term} last={msg.last_index}@t{msg.last_term}{extra}"
    if isinstance(msg, VoteResponse):
        kind = "PreVoteResp" if msg.pre_vote else "VoteResp"
        return f"{route} {kind} t{msg.term} {'granted' if msg.granted else 'rejected'}"
    if isinstance(msg, AppendEntries):
        entries = ", ".join(fmt_entry(e) for e in msg.entries)
        return (
            f"{route} App t{msg.term} prev={msg.prev_index}@t{msg.prev_term} "
            f"commit={msg.commit} [{entries}]"
        )
    if isinstance(msg, AppendResponse):
        if msg.reject:
            return (
                f"{route} AppResp t{msg.term} reject index={msg.index} "
                f"hint={msg.hint_index}@t{msg.hint_term}"
            )
        return f"{route} AppResp t{msg.term} index={msg.index}"
    if isinstance(msg, Heartbeat):
        ctx = f" ctx={_data(msg.context)}" if msg.context else ""
        return f"{route} Heartbeat t{msg.term} commit={msg.commit}{ctx}"
    if isinstance(msg, HeartbeatResponse):
        ctx = f" ctx={_data(msg.context)}" if msg.context else ""
        return f"{route} HeartbeatResp t{msg.term}{ctx}"
    if isinstance(msg, InstallSnapshot):
        meta = msg.snapshot.meta
        return (
            f"{route} Snapshot t{msg.term} snap={meta.index}@t{meta.term} "
            f"voters={fmt_ids(meta.conf_state.voters)} learners={fmt_ids(meta.conf_state.learners)}"
        )
    if isinstance(msg, TimeoutNow):
        return f"{route} TimeoutNow t{msg.term}"
    if isinstance(msg, ReadIndexRequest):
        return f"{route} ReadIndex t{msg.term} ctx={_data(msg.context)}"
    if isinstance(msg, ReadIndexResponse):
        return f"{route} ReadIndexResp t{msg.term} ctx={_data(msg.context)} index={msg.index}"
    raise TypeError(f"unknown message {msg!r}")  # pragma: no cover


def fmt_ready(node_id: int, rd: Ready) -> list[str]:
    lines = [f"> {node_id} ready"]
    if rd.soft_state is not None:
        lines.append(f"  soft: {rd.soft_state.role.value} leader={rd.soft_state.leader}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        lines.append(f"  hard: term={hs.term} vote={hs.vote} commit={hs.commit}")
    if rd.snapshot is not None:
        meta = rd.snapshot.meta
        lines.append(
            f"  snapshot: {meta.index}@t{meta.term} voters={fmt_ids(meta.conf_state.voters)} "
            f"learners={fmt_ids(meta.conf_state.learners)}"
        )
    if rd.entries:
        lines.append("  entries: " + ", ".join(fmt_entry(e) for e in rd.entries))
    lines.extend(f"  send: {fmt_message(m)}" for m in rd.messages)
    lines.extend(f"  send after persist: {fmt_message(m)}" for m in rd.persisted_messages)
    if rd.committed_entries:
        lines.append("  apply: " + ", ".join(fmt_entry(e) for e in rd.committed_entries))
    for rs in rd.read_states:
        lines.append(f"  read ready: ctx={_data(rs.context)} index={rs.index}")
    for ctx in rd.dropped_reads:
        lines.append(f"  read dropped: ctx={_data(ctx)}")
    if not rd:
        # has_ready() was true only because an append was owed that turned out empty.
        lines.append("  (empty)")
    return lines


# == network ===================================================================================


@dataclass(slots=True)
class Network:
    """FIFO queue of messages in flight; links are cut and healed by pairs of node ids."""

    queue: list[Message] = field(default_factory=list)
    cut: set[tuple[int, int]] = field(default_factory=set)
    """Directed links ``(src, dst)`` that lose every message."""
    isolated: set[int] = field(default_factory=set)

    def send(self, messages: Iterable[Message]) -> None:
        self.queue.extend(messages)

    def connected(self, src: int, dst: int) -> bool:
        return src not in self.isolated and dst not in self.isolated and (src, dst) not in self.cut

    def take(self, to: int | None = None) -> list[Message]:
        """Remove and return the queued messages (for ``to`` only when given), in order."""
        if to is None:
            taken, self.queue = self.queue, []
            return taken
        taken = [m for m in self.queue if m.dst == to]
        self.queue = [m for m in self.queue if m.dst != to]
        return taken

    def isolate(self, node_id: int) -> None:
        self.isolated.add(node_id)

    def cut_link(self, src: int, dst: int) -> None:
        self.cut.add((src, dst))

    def heal(self) -> None:
        self.isolated.clear()
        self.cut.clear()


# == nodes =====================================================================================

_SM_ENCODER = msgspec.msgpack.Encoder()
_SM_DECODER = msgspec.msgpack.Decoder(list[bytes])


@dataclass(slots=True)
class NodeRecord:
    node: RawNode
    store: MemoryLogStore
    config: RaftConfig
    bootstrap: ConfState
    state: list[bytes] = field(default_factory=list)
    """The toy state machine: payloads of applied normal entries, in order."""
    applied: list[Entry] = field(default_factory=list)
    """Every entry applied since the last (re)start, in order."""
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    readies: int = 0
    restarts: int = 0


class Cluster:
    """N kernels, their stores, and a network. Node ids are 1, 2, 3, ... in order of adding."""

    def __init__(self, *, seed: int = 0, strict: bool = True, **config: Any) -> None:
        self.seed = seed
        self.strict = strict
        """Raise ``InvalidMessage`` from delivery (a correct cluster never sends one, except
        late answers from a member the receiver has removed)."""
        self.default_config = config
        self.records: dict[int, NodeRecord] = {}
        self.network = Network()
        self.out: list[str] = []
        self.bootstrap: ConfState | None = None

    # -- building ------------------------------------------------------------------------------

    def add_nodes(
        self,
        count: int,
        *,
        voters: Iterable[int] | None = None,
        learners: Iterable[int] = (),
        **config: Any,
    ) -> list[int]:
        """Add ``count`` nodes with the next ids.

        The first call founds the cluster: its nodes bootstrap with the membership
        ``voters``/``learners`` (default: the new nodes are the voters), which the kernel
        writes as committed entries 1..n. Later nodes join empty (no ``voters`` given) and
        learn the membership from the leader's log or snapshot once a conf change adds them.
        """
        first = max(self.records, default=0) + 1
        ids = list(range(first, first + count))
        if voters is not None or self.bootstrap is None:
            conf = ConfState(
                voters=tuple(sorted(voters if voters is not None else ids)),
                learners=tuple(sorted(learners)),
            )
            if self.bootstrap is None:
                self.bootstrap = conf
        else:
            conf = ConfState()
        merged = {**self.default_config, **config}
        for nid in ids:
            cfg = RaftConfig(id=nid, **merged)
            store = MemoryLogStore()
            store.initialize(node_id=nid, cluster_id=CLUSTER_ID, conf_state=conf)
            node = RawNode(cfg, rng=self._rng(nid, 0), conf_state=conf)
            self.records[nid] = NodeRecord(node=node, store=store, config=cfg, bootstrap=conf)
        return ids

    def _rng(self, node_id: int, restarts: int) -> random.Random:
        return random.Random(f"{self.seed}/{node_id}/{restarts}")

    def node(self, node_id: int) -> RawNode:
        return self.records[node_id].node

    @property
    def ids(self) -> list[int]:
        return sorted(self.records)

    def leaders(self) -> list[int]:
        return [nid for nid in self.ids if self.node(nid).role is Role.LEADER]

    def leader(self) -> int:
        """The one node that is leader in the highest term; 0 if none."""
        best = (0, 0)
        for nid in self.leaders():
            best = max(best, (self.node(nid).term, nid))
        return best[1]

    # -- time and network ----------------------------------------------------------------------

    def tick(self, node_id: int, times: int = 1) -> None:
        node = self.node(node_id)
        for _ in range(times):
            node.tick()

    def tick_election(self, node_id: int) -> int:
        """Tick until the node's election timer fires (a follower or candidate campaigns, a
        leader runs its check-quorum); returns the number of ticks."""
        node = self.node(node_id)
        if node.role is Role.LEADER:
            times = node.config.election_tick - node.election_elapsed
        else:
            times = node.randomized_election_timeout - node.election_elapsed
        times = max(times, 1)
        self.tick(node_id, times)
        return times

    def tick_heartbeat(self, node_id: int) -> None:
        node = self.node(node_id)
        self.tick(node_id, node.config.heartbeat_tick - node.heartbeat_elapsed)

    def isolate(self, node_id: int) -> None:
        self.network.isolate(node_id)

    def cut(self, a: int, b: int) -> None:
        """Cut the link between ``a`` and ``b`` in both directions."""
        self.network.cut_link(a, b)
        self.network.cut_link(b, a)

    def heal(self) -> None:
        self.network.heal()

    def deliver(self, to: int | None = None) -> int:
        """Deliver every queued message (to ``to`` only, when given); returns how many
        reached their node. Lost messages are reported in ``out``."""
        delivered = 0
        for msg in self.network.take(to):
            record = self.records.get(msg.dst)
            if record is None or not self.network.connected(msg.src, msg.dst):
                self.out.append(f"  dropped: {fmt_message(msg)}")
                continue
            try:
                record.node.step(msg)
            except InvalidMessage as exc:
                # A member removed by a change the receiver has applied may still have
                # answers in flight; the kernel refuses them as from a non-member, which
                # is expected. Anything else from a correct cluster is a kernel bug.
                removed = msg.src not in record.node.conf_state.members()
                if self.strict and not removed:
                    raise
                self.out.append(f"  {msg.dst} refused {fmt_message(msg)}: {exc}")
            delivered += 1
        return delivered

    # -- the Ready loop ------------------------------------------------------------------------

    def process_ready(self, node_id: int) -> bool:
        """Perform one Ready of ``node_id`` in the documented order; False if none."""
        record = self.records[node_id]
        node = record.node
        if not node.has_ready():
            return False
        rd = node.ready()
        record.readies += 1
        self.out.extend(fmt_ready(node_id, rd))
        # 1. Leader appends may leave before the local write.
        self.network.send(rd.messages)
        # 2. One durable write: snapshot, entries, hard state.
        record.store.save_ready(
            hard_state=rd.hard_state,
            entries=rd.entries,
            snapshot=rd.snapshot,
            sync=rd.must_sync,
        )
        # 3. Votes and acknowledgements only once durable.
        self.network.send(rd.persisted_messages)
        # 4. Restore, apply, answer reads.
        if rd.snapshot is not None:
            record.state = list(_SM_DECODER.decode(rd.snapshot.data))
        for entry in rd.committed_entries:
            record.applied.append(entry)
            if entry.kind is EntryKind.NORMAL:
                record.state.append(entry.data)
        record.read_states.extend(rd.read_states)
        record.dropped_reads.extend(rd.dropped_reads)
        # 5. Acknowledge.
        node.advance(rd)
        return True

    def stabilize(self, ids: Iterable[int] | None = None, *, max_rounds: int = 1000) -> None:
        """Process Readies and deliver messages until nothing is left to do.

        With ``ids``, only those nodes process Readies and receive messages; messages to
        other nodes stay queued.
        """
        only = None if ids is None else sorted(ids)
        for _ in range(max_rounds):
            busy = False
            for nid in only if only is not None else self.ids:
                busy |= self.process_ready(nid)
            if only is None:
                if self.network.queue:
                    self.deliver()
                    busy = True
            else:
                for nid in only:
                    if any(m.dst == nid for m in self.network.queue):
                        self.deliver(nid)
                        busy = True
            if not busy:
                return
        raise AssertionError(f"cluster did not stabilize within {max_rounds} rounds")

    # -- storage -------------------------------------------------------------------------------

    def compact(self, node_id: int) -> Snapshot:
        """Snapshot the state machine at the applied index and drop the log before it (§7)."""
        record = self.records[node_id]
        snapshot = record.node.compact(_SM_ENCODER.encode(record.state))
        record.store.save_snapshot(snapshot)
        return snapshot

    def restart(self, node_id: int) -> None:
        """Crash and restart: keep only what the store holds (volatile state is lost)."""
        record = self.records[node_id]
        stored = record.store.load()
        assert stored is not None
        record.restarts += 1
        snapshot = stored.snapshot if stored.snapshot.meta.index > 0 else None
        record.node = RawNode(
            record.config,
            rng=self._rng(node_id, record.restarts),
            hard_state=stored.hard_state,
            entries=stored.entries,
            snapshot=snapshot,
            conf_state=stored.conf_state,
        )
        record.state = list(_SM_DECODER.decode(snapshot.data)) if snapshot else []
        record.applied = []

    # -- convenience for table tests -----------------------------------------------------------

    def elect(self, node_id: int) -> None:
        """Make ``node_id`` leader by campaigning and stabilizing the whole cluster."""
        self.node(node_id).campaign()
        self.stabilize()
        assert self.node(node_id).role is Role.LEADER, self.node(node_id).status()

    def propose(self, node_id: int, data: bytes) -> int:
        return self.node(node_id).propose(data)

    def state(self, node_id: int) -> list[bytes]:
        return self.records[node_id].state

    def take_output(self) -> list[str]:
        out, self.out = self.out, []
        return out


# == single-node helpers for table tests =======================================================


def make_node(
    nid: int = 1,
    voters: Iterable[int] = (1, 2, 3),
    learners: Iterable[int] = (),
    *,
    log: Iterable[int] = (),
    term: int | None = None,
    vote: int = 0,
    commit: int = 1,
    seed: int = 0,
    **config: Any,
) -> RawNode:
    """A node as restarted from storage: a snapshot at ``1@t1`` holding the membership,
    then one entry per term in ``log`` at indexes 2, 3, ...; commit defaults to 1.

    Readies are not drained: call ``drain`` when the test should start from quiet.
    """
    terms = list(log)
    conf = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
    snapshot = Snapshot(meta=SnapshotMeta(index=1, term=1, conf_state=conf))
    entries = [
        Entry(t, i, EntryKind.NORMAL, f"e{i}".encode()) for i, t in enumerate(terms, start=2)
    ]
    if term is None:
        term = max([1, *terms])
    return RawNode(
        RaftConfig(id=nid, **config),
        rng=random.Random(seed),
        hard_state=HardState(term=term, vote=vote, commit=commit),
        entries=entries,
        snapshot=snapshot,
    )


def drain(node: RawNode) -> list[Message]:
    """Perform every pending Ready of a lone node (as if persisted and applied) and return
    the messages they carried, in order."""
    out: list[Message] = []
    while node.has_ready():
        rd = node.ready()
        out.extend(rd.messages)
        out.extend(rd.persisted_messages)
        node.advance(rd)
    return out


def make_leader(nid: int = 1, voters: Iterable[int] = (1, 2, 3), **kwargs: Any) -> RawNode:
    """``make_node`` then win an election by stepping granted votes from every voter;
    returns the leader with its no-op appended and persisted (not yet acknowledged)."""
    node = make_node(nid, voters, **kwargs)
    drain(node)
    node.campaign()
    for _ in range(2):  # pre-vote round (if enabled), then the vote round
        requests = [m for m in drain(node) if isinstance(m, VoteRequest)]
        for req in requests:
            node.step(
                VoteResponse(
                    src=req.dst, dst=nid, term=req.term, granted=True, pre_vote=req.pre_vote
                )
            )
        if node.role is Role.LEADER:
            break
    assert node.role is Role.LEADER, node.status()
    drain(node)
    return node


def ack(node: RawNode, src: int, index: int) -> None:
    """Step an accepting AppendResponse for ``index`` from ``src`` in the node's term."""
    node.step(AppendResponse(src=src, dst=node.id, term=node.term, index=index))


def fingerprint(node: RawNode) -> tuple[object, ...]:
    """Everything observable about a node's state, to assert that nothing changed."""
    return (
        node.status(),
        tuple(node.log.entries),
        node.log.offset,
        node.log.unstable_from,
        node.has_ready(),
        node.election_elapsed,
        dict(node.votes),
        {nid: repr(pr) for nid, pr in node.progress.items()},
    )


def make_stable_leader(nid: int = 1, voters: Iterable[int] = (1, 2, 3), **kwargs: Any) -> RawNode:
    """``make_leader`` whose followers have all acknowledged the no-op (REPLICATE state)."""
    leader = make_leader(nid, voters, **kwargs)
    noop = leader.log.last_index()
    for peer in sorted(voters):
        if peer != nid:
            ack(leader, peer, noop)
    drain(leader)
    return leader
