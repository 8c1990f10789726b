"""Batched ReadIndex (issue #13): reads that arrive together share one heartbeat round
(D §6.4: a round confirms leadership for every read that arrived before it was sent)."""

from __future__ import annotations

from kernel_harness import drain, make_stable_leader

from framework.core import Heartbeat, HeartbeatResponse, ReadIndexRequest, ReadIndexResponse


def test_many_concurrent_reads_cost_one_heartbeat_round() -> None:
    leader = make_stable_leader()
    for i in range(100):
        leader.read_index(f"r{i}".encode())
    leader.step(ReadIndexRequest(src=2, dst=1, term=leader.term, context=b"from-2"))
    out = drain(leader)
    rounds = [m for m in out if isinstance(m, Heartbeat)]
    assert sorted(m.dst for m in rounds) == [2, 3]  # one round: one heartbeat per follower
    assert {m.context for m in rounds} == {b"from-2"}  # carrying the newest read
    # One follower's answer (with the leader's own vote, a majority) confirms all of them.
    heartbeat = rounds[0]
    leader.step(
        HeartbeatResponse(
            src=heartbeat.dst,
            dst=1,
            term=leader.term,
            context=heartbeat.context,
            sent_tick=heartbeat.sent_tick,
        )
    )
    rd = leader.ready()
    assert [rs.context for rs in rd.read_states] == [f"r{i}".encode() for i in range(100)]
    answers = [m for m in rd.messages + rd.persisted_messages if isinstance(m, ReadIndexResponse)]
    assert [(a.dst, a.context) for a in answers] == [(2, b"from-2")]
    assert all(rs.index == leader.log.committed for rs in rd.read_states)
    leader.advance(rd)


def test_reads_in_separate_batches_get_separate_rounds() -> None:
    leader = make_stable_leader()
    leader.read_index(b"a")
    first = [m for m in drain(leader) if isinstance(m, Heartbeat)]
    leader.read_index(b"b")
    second = [m for m in drain(leader) if isinstance(m, Heartbeat)]
    assert [m.context for m in first] == [b"a", b"a"]
    assert [m.context for m in second] == [b"b", b"b"]


def test_a_leader_that_steps_down_before_its_round_sends_none() -> None:
    leader = make_stable_leader()
    leader.read_index(b"a")
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term + 1, sent_tick=0))
    rd = leader.ready()
    assert not any(isinstance(m, Heartbeat) for m in rd.messages + rd.persisted_messages)
    assert rd.dropped_reads == (b"a",)
