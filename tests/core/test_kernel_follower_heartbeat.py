"""A follower answers a heartbeat without waiting for its disk (issue #13): the answer
promises nothing durable (``HeartbeatResponse``'s docstring has the argument), so it goes
with ``Ready.messages`` and leaves through ``take_messages`` while a Ready is written."""

from __future__ import annotations

from kernel_harness import drain, make_node

from framework.core import (
    AppendEntries,
    AppendResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    Role,
)


def test_a_followers_heartbeat_answer_needs_no_persistence() -> None:
    # The heartbeat brings a later term: the answer carries a term not yet stored.
    follower = make_node(2, term=1)
    drain(follower)
    follower.step(Heartbeat(src=1, dst=2, term=2, commit=1, context=b"r", sent_tick=7))
    rd = follower.ready()
    assert rd.hard_state is not None and rd.hard_state.term == 2 and rd.must_sync
    expected = HeartbeatResponse(src=2, dst=1, term=2, context=b"r", sent_tick=7)
    assert rd.messages == (expected,)
    assert rd.persisted_messages == ()
    follower.advance(rd)


def test_a_follower_answers_heartbeats_while_its_ready_is_written() -> None:
    follower = make_node(2, term=2)
    drain(follower)
    entry = Entry(2, 2, EntryKind.NORMAL, b"x")
    follower.step(
        AppendEntries(src=1, dst=2, term=2, prev_index=1, prev_term=1, entries=(entry,), commit=1)
    )
    rd = follower.ready()  # the runtime is writing this Ready's entry
    assert rd.persisted_messages == (AppendResponse(src=2, dst=1, term=2, index=2),)
    answers = []
    for tick in (3, 4, 5):
        follower.step(Heartbeat(src=1, dst=2, term=2, commit=1, sent_tick=tick))
        answers.extend(follower.take_messages())
    assert answers == [
        HeartbeatResponse(src=2, dst=1, term=2, sent_tick=tick) for tick in (3, 4, 5)
    ]
    assert follower.role is Role.FOLLOWER and follower.leader == 1
    follower.advance(rd)
    assert drain(follower) == []  # nothing held back for the next Ready either
