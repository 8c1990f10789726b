"""The RawNode contract (etcd/raft style): Ready/advance ordering and misuse, the errors a
caller sees, configuration validation, and the determinism the simulator relies on."""

from __future__ import annotations

import random

import pytest
from kernel_harness import (
    Cluster,
    drain,
    fingerprint,
    make_leader,
    make_node,
    make_stable_leader,
)

from framework.core import (
    AppendEntries,
    ConfState,
    EntryKind,
    KernelMisuse,
    NotLeader,
    RaftConfig,
    RawNode,
    Role,
    VoteRequest,
)

# == Ready / advance ===========================================================================


def test_ready_twice_without_advance_raises() -> None:
    """etcd: "two accepted Ready structs without call to Advance" is a caller bug."""
    node = make_node(1)
    rd = node.ready()
    with pytest.raises(KernelMisuse, match="twice"):
        node.ready()
    node.advance(rd)
    node.ready()


def test_advance_with_a_foreign_or_repeated_ready_raises() -> None:
    node = make_node(1)
    other = make_node(2)
    rd = node.ready()
    with pytest.raises(KernelMisuse, match="not the outstanding"):
        node.advance(other.ready())
    node.advance(rd)
    with pytest.raises(KernelMisuse, match="not the outstanding"):
        node.advance(rd)


def test_advance_without_ready_raises() -> None:
    node = make_node(1)
    drain(node)
    with pytest.raises(KernelMisuse):
        node.advance(make_node(1).ready())


def test_has_ready_is_false_while_a_ready_is_outstanding() -> None:
    node = make_node(1)
    node.campaign()
    assert node.has_ready()
    rd = node.ready()
    node.tick()
    assert not node.has_ready()
    node.advance(rd)


def test_compact_between_ready_and_advance_raises() -> None:
    node = make_node(1, log=[1, 1], commit=3)
    drain(node)
    node.campaign()
    rd = node.ready()
    with pytest.raises(KernelMisuse, match="between ready"):
        node.compact(b"")
    node.advance(rd)


@pytest.mark.parametrize("kind", [EntryKind.CONF_CHANGE, EntryKind.NOOP])
def test_propose_refuses_kernel_owned_entry_kinds(kind: EntryKind) -> None:
    leader = make_leader(1)
    with pytest.raises(KernelMisuse):
        leader.propose(b"x", kind=kind)


def test_flags_entries_are_proposed_and_applied_like_normal_ones() -> None:
    leader = make_node(1, voters=(1,))
    drain(leader)
    leader.campaign()
    drain(leader)
    index = leader.propose(b'{"actors": true}', kind=EntryKind.FLAGS)
    rd = leader.ready()
    leader.advance(rd)
    rd = leader.ready()
    assert [(e.index, e.kind) for e in rd.committed_entries] == [(index, EntryKind.FLAGS)]
    leader.advance(rd)


def test_read_index_needs_a_context() -> None:
    with pytest.raises(KernelMisuse):
        make_leader(1).read_index(b"")


def test_messages_wait_for_persistence_unless_leader_replication() -> None:
    """Ready ordering duty: votes and acknowledgements are ``persisted_messages`` (they
    promise durability); a leader's appends and heartbeats may leave before its own write
    (D §10.2.1) and are ``messages``."""
    leader = make_stable_leader(1)
    leader.propose(b"x")
    rd = leader.ready()
    assert rd.entries and rd.persisted_messages == ()
    assert {type(m) for m in rd.messages} == {AppendEntries}
    leader.advance(rd)

    follower = make_node(2, log=[2], term=2)
    drain(follower)
    (append,) = [m for m in rd.messages if m.dst == 2]
    follower.step(append)
    rd = follower.ready()
    assert rd.messages == () and len(rd.persisted_messages) == 1
    assert rd.must_sync
    follower.advance(rd)


def test_must_sync_only_for_entries_term_vote_or_snapshot() -> None:
    """A Ready that only moves the commit index need not be fsynced."""
    follower = make_node(2, log=[1], term=1)
    drain(follower)
    follower.step(AppendEntries(src=1, dst=2, term=1, prev_index=2, prev_term=1, commit=2))
    rd = follower.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 2
    assert not rd.must_sync
    follower.advance(rd)


def test_committed_entries_are_handed_out_once_and_in_order() -> None:
    c = Cluster(seed=3)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    for i in range(20):
        c.propose(1, f"v{i}".encode())
        if i % 3 == 0:
            c.stabilize()
    c.stabilize()
    for nid in c.ids:
        indexes = [e.index for e in c.records[nid].applied]
        assert indexes == list(range(1, indexes[-1] + 1))
        assert c.state(nid) == [f"v{i}".encode() for i in range(20)]


def test_max_committed_per_ready_caps_each_batch() -> None:
    node = make_node(1, log=[1] * 10, commit=11, max_committed_per_ready=4)
    sizes = []
    while node.has_ready():
        rd = node.ready()
        sizes.append(len(rd.committed_entries))
        node.advance(rd)
    assert sizes == [4, 4, 2]


# == errors for the caller =====================================================================


def test_proposal_on_a_follower_raises_not_leader_naming_the_leader() -> None:
    """D §6.2: a server that is not the leader redirects the client to the leader."""
    c = Cluster(seed=4)
    c.add_nodes(3)
    c.stabilize()
    c.elect(2)
    before = fingerprint(c.node(1))
    with pytest.raises(NotLeader, match="node 2 is the leader") as info:
        c.propose(1, b"x")
    assert info.value.leader == 2
    assert fingerprint(c.node(1)) == before


def test_proposal_without_a_known_leader_raises_not_leader_with_zero() -> None:
    node = make_node(1)
    drain(node)
    node.campaign()
    with pytest.raises(NotLeader, match="no leader is known") as info:
        node.propose(b"x")
    assert info.value.leader == 0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"id": 0}, "id=0"),
        ({"id": 1, "heartbeat_tick": 0}, "heartbeat_tick=0"),
        ({"id": 1, "election_tick": 2, "heartbeat_tick": 2}, "election_tick=2"),
        ({"id": 1, "max_inflight_msgs": 0}, "max_inflight_msgs=0"),
        ({"id": 1, "max_size_per_msg": 0}, "max_size_per_msg=0"),
        ({"id": 1, "max_uncommitted_entries_size": -1}, "max_uncommitted_entries_size=-1"),
        ({"id": 1, "lease_reads": True, "check_quorum": False}, "lease_reads=True"),
    ],
)
def test_raft_config_rejects_bad_values_naming_them(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        RaftConfig(**kwargs)


# == determinism ===============================================================================


def _run(seed: int) -> list[str]:
    c = Cluster(seed=seed)
    c.add_nodes(3)
    c.stabilize()
    trace = []
    rng = random.Random(seed)
    for _ in range(300):
        nid = rng.choice(c.ids)
        c.tick(nid)
        if c.leader() and rng.random() < 0.2:
            c.propose(c.leader(), b"x")
        c.stabilize()
        trace.extend(c.take_output())
    return trace


def test_same_seed_same_trace() -> None:
    """The kernel's only randomness is the injected random.Random: a seed replays exactly
    (what the simulator's "failing seed prints the command that replays it" needs)."""
    assert _run(5) == _run(5)
    assert _run(5) != _run(6)


def test_bootstrap_writes_membership_as_committed_entries_of_term_one() -> None:
    node = RawNode(RaftConfig(id=1), rng=random.Random(0), conf_state=ConfState(voters=(1, 2)))
    rd = node.ready()
    assert [(e.index, e.term, e.kind) for e in rd.entries] == [
        (1, 1, EntryKind.CONF_CHANGE),
        (2, 1, EntryKind.CONF_CHANGE),
    ]
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.commit) == (1, 2)
    assert len(rd.committed_entries) == 2
    assert node.conf_state.voters == ()  # membership takes effect when applied
    node.advance(rd)
    assert node.conf_state.voters == (1, 2)


def test_node_does_not_campaign_before_applying_its_membership() -> None:
    node = RawNode(RaftConfig(id=1), rng=random.Random(0), conf_state=ConfState(voters=(1,)))
    node.campaign()
    assert node.role is Role.FOLLOWER
    drain(node)
    node.campaign()
    assert node.role is Role.LEADER


def test_restart_with_stored_log_ignores_the_bootstrap_argument() -> None:
    c = Cluster(seed=9)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    before = list(c.node(2).log.entries)
    c.restart(2)
    assert c.node(2).log.entries == before
    assert c.node(2).term == c.node(1).term
    c.stabilize()
    assert c.state(2) == [b"x"]


def test_vote_request_structure_is_what_a_restarted_peer_expects() -> None:
    """A campaign after restart uses the durable log's last entry."""
    node = make_node(1, log=[2, 3], term=3, pre_vote=False)
    drain(node)
    node.campaign()
    reqs = [m for m in drain(node) if isinstance(m, VoteRequest)]
    assert {(m.last_index, m.last_term, m.term) for m in reqs} == {(3, 3, 4)}
