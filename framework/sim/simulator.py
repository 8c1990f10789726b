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

The parts, one module each: ``options`` (``SimOptions``: every knob of a run, the mix a
sweep uses per seed, the replay command), ``faults`` (the fault schedule: what goes wrong,
when, to whom, including the faults aimed at the leader, and the healing), ``clients`` (the
workload and the history it observed), ``nodes`` (a node and its bookkeeping), ``disk``,
``network`` and ``linearizability``. This module runs the cluster: it performs each Ready
and checks the properties below.

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
import hashlib
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import msgspec

from framework.core import (
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    InstallSnapshot,
    InvalidMessage,
    Message,
    RaftConfig,
    RawNode,
    Ready,
    Role,
    decode_conf_change,
    decode_message,
    encode_message,
)
from framework.sim.clients import Workload
from framework.sim.disk import SimDisk
from framework.sim.faults import Faults
from framework.sim.linearizability import Operation, check_history
from framework.sim.network import LinkFaults, SimNetwork
from framework.sim.nodes import SimNode
from framework.sim.options import SimOptions
from framework.statemachine import KVStateMachine

__all__ = ["SimOptions", "SimResult", "Simulation", "SimulationFailure", "main", "run_seed"]


_READY_ENCODER = msgspec.msgpack.Encoder()


class SimulationFailure(AssertionError):
    """A safety or liveness property failed; the message names it and how to replay."""


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
    ready_digest: str = ""
    """A hash of every Ready the kernels emitted (with node and tick), in order: two kernels
    that give a seed the same digest behaved identically on it, message for message."""

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
        self.result = SimResult(options=options)
        self._readies = hashlib.blake2b(digest_size=16)
        self.nodes: dict[int, SimNode] = {}
        self.faulty = True
        """In the fault phase (until ``Faults.heal``)."""
        self.faults = Faults(self)
        self.workload = Workload(self)
        voters = tuple(range(1, options.nodes + 1))
        for nid in voters:
            self.add_node(nid, ConfState(voters=voters))
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
        self.trace: list[str] = []
        self.last_change: dict[int, tuple[int, bool]] = {}
        """node -> (index, is a removal) of the newest change of it any node applied."""

    # -- set-up ------------------------------------------------------------------------------

    def add_node(self, nid: int, conf_state: ConfState) -> SimNode:
        store = SimDisk()
        store.initialize(node_id=nid, cluster_id="sim", conf_state=conf_state)
        drift = self.options.clock_drift
        node = SimNode(
            id=nid,
            store=store,
            rate=1.0 + self.rng.uniform(-drift, drift),
            phase=self.rng.random(),
        )
        self.nodes[nid] = node
        self.start(node)
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
            broadcast_commit=o.broadcast_commit,
        )

    def start(self, node: SimNode) -> None:
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

    def crash(self, node: SimNode, why: str, *, torn: Ready | None = None) -> None:
        self.log(f"crash {node.id} ({why})")
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

    def log(self, line: str) -> None:
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
            self.faults.inject()
            self._tick()
        self.faults.heal()
        healed_at = self.now
        leader_seen = -1
        for _ in range(o.liveness_ticks):
            self._tick()
            self.faults.decommission_zombies(" (after the heal)")
            if leader_seen < 0 and self._has_leader():
                leader_seen = self.now - healed_at
            if leader_seen >= 0 and all(c.op is None for c in self.workload.clients):
                break
        self.result.leader_after_heal = leader_seen
        if leader_seen < 0:
            raise self.fail(
                f"liveness: no leader within {o.liveness_ticks} ticks after the faults stopped"
            )
        pending = [c for c in self.workload.clients if c.op is not None]
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
        self.result.ready_digest = self._readies.hexdigest()
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
                    self.log(f"restart {node.id}")
                    self.start(node)
                continue
            node.phase += node.rate
            ticks = int(node.phase)
            node.phase -= ticks
            if node.paused:
                node.missed += ticks
                if node.paused_until > self.now:
                    continue
                self.resume(node)
                continue
            if node.apply_until <= self.now:
                self._finish_unfinished(node)
                if node.kernel is None:
                    continue
            for _ in range(ticks):
                node.kernel.tick()
            self.process(node)
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
        self.workload.run()

    def resume(self, node: SimNode) -> None:
        """A paused node wakes: first the ticks it missed, then what arrived meanwhile."""
        kernel = node.kernel
        assert kernel is not None
        missed = int(node.missed) if self.options.catch_up_ticks else 1
        self.log(f"resume {node.id} ({missed} ticks)")
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
        self.process(node)
        backlog, node.backlog = node.backlog, []
        for payload in backlog:
            if node.kernel is None:
                return
            self._deliver(node, payload)

    def _deliver(self, node: SimNode, payload: bytes) -> None:
        assert node.kernel is not None
        if node.unfinished is not None:
            self.result.steps_in_ready += 1
        self._step(node, node.kernel, payload)
        self.process(node)

    def _step(self, node: SimNode, kernel: RawNode, payload: bytes) -> None:
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

    def process(self, node: SimNode) -> None:
        while node.kernel is not None and not node.paused and node.kernel.has_ready():
            if node.unfinished is not None:
                return  # applying: the next Ready waits for advance()
            self._handle_ready(node, node.kernel, node.kernel.ready())

    def _finish_unfinished(self, node: SimNode) -> None:
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

    def _handle_ready(self, node: SimNode, kernel: RawNode, rd: Ready) -> None:
        self._readies.update(_READY_ENCODER.encode((self.now, node.id, rd)))
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
            self.crash(node, "in a Ready, before persisting")
            return
        if crash_at == "torn":
            self.crash(node, "in a Ready, in the middle of its write", torn=rd)
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
            self.crash(node, "in a Ready, after persisting")
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

    def _finish_ready(self, node: SimNode, kernel: RawNode, rd: Ready, crash_at: str) -> None:
        if rd.snapshot is not None:
            node.sm.restore(rd.snapshot.data)
            node.applied = rd.snapshot.meta.index
            self.log(f"node {node.id} installed snapshot at {node.applied}")
            self.result.snapshots_sent += 1
        for entry in rd.committed_entries:
            self._apply(node, entry)
        node.ready_reads.extend((rs.index, rs.context) for rs in rd.read_states)
        for context in rd.dropped_reads:
            self._read_failed(node, context)
        if crash_at == "after_apply":
            self.crash(node, "in a Ready, after applying")
            return
        kernel.advance(rd)
        if node.removed and not node.survivors and node.id not in kernel.conf_state.voters:
            node.survivors = kernel.conf_state.voters
        self._check_digest(node, kernel)
        self._serve_reads(node)
        if node.applied - kernel.snapshot.meta.index >= self.options.snapshot_every:
            snapshot = kernel.compact(node.sm.snapshot())
            node.store.save_snapshot(snapshot)

    def _check_digest(self, node: SimNode, kernel: RawNode) -> None:
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

    def _check_new_entries(self, node: SimNode, kernel: RawNode, entries: Sequence[Entry]) -> None:
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

    def _apply(self, node: SimNode, entry: Entry) -> None:
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
                self.workload.complete(client_id, attempt, result)
            else:
                self.workload.retry_soon(client_id, attempt)

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

    def _on_conf_change(self, node: SimNode, entry: Entry) -> None:
        change = decode_conf_change(entry.data)
        last = self.last_change.get(change.node_id)
        if last is None or entry.index > last[0]:  # a replay after a restart is no news
            self.last_change[change.node_id] = (entry.index, change.type is ConfChangeType.REMOVE)
        if change.type is ConfChangeType.REMOVE and change.node_id == node.id:
            # The operator decommissions a removed node some time after its removal.
            node.removed = True
            node.removed_at = entry.index
            node.survivors = ()  # known once the kernel has applied it (``advance``)

    def _on_soft_state(self, node: SimNode, kernel: RawNode, rd: Ready) -> None:
        assert rd.soft_state is not None
        if rd.soft_state.role is Role.LEADER:
            term = kernel.term
            other = self.leaders.setdefault(term, node.id)
            if other != node.id:
                raise self.fail(f"election safety: nodes {other} and {node.id} lead term {term}")
            self.result.elections += 1
            self.log(f"node {node.id} leads term {term}")
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
                self.workload.retry_soon(client_id, attempt)
            node.proposals.clear()

    # -- reads ---------------------------------------------------------------------------------

    def _serve_reads(self, node: SimNode) -> None:
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
            client = self.workload.client(client_id)
            if client.op is not None and client.op.attempt == attempt:
                kernel = node.kernel
                if kernel is not None and self.leaders and kernel.term < max(self.leaders):
                    self.result.stale_reads_from_deposed += 1
                self.workload.complete(client_id, attempt, node.sm.read(client.op.key))
        node.ready_reads = keep

    def _read_failed(self, node: SimNode, context: bytes) -> None:
        waiting = node.reads.pop(context, None)
        if waiting is not None:
            self.workload.retry_soon(*waiting)

    # -- linearizability -------------------------------------------------------------------------

    def _check_linearizable(self) -> None:
        ops = list(self.workload.history)
        for client in self.workload.clients:
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
