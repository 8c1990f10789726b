"""The Raft kernel: a deterministic, sans-IO state machine in the etcd/raft ``RawNode`` style.

Theory of operation
-------------------
Inputs are ``tick()`` (one unit of logical time), ``step(message)`` (a message from a peer),
and local intents (``propose``, ``propose_conf_change``, ``read_index``, ``transfer_leader``,
``campaign``). Nothing here reads a clock, touches a socket or draws from global randomness:
the only random input, the election timeout, comes from the injected ``random.Random``.
The output is a ``Ready`` batch; the runtime performs it (see ``Ready`` for the ordering
duties) and acknowledges it with ``advance(ready)``. Calling ``ready()`` twice without
``advance()`` raises.

A role is a pair of functions (``_step_role``, ``_tick``) swapped by ``_become_*``.

Rules kept, with the section of the Raft paper (P) or Ongaro's dissertation (D):
- Election safety: a vote is recorded in the hard state and only ever given to one
  candidate per term (P §5.2); the vote and term are durable before the response leaves
  (``persisted_messages``; not a follower's ``HeartbeatResponse``: it promises nothing durable).
- Pre-vote (D §9.6) and check-quorum (D §6.2): a pre-candidate asks whether it *could* win
  before bumping its term; a leader that has not heard from a majority for an election
  timeout steps down, and a follower that heard from a leader within the timeout refuses to
  vote (except for a leadership transfer), so a partitioned node cannot disrupt the cluster.
  It takes both: pre-vote alone (check-quorum off) only stops a node that could not win
  from bumping terms; a node that rejoins with a log as up to date as the others' wins the
  pre-vote and deposes a healthy leader (as in etcd), since nobody refuses it for a lease.
- Log matching (P §5.3): AppendEntries carries ``(prev_index, prev_term)``; a rejection
  carries a hint ``(hint_index, hint_term)`` so the leader skips a whole term per round trip.
- Leader completeness (P §5.4): votes only go to candidates whose log is at least as up to
  date; a leader only counts replicas of entries from its own term to commit (P §5.4.2,
  Figure 8), which is why every new leader appends a no-op entry.
- The leader counts its own copy of an entry only once the runtime reports it durable
  (``advance``), so "committed" always means "on stable storage on a majority".
- Membership (D §4.1, §4.2.1): single-server changes, one at a time. What the code relies
  on, and nothing more:
  1. every node acts on the membership of its *applied* log (whom it asks for votes, how it
     counts votes and commits); a snapshot carries the membership at its index, and a
     change at or below an installed snapshot's index is never applied over it;
  2. a leader appends a change only once the previous one is applied on it and once it has
     committed an entry of its own term (``pending_conf_index`` starts at its last index;
     an inherited uncommitted entry commits only with one of the new term, §5.4.2, which is
     the fix to the single-server bug reported on raft-dev in 2015), so the changes in any
     log form one chain in which neighbours differ by one server, and majorities of
     neighbours intersect;
  3. a node whose log holds a committed but unapplied change does not campaign (the
     campaign guard). Apply lags commit (the runtime caps committed entries per Ready), and
     such a node would count votes with a membership two changes old, whose majority need
     not meet the current one's: two leaders in one term (etcd-io/raft#456; see the
     directed test and the mutation check).
  4. a commit index that covers a membership change is synced before the change is
     applied (``Ready.must_sync``): a node must never act on a membership and then, after a
     crash, count with the one before it (the node that change removed may be gone);
  5. a node that has itself applied its removal from a membership of two grants the voter
     left its vote without the log check (``_successor_after_removal``, with the
     argument): that voter holds every committed entry, and refusing it for uncommitted
     entries of our own would leave no electable voter. Not a membership merely read as
     "two without us": mid-replay after a restart, the applied membership is a prefix.
     A node restarted from a snapshot that covers its removal knows it from the
     snapshot's membership (``membership.removal_in_snapshot``, with the argument).
  A candidate that does not yet *know* a change committed still counts with an older
  membership; no proof is given here that (1)-(5) exclude every such case. The evidence is
  the simulator (membership changes through one- and two-voter clusters, apply lag, inputs
  between ``ready()`` and ``advance()``) and its mutation check. Learners receive the log
  but neither vote nor count for commit; promotion is refused until the learner holds every
  committed entry.
- Reads (D §6.4): ReadIndex records the commit index, confirms leadership with a heartbeat
  round carrying the read's context, then releases the read; a leader serves none until it
  has committed an entry in its term. Every heartbeat carries the newest pending read's
  context, so a read whose own round was lost is confirmed by the next round. Lease reads
  (D §6.4.1) are opt-in and need check-quorum: heartbeats carry the leader's tick count
  (``sent_tick``), echoed back; once a majority answered the round sent at tick ``s`` the
  leader serves reads without a round until its tick count reaches ``s + election_tick -
  lease_drift_ticks`` (``_in_lease``), because each of those followers refuses other
  candidates for an election timeout after it received the round. Not in a term in which
  a transfer started (the target campaigns past that refusal). A new kernel refuses
  disruptive votes for its first election timeout when lease reads are on, since it may
  have answered a round just before it crashed. The runtime must deliver every elapsed
  tick, also those of a pause.
- Leadership transfer (D §3.10): the leader stops accepting proposals, brings the target up
  to date, and sends TimeoutNow; the transfer is abandoned after an election timeout.

Proposals and commit advances do not send messages at once: the followers they concern are
marked and the appends are built when ``ready()`` is called, so many proposals between two
``ready()`` calls leave as one AppendEntries per follower (batching). A commit advance
marks every follower for an append even if it has no entries to carry only with
``RaftConfig.broadcast_commit`` (etcd-raft's way; the default) or when the commit covers a
membership change; otherwise the next append or heartbeat carries the new commit index.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import msgspec

from framework.core.config import RaftConfig
from framework.core.entries import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from framework.core.errors import (
    ConfChangeRejected,
    InvalidMessage,
    KernelMisuse,
    NotLeader,
    ProposalRejected,
    TransferInProgress,
    UncommittedSizeExceeded,
)
from framework.core.log import RaftLog
from framework.core.membership import changed_membership, check_conf_change, removal_in_snapshot
from framework.core.messages import (
    MAX_TERM,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    validate_message,
)
from framework.core.progress import Progress, ProgressState
from framework.core.quorum import VoteResult, committed_index, majority, vote_result
from framework.core.ready import Ready

__all__ = ["RaftConfig", "RawNode", "Status", "decode_conf_change", "encode_conf_change"]

_CONF_ENCODER = msgspec.msgpack.Encoder()
_CONF_DECODER = msgspec.msgpack.Decoder(ConfChange)


def encode_conf_change(change: ConfChange) -> bytes:
    return _CONF_ENCODER.encode(change)


def decode_conf_change(data: bytes) -> ConfChange:
    try:
        return _CONF_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"undecodable conf change entry ({len(data)} bytes): {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """A copy of the kernel's state for status pages and tests."""

    id: int
    role: Role
    leader: int
    term: int
    vote: int
    commit: int
    applied: int
    first_index: int
    last_index: int
    conf_state: ConfState
    progress: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    """Leader only: node id -> (state, match, next)."""
    transferee: int = 0


@dataclass(slots=True)
class _PendingRead:
    index: int
    requester: int
    acks: set[int]


# Enum members read on every message, as module globals: on CPython 3.11 ``Role.LEADER``
# goes through ``EnumType.__getattr__`` (a Python attribute hook, about seven times the
# cost of reading a global).
_LEADER = Role.LEADER
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT
_CONF_CHANGE = EntryKind.CONF_CHANGE

_LEADER_ONLY_IMMEDIATE = (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow, ReadIndexResponse)
# Tuples built once: ``A | B`` in an isinstance call builds a union object on every message.
_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)
_ACKS = (AppendResponse, HeartbeatResponse)


def _conf_changes(entries: Sequence[Entry]) -> list[Entry]:
    """The membership changes among ``entries``. Runs for every batch of entries received
    and applied: one filtering comprehension (a third faster on CPython 3.11 than listing
    every kind and testing the list with ``in``, since nothing is listed for a batch
    without a change)."""
    return [entry for entry in entries if entry.kind is _CONF_CHANGE]


class RawNode:
    def __init__(
        self,
        config: RaftConfig,
        *,
        rng: random.Random,
        hard_state: HardState | None = None,
        entries: Iterable[Entry] = (),
        snapshot: Snapshot | None = None,
        conf_state: ConfState | None = None,
    ) -> None:
        """Build a node from what stable storage holds.

        ``conf_state`` bootstraps a new cluster: when storage is empty, the membership is
        written as committed entries 1..n of term 1 (see ``_bootstrap``). It is ignored once
        the node has a log. A node joining an existing cluster passes None (or an empty
        one) and learns its membership from the leader's log or snapshot.
        """
        self.config = config
        self.id = config.id
        self._rng = rng
        hs = hard_state or HardState()
        self.snapshot = snapshot or Snapshot()
        meta = self.snapshot.meta
        self.log = RaftLog.from_storage(meta, list(entries), hs.commit)
        self.term = hs.term
        self.vote = hs.vote
        if self.log.last_term() > hs.term:
            # A store that writes a Ready's entries before its hard state, torn by a crash
            # in between, leaves entries of a later term than the stored one. They came
            # from a leader of that term, so that is our term; we cast no vote in it (a
            # vote leaves only once the hard state recording it is durable). Left as it
            # was, we would campaign with a last entry newer than our term, which every
            # peer refuses as impossible (simulator sweep, seed 53126).
            self.term = self.log.last_term()
            self.vote = 0
        # Membership is whatever the applied log says; applying resumes at the snapshot.
        self.conf_state = meta.conf_state
        if conf_state is not None and self.log.last_index() == 0 and hs.term == 0:
            self._bootstrap(conf_state)
        self.leader = 0
        self.role = Role.FOLLOWER
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.clock = 0
        """Ticks since this kernel was built; never reset (the leader's lease clock)."""
        self._transfer_term = 0
        """The last term in which this node, as leader, started a leadership transfer."""
        self.transferee = 0
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self._pending_reads: dict[bytes, _PendingRead] = {}
        self._reads_waiting_commit: list[tuple[bytes, int]] = []
        self._read_round_due = False
        """Reads wait for a heartbeat round; one round, sent at the next ``ready()``, confirms
        every read that arrived before it (reads that arrive together share it)."""
        self._messages: list[Message] = []
        self._persisted_messages: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._append_to: dict[int, bool] = {}
        """Followers owed an append at the next ``ready()``; value: send even if empty."""
        self._pending_snapshot: Snapshot | None = None
        self._prev_soft = SoftState(leader=0, role=Role.FOLLOWER)
        self._prev_hard = hs
        self._outstanding: Ready | None = None
        self._outstanding_conf: list[Entry] = []
        """The membership changes among the outstanding Ready's committed entries."""
        self._removed_from: tuple[int, ...] = self._removal_in_snapshot()
        """The voters of the membership this kernel applied its own removal from."""
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election
        self._become_follower(self.term, 0)

    def _removal_in_snapshot(self) -> tuple[int, ...]:
        """``_removed_from`` as the snapshot we start from records it
        (``membership.removal_in_snapshot``)."""
        return removal_in_snapshot(self.id, self.snapshot.meta, self.log)

    def _bootstrap(self, conf_state: ConfState) -> None:
        """Write the initial membership as committed conf-change entries of term 1.

        Every founding member writes the same entries, so their logs agree; a node that
        joins later receives them like any other entries and so learns the membership
        history from the log (or from a snapshot) instead of from its own arguments.
        """
        changes = [ConfChange(type=ConfChangeType.ADD_VOTER, node_id=v) for v in conf_state.voters]
        changes += [
            ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=v) for v in conf_state.learners
        ]
        if not changes:
            return
        self.log.append(
            [
                Entry(1, i, EntryKind.CONF_CHANGE, encode_conf_change(change))
                for i, change in enumerate(changes, start=1)
            ]
        )
        self.log.commit_to(len(changes))
        self.term = 1

    # == public inputs ========================================================================

    def tick(self) -> None:
        """Advance logical time by one tick.

        The runtime must deliver every tick that elapsed, also those missed while its
        process was paused (a SIGSTOP, a stalled event loop): lease reads are sound only if
        a leader's tick count does not fall behind real time.
        """
        self.clock += 1
        self._tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled)."""
        self._hup(transfer=False)

    def propose(self, data: bytes, kind: EntryKind = EntryKind.NORMAL) -> int:
        """Append a new entry on the leader; returns its index.

        Raises ``NotLeader``, ``TransferInProgress`` or ``UncommittedSizeExceeded``; in each
        case nothing changed. Commit is reported through ``Ready.committed_entries``; an
        entry may still be lost if leadership changes before it commits (the runtime
        detects that when a different entry is applied at the returned index).
        """
        if kind is EntryKind.CONF_CHANGE:
            raise KernelMisuse("use propose_conf_change() for membership changes")
        if kind is EntryKind.NOOP:
            raise KernelMisuse("no-op entries are appended by the kernel itself")
        return self._propose_entry(kind, data)

    def propose_batch(self, datas: Sequence[bytes], kind: EntryKind = EntryKind.NORMAL) -> range:
        """Append several entries at once; returns the range of their indexes.

        Cheaper than one ``propose`` per entry. If ``max_uncommitted_entries_size`` is
        reached part-way, the entries that fit are appended and the returned range is
        shorter than ``datas`` (the caller rejects the rest); if none fits,
        ``UncommittedSizeExceeded`` is raised. Other errors as for ``propose``.
        """
        if kind is EntryKind.CONF_CHANGE or kind is EntryKind.NOOP:
            raise KernelMisuse(f"propose_batch cannot append {kind.name} entries")
        if not datas:
            return range(self.log.last_index() + 1, self.log.last_index() + 1)
        return self._append_proposals(kind, datas)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a single-server membership change; returns its index.

        Raises ``ConfChangeRejected`` naming why when the change is not allowed now.
        """
        self._require_leader()
        if self.id not in self.conf_state.voters:
            raise ConfChangeRejected(
                f"node {self.id} is no longer a voter; membership changes go to the next leader"
            )
        if self.pending_conf_index > self.log.applied:
            raise ConfChangeRejected(
                f"membership change at index {self.pending_conf_index} is not applied yet "
                f"(applied {self.log.applied}); propose one change at a time"
            )
        self._check_conf_change(change)
        index = self._propose_entry(EntryKind.CONF_CHANGE, encode_conf_change(change))
        self.pending_conf_index = index
        return index

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; answered by a ``ReadState`` carrying ``context``.

        ``context`` must be unique among outstanding reads. If no leader can serve it, the
        context comes back in ``Ready.dropped_reads``.
        """
        if not context:
            raise KernelMisuse("read_index needs a non-empty context")
        if self.role is _LEADER:
            self._leader_read(context, self.id)
        elif self.leader:
            self._send(
                ReadIndexRequest(src=self.id, dst=self.leader, term=self.term, context=context)
            )
        else:
            self._dropped_reads.append(context)

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to voter ``to`` (dissertation §3.10)."""
        self._require_leader()
        if to == self.id:
            self.transferee = 0
            return
        if to not in self.conf_state.voters:
            raise ProposalRejected(f"cannot transfer leadership to node {to}: not a voter")
        if self.transferee == to:
            return
        self.transferee = to
        # D §6.4.1: the target campaigns past the voters' lease (TimeoutNow), so this
        # leader's lease is no proof of leadership for the rest of the term.
        self._transfer_term = self.term
        self.election_elapsed = 0  # the transfer times out after one election timeout
        pr = self.progress[to]
        if pr.match == self.log.last_index():
            self._send(TimeoutNow(src=self.id, dst=to, term=self.term))
        else:
            # Even empty: if what we streamed to it was lost, the rejection shows the gap.
            self._append_to[to] = True

    def step(self, msg: Message) -> None:
        """Process one message from a peer.

        Raises ``InvalidMessage`` for a message no correct peer sends (bad structure, index
        past our log, a response from a node we do not track); the state is then unchanged.
        """
        validate_message(msg)
        if msg.dst != self.id:
            raise InvalidMessage(
                f"{type(msg).__name__} from node {msg.src} addressed to node {msg.dst}, "
                f"delivered to node {self.id}"
            )
        self._check_against_state(msg)
        if msg.term > self.term:
            if not self._step_higher_term(msg):
                return
        elif msg.term < self.term:
            self._step_lower_term(msg)
            return
        if isinstance(msg, VoteRequest):
            self._handle_vote_request(msg)
        else:
            self._step_role(msg)

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver to ``node_id``: stop streaming, probe instead."""
        pr = self.progress.get(node_id)
        if self.role is _LEADER and pr is not None and pr.state is _REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node_id: int, *, success: bool) -> None:
        """The transport finished (or failed) sending a snapshot to ``node_id``.

        On failure the follower is probed again at once, which resends the snapshot; the
        runtime reports a failure when the peer is reported unreachable. Without a report,
        a lost snapshot is noticed when the follower answers a heartbeat round sent after
        it, or after ``snapshot_retry_tick`` ticks.
        """
        pr = self.progress.get(node_id)
        if self.role is not _LEADER or pr is None or pr.state is not _SNAPSHOT:
            return
        if success:
            pr.become_probe()
            pr.probe_sent = True  # wait for the follower's answer or a heartbeat round
        else:
            pr.snapshot_failed()

    def compact(
        self, data: bytes, *, trailing: int = 0, at: SnapshotMeta | None = None
    ) -> Snapshot:
        """Take a snapshot at the applied index with the state machine's ``data`` (§7).

        Entries up to the applied index are dropped from memory, except the last
        ``trailing`` of them: a follower that is a little behind then catches up from the
        log instead of from the whole snapshot (etcd keeps 5,000). The log then starts at
        ``log.first_index()``, before the snapshot's index; the runtime stores the returned
        snapshot durably before deleting the entries up to ``log.offset`` from its store.

        ``at``: the ``snapshot_point()`` recorded when the state machine's serialisation
        started, for ``data`` produced while the node went on applying (default: now).
        """
        if trailing < 0:
            raise KernelMisuse(f"compact(trailing={trailing}): expected >= 0")
        if self._outstanding is not None:
            raise KernelMisuse("compact() between ready() and advance(): apply first")
        if at is None:
            at = self.snapshot_point()
        index = at.index
        if index <= self.snapshot.meta.index:
            raise KernelMisuse(
                f"nothing to compact: index {index} is already covered by the "
                f"snapshot at {self.snapshot.meta.index}"
            )
        if index > self.log.applied or self.log.term(index) != at.term:
            raise KernelMisuse(
                f"compact(at={index}@t{at.term}): expected an applied entry of this log "
                f"(applied {self.log.applied}, term there {self.log.term(index)})"
            )
        self.snapshot = Snapshot(meta=at, data=data)
        self.log.compact(index - trailing)
        return self.snapshot

    def snapshot_point(self) -> SnapshotMeta:
        """What a snapshot of the state machine taken now is of: the applied index, its
        term and the membership there. A runtime that serialises the state machine while
        the node goes on (``compact(data, at=...)`` afterwards) records it first."""
        index = self.log.applied
        term = self.log.term(index)
        if term is None:
            raise KernelMisuse(f"applied index {index} is not in the log")
        return SnapshotMeta(index=index, term=term, conf_state=self.conf_state)

    # == output ===============================================================================

    def take_messages(self) -> tuple[Message, ...]:
        """Take the messages that depend on no persistence (a leader's heartbeats, appends,
        snapshots, TimeoutNow and read answers; a follower's heartbeat answers) ahead of
        the next ``ready()``, for a runtime still performing a Ready (``tick``/``step`` are
        allowed between ``ready()`` and ``advance()``): heartbeats and their answers leave
        on time while a disk is slow. Messages that promise durability stay for the next
        ``ready()``."""
        self._flush_read_round()
        messages, self._messages = tuple(self._messages), []
        return messages

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        log = self.log
        return bool(
            self._messages
            or self._persisted_messages
            or self._append_to
            or self._read_round_due
            or self._read_states
            or self._dropped_reads
            or self._pending_snapshot is not None
            or log.unstable_from <= log.last_index()
            or (log.committed > log.applied and self._pending_snapshot is None)
            or self._soft_changed()
            or self._hard_changed()
        )

    def ready(self) -> Ready:
        """Collect the next batch of work; ``advance(ready)`` must follow before the next."""
        if self._outstanding is not None:
            raise KernelMisuse("ready() called twice without advance()")
        # Called on every loop pass: each part is only looked into when it holds something.
        if self._read_round_due:
            self._flush_read_round()
        if self._append_to:
            self._flush_appends()
        log = self.log
        soft_changed, hard_changed = self._soft_changed(), self._hard_changed()
        soft = SoftState(leader=self.leader, role=self.role) if soft_changed else self._prev_soft
        hard = self._prev_hard
        if hard_changed:
            hard = HardState(term=self.term, vote=self.vote, commit=log.committed)
        entries: tuple[Entry, ...] = ()
        if log.unstable_from <= log.last_index():
            entries = tuple(log.unstable_entries())
        snapshot = self._pending_snapshot
        committed: tuple[Entry, ...] = ()
        changes: list[Entry] = []
        if snapshot is None and log.committed > log.applied:
            limit = self.config.max_committed_per_ready or None
            committed = tuple(log.committed_to_apply(limit))
            changes = _conf_changes(committed)
        self._outstanding_conf = changes
        # Most passes carry no reads and only some messages: an empty list gives () and is
        # kept, a full one is taken whole and replaced.
        messages = tuple(self._messages) if self._messages else ()
        persisted = tuple(self._persisted_messages) if self._persisted_messages else ()
        read_states = tuple(self._read_states) if self._read_states else ()
        dropped_reads = tuple(self._dropped_reads) if self._dropped_reads else ()
        rd = Ready(
            soft_state=soft if soft_changed else None,
            # A membership change is applied only over a synced commit index that covers it
            # (membership rule 4): the hard state goes with it even if an earlier Ready,
            # unsynced, already carried that commit.
            hard_state=hard if hard_changed or changes else None,
            entries=entries,
            snapshot=snapshot,
            messages=messages,
            persisted_messages=persisted,
            committed_entries=committed,
            read_states=read_states,
            dropped_reads=dropped_reads,
            must_sync=bool(entries)
            or snapshot is not None
            or hard.term != self._prev_hard.term
            or hard.vote != self._prev_hard.vote
            or bool(changes),
        )
        if messages:
            self._messages = []
        if persisted:
            self._persisted_messages = []
        if read_states:
            self._read_states = []
        if dropped_reads:
            self._dropped_reads = []
        self._prev_soft = soft
        self._prev_hard = hard
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that ``rd`` was performed: stored, sent and applied."""
        if rd is not self._outstanding:
            raise KernelMisuse("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        if rd.snapshot is not None:
            if self._pending_snapshot is rd.snapshot:
                self._pending_snapshot = None
            self.log.applied = max(self.log.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self.role is _LEADER:
                own = self.progress.get(self.id)
                if own is not None:
                    own.maybe_update(self.log.unstable_from - 1)
                    before = self.log.committed
                    if self._maybe_commit():  # our own write completed the quorum
                        self._commit_advanced(before)
        if rd.committed_entries:
            # A snapshot installed since ``ready()`` (a step between ready and advance)
            # already holds the membership up to its index: a change at or below it is
            # older than that membership and must not be applied over it (etcd#11510).
            covered = self.log.offset
            for entry in self._outstanding_conf:
                if entry.index > covered:
                    self._apply_conf_change(decode_conf_change(entry.data))
            last_applied = rd.committed_entries[-1].index
            if last_applied > self.log.applied:
                self.log.applied_to(min(last_applied, self.log.committed))

    def status(self) -> Status:
        progress = {}
        if self.role is _LEADER:
            progress = {
                nid: (pr.state.value, pr.match, pr.next) for nid, pr in self.progress.items()
            }
        return Status(
            id=self.id,
            role=self.role,
            leader=self.leader,
            term=self.term,
            vote=self.vote,
            commit=self.log.committed,
            applied=self.log.applied,
            first_index=self.log.first_index(),
            last_index=self.log.last_index(),
            conf_state=self.conf_state,
            progress=progress,
            transferee=self.transferee,
        )

    # == roles ================================================================================

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_tick + self._rng.randrange(
            self.config.election_tick
        )
        self.transferee = 0
        self.votes = {}
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self._append_to.clear()
        self._drop_pending_reads()
        self.progress = {}

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.leader = leader
        self.role = Role.FOLLOWER
        self._step_role = self._step_follower
        self._tick = self._tick_election

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote: a node that cannot win disturbs nobody.
        self._step_role = self._step_candidate
        self._tick = self._tick_election
        self.votes = {self.id: True}
        self.leader = 0
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        if self.role is _LEADER:
            raise KernelMisuse("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.votes = {self.id: True}
        self.role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick = self._tick_election

    def _become_leader(self) -> None:
        if self.role is Role.FOLLOWER:
            raise KernelMisuse("follower cannot become leader without an election")
        self._reset(self.term)
        self.leader = self.id
        self.role = _LEADER
        self._step_role = self._step_leader
        self._tick = self._tick_heartbeat
        last = self.log.last_index()
        for nid in self.conf_state.members():
            self.progress[nid] = self._new_progress(nid, last + 1)
        own = self.progress.get(self.id)
        if own is not None:
            own.maybe_update(self.log.unstable_from - 1)
            own.become_replicate()
            own.recent_active = True
        # No membership change until an entry of this term commits (raft-dev 2015 fix).
        self.pending_conf_index = last
        self.log.append([Entry(self.term, last + 1, EntryKind.NOOP)])
        self._broadcast_append(send_if_empty=False)

    def _new_progress(self, nid: int, next_index: int) -> Progress:
        return Progress(
            next_index=next_index,
            max_inflight=self.config.max_inflight_msgs,
            is_learner=nid in self.conf_state.learners,
        )

    def _promotable(self) -> bool:
        return self.id in self.conf_state.voters

    def _hup(self, *, transfer: bool) -> None:
        if self.role is _LEADER or not self._promotable():
            return
        if self.term >= MAX_TERM:
            # The next term would be one no peer accepts (and, near 2**63, one no store
            # holds): stay a follower at the ceiling rather than overflow or talk past it.
            return
        if self._pending_snapshot is not None:
            return
        # A node must not campaign on a membership it has not finished applying.
        if _conf_changes(self.log.committed_to_apply()):
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(pre_vote=True, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(pre_vote=False, transfer=transfer)

    def _request_votes(self, *, pre_vote: bool, transfer: bool) -> None:
        if vote_result(self.conf_state.voters, self.votes) is VoteResult.WON:
            self._won_vote(pre_vote)
            return
        term = self.term + 1 if pre_vote else self.term
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for nid in self.conf_state.voters:
            if nid != self.id:
                self._send(
                    VoteRequest(
                        src=self.id,
                        dst=nid,
                        term=term,
                        last_index=last_index,
                        last_term=last_term,
                        pre_vote=pre_vote,
                        transfer=transfer,
                    )
                )

    def _won_vote(self, pre_vote: bool) -> None:
        if pre_vote:
            self._become_candidate()
            self._request_votes(pre_vote=False, transfer=False)
        else:
            self._become_leader()

    # == ticks ================================================================================

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, 0)
                return
            self.transferee = 0  # a transfer that did not finish in time is abandoned
            if self.id not in self.conf_state.voters:
                self._hand_over_after_removal()  # removed: try again
                if self.role is not _LEADER:
                    return
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        retry = self.config.snapshot_retry_tick or 10 * self.config.election_tick
        for nid, pr in self.progress.items():
            if pr.state is _SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= retry:
                    pr.snapshot_failed()
                    self._append_to.setdefault(nid, False)

    def _quorum_active(self) -> bool:
        """D §6.2: heard from a majority since the last check; resets the marks."""
        active = {self.id}
        for nid, pr in self.progress.items():
            if pr.recent_active:
                active.add(nid)
            if nid != self.id:
                pr.recent_active = False
        voters = self.conf_state.voters
        return sum(1 for v in voters if v in active) >= majority(len(voters))

    # == step: common =========================================================================

    def _check_against_state(self, msg: Message) -> None:
        """Reject, before changing anything, messages impossible given our state."""
        if isinstance(msg, AppendEntries):
            if msg.term >= self.term and msg.entries:
                # A membership entry we could not apply would wedge advance() once committed.
                for entry in _conf_changes(msg.entries):
                    change = decode_conf_change(entry.data)  # raises InvalidMessage
                    if change.node_id <= 0:
                        raise InvalidMessage(
                            f"AppendEntries from node {msg.src}: entry {entry.index} changes "
                            f"membership of node id {change.node_id}"
                        )
        # Checked before a later term is adopted, so a rejected heartbeat changes nothing
        # (a correct leader never sends a commit index past what we are known to store).
        elif (
            isinstance(msg, Heartbeat)
            and msg.term >= self.term
            and msg.commit > self.log.last_index()
        ):
            raise InvalidMessage(
                f"Heartbeat from node {msg.src} sets commit {msg.commit} past our last "
                f"index {self.log.last_index()}"
            )
        if msg.term != self.term or self.role is not _LEADER:
            return
        if isinstance(msg, _ACKS):
            if msg.src not in self.progress:
                raise InvalidMessage(
                    f"{type(msg).__name__} from node {msg.src}, which is not a member "
                    f"(members: {list(self.progress)})"
                )
            if isinstance(msg, HeartbeatResponse) and msg.sent_tick > self.clock:
                raise InvalidMessage(
                    f"HeartbeatResponse from node {msg.src} answers a round sent at tick "
                    f"{msg.sent_tick}, but node {self.id} is only at tick {self.clock}"
                )
            if isinstance(msg, AppendResponse) and msg.index > self.log.last_index():
                raise InvalidMessage(
                    f"AppendResponse from node {msg.src} acknowledges index {msg.index} past "
                    f"the leader's last index {self.log.last_index()}"
                )
        elif isinstance(msg, _FROM_LEADER):
            raise InvalidMessage(
                f"{type(msg).__name__} from node {msg.src} claims leadership of term "
                f"{msg.term}, which node {self.id} leads"
            )

    def _step_higher_term(self, msg: Message) -> bool:
        """Handle a message from a later term; False when it is to be ignored."""
        if isinstance(msg, VoteRequest):
            config = self.config
            in_lease = config.check_quorum and (
                (self.leader != 0 and self.election_elapsed < config.election_tick)
                # With lease reads, a node that (re)starts may have answered a leader's
                # heartbeat just before it went down: it honours that lease too.
                or (config.lease_reads and self.clock < config.election_tick)
            )
            if in_lease and not msg.transfer:
                return False  # D §4.2.3: a live leader's followers ignore disruptive votes
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
            self._become_follower(msg.term, 0)
            return True
        if isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
            return True  # granted pre-votes carry the future term; we adopt it on winning
        if isinstance(msg, _FROM_LEADER):
            self._become_follower(msg.term, msg.src)
        else:
            self._become_follower(msg.term, 0)
        return True

    def _step_lower_term(self, msg: Message) -> None:
        if isinstance(msg, AppendEntries | Heartbeat) and (
            self.config.check_quorum or self.config.pre_vote
        ):
            # A stale leader (e.g. one cut off by a partition) learns the new term from us
            # and steps down; otherwise it would keep clients waiting until check-quorum.
            self._send(AppendResponse(src=self.id, dst=msg.src, term=self.term, index=0))
        elif isinstance(msg, VoteRequest) and msg.pre_vote:
            self._send(
                VoteResponse(src=self.id, dst=msg.src, term=self.term, granted=False, pre_vote=True)
            )

    def _handle_vote_request(self, msg: VoteRequest) -> None:
        can_vote = (
            self.vote == msg.src
            or (self.vote == 0 and self.leader == 0)
            or (msg.pre_vote and msg.term > self.term)
        )
        grant = can_vote and (
            self.log.is_up_to_date(msg.last_index, msg.last_term)
            or self._successor_after_removal(msg.src)
        )
        if grant and not msg.pre_vote:
            self.election_elapsed = 0
            self.vote = msg.src
        self._send(
            VoteResponse(
                src=self.id,
                dst=msg.src,
                term=msg.term if grant and msg.pre_vote else self.term,
                granted=grant,
                pre_vote=msg.pre_vote,
            )
        )

    def _successor_after_removal(self, candidate: int) -> bool:
        """Whether we were removed from ``{us, candidate}``: its vote needs no log check.

        We applied our own removal from a membership of two, so that removal is committed
        and ``candidate``, the one voter left, stored it (a majority of two is both). Until
        the candidate applies it, it still counts our vote, and it holds every committed
        entry: those up to our removal by log matching, and every later one because each
        quorum since (of the two, or of the candidate alone) includes it; no later change
        can commit before it applies ours, since it alone can lead a membership that
        excludes us and a node outside its own membership proposes none. Our own log may
        end in entries it lacks (appended while we led, never committed): refusing it for
        them would leave the cluster without an electable voter for good.
        """
        # Only a removal this kernel applied counts: after a restart the membership is
        # rebuilt entry by entry, and while only "add voter 1" is re-applied it reads
        # {1} without us, which is no removal at all (simulator seed 101277: a vote so
        # granted elected a leader without a committed entry).
        return self._removed_from == tuple(sorted((self.id, candidate)))

    def _send(self, msg: Message) -> None:
        immediate = self.role is _LEADER and isinstance(msg, _LEADER_ONLY_IMMEDIATE)
        if immediate or isinstance(msg, HeartbeatResponse):  # nothing durable: its docstring
            self._messages.append(msg)
        else:
            self._persisted_messages.append(msg)

    # == step: follower =======================================================================

    def _step_follower(self, msg: Message) -> None:
        if isinstance(msg, AppendEntries):
            self.election_elapsed = 0
            self.leader = msg.src
            self._handle_append(msg)
        elif isinstance(msg, Heartbeat):
            self.election_elapsed = 0
            self.leader = msg.src
            self.log.commit_to(msg.commit)
            self._send(
                HeartbeatResponse(
                    src=self.id,
                    dst=msg.src,
                    term=self.term,
                    context=msg.context,
                    sent_tick=msg.sent_tick,
                )
            )
        elif isinstance(msg, InstallSnapshot):
            self.election_elapsed = 0
            self.leader = msg.src
            self._handle_snapshot(msg)
        elif isinstance(msg, TimeoutNow):
            self._hup(transfer=True)
        elif isinstance(msg, ReadIndexResponse):
            if msg.index == 0:
                self._dropped_reads.append(msg.context)
            else:
                self._read_states.append(ReadState(index=msg.index, context=msg.context))
        elif isinstance(msg, ReadIndexRequest):
            # Forwarded to us as leader, but we are not (any more): the requester retries.
            self._send(
                ReadIndexResponse(
                    src=self.id, dst=msg.src, term=self.term, context=msg.context, index=0
                )
            )
        # Vote responses and leader-side acknowledgements are stale here: ignore them.

    def _handle_append(self, msg: AppendEntries) -> None:
        log = self.log
        if msg.prev_index < log.committed:
            # Everything up to our commit index matches the leader (leader completeness).
            self._send(
                AppendResponse(src=self.id, dst=msg.src, term=self.term, index=log.committed)
            )
            return
        last_new = log.maybe_append(msg.prev_index, msg.prev_term, msg.commit, msg.entries)
        if last_new is not None:
            self._send(AppendResponse(src=self.id, dst=msg.src, term=self.term, index=last_new))
            return
        hint_index = log.find_conflict_by_term(min(msg.prev_index, log.last_index()), msg.prev_term)
        self._send(
            AppendResponse(
                src=self.id,
                dst=msg.src,
                term=self.term,
                index=msg.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=log.term(hint_index) or 0,
            )
        )

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        log = self.log
        meta = msg.snapshot.meta
        if meta.index <= log.committed:
            index = log.committed
        elif log.matches(meta.index, meta.term):
            # We already hold the snapshot's last entry: just learn that it is committed.
            log.commit_to(meta.index)
            index = log.committed
        else:
            log.restore(meta)
            self.snapshot = msg.snapshot
            self._pending_snapshot = msg.snapshot
            self.conf_state = meta.conf_state
            index = meta.index
        self._send(AppendResponse(src=self.id, dst=msg.src, term=self.term, index=index))

    # == step: candidate ======================================================================

    def _step_candidate(self, msg: Message) -> None:
        if isinstance(msg, _FROM_LEADER):
            # Someone won this term (P §5.2): follow them.
            self._become_follower(msg.term, msg.src)
            self._step_follower(msg)
        elif isinstance(msg, VoteResponse):
            expecting_pre_vote = self.role is Role.PRE_CANDIDATE
            if msg.pre_vote != expecting_pre_vote or msg.src not in self.conf_state.voters:
                return
            self.votes.setdefault(msg.src, msg.granted)
            result = vote_result(self.conf_state.voters, self.votes)
            if result is VoteResult.WON:
                self._won_vote(expecting_pre_vote)
            elif result is VoteResult.LOST:
                self._become_follower(self.term, 0)
        elif isinstance(msg, ReadIndexResponse):
            self._dropped_reads.append(msg.context)
        elif isinstance(msg, ReadIndexRequest):
            self._send(
                ReadIndexResponse(
                    src=self.id, dst=msg.src, term=self.term, context=msg.context, index=0
                )
            )
        # TimeoutNow while campaigning already: nothing to do.

    # == step: leader =========================================================================

    def _step_leader(self, msg: Message) -> None:
        if isinstance(msg, AppendResponse):
            self._handle_append_response(msg)
        elif isinstance(msg, HeartbeatResponse):
            pr = self.progress[msg.src]
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is _REPLICATE and pr.inflights.full():
                # Appends may have been lost; let one more through so a gap shows up as a
                # rejection and the follower is probed again.
                pr.inflights.free_first()
            if pr.match < self.log.last_index():
                # Even an empty append tests the follower's log at ``next - 1``: if what we
                # streamed was lost, it rejects and we fall back to probing.
                self._append_to[msg.src] = True
            if msg.sent_tick > pr.lease_ack:
                pr.lease_ack = msg.sent_tick
            if pr.state is _SNAPSHOT and msg.sent_tick > pr.snapshot_sent:
                # It answered a round sent after the snapshot but not the snapshot: lost.
                pr.snapshot_failed()
                self._append_to.setdefault(msg.src, False)
            if msg.context:
                self._ack_read(msg.context, msg.src)
        elif isinstance(msg, ReadIndexRequest):
            if msg.src not in self.progress:
                raise InvalidMessage(f"ReadIndexRequest from node {msg.src}, not a member")
            self._leader_read(msg.context, msg.src)
        # Vote responses (stale, we already won) and TimeoutNow (stale) are ignored.

    def _handle_append_response(self, msg: AppendResponse) -> None:
        pr = self.progress[msg.src]
        pr.recent_active = True
        if msg.reject:
            match_hint = msg.hint_index
            if msg.hint_term > 0:
                match_hint = self.log.find_conflict_by_term(msg.hint_index, msg.hint_term)
            if pr.maybe_decr_to(msg.index, match_hint):
                if pr.state is _REPLICATE:
                    pr.become_probe()
                self._append_to.setdefault(msg.src, False)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(msg.index):
            if was_paused and not pr.is_paused():
                self._append_to.setdefault(msg.src, False)
            return
        if pr.state is _SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
        if pr.state is _PROBE:
            pr.become_replicate()
        elif pr.state is _REPLICATE:
            pr.inflights.free_to(msg.index)
        before = self.log.committed
        if self._maybe_commit():
            self._commit_advanced(before)
        elif pr.next != self.log.last_index() + 1:  # else an empty Ready: nothing to send
            self._append_to.setdefault(msg.src, False)
        if msg.src == self.transferee and pr.match == self.log.last_index():
            self._send(TimeoutNow(src=self.id, dst=msg.src, term=self.term))

    def _maybe_commit(self) -> bool:
        """Commit the highest index a majority stores, if it is of this term (P §5.4.2)."""
        log = self.log
        match = {nid: pr.match for nid, pr in self.progress.items()}
        index = committed_index(self.conf_state.voters, match)
        if index <= log.committed or log.term(index) != self.term:
            return False
        if self.uncommitted_size:
            released = log.data_size(log.committed + 1, index + 1)
            self.uncommitted_size = max(0, self.uncommitted_size - released)
        first_commit_in_term = log.term(log.committed) != self.term
        log.commit_to(index)
        if first_commit_in_term and self._reads_waiting_commit:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for context, requester in waiting:
                self._leader_read(context, requester)
        return True

    def _commit_advanced(self, before: int) -> None:
        """The commit index moved past ``before``: entries still to send go to every
        follower now, and an append carrying only the new commit index goes too with
        ``broadcast_commit`` (otherwise the next append or heartbeat carries it), or when
        the commit covers a membership change (or this term's first entry, where
        ``pending_conf_index`` starts): the voters must learn it to elect whoever leads
        next without the votes of nodes it removed."""
        eager = (
            self.config.broadcast_commit or before < self.pending_conf_index <= self.log.committed
        )
        self._broadcast_append(send_if_empty=eager)

    def _propose_entry(self, kind: EntryKind, data: bytes) -> int:
        return self._append_proposals(kind, (data,)).start

    def _append_proposals(self, kind: EntryKind, datas: Sequence[bytes]) -> range:
        self._require_leader()
        if self.transferee:
            raise TransferInProgress(
                f"node {self.id} is transferring leadership to node {self.transferee}"
            )
        cap = self.config.max_uncommitted_entries_size
        held = self.uncommitted_size
        count, added = len(datas), sum(map(len, datas))
        if cap and held + added > cap:
            # Not all fit: the longest prefix that does (any one when nothing is held).
            count = added = 0
            for size in map(len, datas):
                if held + added and held + added + size > cap:
                    break
                count, added = count + 1, added + size
            if not count:
                raise UncommittedSizeExceeded(
                    f"node {self.id} holds {held} uncommitted bytes; a {len(datas[0])}-byte "
                    f"proposal would exceed max_uncommitted_entries_size={cap}"
                )
        self.uncommitted_size = held + added
        first = self.log.last_index() + 1
        # Built in C, not entry by entry (map stops with the range, after ``count``).
        indexes = range(first, first + count)
        entries = list(map(Entry, repeat(self.term), indexes, repeat(kind), datas))
        self.log.append(entries)
        self._broadcast_append(send_if_empty=False)
        return indexes

    def _require_leader(self) -> None:
        if self.role is not _LEADER:
            raise NotLeader(self.id, self.leader)

    def _broadcast_append(self, *, send_if_empty: bool) -> None:
        for nid in self.progress:
            if nid != self.id:
                self._append_to[nid] = self._append_to.get(nid, False) or send_if_empty

    def _flush_appends(self) -> None:
        if not self._append_to:
            return
        targets, self._append_to = self._append_to, {}
        if self.role is not _LEADER:
            return
        log = self.log
        for nid, send_if_empty in targets.items():
            pr = self.progress.get(nid)
            if pr is None:
                continue
            sent = self._send_append(nid, pr, send_if_empty)
            # Streaming: more appends while the window allows and entries are left to send.
            while sent and pr.state is _REPLICATE and pr.next <= log.last_index():
                sent = self._send_append(nid, pr, False)

    def _send_append(self, nid: int, pr: Progress, send_if_empty: bool) -> bool:
        if pr.is_paused():
            return False
        log = self.log
        last = log.last_index()
        prev_index = pr.next - 1
        if prev_index == last and not send_if_empty:
            return False  # nothing new to send (the slice below would come back empty)
        prev_term = log.term(prev_index)
        if prev_term is None:
            if prev_index > last:
                # The follower claims more than we have; restart from what it matches.
                pr.become_probe()
                return False
            # The entries this follower needs were compacted: send the snapshot (§7).
            pr.become_snapshot(self.snapshot.meta.index)
            pr.snapshot_sent = self.clock
            self._send(
                InstallSnapshot(src=self.id, dst=nid, term=self.term, snapshot=self.snapshot)
            )
            return False
        entries = log.slice(pr.next, last + 1, self.config.max_size_per_msg)
        if not entries and not send_if_empty:
            return False
        self._send(
            AppendEntries(
                src=self.id,
                dst=nid,
                term=self.term,
                prev_index=prev_index,
                prev_term=prev_term,
                entries=tuple(entries),
                commit=log.committed,
            )
        )
        pr.sent_entries(entries[-1].index if entries else prev_index, len(entries))
        return bool(entries)

    def _broadcast_heartbeat(self) -> None:
        """One heartbeat round, stamped with our clock; it carries the newest read waiting
        for confirmation, so reads whose own round was lost are confirmed by this one."""
        context = next(reversed(self._pending_reads), b"")
        for nid, pr in self.progress.items():
            if nid != self.id:
                # Never tell a follower to commit past what it is known to store.
                commit = min(pr.match, self.log.committed)
                self._send(
                    Heartbeat(
                        src=self.id,
                        dst=nid,
                        term=self.term,
                        commit=commit,
                        context=context,
                        sent_tick=self.clock,
                    )
                )

    # == reads ================================================================================

    def _leader_read(self, context: bytes, requester: int) -> None:
        log = self.log
        if log.term(log.committed) != self.term:
            # D §6.4 step 1: the commit index is only known to be current once an entry of
            # this term has committed.
            self._reads_waiting_commit.append((context, requester))
            return
        if context in self._pending_reads:
            self._release_read(context, 0, requester)
            return
        # Alone only if we are the one voter: a removed leader handing over has another
        # node as its only voter, which may already lead a later term.
        if self.conf_state.voters == (self.id,) or self._in_lease():
            self._release_read(context, log.committed, requester)
            return
        self._pending_reads[context] = _PendingRead(
            index=log.committed, requester=requester, acks={self.id}
        )
        self._read_round_due = True

    def _flush_read_round(self) -> None:
        """Send the heartbeat round the reads since the last one wait for: one round for
        all of them, carrying the newest (its quorum confirms every earlier read too)."""
        if self._read_round_due:
            self._read_round_due = False
            if self.role is _LEADER and self._pending_reads:
                self._broadcast_heartbeat()

    def _in_lease(self) -> bool:
        """D §6.4.1: whether no other leader can have been elected yet.

        A follower that answers a heartbeat round refuses other candidates for an election
        timeout from when it received it (check-quorum), and it received it after the round
        was sent. So once a majority answered the round sent at tick ``s``, no other leader
        can exist before ``s + election_tick`` on the followers' clocks; the lease stops
        ``lease_drift_ticks`` earlier on ours for tick granularity and clock drift. A
        transfer lets the target campaign past that refusal, so a term in which one
        started has no lease.
        """
        if not self.config.lease_reads or self._transfer_term == self.term:
            return False
        progress = self.progress
        acked = {v: progress[v].lease_ack if v in progress else -1 for v in self.conf_state.voters}
        acked[self.id] = self.clock
        start = committed_index(self.conf_state.voters, acked)
        if start < 0:
            return False
        return self.clock < start + self.config.election_tick - self.config.lease_drift_ticks

    def _ack_read(self, context: bytes, voter: int) -> None:
        read = self._pending_reads.get(context)
        if read is None or voter not in self.conf_state.voters:
            return
        read.acks.add(voter)
        voters = self.conf_state.voters
        if sum(1 for v in voters if v in read.acks) < majority(len(voters)):
            return
        # Reads are confirmed in order: this quorum also confirms every earlier request.
        for ctx in list(self._pending_reads):
            earlier = self._pending_reads.pop(ctx)
            self._release_read(ctx, earlier.index, earlier.requester)
            if ctx == context:
                break

    def _release_read(self, context: bytes, index: int, requester: int) -> None:
        if requester == self.id:
            if index:
                self._read_states.append(ReadState(index=index, context=context))
            else:
                self._dropped_reads.append(context)
        else:
            self._send(
                ReadIndexResponse(
                    src=self.id, dst=requester, term=self.term, context=context, index=index
                )
            )
            if index and not self.config.broadcast_commit and requester in self.progress:
                # The requester serves the read once it applied ``index``: tell it the
                # commit index now rather than at the next heartbeat.
                self._append_to[requester] = True

    def _drop_pending_reads(self) -> None:
        waiting = [(ctx, read.requester) for ctx, read in self._pending_reads.items()]
        waiting.extend(self._reads_waiting_commit)
        self._pending_reads.clear()
        self._reads_waiting_commit = []
        self._read_round_due = False
        for context, requester in waiting:
            if requester == self.id:
                self._dropped_reads.append(context)
            # Remote requesters time out and retry; we may no longer reach them.

    # == membership ===========================================================================

    def _check_conf_change(self, change: ConfChange) -> None:
        check_conf_change(change, self.conf_state, self.progress, self.log.committed)

    def _apply_conf_change(self, change: ConfChange) -> None:
        self.conf_state, removed_from = changed_membership(self.conf_state, change, self.id)
        if removed_from is not None:
            self._removed_from = removed_from
        if self.role is not _LEADER:
            return
        voters, learners = self.conf_state.voters, self.conf_state.learners
        members = set(self.conf_state.members())
        for gone in set(self.progress) - members:
            del self.progress[gone]
        for new in members - set(self.progress):
            self.progress[new] = self._new_progress(new, self.log.last_index() + 1)
            # An empty probe at our last index: the new member's answer locates its log.
            self._append_to[new] = True
        for member, pr in self.progress.items():
            pr.is_learner = member in learners
        if self.transferee and self.transferee not in voters:
            self.transferee = 0
        if self.id not in voters:
            self._hand_over_after_removal()
            return
        if self._maybe_commit():
            self._broadcast_append(send_if_empty=True)

    def _hand_over_after_removal(self) -> None:
        """A removed leader hands leadership to the most caught-up voter.

        If that voter holds our whole log, it is told to campaign now (TimeoutNow) and we
        step down. If not, we stay leader, refusing proposals, and transfer to it: it
        campaigns once it has caught up (retried each election timeout). Stepping down at
        once used to leave no electable voter: one that has not learnt that our removal
        committed still counts our vote, which we refused it while our log was longer than
        its own (found by a simulator sweep, seeds 6452 and 10598). The root fix is
        ``_successor_after_removal``; handing over still spares the cluster an election
        timeout and keeps the entries we appended after the removal.
        """
        best = max(
            (nid for nid in self.conf_state.voters if nid in self.progress),
            key=lambda nid: self.progress[nid].match,
            default=0,
        )
        if best and self.progress[best].match < self.log.last_index():
            self.transferee = best
            self._transfer_term = self.term
            self.election_elapsed = 0
            self._append_to[best] = True
            return
        if best:
            self._send(TimeoutNow(src=self.id, dst=best, term=self.term))
        self._become_follower(self.term, 0)

    # == state snapshots ======================================================================

    # Field by field, since ``has_ready()`` asks on every loop pass: no struct is built.
    def _soft_changed(self) -> bool:
        prev = self._prev_soft
        return self.leader != prev.leader or self.role is not prev.role

    def _hard_changed(self) -> bool:
        prev = self._prev_hard
        return self.term != prev.term or self.vote != prev.vote or self.log.committed != prev.commit
