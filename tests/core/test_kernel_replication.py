"""Log replication and commitment: P §5.3, §5.4.2 (Figure 8), D §10.2.1 (the leader's own
write), and flow control (in-flight window, bytes per message, uncommitted cap)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_harness import (
    Cluster,
    ack,
    drain,
    fingerprint,
    make_leader,
    make_node,
    make_stable_leader,
)

from framework.core import (
    AppendEntries,
    AppendResponse,
    Entry,
    EntryKind,
    HeartbeatResponse,
    InvalidMessage,
    Role,
    UncommittedSizeExceeded,
    VoteResponse,
)
from framework.core.log import RaftLog


def _e(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(term, index, EntryKind.NORMAL, data or f"e{index}t{term}".encode())


def _appends(msgs: list[object], dst: int | None = None) -> list[AppendEntries]:
    return [m for m in msgs if isinstance(m, AppendEntries) and (dst is None or m.dst == dst)]


# == §5.3 log matching, conflicts, duplicates ==================================================

# (follower log terms after 1@t1, prev index, prev term, entry terms, accepted, log after)
APPENDS = [
    pytest.param([2, 2], 3, 2, [2], True, [2, 2, 2], id="appends after a match"),
    pytest.param([2, 2], 4, 2, [2], False, [2, 2], id="gap: prev past our last"),
    pytest.param([2, 2], 3, 3, [3], False, [2, 2], id="prev term differs"),
    pytest.param([2, 2, 2], 2, 2, [3, 3], True, [2, 3, 3], id="conflict truncates suffix"),
    pytest.param([2, 2, 2], 1, 1, [2], True, [2, 2, 2], id="duplicate prefix kept"),
    pytest.param([2, 2, 2], 2, 2, [2, 2], True, [2, 2, 2], id="exact duplicate"),
    pytest.param([2, 3], 2, 2, [2, 2, 2], True, [2, 2, 2, 2], id="conflict then longer"),
    pytest.param([], 1, 1, [2, 2], True, [2, 2], id="empty log after snapshot"),
]


@pytest.mark.parametrize(("log", "prev_index", "prev_term", "terms", "ok", "after"), APPENDS)
def test_5_3_append_entries_consistency_check(
    log: list[int],
    prev_index: int,
    prev_term: int,
    terms: list[int],
    ok: bool,
    after: list[int],
) -> None:
    """§5.3: "If a follower does not find an entry in its log with the same index and term
    [as prev], then it refuses the new entries." "If an existing entry conflicts with a
    new one (same index but different terms), delete the existing entry and all that
    follow it." Entries already present are kept (duplicates are harmless)."""
    node = make_node(1, log=log, term=3)
    drain(node)
    entries = tuple(_e(prev_index + 1 + i, t) for i, t in enumerate(terms))
    node.step(
        AppendEntries(
            src=2,
            dst=1,
            term=3,
            prev_index=prev_index,
            prev_term=prev_term,
            entries=entries,
            commit=1,
        )
    )
    (resp,) = drain(node)
    assert isinstance(resp, AppendResponse)
    assert resp.reject is (not ok)
    assert [e.term for e in node.log.entries] == after
    if ok:
        assert resp.index == prev_index + len(terms)
    else:
        assert resp.index == prev_index


def test_5_3_conflict_truncation_is_persisted_from_the_conflict_on() -> None:
    """The Ready must tell storage to replace the stored suffix from the first new entry."""
    node = make_node(1, log=[2, 2, 2], term=3)
    drain(node)
    node.step(
        AppendEntries(
            src=2, dst=1, term=3, prev_index=2, prev_term=2, entries=(_e(3, 3), _e(4, 3)), commit=1
        )
    )
    rd = node.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(3, 3), (4, 3)]


def test_5_3_reordered_older_append_does_not_truncate_newer_entries() -> None:
    """An append delayed behind a newer one carries a prefix of what we hold: keep the
    longer log (truncating would lose acknowledged entries)."""
    node = make_node(1, term=2)
    drain(node)
    new = AppendEntries(
        src=2,
        dst=1,
        term=2,
        prev_index=1,
        prev_term=1,
        entries=(_e(2, 2), _e(3, 2), _e(4, 2)),
        commit=1,
    )
    old = AppendEntries(
        src=2, dst=1, term=2, prev_index=1, prev_term=1, entries=(_e(2, 2),), commit=1
    )
    node.step(new)
    drain(node)
    node.step(old)
    node.step(new)
    out = drain(node)
    assert node.log.last_index() == 4
    assert [m.index for m in out if isinstance(m, AppendResponse)] == [2, 4]


def test_5_3_follower_answers_appends_below_its_commit_index_with_its_commit() -> None:
    """Entries up to our commit index are committed and therefore match every later
    leader's log (leader completeness), so an append before them is answered with the
    commit index and changes nothing."""
    node = make_node(1, log=[2, 2, 2], term=3, commit=4)
    drain(node)
    before = list(node.log.entries)
    node.step(
        AppendEntries(
            src=2, dst=1, term=3, prev_index=1, prev_term=1, entries=(_e(2, 3),), commit=4
        )
    )
    assert drain(node) == [AppendResponse(src=1, dst=2, term=3, index=4)]
    assert node.log.entries == before


def test_5_3_raft_log_never_truncates_committed_entries() -> None:
    """Log safety: a conflicting entry at or below the commit index is a protocol
    violation by the sender and raises InvalidMessage without touching the log."""
    log = RaftLog(entries=[_e(1, 1), _e(2, 1), _e(3, 1)], committed=2)
    with pytest.raises(InvalidMessage, match="committed entry 2"):
        log.maybe_append(1, 1, 3, (_e(2, 2), _e(3, 2)))
    assert [(e.index, e.term) for e in log.entries] == [(1, 1), (2, 1), (3, 1)]
    # Above the commit index the same conflict is repaired.
    assert log.maybe_append(2, 1, 2, (_e(3, 2),)) == 3
    assert [(e.index, e.term) for e in log.entries] == [(1, 1), (2, 1), (3, 2)]


def test_5_3_commit_index_follows_leader_but_never_past_the_last_new_entry() -> None:
    """Figure 2: "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index
    of last new entry)" -- not our last index, which may hold unverified entries."""
    node = make_node(1, log=[2, 2, 2, 2], term=3)
    drain(node)
    node.step(AppendEntries(src=2, dst=1, term=3, prev_index=2, prev_term=2, entries=(), commit=5))
    drain(node)
    assert node.log.committed == 2


def test_5_3_rejection_hint_lets_the_leader_skip_a_term_per_round_trip() -> None:
    """Fast backtracking (P §5.3 "the follower can include the term of the conflicting
    entry and the first index it stores for that term"): a follower with ten entries of
    an uncommitted term is repaired in two round trips, not ten."""
    follower = make_node(2, log=[2] + [3] * 10, term=5, commit=2)
    drain(follower)
    leader = make_node(1, log=[2] + [4] * 10, term=4, commit=2, pre_vote=False)
    drain(leader)
    leader.campaign()
    drain(leader)
    leader.step(VoteResponse(src=3, dst=1, term=5, granted=True))
    assert leader.role is Role.LEADER
    round_trips = 0
    msgs = drain(leader)
    while True:
        apps = _appends(msgs, dst=2)
        if not apps:
            break
        for app in apps:
            follower.step(app)
        replies = drain(follower)
        round_trips += 1
        for reply in replies:
            leader.step(reply)
        msgs = drain(leader)
        if all(not r.reject for r in replies if isinstance(r, AppendResponse)):
            break
    assert round_trips == 2
    assert [e.term for e in follower.log.entries] == [e.term for e in leader.log.entries]


# == §5.4.2 committing entries from previous terms (Figure 8) ==================================


def test_5_4_2_previous_term_entry_is_not_committed_by_counting_replicas() -> None:
    """§5.4.2: "Raft never commits log entries from previous terms by counting replicas.
    Only log entries from the leader's current term are committed by counting replicas;
    once an entry from the current term has been committed ... all prior entries are
    committed indirectly." Figure 8 (c): entry 2 of term 2 on a majority, leader of term 4.
    """
    leader = make_leader(1, voters=(1, 2, 3), log=[2], term=3, pre_vote=False)
    assert leader.term == 4
    noop = leader.log.last_index()
    assert leader.log.term(noop) == 4 and leader.log.term(2) == 2
    ack(leader, 2, 2)  # node 2 stores entry 2 (term 2): with the leader, a majority
    assert leader.log.committed == 1
    ack(leader, 2, noop)  # the current-term no-op reaches a majority
    assert leader.log.committed == noop  # and commits entry 2 with it


def _flow(c: Cluster, *ids: int) -> None:
    """Perform the Readies of ``ids`` (in order), then deliver everything queued."""
    for nid in ids:
        c.process_ready(nid)
    c.deliver()


def test_5_4_2_figure_8_old_entry_on_a_majority_is_overwritten_safely() -> None:
    """Figure 8 played out on five nodes. (a) S1 leads term 2 and puts entry i on S2.
    (b) S5 wins term 3 with S3, S4 and appends its own entry i, which reaches nobody.
    (c) S1 wins term 4 and copies its old entry i to S3: now on a majority (S1, S2, S3),
    yet not committed, since it is not of term 4. (d) S1 crashes; S5 wins term 5 with
    S3 and S4 and overwrites entry i everywhere. Had S1 committed i in (c), a state
    machine would now have applied two different entries at i."""
    c = Cluster(seed=8, pre_vote=False, check_quorum=False, max_size_per_msg=1)
    c.add_nodes(5)
    c.stabilize()
    c.elect(1)
    i = c.node(1).log.last_index() + 1
    # (a)
    for n in (3, 4, 5):
        c.cut(1, n)
    c.propose(1, b"s1-term2")
    c.stabilize()
    assert [c.node(n).log.term(i) for n in c.ids] == [2, 2, None, None, None]
    # (b) S5 wins term 3 and appends entry i, then is cut off before sending it.
    c.heal()
    c.network.isolated = {1, 2}
    c.node(5).campaign()
    _flow(c, 5)
    _flow(c, 3, 4)
    assert c.node(5).role is Role.LEADER and c.node(5).log.term(i) == 3
    c.network.isolated = {1, 2, 5}
    _flow(c, 5)
    # (c) S1 restarts (a follower of term 2) and needs two campaigns: S3 already voted
    # in term 3.
    c.restart(1)
    c.network.isolated = {4, 5}
    _flow(c, 1)
    for _ in range(2):
        c.node(1).campaign()
        _flow(c, 1)
        _flow(c, 2, 3)
    assert c.node(1).role is Role.LEADER and c.node(1).term == 4
    _flow(c, 1)  # no-op i+1 to S2 (accepted) and S3 (rejected: it lacks i)
    _flow(c, 2, 3)
    _flow(c, 1)  # probe S3 from i: one entry per message (max_size_per_msg=1)
    _flow(c, 3)
    assert [c.node(n).log.term(i) for n in c.ids] == [2, 2, 2, None, 3]
    assert c.node(3).log.last_index() == i  # S3 has i but not S1's no-op
    leader = c.node(1)
    assert leader.progress[3].match == i
    assert leader.log.committed < i, "entry of term 2 committed by counting replicas"
    # (d) S1 crashes for good; S5 restarts and campaigns (twice: S3 voted in term 4).
    c.network.isolated = {1}
    c.restart(5)
    c.stabilize()
    for _ in range(2):
        c.node(5).campaign()
        c.stabilize()
    assert c.node(5).role is Role.LEADER and c.node(5).term == 5
    c.heal()
    for _ in range(3):
        c.tick_heartbeat(5)
        c.stabilize()
    assert {c.node(n).log.term(i) for n in c.ids} == {3}
    assert len({tuple(c.state(n)) for n in c.ids}) == 1
    assert all(b"s1-term2" not in c.state(n) for n in c.ids)
    assert all(e.data != b"s1-term2" for n in c.ids for e in c.records[n].applied)


def test_leader_counts_its_own_entry_only_once_persisted() -> None:
    """D §10.2.1: the leader may send before its own write, but its copy counts toward
    commitment only after the write completes (``advance``): "committed" must mean "on
    stable storage on a majority"."""
    node = make_node(1, voters=(1,))
    drain(node)
    node.campaign()
    drain(node)
    assert node.role is Role.LEADER
    committed = node.log.committed
    index = node.propose(b"x")
    rd = node.ready()
    assert [e.index for e in rd.entries] == [index]
    assert node.log.committed == committed  # not yet durable anywhere
    node.advance(rd)
    assert node.log.committed == index
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [index]


def test_leader_commits_with_followers_before_its_own_write() -> None:
    """The converse: two followers of three are a majority without the leader's copy."""
    leader = make_leader(1)
    index = leader.propose(b"x")
    rd = leader.ready()  # sent, not yet persisted
    ack(leader, 2, index)
    assert leader.log.committed < index  # leader (not durable) + node 2: only 1 of 3 durable
    ack(leader, 3, index)
    assert leader.log.committed == index
    leader.advance(rd)


def test_commit_reached_by_the_leaders_own_write_is_broadcast_at_once() -> None:
    """A follower's acknowledgement can arrive before the leader's own write completes;
    then it is ``advance`` that commits, and the followers must hear of it in the next
    Ready, as for any other commit advance."""
    leader = make_stable_leader(1)
    index = leader.propose(b"x")
    rd = leader.ready()
    ack(leader, 2, index)  # 1 of 3 durable: not yet committed
    assert leader.log.committed < index
    leader.advance(rd)  # leader durable too: committed now
    assert leader.log.committed == index
    out = drain(leader)
    commits = {m.dst: m.commit for m in _appends(out)}
    assert commits == {2: index, 3: index}


def test_commit_advance_is_broadcast_at_once() -> None:
    """When the commit index moves, followers are told in the next Ready (an empty append
    if there is nothing new), not only at the next heartbeat."""
    leader = make_stable_leader()
    index = leader.propose(b"x")
    drain(leader)
    ack(leader, 2, index)
    out = drain(leader)
    commits = {m.dst: m.commit for m in _appends(out)}
    assert commits == {2: index, 3: index}


# == flow control ==============================================================================


def test_max_inflight_msgs_bounds_unacknowledged_appends() -> None:
    """etcd Progress: in REPLICATE the leader streams at most ``max_inflight_msgs``
    unacknowledged appends per follower, then waits."""
    leader = make_stable_leader(max_inflight_msgs=2)
    sent: list[AppendEntries] = []
    for i in range(5):
        leader.propose(f"p{i}".encode())
        sent += _appends(drain(leader), dst=2)
    assert len(sent) == 2
    assert [e.data for m in sent for e in m.entries] == [b"p0", b"p1"]
    ack(leader, 2, sent[0].entries[-1].index)  # frees one slot
    more = _appends(drain(leader), dst=2)
    assert len(more) == 1 and [e.data for e in more[0].entries] == [b"p2", b"p3", b"p4"]


def test_inflight_window_recovers_when_every_append_was_lost() -> None:
    """If all appends filling the window were lost, the follower's heartbeat answers make
    the leader send again, the gap shows as a rejection, and it is repaired."""
    c = Cluster(seed=2, max_inflight_msgs=2)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.cut(1, 3)
    for i in range(6):
        c.propose(1, f"p{i}".encode())
        c.stabilize()
    c.heal()
    for _ in range(5):
        c.tick_heartbeat(1)
        c.stabilize()
    assert c.node(3).log.last_index() == c.node(1).log.last_index()
    assert c.state(3) == c.state(1)


@pytest.mark.parametrize(
    ("sizes", "cap", "batches"),
    [
        ([10, 10, 10, 10, 10], 25, [2, 2, 1]),
        ([10, 10, 10], 30, [3]),
        ([40, 5, 5], 25, [1, 2]),  # an entry above the cap still goes, alone
        ([5, 40, 5], 25, [1, 1, 1]),
    ],
)
def test_max_size_per_msg_bounds_entry_bytes_per_append(
    sizes: list[int], cap: int, batches: list[int]
) -> None:
    """At most ``max_size_per_msg`` bytes of entry data per append, but always at least
    one entry so that a large entry is not stuck."""
    leader = make_leader(1, max_size_per_msg=cap, max_inflight_msgs=100)
    noop = leader.log.last_index()
    ack(leader, 2, noop)
    drain(leader)
    for n in sizes:
        leader.propose(b"x" * n)
    apps = _appends(drain(leader), dst=2)
    assert [len(m.entries) for m in apps] == batches
    for m in apps:
        assert len(m.entries) == 1 or sum(len(e.data) for e in m.entries) <= cap


def test_probe_state_sends_one_append_until_answered() -> None:
    """A follower whose log end is unknown gets one append per round trip (PROBE)."""
    leader = make_leader(1)
    assert leader.progress[2].state.value == "probe"
    for i in range(3):
        leader.propose(f"p{i}".encode())
    assert _appends(drain(leader), dst=2) == []  # the no-op probe is still unanswered
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term))
    assert len(_appends(drain(leader), dst=2)) == 1


def test_uncommitted_size_cap_rejects_then_releases_on_commit() -> None:
    """A leader refuses proposals once ``max_uncommitted_entries_size`` bytes are
    uncommitted (UncommittedSizeExceeded, nothing appended) and accepts again once
    they commit."""
    leader = make_leader(1, max_uncommitted_entries_size=20)
    noop = leader.log.last_index()
    first = leader.propose(b"a" * 10)
    leader.propose(b"b" * 10)
    before = fingerprint(leader)
    with pytest.raises(UncommittedSizeExceeded, match="max_uncommitted_entries_size=20"):
        leader.propose(b"c")
    assert fingerprint(leader) == before
    drain(leader)
    ack(leader, 2, first)  # 10 bytes commit
    assert leader.log.committed == first
    leader.propose(b"c" * 10)
    with pytest.raises(UncommittedSizeExceeded):
        leader.propose(b"d")
    drain(leader)
    ack(leader, 2, leader.log.last_index())
    leader.propose(b"d" * 20)
    assert noop < first


def test_uncommitted_size_cap_admits_one_large_proposal_when_nothing_is_pending() -> None:
    """A proposal larger than the cap is still accepted alone, or it could never commit."""
    leader = make_leader(1, max_uncommitted_entries_size=8)
    leader.propose(b"x" * 100)
    with pytest.raises(UncommittedSizeExceeded):
        leader.propose(b"y")


def test_propose_batch_appends_what_fits_under_the_cap() -> None:
    leader = make_leader(1, max_uncommitted_entries_size=25)
    last = leader.log.last_index()
    got = leader.propose_batch([b"a" * 10, b"b" * 10, b"c" * 10])
    assert got == range(last + 1, last + 3)
    with pytest.raises(UncommittedSizeExceeded):
        leader.propose_batch([b"d" * 10])
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"a" * 10, b"b" * 10]
    leader.advance(rd)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 30), max_size=3),
    st.lists(st.integers(0, 30), min_size=1, max_size=12),
    st.integers(0, 120),
)
def test_propose_batch_takes_the_prefix_a_one_by_one_cap_check_takes(
    held: list[int], sizes: list[int], cap: int
) -> None:
    """``propose_batch`` builds its entries at once; what it accepts is still what
    proposing them one at a time under the cap accepts: each goes while nothing is
    uncommitted or while it fits, and the batch stops at the first that does not."""
    leader = make_leader(1, max_uncommitted_entries_size=cap)
    for size in held:
        try:
            leader.propose(b"h" * size)
        except UncommittedSizeExceeded:
            break
    uncommitted, expected = leader.uncommitted_size, 0
    for size in sizes:
        if cap and uncommitted and uncommitted + size > cap:
            break
        uncommitted, expected = uncommitted + size, expected + 1
    first = leader.log.last_index() + 1
    datas = [bytes([65 + i]) * size for i, size in enumerate(sizes)]
    if not expected:
        before = fingerprint(leader)
        with pytest.raises(UncommittedSizeExceeded, match=f"a {sizes[0]}-byte proposal"):
            leader.propose_batch(datas)
        assert fingerprint(leader) == before
        return
    assert leader.propose_batch(datas) == range(first, first + expected)
    assert leader.uncommitted_size == uncommitted
    assert leader.log.entries[-expected:] == [
        Entry(leader.term, first + i, EntryKind.NORMAL, data)
        for i, data in enumerate(datas[:expected])
    ]


def test_proposals_batch_into_one_append_per_follower() -> None:
    """Proposals between two ready() calls leave as one AppendEntries per follower."""
    leader = make_stable_leader()
    for i in range(10):
        leader.propose(f"p{i}".encode())
    apps = _appends(drain(leader))
    assert sorted(m.dst for m in apps) == [2, 3]
    assert all(len(m.entries) == 10 for m in apps)
