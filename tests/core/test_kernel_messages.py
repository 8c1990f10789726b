"""Messages on the wire: msgpack round trip of every type, decoding hostile bytes, and the
validation that keeps malformed messages away from the log (InvalidMessage, state
unchanged)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kernel_harness import drain, fingerprint, make_leader, make_node, make_stable_leader

from framework.core import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InvalidMessage,
    Message,
    RawNode,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_conf_change,
    encode_message,
    validate_message,
)

# == strategies ================================================================================

ids = st.integers(min_value=1, max_value=7)
small = st.integers(min_value=0, max_value=50)
ctx = st.binary(max_size=8)


@st.composite
def routes(draw: st.DrawFn) -> tuple[int, int, int]:
    src = draw(ids)
    dst = draw(ids.filter(lambda d: d != src))
    return src, dst, draw(small)


@st.composite
def entries_after(draw: st.DrawFn, prev_index: int, prev_term: int, term: int) -> tuple[Entry, ...]:
    n = draw(st.integers(min_value=0, max_value=5))
    out, t = [], prev_term
    for i in range(n):
        t = draw(st.integers(min_value=t, max_value=term))
        kind = draw(st.sampled_from(EntryKind))
        out.append(Entry(t, prev_index + 1 + i, kind, draw(st.binary(max_size=6))))
    return tuple(out)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    voters = draw(st.lists(ids, min_size=1, max_size=5, unique=True))
    learners = draw(st.lists(ids.filter(lambda i: i not in voters), max_size=2, unique=True))
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    src, dst, term = draw(routes())
    kind = draw(st.integers(min_value=0, max_value=9))
    if kind == 0:
        last_term = draw(st.integers(min_value=0, max_value=term))
        return VoteRequest(
            src=src,
            dst=dst,
            term=term,
            last_index=draw(small),
            last_term=last_term,
            pre_vote=draw(st.booleans()),
            transfer=draw(st.booleans()),
        )
    if kind == 1:
        return VoteResponse(
            src=src, dst=dst, term=term, granted=draw(st.booleans()), pre_vote=draw(st.booleans())
        )
    if kind == 2:
        prev_term = draw(st.integers(min_value=0, max_value=term))
        prev_index = draw(small)
        return AppendEntries(
            src=src,
            dst=dst,
            term=term,
            prev_index=prev_index,
            prev_term=prev_term,
            entries=draw(entries_after(prev_index, prev_term, term)),
            commit=draw(small),
        )
    if kind == 3:
        return AppendResponse(
            src=src,
            dst=dst,
            term=term,
            index=draw(small),
            reject=draw(st.booleans()),
            hint_index=draw(small),
            hint_term=draw(small),
        )
    if kind == 4:
        return Heartbeat(src=src, dst=dst, term=term, commit=draw(small), context=draw(ctx))
    if kind == 5:
        return HeartbeatResponse(src=src, dst=dst, term=term, context=draw(ctx))
    if kind == 6:
        term = max(term, 1)
        meta = SnapshotMeta(
            index=draw(st.integers(min_value=1, max_value=50)),
            term=draw(st.integers(min_value=1, max_value=term)),
            conf_state=draw(conf_states()),
        )
        return InstallSnapshot(
            src=src,
            dst=dst,
            term=term,
            snapshot=Snapshot(meta=meta, data=draw(st.binary(max_size=8))),
        )
    if kind == 7:
        return TimeoutNow(src=src, dst=dst, term=term)
    if kind == 8:
        return ReadIndexRequest(src=src, dst=dst, term=term, context=draw(ctx))
    return ReadIndexResponse(src=src, dst=dst, term=term, context=draw(ctx), index=draw(small))


MESSAGE_TYPES = {
    VoteRequest,
    VoteResponse,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
}


# == round trip ================================================================================


@settings(max_examples=400, deadline=None)
@given(messages())
def test_every_message_type_round_trips_through_msgpack(msg: Message) -> None:
    validate_message(msg)  # the strategy only builds messages a correct peer sends
    data = encode_message(msg)
    back = decode_message(data)
    assert back == msg and type(back) is type(msg)
    assert encode_message(back) == data


def test_the_strategy_covers_every_message_type() -> None:
    """Guard for the test above: a new message type must be added to the strategy."""
    import typing

    assert set(typing.get_args(Message)) == MESSAGE_TYPES


# == hostile bytes =============================================================================


def _decode_or_invalid(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except InvalidMessage:
        return
    validate_message(msg)  # whatever decodes must be a valid message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_message_on_random_bytes_raises_only_invalid_message(data: bytes) -> None:
    _decode_or_invalid(data)


@settings(max_examples=500, deadline=None)
@given(messages(), st.data())
def test_decode_message_on_corrupted_encodings_raises_only_invalid_message(
    msg: Message, data: st.DataObject
) -> None:
    raw = bytearray(encode_message(msg))
    action = data.draw(st.sampled_from(["flip", "truncate", "insert", "splice"]))
    if action == "flip":
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
            raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
    elif action == "truncate":
        raw = raw[: data.draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    elif action == "insert":
        pos = data.draw(st.integers(min_value=0, max_value=len(raw)))
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        other = encode_message(data.draw(messages()))
        cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:cut] + other[cut:]
    _decode_or_invalid(bytes(raw))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x80",  # empty map: no tag
        b"\x81\xa4type\xa7unknown",  # unknown tag
        b"\x90",  # array
        b"\xdc\xff\xff" + b"\x00" * 10,  # array header longer than the data
        encode_message(Heartbeat(src=1, dst=2, term=1))[:-1],
    ],
)
def test_decode_message_table_of_garbage(data: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_message(data)


# == validation ================================================================================


def _e(index: int, term: int) -> Entry:
    return Entry(term, index, EntryKind.NORMAL, b"x")


MALFORMED = [
    pytest.param(
        AppendEntries(src=2, dst=1, term=3, prev_index=1, prev_term=1, entries=(_e(3, 2),)),
        "contiguous",
        id="gap after prev",
    ),
    pytest.param(
        AppendEntries(
            src=2, dst=1, term=3, prev_index=1, prev_term=1, entries=(_e(2, 2), _e(4, 2))
        ),
        "contiguous",
        id="gap inside",
    ),
    pytest.param(
        AppendEntries(
            src=2, dst=1, term=3, prev_index=1, prev_term=1, entries=(_e(2, 2), _e(2, 2))
        ),
        "contiguous",
        id="repeat",
    ),
    pytest.param(
        AppendEntries(src=2, dst=1, term=3, prev_index=1, prev_term=1, entries=(_e(2, 4),)),
        "term",
        id="entry term > msg term",
    ),
    pytest.param(
        AppendEntries(src=2, dst=1, term=3, prev_index=1, prev_term=2, entries=(_e(2, 1),)),
        "term",
        id="entry term < prev term",
    ),
    pytest.param(
        AppendEntries(
            src=2, dst=1, term=3, prev_index=1, prev_term=1, entries=(_e(2, 3), _e(3, 2))
        ),
        "term",
        id="terms decrease",
    ),
    pytest.param(
        AppendEntries(src=2, dst=1, term=3, prev_index=1, prev_term=4),
        "impossible",
        id="prev term > msg term",
    ),
    pytest.param(
        AppendEntries(src=2, dst=1, term=3, prev_index=-1, prev_term=0),
        "impossible",
        id="negative prev index",
    ),
    pytest.param(
        AppendEntries(src=2, dst=1, term=3, prev_index=1, prev_term=1, commit=-1),
        "impossible",
        id="negative commit",
    ),
    pytest.param(Heartbeat(src=1, dst=1, term=3), "itself", id="src == dst"),
    pytest.param(Heartbeat(src=0, dst=1, term=3), "positive", id="src 0"),
    pytest.param(Heartbeat(src=2, dst=-1, term=3), "positive", id="dst negative"),
    pytest.param(Heartbeat(src=2, dst=1, term=-1), "negative term", id="negative term"),
    pytest.param(Heartbeat(src=2, dst=1, term=3, commit=-2), "negative", id="hb commit"),
    pytest.param(
        VoteRequest(src=2, dst=1, term=3, last_index=5, last_term=4),
        "impossible",
        id="vote last term > term",
    ),
    pytest.param(
        VoteRequest(src=2, dst=1, term=3, last_index=-5, last_term=1),
        "impossible",
        id="vote negative index",
    ),
    pytest.param(AppendResponse(src=2, dst=1, term=3, index=-1), "negative", id="resp index"),
    pytest.param(
        AppendResponse(src=2, dst=1, term=3, index=1, reject=True, hint_index=-1),
        "negative",
        id="resp hint",
    ),
    pytest.param(
        ReadIndexResponse(src=2, dst=1, term=3, context=b"c", index=-1), "negative", id="read index"
    ),
    pytest.param(
        InstallSnapshot(src=2, dst=1, term=3, snapshot=Snapshot()),
        "impossible",
        id="snapshot at index 0",
    ),
    pytest.param(
        InstallSnapshot(
            src=2,
            dst=1,
            term=3,
            snapshot=Snapshot(
                meta=SnapshotMeta(index=5, term=4, conf_state=ConfState(voters=(1,)))
            ),
        ),
        "impossible",
        id="snapshot term > msg term",
    ),
    pytest.param(
        InstallSnapshot(
            src=2, dst=1, term=3, snapshot=Snapshot(meta=SnapshotMeta(index=5, term=2))
        ),
        "no voters",
        id="snapshot without voters",
    ),
]


@pytest.mark.parametrize(("msg", "fragment"), MALFORMED)
def test_malformed_messages_are_rejected_before_touching_state(msg: Message, fragment: str) -> None:
    with pytest.raises(InvalidMessage, match=fragment):
        validate_message(msg)
    with pytest.raises(InvalidMessage, match=fragment):
        decode_message(encode_message(msg))
    for node in (make_node(1, log=[2, 2], term=3), make_stable_leader(1, log=[2], term=2)):
        drain(node)
        before = fingerprint(node)
        with pytest.raises(InvalidMessage):
            node.step(msg)
        assert fingerprint(node) == before


def _stateful_cases() -> list[tuple[str, object, object]]:
    """(id, node factory, message) for messages wrong only given the receiver's state."""

    def follower() -> RawNode:
        node = make_node(1, log=[2, 2], term=3)
        drain(node)
        return node

    def leader() -> RawNode:
        return make_stable_leader(1)

    return [
        ("dst mismatch", follower, Heartbeat(src=2, dst=3, term=3)),
        ("dst mismatch at leader", leader, AppendResponse(src=2, dst=3, term=2, index=1)),
        (
            "append response from unknown sender",
            leader,
            AppendResponse(src=9, dst=1, term=2, index=1),
        ),
        ("heartbeat response from unknown sender", leader, HeartbeatResponse(src=9, dst=1, term=2)),
        (
            "read request from unknown sender",
            leader,
            ReadIndexRequest(src=9, dst=1, term=2, context=b"r"),
        ),
        ("append response past last index", leader, AppendResponse(src=2, dst=1, term=2, index=99)),
        (
            "undecodable membership entry",
            follower,
            AppendEntries(
                src=2,
                dst=1,
                term=3,
                prev_index=3,
                prev_term=2,
                entries=(Entry(3, 4, EntryKind.CONF_CHANGE, b"\x00garbage"),),
                commit=4,
            ),
        ),
        (
            "membership entry for node id 0",
            follower,
            AppendEntries(
                src=2,
                dst=1,
                term=4,
                prev_index=3,
                prev_term=2,
                entries=(
                    Entry(
                        3,
                        4,
                        EntryKind.CONF_CHANGE,
                        encode_conf_change(ConfChange(type=ConfChangeType.ADD_VOTER, node_id=0)),
                    ),
                ),
                commit=4,
            ),
        ),
        ("heartbeat commit past last index", follower, Heartbeat(src=2, dst=1, term=3, commit=9)),
        (
            "heartbeat commit past last index, later term",
            follower,
            Heartbeat(src=2, dst=1, term=4, commit=9),
        ),
        (
            "second leader in our term: append",
            leader,
            AppendEntries(src=2, dst=1, term=2, prev_index=1, prev_term=1),
        ),
        ("second leader in our term: heartbeat", leader, Heartbeat(src=2, dst=1, term=2)),
        (
            "second leader in our term: snapshot",
            leader,
            InstallSnapshot(
                src=2,
                dst=1,
                term=2,
                snapshot=Snapshot(
                    meta=SnapshotMeta(index=5, term=2, conf_state=ConfState(voters=(1, 2, 3)))
                ),
            ),
        ),
    ]


@pytest.mark.parametrize(
    ("factory", "msg"), [pytest.param(f, m, id=i) for i, f, m in _stateful_cases()]
)
def test_messages_impossible_for_our_state_raise_and_change_nothing(
    factory: object, msg: Message
) -> None:
    node = factory()  # type: ignore[operator]
    before = fingerprint(node)
    with pytest.raises(InvalidMessage):
        node.step(msg)
    assert fingerprint(node) == before


# == stepping arbitrary well-formed messages ===================================================


def _nodes() -> list[RawNode]:
    follower = make_node(1, log=[2, 2, 3], term=3, commit=2)
    drain(follower)
    candidate = make_node(1, log=[2], term=2, pre_vote=False)
    drain(candidate)
    candidate.campaign()
    drain(candidate)
    pre_candidate = make_node(1, log=[2], term=2)
    drain(pre_candidate)
    pre_candidate.campaign()
    drain(pre_candidate)
    return [
        follower,
        candidate,
        pre_candidate,
        make_leader(1, log=[2, 2], term=2),
        make_stable_leader(1, voters=(1, 2, 3), learners=(4,)),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=4), st.lists(messages(), min_size=1, max_size=8))
def test_stepping_any_well_formed_message_raises_only_invalid_message(
    which: int, msgs: list[Message]
) -> None:
    """Whatever a (possibly faulty) peer sends, the kernel either processes it or raises
    InvalidMessage with its state unchanged -- never another exception, never a log that
    breaks its invariants."""
    node = _nodes()[which]
    for msg in msgs:
        msg = type(msg)(**{**{f: getattr(msg, f) for f in msg.__struct_fields__}, "dst": 1})
        assume(msg.src != 1)
        before = fingerprint(node)
        try:
            node.step(msg)
        except InvalidMessage:
            assert fingerprint(node) == before
        drain(node)
        log = node.log
        assert log.offset <= log.applied <= log.committed <= log.last_index()
        terms = [e.term for e in log.entries]
        assert terms == sorted(terms)
        assert all(e.index == log.offset + 1 + i for i, e in enumerate(log.entries))
        assert node.vote == 0 or node.term > 0
