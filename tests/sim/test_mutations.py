"""The mutation check: the simulator must catch each classic Raft bug.

Each mutant patches one bug into the kernel (``monkeypatch``, in this test process only)
and runs the simulator on a fault schedule aimed at it, seed after seed, until a safety
or liveness check fails; it must fail within ``budget`` seeds. The honest kernel must then
pass the very same seeds, so what caught the mutant is the bug and not the schedule.

The bugs: the Figure 8 commit by counting replicas of an earlier term's entry; a vote sent
before it is stored; ReadIndex answered without a heartbeat quorum; no one-change-at-a-time
rule; no campaign guard; lease reads as they were before issue 14 (served from check-quorum
alone); votes granted regardless of the candidate's log; and the bugs issue 14 fixed: a
transfer that keeps the lease, a conf change re-applied over a newer snapshot, a restarted
node that forgets the lease it granted, and a runtime that adds one tick per wake-up; and
the bugs the strengthened simulator's sweep found: a removed leader that serves reads alone
because its voter set has one node (not itself), a node removed from a membership of two
that refuses the voter left for its shorter log (the root of the sweep's first finding, a
removed leader that stepped down before a voter could be elected: with that fixed,
stepping down at once is no longer a bug, so it is no longer a mutant), a commit index
covering a membership change left unsynced, and a node restarted from a snapshot that
covers its removal from a membership of two, which forgets that removal.
Every one is caught within its budget; the whole module costs
about 55 CPU-seconds.

Each schedule is a fault mix the honest kernel survives, aimed at one bug: which faults,
and which check sees the bug, is said above each entry of ``MUTANTS``.

The seed at which each mutant is caught is printed (``-s``) and listed in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from framework.core import (
    ConfChange,
    KernelMisuse,
    Message,
    Ready,
    decode_conf_change,
    encode_conf_change,
    raft,
)
from framework.core.entries import EntryKind, Role
from framework.core.log import RaftLog
from framework.core.messages import VoteResponse
from framework.core.quorum import committed_index
from framework.sim.simulator import SimulationFailure, run_seed

Patch = Callable[[pytest.MonkeyPatch], None]


@dataclass(frozen=True)
class Mutant:
    patch: Patch
    budget: int
    """Seeds the simulator may take to catch it."""
    schedule: dict[str, object] = field(default_factory=dict)
    """Options (``SimOptions`` fields) over each seed's mixed options."""


# -- the bugs ----------------------------------------------------------------------------------


def _figure8_commit_by_counting(mp: pytest.MonkeyPatch) -> None:
    """Commit whatever a majority stores, whatever its term (P §5.4.2, Figure 8)."""

    def maybe_commit(self: raft.RawNode) -> bool:
        match = {nid: pr.match for nid, pr in self.progress.items()}
        index = committed_index(self.conf_state.voters, match)
        if index <= self.log.committed:
            return False
        self.log.commit_to(index)
        return True

    mp.setattr(raft.RawNode, "_maybe_commit", maybe_commit)


def _vote_sent_before_stored(mp: pytest.MonkeyPatch) -> None:
    """Vote responses leave with the messages that need no persistence."""
    send = raft.RawNode._send

    def early_send(self: raft.RawNode, msg: Message) -> None:
        if isinstance(msg, VoteResponse):
            self._messages.append(msg)
        else:
            send(self, msg)

    mp.setattr(raft.RawNode, "_send", early_send)


def _read_index_without_quorum(mp: pytest.MonkeyPatch) -> None:
    """ReadIndex released at once, with no heartbeat round to confirm leadership."""

    def leader_read(self: raft.RawNode, context: bytes, requester: int) -> None:
        if self.log.term(self.log.committed) != self.term:
            self._reads_waiting_commit.append((context, requester))
            return
        self._release_read(context, self.log.committed, requester)

    mp.setattr(raft.RawNode, "_leader_read", leader_read)


def _many_changes_at_a_time(mp: pytest.MonkeyPatch) -> None:
    """A leader proposes a membership change while an earlier one is unapplied."""

    def propose_conf_change(self: raft.RawNode, change: ConfChange) -> int:
        self._require_leader()
        self._check_conf_change(change)
        return self._propose_entry(EntryKind.CONF_CHANGE, encode_conf_change(change))

    mp.setattr(raft.RawNode, "propose_conf_change", propose_conf_change)


def _no_campaign_guard(mp: pytest.MonkeyPatch) -> None:
    """A node campaigns with committed but unapplied membership changes."""

    def hup(self: raft.RawNode, *, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self._pending_snapshot is not None:
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(pre_vote=True, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(pre_vote=False, transfer=transfer)

    mp.setattr(raft.RawNode, "_hup", hup)


def _lease_from_check_quorum_alone(mp: pytest.MonkeyPatch) -> None:
    """Lease reads as before issue 14: served as soon as the leader committed in its term."""
    mp.setattr(raft.RawNode, "_in_lease", lambda self: self.config.lease_reads)


def _votes_regardless_of_log(mp: pytest.MonkeyPatch) -> None:
    """Votes granted without the §5.4.1 up-to-date check."""
    mp.setattr(RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)


def _transfer_keeps_the_lease(mp: pytest.MonkeyPatch) -> None:
    """Issue 14 item 2: lease reads continue while the target campaigns past the lease."""
    transfer = raft.RawNode.transfer_leader

    def transfer_leader(self: raft.RawNode, to: int) -> None:
        transfer(self, to)
        self._transfer_term = 0

    mp.setattr(raft.RawNode, "transfer_leader", transfer_leader)


def _conf_reapplied_over_snapshot(mp: pytest.MonkeyPatch) -> None:
    """Issue 14 item 3: ``advance`` applies every conf change of the Ready, also those a
    snapshot stepped in since ``ready()`` already covers."""

    def advance(self: raft.RawNode, rd: Ready) -> None:
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
            if self.role is Role.LEADER:
                own = self.progress.get(self.id)
                if own is not None:
                    own.maybe_update(self.log.unstable_from - 1)
                    if self._maybe_commit():
                        self._broadcast_append(send_if_empty=True)
        if rd.committed_entries:
            for entry in rd.committed_entries:
                if entry.kind is EntryKind.CONF_CHANGE:
                    self._apply_conf_change(decode_conf_change(entry.data))
            last_index = rd.committed_entries[-1].index
            if last_index > self.log.applied:
                self.log.applied_to(last_index)

    mp.setattr(raft.RawNode, "advance", advance)


def _restart_forgets_the_lease(mp: pytest.MonkeyPatch) -> None:
    """A restarted node votes at once, though it may have answered a round just before."""
    init = raft.RawNode.__init__

    def __init__(self: raft.RawNode, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.clock = self.config.election_tick

    mp.setattr(raft.RawNode, "__init__", __init__)


def _removed_leader_reads_alone(mp: pytest.MonkeyPatch) -> None:
    """Found by the sweep (seed 63758): a leader serves reads at once when its voter set
    has one node, even when that node is not itself (a removed leader handing over)."""
    leader_read = raft.RawNode._leader_read

    def read(self: raft.RawNode, context: bytes, requester: int) -> None:
        log = self.log
        alone = len(self.conf_state.voters) == 1 and context not in self._pending_reads
        if alone and log.term(log.committed) == self.term:
            self._release_read(context, log.committed, requester)
            return
        leader_read(self, context, requester)

    mp.setattr(raft.RawNode, "_leader_read", read)


def _removed_node_votes_by_log(mp: pytest.MonkeyPatch) -> None:
    """Found by the sweep (seed 40 of the membership schedule): a node removed from a
    membership of two refuses the one voter left when its own log is longer, though that
    voter holds every committed entry; the voter never learns the removal committed and
    nobody can be elected."""
    mp.setattr(raft.RawNode, "_successor_after_removal", lambda self, candidate: False)


def _removal_forgotten_on_restart(mp: pytest.MonkeyPatch) -> None:
    """Found by the sweep (seed 37017): a node that applied its removal from a membership
    of two, took a snapshot covering it and restarted, forgets that it was removed (the
    removal is no longer an entry it re-applies), and refuses the voter left for its
    shorter log; nobody can be elected."""
    mp.setattr(raft.RawNode, "_removal_in_snapshot", lambda self: ())


def _conf_commit_not_synced(mp: pytest.MonkeyPatch) -> None:
    """Found by the sweep (seed 32055): a commit index that newly covers a membership
    change is not synced before the change is applied. A crash loses it, the node restarts
    with the membership from before the change, and if the operator already decommissioned
    the node the change removed, the remaining voter waits for its vote forever."""
    ready = raft.RawNode.ready

    def unsynced(self: raft.RawNode) -> Ready:
        before = self._prev_hard
        rd = ready(self)
        hard = rd.hard_state
        must = (
            bool(rd.entries)
            or rd.snapshot is not None
            or (hard is not None and (hard.term, hard.vote) != (before.term, before.vote))
        )
        if must == rd.must_sync:
            return rd
        rd = msgspec.structs.replace(rd, must_sync=must)
        self._outstanding = rd
        return rd

    mp.setattr(raft.RawNode, "ready", unsynced)


_DOWN_TO_ONE_VOTER: dict[str, object] = {
    "nodes": 3,
    "membership": True,
    "membership_rate": 0.2,
    "min_voters": 1,
    "fault_rate": 2.0,
    "drop": 0.3,
    "crashes": False,
    "partitions": False,
    "leader_faults": 0.0,
    "clients": 6,
    "keys": 1,
    "random_reads": 0.8,
    "broadcast_commit": True,
}
"""Membership changes down to one voter on lossy links, no crashes, no partitions; the
kernel broadcasts every commit, as it did when the sweep found these."""


def _no_patch(mp: pytest.MonkeyPatch) -> None:
    """The kernel is honest; the runtime is not (see the schedule)."""


HARSH: dict[str, object] = {"fault_rate": 4.0, "nodes": 5, "crashes": True, "partitions": True}
LEADER_CUT: dict[str, object] = {
    "nodes": 3,
    "clients": 8,
    "keys": 1,
    "random_reads": 0.8,
    "leader_faults": 0.05,
    "crashes": False,
    "partitions": False,
    "membership": False,
}
LEASE: dict[str, object] = {
    **LEADER_CUT,
    "lease_reads": True,
    "check_quorum": True,
    # A long election timeout and the smallest drift margin: the lease is long next to a
    # message's trip, so a lease wrongly kept has time to meet a read at a deposed leader.
    "election_tick": 20,
    "lease_drift_ticks": 2,
    "max_delay": 1,
}
MEMBERSHIP: dict[str, object] = {
    "nodes": 5,
    "membership": True,
    "min_voters": 1,
    "apply_lag": 1,
    "fault_rate": 4.0,
    "crashes": True,
    "partitions": True,
    "clients": 6,
    "keys": 1,
    "random_reads": 0.5,
}

MUTANTS: dict[str, Mutant] = {
    "votes_regardless_of_log": Mutant(_votes_regardless_of_log, 30, HARSH),
    # Without check-quorum a cut-off leader stays leader: reads it answers without a
    # round go stale as soon as the others elect a leader and write.
    "read_index_without_quorum": Mutant(
        _read_index_without_quorum,
        60,
        {**LEADER_CUT, "lease_reads": False, "check_quorum": False, "pre_vote": False},
    ),
    "many_changes_at_a_time": Mutant(
        _many_changes_at_a_time,
        40,
        {**MEMBERSHIP, "fault_rate": 6.0, "leader_faults": 0.0, "membership_rate": 0.05},
    ),
    # A leader that hears nobody (or is cut off just after its check-quorum passed) keeps
    # leading until its next check; the others elect a leader and write meanwhile.
    "lease_from_check_quorum_alone": Mutant(
        _lease_from_check_quorum_alone,
        60,
        {**LEASE, "clients": 12, "leader_fault_kinds": "deaf,after_check,isolate"},
    ),
    # A transfer starts and the old leader hears nobody from then on: it keeps serving
    # lease reads while the target, elected past the lease, commits.
    "transfer_keeps_the_lease": Mutant(
        _transfer_keeps_the_lease,
        60,
        {**LEASE, "transfers": True, "leader_fault_kinds": "transfer_deaf"},
    ),
    # The leader is paused; what was sent to it meanwhile is lost; given one tick when it
    # resumes, it believes its lease still runs.
    "runtime_one_tick_per_wakeup": Mutant(
        _no_patch,
        60,
        {
            **LEASE,
            "pauses": True,
            "pause_loses_inbox": True,
            "leader_fault_kinds": "pause",
            "ticks": 600,
            "catch_up_ticks": False,
        },
    ),
    # A rack (a minority of the voters) loses power and comes back partitioned off,
    # re-applying its log slowly from an old snapshot: without the guard it campaigns on a
    # membership two changes old and wins a majority of that one.
    "no_campaign_guard": Mutant(
        _no_campaign_guard,
        80,
        {
            **MEMBERSHIP,
            "nodes": 3,
            "min_voters": 3,
            "membership_rate": 0.05,
            "partitions": False,
            "slow_apply": True,
            "quick_restarts": True,
            "snapshot_every": 60,
            "leader_faults": 0.05,
            "leader_fault_kinds": "rack",
        },
    ),
    # Slow apply keeps a restarted node's replay Ready outstanding for ticks; the leader's
    # InstallSnapshot arrives meanwhile and covers membership changes in that Ready.
    "conf_reapplied_over_snapshot": Mutant(
        _conf_reapplied_over_snapshot,
        120,
        {
            **MEMBERSHIP,
            "nodes": 3,
            "clients": 3,
            "membership_rate": 0.05,
            "apply_lag": 0,
            "slow_apply": True,
            "step_in_ready": 1.0,
            "snapshot_every": 20,
            "drop": 0.1,
        },
    ),
    # Nodes crash in the Ready that records a vote they granted; without pre-vote, two
    # candidates of one term ask the same node before and after its restart.
    "vote_sent_before_stored": Mutant(
        _vote_sent_before_stored,
        150,
        {
            "nodes": 3,
            "fault_rate": 4.0,
            "crashes": True,
            "quick_restarts": True,
            "crash_on_vote": 0.5,
            "pre_vote": False,
            "leader_faults": 0.05,
            "max_delay": 4,
            "torn_writes": False,
        },
    ),
    # The leader's clients cannot reach it while one follower is paused; then the leader
    # is cut off from its peers and another follower restarts; the paused one resumes,
    # campaigns at once and gets the restarted node's vote while the old leader's lease,
    # resting on that node's answer before its crash, still runs.
    "restart_forgets_the_lease": Mutant(
        _restart_forgets_the_lease,
        60,
        {
            **LEASE,
            "crashes": True,
            "quick_restarts": True,
            "pre_vote": False,
            "leader_faults": 0.1,
            "leader_fault_kinds": "bounce",
            "fault_rate": 0.0,
            "transfers": False,
            "pauses": False,
            "pause_loses_inbox": False,
            "crash_on_vote": 0.0,
            "slow_apply": False,
            "step_in_ready": 0.0,
        },
    ),
    # Leaders crash over and over (quick restarts, lossy links, one entry per message):
    # logs grow tails of different terms, and a new leader ships its predecessors' entries
    # before its own no-op. Counting replicas commits such an entry while a node with a
    # newer-term tail that lacks it could still be elected (the electable-node check).
    "figure8_commit_by_counting": Mutant(
        _figure8_commit_by_counting,
        60,
        {
            **HARSH,
            "drop": 0.3,
            "max_delay": 4,
            "leader_faults": 0.3,
            "leader_fault_kinds": "crash",
            "quick_restarts": True,
            "max_size_per_msg": 64,
            "membership": False,
            "clients": 8,
            "ticks": 600,
        },
    ),
    # Found by the sweep (seed 63758). Membership changes down to one voter, lossy links
    # and partitions: a removed leader handing over to a lagging voter is cut off from it,
    # the voter is elected and writes, and a read sent to the old leader is answered.
    "removed_leader_reads_alone": Mutant(
        _removed_leader_reads_alone,
        80,
        {
            "nodes": 3,
            "membership": True,
            "membership_rate": 0.15,
            "min_voters": 1,
            "fault_rate": 2.0,
            "drop": 0.3,
            "crashes": False,
            "partitions": True,
            "leader_faults": 0.0,
            "clients": 6,
            "keys": 1,
            "random_reads": 0.8,
        },
    ),
    # Found by the sweep (seed 40 of this schedule). Membership changes down to one voter
    # on lossy links, no crashes: the leader of two commits its own removal with one more
    # entry of its own, loses leadership, and refuses the voter left for its shorter log.
    "removed_node_votes_by_log": Mutant(_removed_node_votes_by_log, 60, _DOWN_TO_ONE_VOTER),
    # Found by the sweep (seed 37017). As the schedule above, with quick restarts and a
    # snapshot after every Ready that applies: the removed node restarts from a snapshot
    # that covers its removal before the voter left is elected.
    "removal_forgotten_on_restart": Mutant(
        _removal_forgotten_on_restart,
        150,
        {**_DOWN_TO_ONE_VOTER, "crashes": True, "quick_restarts": True, "snapshot_every": 1},
    ),
    # Found by the sweep (seed 32055). Two nodes, membership changes down to one voter,
    # frequent crashes that lose unsynced writes: the voter left applies the removal of
    # the other, the operator decommissions it, and a crash takes the commit index back.
    "conf_commit_not_synced": Mutant(
        _conf_commit_not_synced,
        40,
        {
            "nodes": 2,
            "membership": True,
            "membership_rate": 0.4,
            "min_voters": 1,
            "fault_rate": 4.0,
            "drop": 0.2,
            "crashes": True,
            "partitions": False,
            "leader_faults": 0.0,
            "clients": 2,
        },
    ),
}
"""Mutants the simulator catches within a CI budget (seeds from 0)."""


def first_failing_seed(mutant: Mutant) -> tuple[int, str]:
    """The first seed (from 0) at which the simulator catches the patched kernel."""
    for seed in range(mutant.budget):
        try:
            run_seed(seed, **mutant.schedule)
        except SimulationFailure as exc:
            return seed, str(exc).splitlines()[0]
    return -1, ""


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_simulator_catches_the_mutant_and_passes_the_honest_kernel(name: str) -> None:
    mutant = MUTANTS[name]
    with pytest.MonkeyPatch.context() as mp:
        mutant.patch(mp)
        seed, why = first_failing_seed(mutant)
    assert seed >= 0, f"{name}: not caught within {mutant.budget} seeds"
    print(f"{name}: caught at seed {seed} ({seed + 1} seeds): {why}")
    for honest in range(seed + 1):
        run_seed(honest, **honest_schedule(mutant))


def honest_schedule(mutant: Mutant) -> dict[str, object]:
    """The mutant's schedule for the honest kernel (and, for the runtime mutant, the honest
    runtime, which catches up its ticks)."""
    schedule = {**mutant.schedule}
    if "catch_up_ticks" in schedule:
        schedule["catch_up_ticks"] = True
    return schedule


def main(argv: list[str]) -> int:
    """``python tests/sim/test_mutations.py NAME [SEEDS]``: search for one mutant (further
    than its budget with SEEDS); ``--honest SEEDS``: run the honest kernel on every
    schedule for seeds 0 to SEEDS - 1."""
    if len(argv) == 2 and argv[0] == "--honest":
        failed = 0
        for name, mutant in MUTANTS.items():
            for seed in range(int(argv[1])):
                try:
                    run_seed(seed, **honest_schedule(mutant))
                except SimulationFailure as exc:
                    failed += 1
                    print(f"{name}: honest kernel failed seed {seed}: {exc}")
            print(f"{name}: honest kernel ran seeds 0-{int(argv[1]) - 1}")
        return 1 if failed else 0
    if not argv or argv[0] not in MUTANTS:
        print("mutants: " + ", ".join(MUTANTS))
        return 2
    mutant = MUTANTS[argv[0]]
    if len(argv) > 1:
        mutant = Mutant(mutant.patch, int(argv[1]), mutant.schedule)
    with pytest.MonkeyPatch.context() as mp:
        mutant.patch(mp)
        seed, why = first_failing_seed(mutant)
    print(
        f"{argv[0]}: "
        + (f"caught at seed {seed}: {why}" if seed >= 0 else f"not caught in {mutant.budget} seeds")
    )
    return 0 if seed >= 0 else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
