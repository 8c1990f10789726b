"""A deterministic cluster simulator that checks Raft's safety properties after every step.

Theory of operation
-------------------
One ``random.Random(seed)`` drives everything: the network (``SimNetwork``: loss, delay,
long delays, reordering, duplication, partitions, one-way ones and single severed links),
crashes and restarts (quick ones too, and crashes in the Ready that records a granted
vote), pauses, clock drift, leadership transfers, faults aimed at the leader, membership
changes and the clients. Each node is a ``RawNode`` over a ``SimDisk``; the simulator
performs every ``Ready`` in the documented order (send, persist, send-after-persist, apply,
advance), sometimes stepping messages that arrive meanwhile before ``advance`` (the
contract allows it) and applying only a few entries per Ready (apply lag). With slow apply
a node applies one entry per tick and its Ready stays outstanding until it has: messages,
ticks and proposals are stepped meanwhile, and a restarted node re-applies its log for
ticks. A crash throws the kernel and the state machine away and keeps only what the disk
kept: synced writes, a random prefix of the unsynced ones, and, for a crash in the middle
of a write, a prefix of it (``SimDisk``); a crash can strike before, during or after the
write, or after applying. A paused node keeps its state, receives nothing and ticks not; it
resumes with every tick it missed (as the runtime's ``TickClock`` delivers them), then what
arrived meanwhile, unless its inbox was lost (its peers' connections timed out; it then
stays deaf for up to an election timeout). Each node's clock ticks at its own rate
(``clock_drift``) from its own phase.

Faults aimed at the leader (``leader_faults``, ``leader_fault_kinds``): cut it off, make it
deaf, cut it off just after its check-quorum passed, pause it, crash it (maybe part-way
through a Ready), start a transfer and deafen it, crash a minority "rack" of voters that
comes back partitioned off, and "bounce": its clients lose it, a follower pauses, then it
is cut off from its peers while another follower restarts and the paused one resumes.

Checked after every step (a message delivered, a tick, a Ready performed):
- election safety: at most one leader per term (P §5.2);
- log matching: an ``(index, term)`` pair names one entry, with one predecessor term, on
  every node that ever stores it (P §5.3; by induction the prefixes are equal);
- leader completeness: a new leader's log holds every entry committed before its term
  existed (P §5.4; a leader of an older term whose votes arrive late need not); and, in
  runs without membership changes, when an index first commits, no node lacking it has a
  log at least as up to date as a majority's (it could be elected: Figure 8);
- state machine safety: every node applies the same entry at each index (P §5.4.3);
- durable commit: the commit index a node persisted never goes backward;
- replica agreement: nodes at the same applied index hold the same state machine bytes and
  the same membership.

Simulated clients run a KV workload with ``(client_id, seq)`` de-duplication, retrying
through leader changes; the history they observe is checked for linearizability
(``framework.sim.linearizability``); a history it cannot decide fails the run. Clients may
send to a random node or to any node that believes it leads. After the fault phase, the
network heals, paused nodes resume and crashed nodes restart; a leader must then be elected
and every pending request must complete within a bounded number of ticks (liveness).

A failure raises ``SimulationFailure`` whose message ends with the command that replays it:
``python -m framework.sim.simulator --seed N`` (plus any non-default options).
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from framework.core import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    InstallSnapshot,
    InvalidMessage,
    Message,
    NotLeader,
    ProposalRejected,
    RaftConfig,
    RawNode,
    Ready,
    Role,
    decode_conf_change,
    decode_message,
    encode_message,
)
from framework.sim.disk import SimDisk
from framework.sim.linearizability import Operation, check_history
from framework.sim.network import LinkFaults, Partition, SimNetwork
from framework.statemachine import (
    Append,
    Cas,
    Delete,
    Get,
    KVStateMachine,
    Put,
    Request,
    encode_request,
)

__all__ = ["SimOptions", "SimResult", "Simulation", "SimulationFailure", "main", "run_seed"]


class SimulationFailure(AssertionError):
    """A safety or liveness property failed; the message names it and how to replay."""


LEADER_FAULT_KINDS = (
    "isolate",
    "deaf",
    "after_check",
    "pause",
    "crash",
    "bounce",
    "transfer_deaf",
    "rack",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    seed: int
    nodes: int = 3
    ticks: int = 300
    """Length of the fault phase."""
    liveness_ticks: int = 300
    """Bound, after faults stop, for electing a leader and completing every request."""
    drop: float = 0.05
    duplicate: float = 0.02
    max_delay: int = 3
    partitions: bool = True
    crashes: bool = True
    membership: bool = True
    snapshot_every: int = 30
    membership_rate: float = 0.01
    """Probability per tick (times ``fault_rate``) of a membership change."""
    clients: int = 3
    keys: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 2
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 256
    max_inflight_msgs: int = 4
    fault_rate: float = 1.0
    """Scales how often partitions, crashes, pauses, transfers and membership changes
    happen (harsher schedules mean many elections per run)."""
    long_delay: float = 0.0
    """Probability that a message is held back for up to ``4 * election_tick`` ticks."""
    pauses: bool = False
    """SIGSTOP-like pauses: a node stops ticking and handling messages, then resumes."""
    catch_up_ticks: bool = True
    """A resumed node is given every tick it missed (the runtime's ``TickClock``); off
    models a runtime that adds one tick per wake-up."""
    clock_drift: float = 0.0
    """Each node's clock runs at a rate drawn from ``1 +- clock_drift``, from a random
    phase (skew)."""
    transfers: bool = False
    lease_reads: bool = False
    lease_drift_ticks: int = 4
    apply_lag: int = 0
    """``max_committed_per_ready`` (0: no cap): nodes apply at most this many entries per
    Ready, so commit runs ahead of apply."""
    step_in_ready: float = 0.0
    """Probability that a Ready's node steps messages (and ticks) before ``advance``."""
    torn_writes: bool = False
    """Crashes may tear the write in progress (see ``SimDisk.tear``)."""
    min_voters: int = 3
    """Membership changes may remove voters down to this many."""
    leader_faults: float = 0.0
    """Probability per tick of a fault aimed at the leader: cut off, deaf (it still sends)
    or paused, for one to four election timeouts; many elections and deposed leaders."""
    random_reads: float = 0.0
    """Probability that a client sends an operation to a random node, or to a node that
    believes it leads (a deposed leader, maybe), instead of the leader it knows."""
    leader_fault_kinds: str = ""
    """Comma-separated kinds of faults aimed at the leader (isolate, deaf, after_check,
    pause, crash, bounce, transfer_deaf, rack); empty: every kind the other options
    allow."""
    quick_restarts: bool = False
    """Crashed nodes come back after 1 to 3 ticks (a supervisor restarts them at once)
    instead of 5 to 60."""
    crash_on_vote: float = 0.0
    """Probability that a node crashes in the Ready that records a vote it granted, before
    that Ready is persisted (whatever the kernel sent ahead of persisting is out)."""
    pause_loses_inbox: bool = False
    """Messages sent to a paused node are lost (its peers' connections to it time out and
    drop what they queued), so it resumes knowing nothing of what happened meanwhile."""
    slow_apply: bool = False
    """A slow state machine: it applies one entry per tick, and the Ready that carries them
    stays outstanding (no ``advance``) until they are applied, while messages, ticks and
    proposals keep arriving. A restarted node takes ticks to re-apply its log."""

    def __post_init__(self) -> None:
        unknown = set(filter(None, self.leader_fault_kinds.split(","))) - set(LEADER_FAULT_KINDS)
        if unknown:
            raise ValueError(
                f"leader_fault_kinds={self.leader_fault_kinds!r}: unknown {sorted(unknown)}, "
                f"expected a comma-separated subset of {', '.join(LEADER_FAULT_KINDS)}"
            )

    @staticmethod
    def mixed(seed: int) -> SimOptions:
        """The options a sweep uses for ``seed``: cluster size and fault mix vary by seed."""
        rng = random.Random(f"options-{seed}")
        check_quorum = rng.random() < 0.8
        return SimOptions(
            seed=seed,
            nodes=rng.choice((3, 3, 5, 5, 7)),
            drop=rng.choice((0.0, 0.02, 0.1, 0.2)),
            duplicate=rng.choice((0.0, 0.05)),
            max_delay=rng.choice((1, 2, 4, 8)),
            partitions=rng.random() < 0.8,
            crashes=rng.random() < 0.8,
            membership=rng.random() < 0.6,
            snapshot_every=rng.choice((5, 20, 60)),
            pre_vote=rng.random() < 0.8,
            check_quorum=check_quorum,
            fault_rate=rng.choice((1.0, 2.0, 4.0)),
            long_delay=rng.choice((0.0, 0.0, 0.005, 0.02)),
            pauses=rng.random() < 0.5,
            clock_drift=rng.choice((0.0, 0.02, 0.05)),
            transfers=rng.random() < 0.5,
            lease_reads=check_quorum and rng.random() < 0.5,
            apply_lag=rng.choice((0, 0, 1, 3)),
            step_in_ready=rng.choice((0.0, 0.1, 0.3)),
            torn_writes=rng.random() < 0.5,
            min_voters=rng.choice((1, 2, 3)),
            random_reads=rng.choice((0.0, 0.2, 0.5)),
            leader_faults=rng.choice((0.0, 0.01, 0.03)),
            quick_restarts=rng.random() < 0.5,
            crash_on_vote=rng.choice((0.0, 0.0, 0.1)),
            pause_loses_inbox=rng.random() < 0.3,
            slow_apply=rng.random() < 0.3,
        )

    def command(self) -> str:
        mixed = SimOptions.mixed(self.seed)
        parts = [f"python -m framework.sim.simulator --seed {self.seed}"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "seed" and value != getattr(mixed, f.name):
                flag = "--" + f.name.replace("_", "-")
                parts.append(
                    f"{flag} {value}"
                    if not isinstance(value, bool)
                    else f"{flag} {'on' if value else 'off'}"
                )
        return " ".join(parts)


@dataclass(slots=True)
class SimResult:
    options: SimOptions
    ticks: int = 0
    steps: int = 0
    elections: int = 0
    committed: int = 0
    operations: int = 0
    completed: int = 0
    crashes: int = 0
    conf_changes: int = 0
    snapshots_sent: int = 0
    messages: int = 0
    dropped: int = 0
    leader_after_heal: int = -1
    """Ticks from the end of the faults until a leader was elected."""
    linearizability: str = "ok"
    pauses: int = 0
    transfers: int = 0
    reads_without_round: int = 0
    """Reads a leader that is not the only voter answered at once (from its lease)."""
    stale_reads_from_deposed: int = 0
    """Reads served by a node that was no longer the newest leader (fine if linearizable)."""
    lost_writes: int = 0
    steps_in_ready: int = 0
    digests_compared: int = 0
    aimed_faults: dict[str, int] = field(default_factory=dict)
    """Faults aimed at the leader, by kind."""

    def summary(self) -> str:
        return (
            f"seed {self.options.seed}: {self.options.nodes} nodes, {self.ticks} ticks, "
            f"{self.steps} steps, {self.elections} elections, {self.committed} committed, "
            f"{self.completed}/{self.operations} ops completed, {self.crashes} crashes, "
            f"{self.pauses} pauses, {self.transfers} transfers, {self.reads_without_round} "
            f"lease reads, {self.stale_reads_from_deposed} reads from deposed leaders, "
            f"{self.lost_writes} unsynced writes lost, {self.steps_in_ready} steps "
            f"inside a Ready, {self.conf_changes} membership changes, {self.messages} "
            f"messages ({self.dropped} lost), {self.digests_compared} digests compared, "
            f"leader {self.leader_after_heal} ticks after heal, "
            f"linearizability {self.linearizability}"
        )


# -- clients -------------------------------------------------------------------------------


@dataclass(slots=True)
class _ClientOp:
    kind: str
    key: str
    value: str | None
    expected: str | None
    seq: int
    call: int
    attempt: int = 0
    deadline: int = 0
    retry_at: int = 0
    via_read_index: bool = False


@dataclass(slots=True)
class _Client:
    id: int
    seq: int = 0
    leader_guess: int = 0
    op: _ClientOp | None = None
    idle_until: int = 0


# -- nodes ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    id: int
    store: SimDisk
    kernel: RawNode | None = None
    sm: KVStateMachine = field(default_factory=KVStateMachine)
    applied: int = 0
    proposals: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    """index -> (term, client id, attempt)."""
    reads: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    """read context -> (client id, attempt)."""
    ready_reads: list[tuple[int, bytes]] = field(default_factory=list)
    persisted_commit: int = 0
    crash_in_ready: str = ""
    down_until: int = -1
    removed: bool = False
    removed_at: int = 0
    survivors: tuple[int, ...] = ()
    """The voters its removal left, recorded once its kernel applied the removal."""
    retired: bool = False
    """Decommissioned by the operator (after its removal): never restarts."""
    rate: float = 1.0
    """Ticks of this node's clock per simulator tick (clock drift)."""
    phase: float = 0.0
    """Fraction of a tick accumulated (clock skew: nodes tick at different instants)."""
    paused_until: int = -1
    missed: float = 0.0
    """Ticks that elapsed on this node's clock while it was paused."""
    backlog: list[bytes] = field(default_factory=list)
    """Messages that arrived while it was paused, handled when it resumes."""
    apply_until: int = -1
    """The tick at which the entries of its outstanding Ready are applied (slow apply)."""
    deaf_until: int = -1
    """After a pause that lost its inbox, messages to it are lost until this tick (its
    peers reconnect with backoff)."""
    voted: tuple[int, int] = (0, 0)
    """(term, vote) of the hard state it last persisted."""
    unfinished: tuple[Ready, str] | None = None
    """A persisted Ready whose entries are still being applied (slow apply), and where in
    it the node is to crash; ``advance`` comes at the next tick, input keeps arriving."""

    @property
    def paused(self) -> bool:
        return self.paused_until >= 0

    @property
    def up(self) -> bool:
        return self.kernel is not None


_CRASH_POINTS = ("before_persist", "after_persist", "after_apply")
_TORN_CRASH_POINTS = (*_CRASH_POINTS, "torn")


class Simulation:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        faults = LinkFaults(
            drop=options.drop,
            duplicate=options.duplicate,
            min_delay=1,
            max_delay=options.max_delay,
            long_delay=options.long_delay,
            long_delay_max=4 * options.election_tick,
        )
        self.network: SimNetwork[bytes] = SimNetwork(random.Random(self.rng.random()), faults)
        self.now = 0
        self.clock = 0
        self.result = SimResult(options=options)
        voters = tuple(range(1, options.nodes + 1))
        self.nodes: dict[int, _Node] = {}
        for nid in voters:
            self._add_node(nid, ConfState(voters=voters))
        self.next_node_id = options.nodes + 1
        self.clients = [_Client(id=100 + i) for i in range(options.clients)]
        self.history: list[Operation] = []
        # Global records for the safety checks.
        self.leaders: dict[int, int] = {}
        self.entry_ids: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.applied_log: dict[int, tuple[int, int, bytes]] = {}
        self.max_commit = 0
        self.max_term = 0
        """The highest term any kernel reached so far."""
        self.commit_marks: list[tuple[int, int]] = []
        """(max_term when first applied, index): each index committed while no term past
        max_term existed, so every leader of a later term must hold it."""
        self.digests: dict[int, tuple[bytes, ConfState, int]] = {}
        """applied index -> (state machine bytes, membership, node) first seen there."""
        self.faulty = True
        self.partition_until = -1
        self.cut_after_check = 0
        """A leader to cut off as soon as its check-quorum passes (its lease is longest)."""
        self.clients_cut = 0
        """A node that clients cannot reach (its client-facing network is down)."""
        self.bounce: tuple[int, int, int, int] | tuple[()] = ()
        """(tick, stage, leader, follower): the next step of the "bounce" leader fault."""
        self.attempts = 0
        self.trace: list[str] = []

    # -- set-up ------------------------------------------------------------------------------

    def _add_node(self, nid: int, conf_state: ConfState) -> _Node:
        store = SimDisk()
        store.initialize(node_id=nid, cluster_id="sim", conf_state=conf_state)
        drift = self.options.clock_drift
        node = _Node(
            id=nid,
            store=store,
            rate=1.0 + self.rng.uniform(-drift, drift),
            phase=self.rng.random(),
        )
        self.nodes[nid] = node
        self._start(node)
        return node

    def _raft_config(self, nid: int) -> RaftConfig:
        o = self.options
        return RaftConfig(
            id=nid,
            election_tick=o.election_tick,
            heartbeat_tick=o.heartbeat_tick,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            max_size_per_msg=o.max_size_per_msg,
            max_inflight_msgs=o.max_inflight_msgs,
            lease_reads=o.lease_reads and o.check_quorum,  # leases need check-quorum
            lease_drift_ticks=o.lease_drift_ticks,
            max_committed_per_ready=o.apply_lag,
        )

    def _start(self, node: _Node) -> None:
        state = node.store.load()
        assert state is not None
        node.kernel = RawNode(
            self._raft_config(node.id),
            rng=random.Random(self.rng.random()),
            hard_state=state.hard_state,
            entries=state.entries,
            snapshot=state.snapshot,
            conf_state=state.conf_state,
        )
        node.sm = KVStateMachine()
        if state.snapshot.data:
            node.sm.restore(state.snapshot.data)
        node.applied = state.snapshot.meta.index
        node.persisted_commit = state.hard_state.commit
        node.voted = (state.hard_state.term, state.hard_state.vote)
        node.proposals.clear()
        node.reads.clear()
        node.ready_reads.clear()
        node.crash_in_ready = ""
        node.paused_until = -1
        node.backlog.clear()
        node.unfinished = None

    def _crash(self, node: _Node, why: str, *, torn: Ready | None = None) -> None:
        self._log(f"crash {node.id} ({why})")
        if torn is not None:
            node.store.tear(
                self.rng, hard_state=torn.hard_state, entries=torn.entries, snapshot=torn.snapshot
            )
        else:
            node.store.crash(self.rng)
        self.result.lost_writes = sum(n.store.lost_writes for n in self.nodes.values())
        node.kernel = None
        node.proposals.clear()
        node.reads.clear()
        node.ready_reads.clear()
        node.paused_until = -1
        node.backlog.clear()
        node.unfinished = None
        node.down_until = self.now + (
            self.rng.randint(1, 3) if self.options.quick_restarts else self.rng.randint(5, 60)
        )
        self.network.drop_to(node.id)
        self.result.crashes += 1

    def _log(self, line: str) -> None:
        self.trace.append(f"[{self.now}] {line}")
        if len(self.trace) > 200:
            del self.trace[:100]

    def fail(self, what: str) -> SimulationFailure:
        tail = "\n".join(self.trace[-30:])
        return SimulationFailure(
            f"{what}\n-- last events --\n{tail}\n-- replay with --\n{self.options.command()}"
        )

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> SimResult:
        o = self.options
        for _ in range(o.ticks):
            self._fault_events()
            self._tick()
        self._heal()
        healed_at = self.now
        leader_seen = -1
        for _ in range(o.liveness_ticks):
            self._tick()
            if leader_seen < 0 and self._has_leader():
                leader_seen = self.now - healed_at
            if leader_seen >= 0 and all(c.op is None for c in self.clients):
                break
        self.result.leader_after_heal = leader_seen
        if leader_seen < 0:
            raise self.fail(
                f"liveness: no leader within {o.liveness_ticks} ticks after the faults stopped"
            )
        pending = [c for c in self.clients if c.op is not None]
        if pending:
            ops = ", ".join(f"client {c.id} {c.op.kind} {c.op.key}" for c in pending if c.op)
            raise self.fail(
                f"liveness: requests still pending {o.liveness_ticks} ticks after the faults "
                f"stopped: {ops}"
            )
        self._check_linearizable()
        self.result.ticks = self.now
        self.result.committed = self.max_commit
        self.result.messages = self.network.sent
        self.result.dropped = self.network.dropped
        return self.result

    def _has_leader(self) -> bool:
        for node in self.nodes.values():
            k = node.kernel
            if k is not None and k.role is Role.LEADER and k.id in k.conf_state.voters:
                return True
        return False

    def _tick(self) -> None:
        self.now += 1
        for node in list(self.nodes.values()):
            if node.kernel is None:
                # A removed node that crashes restarts too until it is decommissioned: a
                # voter that has not applied the removal may still need its vote.
                if self.faulty and not node.retired and 0 <= node.down_until <= self.now:
                    self._log(f"restart {node.id}")
                    self._start(node)
                continue
            node.phase += node.rate
            ticks = int(node.phase)
            node.phase -= ticks
            if node.paused:
                node.missed += ticks
                if node.paused_until > self.now:
                    continue
                self._resume(node)
                continue
            if node.apply_until <= self.now:
                self._finish_unfinished(node)
                if node.kernel is None:
                    continue
            for _ in range(ticks):
                node.kernel.tick()
            self._process(node)
        for _src, dst, payload in self.network.due(self.now):
            target = self.nodes.get(dst)
            if target is None or target.kernel is None:
                continue
            if target.deaf_until > self.now:
                self.network.dropped += 1
                continue
            if target.paused:
                if self.options.pause_loses_inbox:
                    self.network.dropped += 1
                else:
                    target.backlog.append(payload)
                continue
            self._deliver(target, payload)
        self._run_clients()

    def _resume(self, node: _Node) -> None:
        """A paused node wakes: first the ticks it missed, then what arrived meanwhile."""
        kernel = node.kernel
        assert kernel is not None
        missed = int(node.missed) if self.options.catch_up_ticks else 1
        self._log(f"resume {node.id} ({missed} ticks)")
        node.paused_until = -1
        node.missed = 0.0
        if node.apply_until <= self.now:
            self._finish_unfinished(node)
            if node.kernel is None:
                return
        if self.options.pause_loses_inbox and self.faulty:
            node.deaf_until = self.now + self.rng.randint(0, self.options.election_tick)
        for _ in range(missed):
            kernel.tick()
        self._process(node)
        backlog, node.backlog = node.backlog, []
        for payload in backlog:
            if node.kernel is None:
                return
            self._deliver(node, payload)

    def _deliver(self, node: _Node, payload: bytes) -> None:
        assert node.kernel is not None
        if node.unfinished is not None:
            self.result.steps_in_ready += 1
        self._step(node, node.kernel, payload)
        self._process(node)

    def _step(self, node: _Node, kernel: RawNode, payload: bytes) -> None:
        try:
            msg = decode_message(payload)
            kernel.step(msg)
        except InvalidMessage as exc:
            # Only a removed node's late responses may legitimately be refused here.
            text = str(exc)
            if "not a member" not in text:
                raise self.fail(f"node {node.id} rejected a message: {exc}") from exc
        self.result.steps += 1

    # -- performing a Ready --------------------------------------------------------------------

    def _process(self, node: _Node) -> None:
        while node.kernel is not None and not node.paused and node.kernel.has_ready():
            if node.unfinished is not None:
                return  # applying: the next Ready waits for advance()
            self._handle_ready(node, node.kernel, node.kernel.ready())

    def _finish_unfinished(self, node: _Node) -> None:
        if node.unfinished is not None and node.kernel is not None:
            rd, crash_at = node.unfinished
            node.unfinished = None
            self._finish_ready(node, node.kernel, rd, crash_at)

    def _send(self, kernel: RawNode, msgs: Sequence[Message]) -> None:
        for msg in msgs:
            sent = self.network.send(self.now, msg.src, msg.dst, encode_message(msg))
            # A cut link: half the time a transport notices the peer is unreachable.
            if not sent and self.rng.random() < 0.5:
                kernel.report_unreachable(msg.dst)
                if isinstance(msg, InstallSnapshot):
                    kernel.report_snapshot(msg.dst, success=False)

    def _handle_ready(self, node: _Node, kernel: RawNode, rd: Ready) -> None:
        crash_at = node.crash_in_ready if (rd.entries or rd.hard_state) else ""
        self.max_term = max(self.max_term, kernel.term)
        hs = rd.hard_state
        if (
            self.options.crash_on_vote
            and hs is not None
            and hs.vote not in (0, node.id)
            and (hs.term, hs.vote) != node.voted
            and self.faulty
            and self.rng.random() < self.options.crash_on_vote
        ):
            crash_at = "before_persist"
        if rd.soft_state is not None:
            # Checked against the Ready's own moment: a step before ``advance`` may move on.
            self._on_soft_state(node, kernel, rd)
        self._send(kernel, rd.messages)
        if crash_at == "before_persist":
            self._crash(node, "in a Ready, before persisting")
            return
        if crash_at == "torn":
            self._crash(node, "in a Ready, in the middle of its write", torn=rd)
            return
        self._check_new_entries(node, kernel, rd.entries)
        if rd.hard_state is not None:
            if rd.hard_state.commit < node.persisted_commit:
                raise self.fail(
                    f"durable commit: node {node.id} persisted commit {rd.hard_state.commit} "
                    f"after {node.persisted_commit}"
                )
            node.persisted_commit = rd.hard_state.commit
            node.voted = (rd.hard_state.term, rd.hard_state.vote)
        node.store.save_ready(
            hard_state=rd.hard_state,
            entries=rd.entries,
            snapshot=rd.snapshot,
            sync=rd.must_sync,
        )
        if crash_at == "after_persist":
            self._crash(node, "in a Ready, after persisting")
            return
        self._send(kernel, rd.persisted_messages)
        if self.options.step_in_ready and self.rng.random() < self.options.step_in_ready:
            # The kernel's contract allows input between ready() and advance(): a slow
            # apply while messages and ticks keep arriving.
            for payload in self.network.take_for(node.id, self.now, self.rng.randint(1, 3)):
                self.result.steps_in_ready += 1
                self._step(node, kernel, payload)
        if self.options.slow_apply and rd.committed_entries:
            # A slow state machine: the entries are applied, and the Ready advanced, at the
            # next tick; what arrives meanwhile is stepped with this Ready outstanding.
            node.apply_until = self.now + len(rd.committed_entries)
            node.unfinished = (rd, crash_at)
            return
        self._finish_ready(node, kernel, rd, crash_at)

    def _finish_ready(self, node: _Node, kernel: RawNode, rd: Ready, crash_at: str) -> None:
        if rd.snapshot is not None:
            node.sm.restore(rd.snapshot.data)
            node.applied = rd.snapshot.meta.index
            self._log(f"node {node.id} installed snapshot at {node.applied}")
            self.result.snapshots_sent += 1
        for entry in rd.committed_entries:
            self._apply(node, entry)
        node.ready_reads.extend((rs.index, rs.context) for rs in rd.read_states)
        for context in rd.dropped_reads:
            self._read_failed(node, context)
        if crash_at == "after_apply":
            self._crash(node, "in a Ready, after applying")
            return
        kernel.advance(rd)
        if node.removed and not node.survivors and node.id not in kernel.conf_state.voters:
            node.survivors = kernel.conf_state.voters
        self._check_digest(node, kernel)
        self._serve_reads(node)
        if node.applied - kernel.snapshot.meta.index >= self.options.snapshot_every:
            snapshot = kernel.compact(node.sm.snapshot())
            node.store.save_snapshot(snapshot)

    def _check_digest(self, node: _Node, kernel: RawNode) -> None:
        """Replicas at the same applied index hold the same state and membership."""
        if kernel.snapshot.meta.index > node.applied or kernel.log.applied != node.applied:
            return  # a snapshot stepped in before advance() is not restored yet
        mine = (node.sm.snapshot(), kernel.conf_state)
        seen = self.digests.setdefault(node.applied, (*mine, node.id))
        self.result.digests_compared += 1
        if seen[:2] != mine:
            what = "membership" if seen[0] == mine[0] else "state machine"
            raise self.fail(
                f"replica divergence: node {node.id} and node {seen[2]} differ in "
                f"{what} at applied index {node.applied} ({seen[1]} vs {mine[1]})"
            )

    def _check_new_entries(self, node: _Node, kernel: RawNode, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        prev_term = kernel.log.term(entries[0].index - 1)
        for entry in entries:
            key = (entry.index, entry.term)
            seen = self.entry_ids.get(key)
            mine = (int(entry.kind), entry.data, prev_term if prev_term is not None else -1)
            if seen is None:
                self.entry_ids[key] = mine
            elif seen[:2] != mine[:2] or (seen[2] != mine[2] and -1 not in (seen[2], mine[2])):
                raise self.fail(
                    f"log matching: node {node.id} stores entry (index={entry.index}, "
                    f"term={entry.term}) different from another node's"
                )
            prev_term = entry.term

    def _apply(self, node: _Node, entry: Entry) -> None:
        record = (entry.term, int(entry.kind), entry.data)
        seen = self.applied_log.get(entry.index)
        if seen is None:
            self.applied_log[entry.index] = record
        elif seen != record:
            raise self.fail(
                f"state machine safety: node {node.id} applied (index={entry.index}, "
                f"term={entry.term}) but another node applied term {seen[0]} there"
            )
        if entry.index > self.max_commit:
            self.max_commit = entry.index
            terms = (n.kernel.term for n in self.nodes.values() if n.kernel is not None)
            self.max_term = max(self.max_term, *terms)
            self.commit_marks.append((self.max_term, entry.index))
            if not self.options.membership:
                self._check_electable(entry)
        result = node.sm.apply(entry)
        node.applied = entry.index
        if entry.kind is EntryKind.CONF_CHANGE:
            self._on_conf_change(node, entry)
        waiting = node.proposals.pop(entry.index, None)
        if waiting is not None:
            term, client_id, attempt = waiting
            if term == entry.term:
                self._complete(client_id, attempt, result)
            else:
                self._retry_soon(client_id, attempt)

    def _check_electable(self, entry: Entry) -> None:
        """No node without a committed entry can win an election (P §5.4.3's argument).

        In Raft a majority stores a committed entry, and a log at least as up to date as
        one of theirs holds it; so the voters a node lacking the entry could get votes from
        (those whose logs its own log is at least as up to date as) are a minority. Checked
        among running nodes, for the fixed membership of runs without changes, when an
        index is first applied: a commit rule that counts replicas of an entry from an
        earlier term (Figure 8) fails here before any later leader overwrites the entry."""
        logs = {
            n.id: n.kernel.log
            for n in self.nodes.values()
            if n.kernel is not None and n.id <= self.options.nodes
        }
        need = self.options.nodes // 2 + 1
        for nid, log in logs.items():
            if entry.index <= log.offset or log.term(entry.index) == entry.term:
                continue
            mine = (log.last_term(), log.last_index())
            electors = [
                v for v, other in logs.items() if mine >= (other.last_term(), other.last_index())
            ]
            if len(electors) >= need:
                raise self.fail(
                    f"leader completeness: node {nid} lacks the committed entry "
                    f"(index={entry.index}, term={entry.term}) yet its log is as up to date "
                    f"as those of nodes {sorted(electors)}, a majority: it could be elected"
                )

    def _on_conf_change(self, node: _Node, entry: Entry) -> None:
        change = decode_conf_change(entry.data)
        if change.type is ConfChangeType.REMOVE and change.node_id == node.id:
            # The operator decommissions a removed node some time after its removal.
            node.removed = True
            node.removed_at = entry.index
            node.survivors = ()  # known once the kernel has applied it (``advance``)

    def _on_soft_state(self, node: _Node, kernel: RawNode, rd: Ready) -> None:
        assert rd.soft_state is not None
        if rd.soft_state.role is Role.LEADER:
            term = kernel.term
            other = self.leaders.setdefault(term, node.id)
            if other != node.id:
                raise self.fail(f"election safety: nodes {other} and {node.id} lead term {term}")
            self.result.elections += 1
            self._log(f"node {node.id} leads term {term}")
            # P §5.4: a leader holds every entry committed before its term existed (a
            # leader of an older term, elected by votes that arrive late, need not).
            at = bisect.bisect_left(self.commit_marks, (term, -1)) - 1
            committed = self.commit_marks[at][1] if at >= 0 else 0
            if committed and committed > kernel.log.offset:
                want = self.applied_log[committed][0]
                if kernel.log.term(committed) != want:
                    raise self.fail(
                        f"leader completeness: node {node.id} leads term {term} without the "
                        f"committed entry (index={committed}, term={want})"
                    )
        elif node.proposals:
            # Lost leadership: the outcome of pending proposals is unknown; clients retry.
            for _index, (_term, client_id, attempt) in list(node.proposals.items()):
                self._retry_soon(client_id, attempt)
            node.proposals.clear()

    # -- reads ---------------------------------------------------------------------------------

    def _serve_reads(self, node: _Node) -> None:
        if not node.ready_reads:
            return
        keep = []
        for index, context in node.ready_reads:
            if index > node.applied:
                keep.append((index, context))
                continue
            waiting = node.reads.pop(context, None)
            if waiting is None:
                continue
            client_id, attempt = waiting
            client = self._client(client_id)
            if client.op is not None and client.op.attempt == attempt:
                kernel = node.kernel
                if kernel is not None and self.leaders and kernel.term < max(self.leaders):
                    self.result.stale_reads_from_deposed += 1
                self._complete(client_id, attempt, node.sm.read(client.op.key))
        node.ready_reads = keep

    def _read_failed(self, node: _Node, context: bytes) -> None:
        waiting = node.reads.pop(context, None)
        if waiting is not None:
            self._retry_soon(*waiting)

    # -- clients -------------------------------------------------------------------------------

    def _client(self, client_id: int) -> _Client:
        return self.clients[client_id - 100]

    def _complete(self, client_id: int, attempt: int, result: object) -> None:
        client = self._client(client_id)
        op = client.op
        if op is None or op.attempt != attempt:
            return  # an answer to an attempt the client already gave up on
        self.clock += 1
        self.history.append(
            Operation(
                client_id=client_id,
                kind=op.kind,
                key=op.key,
                value=op.value,
                expected=op.expected,
                call=op.call,
                ret=self.clock,
                result=result,
            )
        )
        self.result.completed += 1
        client.op = None
        client.idle_until = self.now + self.rng.randint(0, 3)

    def _retry_soon(self, client_id: int, attempt: int) -> None:
        client = self._client(client_id)
        if client.op is not None and client.op.attempt == attempt:
            client.op.retry_at = self.now + 1
            client.leader_guess = 0

    def _run_clients(self) -> None:
        for client in self.clients:
            op = client.op
            if op is None:
                if self.faulty and self.now >= client.idle_until:
                    self._new_op(client)
                continue
            if self.now >= op.deadline:
                client.leader_guess = 0  # timed out: the node it asked may be cut off
                self._attempt(client, op)
            elif op.retry_at and self.now >= op.retry_at:
                self._attempt(client, op)

    def _new_op(self, client: _Client) -> None:
        rng = self.rng
        client.seq += 1
        kind = rng.choice(("get", "get", "put", "append", "cas", "delete"))
        key = f"k{rng.randrange(self.options.keys)}"
        value = f"{client.id}.{client.seq}"
        expected: str | None = None
        if kind == "cas":
            expected = rng.choice(
                (None, *(f"{c.id}.{rng.randint(1, max(1, c.seq))}" for c in self.clients))
            )
        self.clock += 1
        if kind in ("get", "delete"):
            value = ""
        op = _ClientOp(
            kind=kind,
            key=key,
            value=value or None,
            expected=expected,
            seq=client.seq,
            call=self.clock,
            via_read_index=kind == "get" and rng.random() < 0.7,
        )
        self.result.operations += 1
        client.op = op
        self._attempt(client, op)

    def _attempt(self, client: _Client, op: _ClientOp) -> None:
        # Attempt numbers are global so a late answer never matches a later operation.
        self.attempts += 1
        op.attempt = self.attempts
        op.retry_at = 0
        op.deadline = self.now + 3 * self.options.election_tick
        up = [n for n in self.nodes.values() if n.kernel is not None and not n.paused]
        if not up:
            return
        node = self.nodes.get(client.leader_guess)
        roll = self.rng.random() if self.options.random_reads else 1.0
        if roll < self.options.random_reads / 2:
            # Whoever believes it leads, maybe a deposed leader cut off from the others.
            leaders = [n for n in up if n.kernel is not None and n.kernel.role is Role.LEADER]
            node = self.rng.choice(leaders or up)
        elif roll < self.options.random_reads:
            node = self.rng.choice(up)
        if node is None or node.kernel is None or node.paused:
            node = self.rng.choice(up)
        if node.id == self.clients_cut:
            # Its client-facing network is down: the connection fails, the client tries
            # another node soon.
            client.leader_guess = 0
            op.retry_at = self.now + self.rng.randint(1, 3)
            return
        kernel = node.kernel
        assert kernel is not None
        if op.via_read_index:
            context = f"{client.id}:{op.seq}:{op.attempt}".encode()
            node.reads[context] = (client.id, op.attempt)
            leading = kernel.role is Role.LEADER and kernel.conf_state.voters != (node.id,)
            kernel.read_index(context)
            self._process(node)
            if leading and (
                context not in node.reads or any(c == context for _, c in node.ready_reads)
            ):
                self.result.reads_without_round += 1
            return
        request = Request(client_id=client.id, seq=op.seq, op=_command(op))
        try:
            index = kernel.propose(encode_request(request))
        except NotLeader as exc:
            client.leader_guess = exc.leader
            op.retry_at = self.now + 1
            return
        except ProposalRejected:
            op.retry_at = self.now + 2
            return
        client.leader_guess = node.id
        node.proposals[index] = (kernel.term, client.id, op.attempt)
        self._process(node)

    # -- faults ----------------------------------------------------------------------------------

    def _leader(self) -> _Node | None:
        """The node leading the newest term, if any."""
        best: _Node | None = None
        for n in self.nodes.values():
            k = n.kernel
            if (
                k is not None
                and k.role is Role.LEADER
                and not n.paused
                and (best is None or (best.kernel is not None and k.term > best.kernel.term))
            ):
                best = n
        return best

    def _fault_events(self) -> None:
        o, rng = self.options, self.rng
        rate = o.fault_rate
        running = sorted(n.id for n in self.nodes.values() if not n.removed)
        if o.pauses and rng.random() < 0.01 * rate:
            awake = [n for n in self.nodes.values() if n.kernel is not None and not n.paused]
            if awake:
                leader = self._leader()
                victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(awake)
                victim.paused_until = self.now + rng.randint(1, 4 * o.election_tick)
                victim.missed = 0.0
                self.result.pauses += 1
                self._log(f"pause {victim.id} until {victim.paused_until}")
        if o.transfers and rng.random() < 0.01 * rate:
            leader = self._leader()
            if leader is not None:
                self._transfer(leader)
        if self.bounce and self.bounce[0] == self.now:
            self._bounce_step(running)
        elif self.partition_until == self.now:
            self.network.set_partition(Partition.none())
            self._log("partition: none")
        if self.cut_after_check:
            node = self.nodes.get(self.cut_after_check)
            k = node.kernel if node is not None else None
            if k is None or k.role is not Role.LEADER:
                self.cut_after_check = 0
            elif node is not None and k.election_elapsed == 0:
                self.cut_after_check = 0
                self._cut_off(node, Partition.isolate(node.id, running))
        if o.leader_faults and rng.random() < o.leader_faults and self.partition_until < self.now:
            self._leader_fault()
        if o.partitions and rng.random() < 0.02 * rate:
            kind = rng.choice(
                (
                    "none",
                    "halves",
                    "isolate_leader",
                    "bridge",
                    "ring",
                    "isolate",
                    "leader_deaf",
                    "mute",
                    "link",
                )
            )
            if kind == "halves":
                partition = Partition.halves(running, rng)
            elif kind == "isolate_leader":
                leader_id = next(
                    (
                        n.id
                        for n in self.nodes.values()
                        if n.kernel is not None and n.kernel.role is Role.LEADER
                    ),
                    running[0],
                )
                partition = Partition.isolate(leader_id, running)
            elif kind == "isolate":
                partition = Partition.isolate(rng.choice(running), running)
            elif kind == "bridge" and len(running) >= 3:
                partition = Partition.bridge(running, rng)
            elif kind == "ring" and len(running) >= 5:
                partition = Partition.majorities_ring(running)
            elif kind == "leader_deaf":
                leader = self._leader()
                partition = Partition.one_way(leader.id if leader else rng.choice(running), running)
            elif kind == "mute":
                partition = Partition.mute(rng.choice(running), running)
            elif kind == "link" and len(running) >= 2:
                a, b = rng.sample(running, 2)
                partition = Partition.sever(a, b)
            else:
                partition = Partition.none()
            self.network.set_partition(partition)
            self._log(f"partition: {partition.name}")
        if o.crashes and rng.random() < 0.01 * rate:
            up = [n for n in self.nodes.values() if n.kernel is not None]
            if up:
                victim = rng.choice(up)
                if rng.random() < 0.5:
                    self._crash(victim, "between steps")
                else:
                    points = _TORN_CRASH_POINTS if o.torn_writes else _CRASH_POINTS
                    victim.crash_in_ready = rng.choice(points)
        if o.membership and rng.random() < o.membership_rate * rate:
            self._membership_event()
            if rng.random() < 0.3:
                self._membership_event()  # at once: one change at a time must refuse it
        for node in self.nodes.values():
            if node.removed and node.kernel is not None and rng.random() < 0.05:
                # ... once every remaining voter applied the removal: with one or two
                # voters left, one that has not learnt it committed still counts the removed
                # node's vote and could never be elected.
                if not self._removal_known(node):
                    continue
                self._log(f"decommission removed node {node.id}")
                node.retired = True
                node.kernel = None
                node.paused_until = -1
                node.unfinished = None
                self.network.drop_to(node.id)

    def _bounce_step(self, running: list[int]) -> None:
        """The later steps of the "bounce" leader fault."""
        assert self.bounce
        _, stage, leader_id, paused = self.bounce
        et = self.options.election_tick
        if stage == 1:
            node = self.nodes[paused]
            if node.kernel is None or node.paused:
                self.bounce = ()
                self.clients_cut = 0
                return
            cut_at = self.now + self.rng.randint(et, 2 * et)
            node.paused_until = cut_at + 4
            node.missed = 0.0
            self.result.pauses += 1
            self._log(f"pause {paused} until {node.paused_until}")
            self.bounce = (cut_at, 2, leader_id, paused)
            return
        self.bounce = ()
        self.clients_cut = 0
        self._cut_off(self.nodes[leader_id], Partition.isolate(leader_id, running))
        others = [
            n
            for n in self.nodes.values()
            if n.kernel is not None and n.id not in (leader_id, paused)
        ]
        if others:
            self._crash(self.rng.choice(others), f"follower of leader {leader_id}, cut off")

    def _transfer(self, leader: _Node) -> None:
        kernel = leader.kernel
        assert kernel is not None
        others = [v for v in kernel.conf_state.voters if v != leader.id]
        if not others:
            return
        to = self.rng.choice(others)
        try:
            kernel.transfer_leader(to)
        except ProposalRejected as exc:
            self._log(f"transfer refused: {exc}")
            return
        self.result.transfers += 1
        self._log(f"transfer {leader.id} -> {to}")
        self._process(leader)

    def _leader_fault(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        rng, et = self.rng, self.options.election_tick
        running = sorted(n.id for n in self.nodes.values() if not n.removed)
        o = self.options
        kinds = ["isolate", "deaf", "after_check"]
        kinds += ["pause"] if o.pauses else []
        kinds += ["crash", "bounce"] if o.crashes else []
        kinds += ["transfer_deaf"] if o.transfers else []
        kinds += ["rack"] if o.membership else []
        if o.leader_fault_kinds:
            kinds = [k for k in o.leader_fault_kinds.split(",") if k in kinds]
            if not kinds:
                return
        kind = rng.choice(kinds)
        self.result.aimed_faults[kind] = self.result.aimed_faults.get(kind, 0) + 1
        if kind == "crash":
            # The leader dies, maybe part-way through a Ready: entries it sent may reach
            # some followers only (Figure 8's uncommitted entries of a past term).
            points = _TORN_CRASH_POINTS if o.torn_writes else _CRASH_POINTS
            if rng.random() < 0.5:
                self._crash(leader, "leader, between steps")
            else:
                leader.crash_in_ready = rng.choice(points)
            return
        if kind == "bounce":
            # The leader's client-facing network fails (no more writes reach it); a few
            # ticks later one follower is paused, its log as up to date as the others'.
            # Later the leader is cut off from its peers, but not from its clients, while
            # another follower restarts, forgetting the heartbeat round it answered just
            # before; the paused follower resumes a few ticks after, its election timeout
            # long past (see ``_bounce_step``).
            followers = [
                n.id for n in self.nodes.values() if n.kernel is not None and n is not leader
            ]
            if len(followers) < 2:
                return
            self.clients_cut = leader.id
            self.partition_until = self.now + 3 * et + 2 * self.options.max_delay + 4
            sever_at = self.now + self.options.max_delay + 4
            self.bounce = (sever_at, 1, leader.id, rng.choice(followers))
            self._log(f"clients cannot reach {leader.id}")
            return
        if kind == "rack":
            # A rack loses power: a minority of the voters crash together and come back on
            # the far side of a partition, re-applying their logs from their snapshots
            # (with slow apply, for a while on an older membership).
            assert leader.kernel is not None
            voters = leader.kernel.conf_state.voters
            followers = [v for v in voters if v != leader.id]
            rack = rng.sample(followers, min(len(followers), max(1, len(voters) // 2)))
            for nid in rack:
                node = self.nodes[nid]
                if node.kernel is not None:
                    self._crash(node, "its rack lost power")
            side = frozenset(rack)
            rest = frozenset(running) - side
            self._cut_off(leader, Partition(name=f"rack {sorted(side)}", groups=(side, rest)))
            return
        if kind == "transfer_deaf":
            # A transfer starts and the old leader stops hearing anyone: it never learns
            # that the target won.
            self._transfer(leader)
            self._cut_off(leader, Partition.one_way(leader.id, running))
            return
        if kind == "after_check":
            self.cut_after_check = leader.id
            return
        if kind == "pause":
            leader.paused_until = self.now + rng.randint(et, 4 * et)
            leader.missed = 0.0
            self.result.pauses += 1
            self._log(f"pause leader {leader.id} until {leader.paused_until}")
            return
        if kind == "isolate":
            self._cut_off(leader, Partition.isolate(leader.id, running))
        else:
            self._cut_off(leader, Partition.one_way(leader.id, running))

    def _cut_off(self, leader: _Node, partition: Partition) -> None:
        et = self.options.election_tick
        self.network.set_partition(partition)
        self.partition_until = self.now + self.rng.randint(et, 4 * et)
        self._log(f"partition: {partition.name} until {self.partition_until}")

    def _membership_event(self) -> None:
        leader = next(
            (
                n
                for n in self.nodes.values()
                if n.kernel is not None and n.kernel.role is Role.LEADER
            ),
            None,
        )
        if leader is None or leader.kernel is None:
            return
        kernel = leader.kernel
        conf = kernel.conf_state
        rng = self.rng
        choices: list[ConfChange] = []
        if conf.learners:
            choices.append(ConfChange(type=ConfChangeType.PROMOTE, node_id=conf.learners[0]))
        if len(conf.voters) + len(conf.learners) < self.options.nodes + 2:
            choices.append(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=self.next_node_id))
        if len(conf.voters) > max(1, self.options.min_voters):
            choices.append(ConfChange(type=ConfChangeType.REMOVE, node_id=rng.choice(conf.voters)))
        if not choices:
            return
        change = rng.choice(choices)
        try:
            kernel.propose_conf_change(change)
        except ProposalRejected as exc:
            self._log(f"membership change refused: {exc}")
            return
        self._log(f"propose {change.type.value} {change.node_id} on leader {leader.id}")
        self.result.conf_changes += 1
        if change.type is ConfChangeType.ADD_LEARNER:
            self.next_node_id += 1
            self._add_node(change.node_id, ConfState())
        self._process(leader)

    def _removal_known(self, node: _Node) -> bool:
        # The survivors recorded at the removal, not the node's membership now: after a
        # restart it has not re-applied its log yet and its membership is empty.
        if not node.survivors:
            return False
        for voter in node.survivors:
            other = self.nodes.get(voter)
            if other is not None and (other.kernel is None or other.applied < node.removed_at):
                return False
        return True

    def _heal(self) -> None:
        self._log("heal: faults stop")
        self.faulty = False
        self.clients_cut = 0
        self.network.set_partition(Partition.none())
        # Raft is live only when a round trip is well under the election timeout (§5.6:
        # broadcastTime << electionTimeout); long delays are a fault that stops here too.
        calm = max(1, min(self.network.faults.max_delay, self.options.election_tick // 4))
        self.network.faults = LinkFaults(min_delay=1, max_delay=calm)
        for node in self.nodes.values():
            node.crash_in_ready = ""
            node.deaf_until = -1
            if node.unfinished is not None:  # no crash planned in a Ready still applying
                node.unfinished = (node.unfinished[0], "")
            if node.kernel is None and not node.retired:
                self._log(f"restart {node.id}")
                self._start(node)
            elif node.paused and node.kernel is not None:
                self._resume(node)

    # -- linearizability -------------------------------------------------------------------------

    def _check_linearizable(self) -> None:
        ops = list(self.history)
        for client in self.clients:
            op = client.op
            if op is not None:
                ops.append(
                    Operation(
                        client_id=client.id,
                        kind=op.kind,
                        key=op.key,
                        value=op.value,
                        expected=op.expected,
                        call=op.call,
                        ret=None,
                        result=None,
                    )
                )
        verdict = check_history(ops)
        if verdict.ok is False:
            raise self.fail(f"linearizability: {verdict.explanation}")
        if verdict.ok is None:
            # Undecided is not a pass: a run the checker cannot judge proves nothing.
            raise self.fail(f"linearizability undecided within the search budget: {verdict}")
        self.result.linearizability = "ok"


def _command(op: _ClientOp) -> Get | Put | Delete | Append | Cas:
    if op.kind == "get":
        return Get(key=op.key)
    if op.kind == "put":
        assert op.value is not None
        return Put(key=op.key, value=op.value)
    if op.kind == "delete":
        return Delete(key=op.key)
    if op.kind == "append":
        assert op.value is not None
        return Append(key=op.key, value=op.value)
    assert op.value is not None
    return Cas(key=op.key, expected=op.expected, new=op.value)


def run_seed(seed: int, **overrides: object) -> SimResult:
    """Run the mixed-fault scenario of ``seed`` (with ``overrides``); raises on failure."""
    options = SimOptions.mixed(seed)
    if overrides:
        values = {f.name: getattr(options, f.name) for f in fields(options)}
        values.update(overrides)
        options = SimOptions(**values)
    return Simulation(options).run()


def _parse_bool(text: str) -> bool:
    if text.lower() in ("on", "true", "1", "yes"):
        return True
    if text.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: expected on or off")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.sim.simulator",
        description="Run the deterministic Raft simulator for one seed or sweep many.",
    )
    parser.add_argument("--seed", type=int, default=0, help="first (or only) seed")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds to sweep")
    parser.add_argument("--verbose", action="store_true", help="print every seed's summary")
    defaults = SimOptions(seed=0)
    for f in fields(SimOptions):
        if f.name == "seed":
            continue
        kind = type(getattr(defaults, f.name))
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            type=_parse_bool if kind is bool else kind,
        )
    args = parser.parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(SimOptions)
        if f.name != "seed" and getattr(args, f.name) is not None
    }
    failures = 0
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            result = run_seed(seed, **overrides)
        except SimulationFailure as exc:
            failures += 1
            print(f"FAIL seed {seed}: {exc}", file=sys.stderr)
            continue
        if args.verbose or args.seeds == 1:
            print(result.summary())
        elif (seed - args.seed + 1) % 1000 == 0:
            print(f"{seed - args.seed + 1} seeds ok", flush=True)
    print(f"{args.seeds - failures}/{args.seeds} seeds passed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
