"""Randomized runs of a small cluster under loss, reordering, duplication, partitions,
crashes and compaction, checking Raft's safety properties (P Figure 3) after every step
and liveness once the faults stop. A failure names the seed; ``_run(seed)`` replays it.

This is a compact check of the kernel alone; the full simulator lives in framework.sim.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import pytest
from kernel_harness import Cluster

from framework.core import ConfChange, ConfChangeType, ProposalRejected, Role


@dataclass
class Invariants:
    leader_of_term: dict[int, int] = field(default_factory=dict)
    applied: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    """index -> (term, data) of every entry any node applied."""
    commit_term: dict[int, int] = field(default_factory=dict)
    """index -> smallest term of a node seen applying it (>= the term it committed in)."""
    seen_applied: dict[int, int] = field(default_factory=dict)

    def check(self, c: Cluster, seed: int) -> None:
        where = f"seed {seed}: replay with _run({seed})"
        for nid in c.ids:
            node = c.node(nid)
            # Election safety: at most one leader per term.
            if node.role is Role.LEADER:
                prev = self.leader_of_term.setdefault(node.term, nid)
                assert prev == nid, f"{where}: nodes {prev} and {nid} both lead term {node.term}"
            # State machine safety: one entry per index across every node and restart.
            record = c.records[nid]
            for entry in record.applied[self.seen_applied.get(nid, 0) :]:
                got = (entry.term, entry.data)
                assert self.applied.setdefault(entry.index, got) == got, (
                    f"{where}: node {nid} applied {got} at {entry.index}, another node "
                    f"applied {self.applied[entry.index]}"
                )
                term = min(self.commit_term.get(entry.index, node.term), node.term)
                self.commit_term[entry.index] = term
            self.seen_applied[nid] = len(record.applied)
            # Log invariants.
            log = node.log
            assert log.offset <= log.committed <= log.last_index(), where
            assert log.applied <= log.committed, where
            # A snapshot received but not yet handed out in a Ready is not applied yet.
            assert node.has_ready() or log.offset <= log.applied, where
            terms = [e.term for e in log.entries]
            assert terms == sorted(terms), f"{where}: node {nid} log terms decrease"
            # Log matching for committed entries we still hold.
            for index in range(log.offset + 1, log.committed + 1):
                if index in self.applied:
                    assert log.term(index) == self.applied[index][0], (
                        f"{where}: node {nid} committed a different entry at {index}"
                    )
        # Leader completeness: a leader of a later term holds every committed entry.
        for nid in c.leaders():
            node = c.node(nid)
            for index, (term, _) in self.applied.items():
                if node.term > self.commit_term[index] and index > node.log.offset:
                    assert node.log.term(index) == term, (
                        f"{where}: leader {nid} of term {node.term} lacks committed entry "
                        f"{index}@t{term}"
                    )


def _deliver_some(c: Cluster, rng: random.Random) -> None:
    queue, c.network.queue = c.network.queue, []
    rng.shuffle(queue)
    keep = []
    for msg in queue:
        roll = rng.random()
        if roll < 0.1:
            continue  # lost
        if roll < 0.25:
            keep.append(msg)  # delayed
            continue
        if roll < 0.3:
            keep.append(msg)  # duplicated
        c.network.queue.append(msg)
    c.deliver()
    c.network.queue = keep


def _membership_change(c: Cluster, rng: random.Random) -> None:
    """Propose a random single-server change on a leader; refusals are fine."""
    leaders = c.leaders()
    if not leaders:
        return
    leader = c.node(rng.choice(leaders))
    conf = leader.conf_state
    nid = rng.choice(c.ids)
    if nid in conf.learners:
        kind = rng.choice([ConfChangeType.PROMOTE, ConfChangeType.REMOVE])
    elif nid in conf.voters:
        kind = ConfChangeType.REMOVE
    else:
        kind = rng.choice([ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER])
    if kind is ConfChangeType.REMOVE and len(conf.voters) <= 2 and nid in conf.voters:
        return
    with contextlib.suppress(ProposalRejected):
        leader.propose_conf_change(ConfChange(type=kind, node_id=nid))


def _run(seed: int, steps: int = 300, *, membership: bool = False) -> Invariants:
    rng = random.Random(seed)
    n = rng.choice([3, 5])
    c = Cluster(
        seed=seed,
        election_tick=6,
        heartbeat_tick=2,
        max_inflight_msgs=3,
        max_size_per_msg=16,
        pre_vote=rng.random() < 0.8,
    )
    c.add_nodes(n)
    if membership:
        c.add_nodes(2)  # nodes n+1 and n+2 start outside the cluster
    inv = Invariants()
    proposals = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.45:
            c.tick(rng.choice(c.ids))
        elif roll < 0.6:
            for nid in c.leaders():
                with contextlib.suppress(ProposalRejected):
                    c.propose(nid, f"{seed}-{proposals}".encode())
                    proposals += 1
        elif roll < 0.63:
            c.isolate(rng.choice(c.ids))
        elif roll < 0.68:
            c.heal()
        elif roll < 0.7:
            c.restart(rng.choice(c.ids))
        elif roll < 0.72:
            nid = rng.choice(c.ids)
            node = c.node(nid)
            if node.log.applied > node.log.offset and node.has_ready() is not None:
                c.compact(nid)
        elif roll < 0.73 and c.leaders():
            leader = c.node(c.leaders()[0])
            with contextlib.suppress(ProposalRejected):
                leader.transfer_leader(rng.choice(c.ids))
        elif roll < 0.76 and membership:
            _membership_change(c, rng)
        for nid in c.ids:
            if rng.random() < 0.7:
                c.process_ready(nid)
        _deliver_some(c, rng)
        inv.check(c, seed)
    # Liveness: once the faults stop, a leader emerges, accepts a write, and every state
    # machine converges on it.
    # (A proposal may be lost when leadership changes before it commits: then retry.)
    c.heal()
    proposed_in = 0
    for _ in range(400):
        for nid in c.ids:
            c.tick(nid)
        c.stabilize()
        inv.check(c, seed)
        leader = c.leader()
        # Nodes removed from the cluster (or never added) are not expected to follow.
        members = c.node(leader).conf_state.members() if leader else c.ids
        states = {tuple(c.state(nid)) for nid in members}
        if len(states) == 1 and next(iter(states))[-1:] == (b"final",):
            break
        if leader and c.node(leader).term != proposed_in and not c.node(leader).status().transferee:
            c.propose(leader, b"final")
            proposed_in = c.node(leader).term
    else:
        raise AssertionError(f"seed {seed}: no convergence after healing: {states}")
    return inv


@pytest.mark.parametrize("block", range(10))
def test_random_faults_keep_raft_safety_and_liveness(block: int) -> None:
    for seed in range(block * 20, block * 20 + 20):
        _run(seed)


@pytest.mark.parametrize("block", range(6))
def test_random_faults_with_membership_changes(block: int) -> None:
    for seed in range(block * 20, block * 20 + 20):
        _run(seed, membership=True)
