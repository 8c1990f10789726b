"""Bounds at the decode boundary (framework/transport/bounds.py, wire.py): every term, index,
id, count and size a frame carries is checked before anything uses it, and a value past its
bound is a ``ProtocolError`` naming the field, the value and the bound."""

from __future__ import annotations

import msgspec
import pytest

from framework.core import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotMeta,
    VoteRequest,
)
from framework.transport import (
    AdminMembers,
    ClientRequest,
    Hello,
    KVOp,
    PeerBatch,
    ProtocolError,
    decode_client_request,
    decode_hello,
    decode_peer_batch,
    encode_frame,
)
from framework.transport.bounds import (
    MAX_CONTEXT_BYTES,
    MAX_INDEX,
    MAX_MEMBERS,
    MAX_NODE_ID,
    MAX_TERM,
)
from framework.transport.wire import MAX_KEY_BYTES, InvalidRequest, PeerPart, Reassembly

HUGE = 2**63 - 1
"""The term of the heartbeat that used to kill nodes in SQLite (OverflowError)."""


def _peer(*messages: Message) -> PeerBatch | PeerPart | object:
    return decode_peer_batch(encode_frame(PeerBatch(messages=list(messages)))[4:])


@pytest.mark.parametrize(
    ("message", "field", "value", "bound"),
    [
        (Heartbeat(src=1, dst=2, term=HUGE), "term", HUGE, MAX_TERM),
        (Heartbeat(src=1, dst=2, term=MAX_TERM + 1), "term", MAX_TERM + 1, MAX_TERM),
        (Heartbeat(src=1, dst=2, term=3, commit=2**64 - 1), "commit", 2**64 - 1, MAX_INDEX),
        (
            AppendEntries(src=1, dst=2, term=HUGE, prev_index=0, prev_term=0, commit=HUGE),
            "term",
            HUGE,
            MAX_TERM,
        ),
        (
            AppendEntries(src=1, dst=2, term=5, prev_index=MAX_INDEX + 7, prev_term=5),
            "prev_index",
            MAX_INDEX + 7,
            MAX_INDEX,
        ),
        (
            AppendEntries(
                src=1,
                dst=2,
                term=5,
                prev_index=MAX_INDEX,
                prev_term=5,
                entries=(Entry(5, MAX_INDEX + 1, data=b"x"),),
            ),
            "last entry index",
            MAX_INDEX + 1,
            MAX_INDEX,
        ),
        (
            AppendEntries(src=1, dst=2, term=5, prev_index=1, prev_term=1, commit=MAX_INDEX + 1),
            "commit",
            MAX_INDEX + 1,
            MAX_INDEX,
        ),
        (AppendResponse(src=1, dst=2, term=HUGE, index=1), "term", HUGE, MAX_TERM),
        (AppendResponse(src=1, dst=2, term=2, index=HUGE), "index", HUGE, MAX_INDEX),
        (
            AppendResponse(src=1, dst=2, term=2, index=1, reject=True, hint_term=HUGE),
            "hint_term",
            HUGE,
            MAX_TERM,
        ),
        (
            VoteRequest(src=1, dst=2, term=2, last_index=HUGE, last_term=1),
            "last_index",
            HUGE,
            MAX_INDEX,
        ),
        (Heartbeat(src=HUGE, dst=2, term=1), "src", HUGE, MAX_NODE_ID),
        (
            HeartbeatResponse(src=1, dst=2, term=1, context=b"c" * (MAX_CONTEXT_BYTES + 1)),
            "len(context)",
            MAX_CONTEXT_BYTES + 1,
            MAX_CONTEXT_BYTES,
        ),
        (
            ReadIndexRequest(src=1, dst=2, term=1, context=b"c" * (MAX_CONTEXT_BYTES + 1)),
            "len(context)",
            MAX_CONTEXT_BYTES + 1,
            MAX_CONTEXT_BYTES,
        ),
        (ReadIndexResponse(src=1, dst=2, term=1, context=b"c", index=HUGE), "index", HUGE, 0),
        (
            InstallSnapshot(
                src=1,
                dst=2,
                term=3,
                snapshot=Snapshot(
                    meta=SnapshotMeta(index=HUGE, term=2, conf_state=ConfState(voters=(1,)))
                ),
            ),
            "snapshot index",
            HUGE,
            MAX_INDEX,
        ),
        (
            InstallSnapshot(
                src=1,
                dst=2,
                term=3,
                snapshot=Snapshot(
                    meta=SnapshotMeta(
                        index=9,
                        term=2,
                        conf_state=ConfState(voters=tuple(range(1, MAX_MEMBERS + 2))),
                    )
                ),
            ),
            "snapshot members",
            MAX_MEMBERS + 1,
            MAX_MEMBERS,
        ),
        (
            InstallSnapshot(
                src=1,
                dst=2,
                term=3,
                snapshot=Snapshot(
                    meta=SnapshotMeta(index=9, term=2, conf_state=ConfState(voters=(1, HUGE)))
                ),
            ),
            "snapshot member",
            HUGE,
            MAX_NODE_ID,
        ),
    ],
)
def test_a_number_past_its_bound_is_refused_naming_field_value_and_bound(
    message: Message, field: str, value: int, bound: int
) -> None:
    with pytest.raises(ProtocolError) as caught:
        _peer(message)
    text = str(caught.value)
    assert f"{field}={value}" in text
    assert type(message).__name__ in text
    if bound:
        assert str(bound) in text


@pytest.mark.parametrize(
    "message",
    [
        Heartbeat(src=1, dst=2, term=MAX_TERM, commit=MAX_INDEX),
        AppendResponse(src=1, dst=2, term=MAX_TERM, index=MAX_INDEX, hint_term=MAX_TERM),
        AppendEntries(
            src=1,
            dst=2,
            term=MAX_TERM,
            prev_index=MAX_INDEX - 1,
            prev_term=MAX_TERM,
            entries=(Entry(MAX_TERM, MAX_INDEX, data=b"x"),),
            commit=MAX_INDEX,
        ),
        Heartbeat(src=MAX_NODE_ID, dst=1, term=1, context=b"c" * MAX_CONTEXT_BYTES),
    ],
)
def test_values_at_their_bound_are_accepted(message: Message) -> None:
    assert _peer(message) == PeerBatch(messages=[message])


def test_an_integer_beyond_64_bits_is_refused_not_crashing() -> None:
    # msgpack has no integers wider than 64 bits; a term of 2**64 - 1 is its largest.
    heartbeat = {"type": "heartbeat", "src": 1, "dst": 2, "term": 2**64 - 1}
    raw = msgspec.msgpack.encode({"type": "batch", "messages": [heartbeat]})
    with pytest.raises(ProtocolError, match=f"term={2**64 - 1} exceeds the bound {MAX_TERM}"):
        decode_peer_batch(raw)


@pytest.mark.parametrize(
    ("request_body", "match"),
    [
        (KVOp(op="put", key="k", value="v", client_id=HUGE + 1, seq=1), r"client_id"),
        (KVOp(op="put", key="k", value="v", client_id=1, seq=-1), r"seq"),
        (KVOp(op="get", key="k" * (MAX_KEY_BYTES + 1)), r"key"),
        (AdminMembers(action="add", node_id=MAX_NODE_ID + 1, address="h:1"), r"node_id"),
        (AdminMembers(action="remove", node_id=0), r"node_id"),
        (AdminMembers(action="add", node_id=4, address="h" * 400 + ":1"), r"address"),
    ],
)
def test_client_requests_out_of_bounds_come_back_to_be_answered_bad_request(
    request_body: object, match: str
) -> None:
    """The envelope is sane, so the node can answer (the client learns what was wrong)
    instead of dropping the connection (the client would retry into a timeout)."""
    frame = encode_frame(ClientRequest(id=41, body=request_body))  # type: ignore[arg-type]
    request = decode_client_request(frame[4:])
    assert isinstance(request, ClientRequest) and request.id == 41
    assert isinstance(request.body, InvalidRequest)
    assert request.body.reason.startswith("request 41 (")
    assert f"$.body.{match}" in request.body.reason


def test_a_request_id_past_64_bits_signed_is_refused() -> None:
    frame = encode_frame(ClientRequest(id=2**63, body=KVOp(op="get", key="k")))
    with pytest.raises(ProtocolError, match=r"id"):
        decode_client_request(frame[4:])


def test_a_hello_with_an_absurd_node_id_is_refused() -> None:
    hello = Hello(protocol="raftmw", version=1, role="peer", node_id=HUGE)
    with pytest.raises(ProtocolError, match="node_id"):
        decode_hello(encode_frame(hello)[4:])


def test_a_part_flood_is_refused_by_count_before_it_is_held() -> None:
    """Two million empty parts used to be held against a 1 KiB limit."""
    joined = Reassembly(max_message_size=1024)
    with pytest.raises(ProtocolError, match=r"count=2000001 parts; expected at most 2"):
        joined.add(PeerPart(seq=1, index=0, count=2_000_001, data=b""))


def test_a_part_cannot_change_the_announced_count() -> None:
    joined = Reassembly(max_message_size=10_000)
    assert joined.add(PeerPart(seq=1, index=0, count=3, data=b"")) is None
    with pytest.raises(ProtocolError, match="announces count=9; part 0 announced 3"):
        joined.add(PeerPart(seq=1, index=1, count=9, data=b""))


def test_parts_of_a_correct_sender_at_the_smallest_frame_size_still_join() -> None:
    from framework.transport.wire import MIN_FRAME_SIZE, encode_parts

    body = bytes(range(256)) * 40  # 10 KiB: 11 parts of the smallest frame
    frames = encode_parts(body, seq=4, max_frame_size=MIN_FRAME_SIZE)
    joined = Reassembly(max_message_size=len(body))
    results = [joined.add(decode_peer_batch(f[4:])) for f in frames]  # type: ignore[arg-type]
    assert results[-1] == body and results[:-1] == [None] * (len(frames) - 1)
