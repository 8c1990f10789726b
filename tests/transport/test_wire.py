"""The wire protocol (framework/transport/wire.py): framing, decoding, and what a hostile or
broken sender can make the decoders do (raise ``ProtocolError``, and nothing else)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.core import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from framework.transport import (
    PROTOCOL,
    PROTOCOL_VERSION,
    AdminMembers,
    ClientRequest,
    ClientResponse,
    ErrorReply,
    FrameDecoder,
    Goodbye,
    Hello,
    KVOp,
    PeerBatch,
    ProtocolError,
    StatusRequest,
    decode_client_request,
    decode_client_response,
    decode_hello,
    decode_peer_batch,
    encode_frame,
)
from framework.transport.wire import PeerPart, Reassembly, encode_parts

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

DECODERS: list[Callable[[bytes], object]] = [
    decode_hello,
    decode_peer_batch,
    decode_client_request,
    decode_client_response,
]


# -- strategies ------------------------------------------------------------------------------


@st.composite
def raft_messages(draw: st.DrawFn) -> Message:
    """Any message ``validate_message`` accepts."""
    src = draw(st.integers(1, 9))
    dst = draw(st.integers(1, 9).filter(lambda d: d != src))
    term = draw(st.integers(0, 2**40))
    base: dict[str, Any] = {"src": src, "dst": dst, "term": term}
    index = st.integers(0, 2**40)
    context = st.binary(max_size=16)
    kind = draw(
        st.sampled_from(
            [
                "vote",
                "vote_resp",
                "append",
                "append_resp",
                "heartbeat",
                "heartbeat_resp",
                "snapshot",
                "timeout_now",
                "read_index",
                "read_index_resp",
            ]
        )
    )
    if kind == "vote":
        return VoteRequest(
            **base,
            last_index=draw(index),
            last_term=draw(st.integers(0, term)),
            pre_vote=draw(st.booleans()),
        )
    if kind == "vote_resp":
        return VoteResponse(**base, granted=draw(st.booleans()))
    if kind == "append":
        prev_term = draw(st.integers(0, term))
        prev_index = draw(index)
        terms = sorted(draw(st.lists(st.integers(prev_term, term), max_size=5)))
        entries = tuple(
            Entry(
                term=t,
                index=prev_index + 1 + i,
                kind=draw(st.sampled_from(EntryKind)),
                data=draw(st.binary(max_size=40)),
            )
            for i, t in enumerate(terms)
        )
        return AppendEntries(
            **base, prev_index=prev_index, prev_term=prev_term, entries=entries, commit=draw(index)
        )
    if kind == "append_resp":
        return AppendResponse(
            **base,
            index=draw(index),
            reject=draw(st.booleans()),
            hint_index=draw(index),
            hint_term=draw(index),
        )
    if kind == "heartbeat":
        return Heartbeat(**base, commit=draw(index), context=draw(context))
    if kind == "heartbeat_resp":
        return HeartbeatResponse(**base, context=draw(context))
    if kind == "snapshot":
        term = max(term, 1)
        meta = SnapshotMeta(
            index=draw(st.integers(1, 2**40)),
            term=draw(st.integers(1, term)),
            conf_state=ConfState(voters=(1, 2, 3)),
        )
        return InstallSnapshot(
            src=src, dst=dst, term=term, snapshot=Snapshot(meta=meta, data=draw(context))
        )
    if kind == "timeout_now":
        return TimeoutNow(**base)
    if kind == "read_index":
        return ReadIndexRequest(**base, context=draw(context))
    return ReadIndexResponse(**base, context=draw(context), index=draw(index))


def _frames() -> st.SearchStrategy[msgspec.Struct]:
    text = st.text(max_size=20)
    return st.one_of(
        st.builds(PeerBatch, messages=st.lists(raft_messages(), max_size=6)),
        st.builds(
            Hello,
            protocol=st.just(PROTOCOL),
            version=st.just(PROTOCOL_VERSION),
            role=st.sampled_from(["peer", "client"]),
            node_id=st.integers(0, 100),
            cluster_id=text,
        ),
        st.builds(Goodbye, reason=text),
        st.builds(
            ClientRequest,
            id=st.integers(0, 2**63 - 1),
            body=st.one_of(
                st.builds(KVOp, op=st.sampled_from(["get", "put"]), key=text, value=text),
                st.just(StatusRequest()),
                st.builds(AdminMembers, action=st.just("add"), node_id=st.integers(1, 9)),
            ),
        ),
        st.builds(
            ClientResponse,
            id=st.integers(0, 2**63 - 1),
            ok=st.booleans(),
            value=st.one_of(st.none(), text, st.booleans()),
        ),
    )


def _decoder_for(frame: msgspec.Struct) -> Callable[[bytes], object]:
    if isinstance(frame, PeerBatch):
        return decode_peer_batch
    if isinstance(frame, Hello):
        return decode_hello
    if isinstance(frame, ClientRequest):
        return decode_client_request
    return decode_client_response  # ClientResponse, and Goodbye which every decoder takes


def _feed_in_pieces(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[bytes]:
    bodies: list[bytes] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        bodies.extend(decoder.feed(data[start:end]))
    return bodies


_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=5,
)
_FIELDS = [
    "src",
    "dst",
    "term",
    "index",
    "last_index",
    "last_term",
    "prev_index",
    "prev_term",
    "entries",
    "commit",
    "snapshot",
    "meta",
    "conf_state",
    "voters",
    "context",
    "hint_index",
    "hint_term",
    "reject",
    "granted",
    "data",
    "kind",
]
_TAGS = [
    "vote",
    "vote_resp",
    "append",
    "append_resp",
    "heartbeat",
    "heartbeat_resp",
    "snapshot",
    "timeout_now",
    "read_index",
    "read_index_resp",
    "hello",
    "goodbye",
    "batch",
    "request",
    "response",
    "kv",
    "status",
    "members",
    "transfer",
    "x",
]


def _shaped(tags: list[str], fields: list[str]) -> st.SearchStrategy[dict[str, object]]:
    return st.builds(
        lambda tag, values: {**values, "type": tag},
        st.sampled_from(tags),
        st.dictionaries(st.sampled_from(fields), _MSGPACK_VALUES, max_size=6),
    )


_FRAME_SHAPED = st.builds(
    lambda outer, messages, body: {**outer, "messages": messages, "body": body},
    _shaped(_TAGS, ["protocol", "version", "role", "node_id", "id", "ok", "status", "reason"]),
    st.lists(_shaped(_TAGS, _FIELDS), max_size=2),
    _shaped(_TAGS, ["op", "key", "value", "action", "node_id", "to"]),
)
"""msgpack that looks like a frame (right tags and field names, wrong anything else), to
get past the first type check and into the validators."""


# -- round trips -----------------------------------------------------------------------------


@FUZZ
@given(
    frames=st.lists(_frames(), min_size=1, max_size=6),
    cut_seeds=st.lists(st.floats(0, 1), max_size=12),
)
def test_valid_frames_round_trip_whatever_the_split(
    frames: list[msgspec.Struct], cut_seeds: list[float]
) -> None:
    data = b"".join(encode_frame(frame) for frame in frames)
    cuts = [int(seed * len(data)) for seed in cut_seeds]
    decoder = FrameDecoder(max_frame_size=len(data))
    bodies = _feed_in_pieces(decoder, data, cuts)
    assert decoder.pending == 0
    assert len(bodies) == len(frames)
    for frame, body in zip(frames, bodies, strict=True):
        assert _decoder_for(frame)(body) == frame


@FUZZ
@given(messages=st.lists(raft_messages(), min_size=1, max_size=20))
def test_peer_batch_keeps_messages_in_order(messages: list[Message]) -> None:
    (body,) = FrameDecoder(1 << 20).feed(encode_frame(PeerBatch(messages=messages)))
    decoded = decode_peer_batch(body)
    assert isinstance(decoded, PeerBatch)
    assert decoded.messages == messages


def test_a_partial_frame_waits_for_the_rest() -> None:
    frame = encode_frame(Goodbye(reason="bye"))
    decoder = FrameDecoder(1024)
    assert decoder.feed(frame[:3]) == []
    assert decoder.feed(frame[3:-1]) == []
    assert decoder.pending == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [frame[4:]]
    assert decoder.pending == 0


# -- hostile input ---------------------------------------------------------------------------


def _only_protocol_errors(func: Callable[[bytes], object], data: bytes) -> None:
    with suppress(ProtocolError):
        func(data)


@FUZZ
@given(data=st.binary(max_size=300), cut_seeds=st.lists(st.floats(0, 1), max_size=6))
def test_arbitrary_bytes_only_ever_raise_protocol_error(
    data: bytes, cut_seeds: list[float]
) -> None:
    decoder = FrameDecoder(max_frame_size=64)
    try:
        bodies = _feed_in_pieces(decoder, data, [int(s * len(data)) for s in cut_seeds])
    except ProtocolError:
        bodies = []
    for body in [*bodies, data]:
        for decode in DECODERS:
            _only_protocol_errors(decode, body)


@FUZZ
@given(obj=_FRAME_SHAPED)
def test_frame_shaped_garbage_only_ever_raises_protocol_error(obj: object) -> None:
    data = msgspec.msgpack.encode(obj)
    for decode in DECODERS:
        _only_protocol_errors(decode, data)


_ANY_INT = st.one_of(st.integers(-3, 12), st.integers(-(2**63), 2**64 - 1))
_NEAR_VALID_ENTRY = st.tuples(_ANY_INT, _ANY_INT, st.integers(-1, 5), st.binary(max_size=4))
_NEAR_VALID_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "index": _ANY_INT,
    "commit": _ANY_INT,
    "last_index": _ANY_INT,
    "last_term": _ANY_INT,
    "prev_index": _ANY_INT,
    "prev_term": _ANY_INT,
    "hint_index": _ANY_INT,
    "hint_term": _ANY_INT,
    "granted": st.booleans(),
    "reject": st.booleans(),
    "context": st.binary(max_size=4),
    "entries": st.lists(_NEAR_VALID_ENTRY, max_size=4),
    "snapshot": st.fixed_dictionaries(
        {
            "meta": st.fixed_dictionaries(
                {
                    "index": _ANY_INT,
                    "term": _ANY_INT,
                    "conf_state": st.fixed_dictionaries({"voters": st.lists(_ANY_INT, max_size=3)}),
                }
            )
        }
    ),
}


@FUZZ
@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from(_TAGS[:10]),
            st.fixed_dictionaries(
                {"src": _ANY_INT, "dst": _ANY_INT, "term": _ANY_INT},
                optional=_NEAR_VALID_FIELDS,
            ),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_near_valid_messages_only_ever_raise_protocol_error(
    messages: list[tuple[str, dict[str, object]]],
) -> None:
    """Well-typed messages with arbitrary numbers: these get into ``validate_message``."""
    batch = {"type": "batch", "messages": [{**fields, "type": tag} for tag, fields in messages]}
    _only_protocol_errors(decode_peer_batch, msgspec.msgpack.encode(batch))


def test_deep_nesting_is_a_protocol_error_not_a_recursion_error() -> None:
    # ``ClientResponse.status`` is ``dict[str, object]``: any nesting decodes into it.
    head = msgspec.msgpack.encode({"type": "response", "id": 1, "ok": True, "status": {"a": 0}})
    data = head[:-1] + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_client_response(data)


def test_an_oversized_header_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=1000)
    with pytest.raises(ProtocolError, match="1001 bytes exceeds max_frame_size=1000"):
        decoder.feed((1001).to_bytes(4, "big"))


def test_a_frame_of_exactly_max_size_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=5)
    assert decoder.feed(b"\x00\x00\x00\x05hello") == [b"hello"]


@pytest.mark.parametrize(
    ("hello", "match"),
    [
        (Hello(protocol="http", version=PROTOCOL_VERSION, role="peer"), "'http' version 1"),
        (Hello(protocol=PROTOCOL, version=PROTOCOL_VERSION + 1, role="peer"), "version 2"),
    ],
)
def test_hello_from_another_protocol_or_version_is_refused(hello: Hello, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_hello(encode_frame(hello)[4:])


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (Heartbeat(src=2, dst=2, term=1), "addressed to itself"),
        (Heartbeat(src=0, dst=2, term=1), "must be positive"),
        (VoteRequest(src=1, dst=2, term=1, last_index=3, last_term=5), "impossible for term"),
        (
            AppendEntries(
                src=1, dst=2, term=3, prev_index=4, prev_term=2, entries=(Entry(term=3, index=6),)
            ),
            "entry index 6 where 5 was expected",
        ),
    ],
)
def test_invalid_raft_messages_fail_the_whole_batch(message: Message, match: str) -> None:
    good = Heartbeat(src=1, dst=2, term=1)
    body = encode_frame(PeerBatch(messages=[good, message]))[4:]
    with pytest.raises(ProtocolError, match=match):
        decode_peer_batch(body)


@pytest.mark.parametrize("decode", DECODERS)
def test_every_decoder_accepts_goodbye(decode: Callable[[bytes], object]) -> None:
    assert decode(encode_frame(Goodbye(reason="shutting down"))[4:]) == Goodbye(
        reason="shutting down"
    )


@pytest.mark.parametrize("decode", DECODERS)
def test_an_empty_frame_is_a_protocol_error(decode: Callable[[bytes], object]) -> None:
    with pytest.raises(ProtocolError, match="undecodable"):
        decode(b"")


def test_error_replies_round_trip() -> None:
    response = ClientResponse(
        id=7,
        ok=False,
        error=ErrorReply(kind="not_leader", message="ask 2", leader_id=2, leader_address="h:1"),
    )
    assert decode_client_response(encode_frame(response)[4:]) == response


@FUZZ
@given(body=st.binary(max_size=5000), max_frame_size=st.integers(65, 2000))
def test_a_message_in_parts_joins_back_whole(body: bytes, max_frame_size: int) -> None:
    frames = encode_parts(body, seq=9, max_frame_size=max_frame_size)
    decoder = FrameDecoder(max_frame_size)  # every part fits the receiver's frame limit
    parts = [decode_peer_batch(f) for f in decoder.feed(b"".join(frames))]
    assert len(parts) == len(frames)
    joined = Reassembly(max_message_size=len(body) or 1, min_frame_size=max_frame_size)
    results = [joined.add(p) for p in parts if isinstance(p, PeerPart)]
    assert results[:-1] == [None] * (len(parts) - 1) and results[-1] == body


def _part(seq: int, index: int, count: int, data: bytes = b"x") -> PeerPart:
    return PeerPart(seq=seq, index=index, count=count, data=data)


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([_part(1, 1, 2)], "starts at part 1; expected part 0"),
        ([_part(1, 0, 3), _part(1, 2, 3)], "part 2 of message 1 arrived while expecting part 1"),
        ([_part(1, 0, 2), _part(2, 0, 2)], "part 0 of message 2 arrived while expecting part 1"),
        ([_part(1, 0, 0)], "out of range"),
        ([_part(1, 3, 2)], "out of range"),
        ([_part(1, 0, 2, b"x" * 60), _part(1, 1, 2, b"x" * 41)], "exceeds max_message_size=100"),
    ],
)
def test_parts_out_of_order_or_too_large_are_a_protocol_error(
    parts: list[PeerPart], match: str
) -> None:
    joined = Reassembly(max_message_size=100, min_frame_size=65)
    with pytest.raises(ProtocolError, match=match):
        for part in parts:
            joined.add(part)


def test_after_a_whole_message_the_next_may_begin() -> None:
    joined = Reassembly(max_message_size=100, min_frame_size=65)
    assert joined.add(_part(1, 0, 2, b"ab")) is None
    assert joined.add(_part(1, 1, 2, b"cd")) == b"abcd"
    assert joined.add(_part(2, 0, 1, b"ef")) == b"ef"


def test_the_public_api_is_pinned() -> None:
    """Changing this list changes the public interface: document it in the README."""
    import framework.transport

    assert sorted(framework.transport.__all__) == sorted(
        [
            "DEFAULT_MAX_FRAME_SIZE",
            "PROTOCOL",
            "PROTOCOL_VERSION",
            "AdminMembers",
            "AdminTransfer",
            "ClientRequest",
            "ClientResponse",
            "ClientService",
            "ConnectionLost",
            "ErrorReply",
            "FrameDecoder",
            "Goodbye",
            "Hello",
            "KVOp",
            "LinkFaults",
            "MemoryClient",
            "MemoryNetwork",
            "MemoryTransport",
            "PeerBatch",
            "PeerInbox",
            "ProtocolError",
            "RequestBody",
            "StatusRequest",
            "TcpClientConnection",
            "TcpTransport",
            "Transport",
            "answer_request",
            "submit_request",
            "decode_client_request",
            "decode_client_response",
            "decode_hello",
            "decode_peer_batch",
            "encode_frame",
            "parse_address",
        ]
    )
    for name in framework.transport.__all__:
        assert hasattr(framework.transport, name), name
