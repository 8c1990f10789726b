"""The wire protocol: frames, the handshake, and the client/admin requests.

Every connection carries length-prefixed frames: a 4-byte big-endian length, then that many
bytes of msgpack (msgspec). The first frame each side sends is a ``Hello``; a peer speaking
another protocol or version is told why in a ``Goodbye`` and disconnected.

- Peer connections (``Hello.role == "peer"``) then carry ``PeerBatch`` frames: many Raft
  messages coalesced into one write. A single message too large for one frame (a snapshot)
  travels as consecutive ``PeerPart`` frames, each within ``max_frame_size``, which the
  receiver joins (up to ``max_message_size``) and decodes as one ``PeerBatch``.
- Snapshot connections (``Hello.role == "snapshot"``) carry one streamed snapshot from a
  peer (``framework.transport.snapshot_stream``), whichever id dials.
- Client connections (``Hello.role == "client"``) carry ``ClientRequest`` frames, each
  answered by a ``ClientResponse`` with the same ``id`` (responses may come out of order).

``FrameDecoder`` is sans-IO: feed it bytes, take frames; it raises ``ProtocolError`` naming
what is wrong (oversized frame, undecodable body) and never buffers more than one frame.

Nothing decoded here is trusted: every integer and string of a frame has a bound, declared on
the struct (``msgspec.Meta``, checked while decoding) or, for the kernel's Raft messages,
checked right after decoding (``bounds.check_message``). A value past its bound is a
``ProtocolError`` naming the field, the value and the bound: the connection is dropped, and
nothing of the frame reaches the kernel, the log or the store.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Final, Literal

import msgspec

from framework.core import Message, validate_message
from framework.core.errors import InvalidMessage
from framework.flags import RolloutWire
from framework.transport.bounds import (
    MAX_MEMBERS,
    MAX_NODE_ID,
    OutOfBounds,
    check_batch_size,
    check_message,
)

__all__ = [
    "MAX_ADDRESS_CHARS",
    "MAX_APP_PAYLOAD",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "MIN_FRAME_SIZE",
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "AdminFlags",
    "AdminMembers",
    "AdminService",
    "AdminTransfer",
    "AppCall",
    "ClientRequest",
    "ClientResponse",
    "ErrorReply",
    "FrameDecoder",
    "Goodbye",
    "Hello",
    "InvalidRequest",
    "KVOp",
    "PeerBatch",
    "PeerPart",
    "ProtocolError",
    "Reassembly",
    "RequestBody",
    "StatusRequest",
    "decode_client_request",
    "decode_client_response",
    "decode_hello",
    "decode_peer_batch",
    "encode_frame",
    "encode_parts",
]

PROTOCOL: Final = "raftmw"
PROTOCOL_VERSION: Final = 1
_HEADER = struct.Struct(">I")

MIN_FRAME_SIZE: Final = 1024
"""The smallest ``transport.max_frame_size`` the settings accept: a correct sender's parts
each carry at least ``MIN_FRAME_SIZE - _PART_OVERHEAD`` bytes, which bounds their count."""

# Bounds of the wire's own fields (the kernel's Raft messages are checked in ``bounds``).
_U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""Ids and sequence numbers: anything a signed 64-bit column or counter can hold."""
_NodeId = Annotated[int, msgspec.Meta(ge=0, le=MAX_NODE_ID)]
_MemberId = Annotated[int, msgspec.Meta(ge=1, le=MAX_NODE_ID)]
MAX_KEY_BYTES: Final = 64 * 1024
MAX_VALUE_BYTES: Final = 64 * 1024 * 1024
MAX_ADDRESS_CHARS: Final = 300
"""A DNS name is at most 253 characters; with brackets and a port, 300 is plenty."""
_Key = Annotated[str, msgspec.Meta(max_length=MAX_KEY_BYTES)]
_Value = Annotated[str, msgspec.Meta(max_length=MAX_VALUE_BYTES)]
_Short = Annotated[str, msgspec.Meta(max_length=4096)]
"""Names, reasons, cluster ids: human-sized text."""


class ProtocolError(Exception):
    """The remote end sent something this protocol does not allow; close the connection."""


class Hello(msgspec.Struct, frozen=True, kw_only=True, tag="hello"):
    protocol: str
    version: int
    role: Literal["peer", "client", "snapshot"]
    """``"snapshot"``: a peer opening a connection for one streamed snapshot
    (``framework.transport.snapshot_stream``)."""
    node_id: _NodeId = 0
    """The sender's node id (peers only)."""
    cluster_id: _Short = ""
    token: _Short = ""
    """A client's bearer token, for a client without a certificate (``framework.auth``)."""


class Goodbye(msgspec.Struct, frozen=True, kw_only=True, tag="goodbye"):
    reason: _Short


class PeerBatch(msgspec.Struct, frozen=True, kw_only=True, tag="batch"):
    messages: list[Message]


class PeerPart(msgspec.Struct, frozen=True, kw_only=True, tag="part"):
    """Part ``index`` (from 0) of ``count`` of the encoded ``PeerBatch`` numbered ``seq``."""

    seq: _U63
    index: _U63
    count: _U63
    data: bytes


# -- client and admin requests ---------------------------------------------------------------


class KVOp(msgspec.Struct, frozen=True, kw_only=True, tag="kv"):
    """A KV operation. ``op`` is one of get/put/delete/append/cas.

    Writes carry the client session ``(client_id, seq)``; a retry reuses them so the write
    applies once. ``get`` is a linearizable read (ReadIndex) and needs no session.
    """

    op: Literal["get", "put", "delete", "append", "cas"]
    key: _Key
    value: _Value | None = None
    expected: _Value | None = None
    client_id: _U63 = 0
    seq: _U63 = 0


MAX_APP_PAYLOAD: Final = 1024 * 1024
"""The largest application call (``AppCall.payload``) a node accepts, in bytes."""


class AppCall(msgspec.Struct, frozen=True, kw_only=True, tag="app"):
    """A call into the cluster's application (``framework.apps``): ``payload`` is the
    application's own encoding of the call. A write (``read=False``) carries the client
    session ``(client_id, seq)`` and goes through the log; a read is answered by ReadIndex,
    or from the receiving node's state without one when ``stale`` (an explicit opt-in).
    ``app`` names the application the caller expects, so a mismatch is refused."""

    app: _Short
    payload: Annotated[bytes, msgspec.Meta(max_length=MAX_APP_PAYLOAD)]
    read: bool = False
    stale: bool = False
    client_id: _U63 = 0
    seq: _U63 = 0


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True, tag="status"):
    pass


class AdminMembers(msgspec.Struct, frozen=True, kw_only=True, tag="members"):
    action: Literal["add", "add_learner", "remove", "promote"]
    node_id: _MemberId
    address: Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS_CHARS)] = ""


class AdminTransfer(msgspec.Struct, frozen=True, kw_only=True, tag="transfer"):
    to: _MemberId


class AdminFlags(msgspec.Struct, frozen=True, kw_only=True, tag="flags"):
    """Read or change feature flags.

    ``scope="cluster"`` changes go through the leader as one ``flags`` log entry (atomic,
    applied at the same index everywhere); ``scope="node"`` sets or clears a node-local
    override on the node that receives the request (break-glass). ``list``/``get``/
    ``history`` read the receiving node's evaluations.
    """

    action: Literal["list", "get", "set", "unset", "history"]
    scope: Literal["cluster", "node"] = "cluster"
    assignments: Annotated[
        dict[_Short, bool | RolloutWire], msgspec.Meta(max_length=MAX_MEMBERS)
    ] = msgspec.field(default_factory=dict)
    names: Annotated[list[_Short], msgspec.Meta(max_length=MAX_MEMBERS)] = msgspec.field(
        default_factory=list
    )
    reason: _Short = ""


class AdminService(msgspec.Struct, frozen=True, kw_only=True, tag="service"):
    """A request for a node service (``framework.services``), e.g. ``raftmw migrate``:
    ``action`` and an opaque ``payload`` the service validates."""

    service: Annotated[str, msgspec.Meta(max_length=64)]
    action: Annotated[str, msgspec.Meta(max_length=64)]
    payload: Annotated[bytes, msgspec.Meta(max_length=256 * 1024)] = b""


RequestBody = (
    KVOp | AppCall | StatusRequest | AdminMembers | AdminTransfer | AdminFlags | AdminService
)


class InvalidRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Stands in for the body of a request whose envelope decoded but whose body broke the
    protocol (a key too long, an id out of range): the node answers it ``bad_request`` with
    ``reason`` instead of dropping the connection, so the client learns what was wrong.
    Made by ``decode_client_request``; never sent."""

    reason: str


class _RequestEnvelope(msgspec.Struct, frozen=True, kw_only=True, tag="request"):
    id: _U63
    body: msgspec.Raw


class ClientRequest(msgspec.Struct, frozen=True, kw_only=True, tag="request"):
    id: _U63
    body: RequestBody


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request failed.

    ``kind``: ``not_leader`` (retry at ``leader_address`` if given), ``overloaded`` (retry
    later), ``unavailable`` (no quorum now), ``retry`` (outcome unknown; retry with the same
    session), ``bad_request`` (will never succeed as sent), ``unauthorized`` (the connection
    is not authenticated), ``forbidden`` (its role may not do this; ``framework.auth``).
    """

    kind: Literal[
        "not_leader",
        "overloaded",
        "unavailable",
        "retry",
        "bad_request",
        "unauthorized",
        "forbidden",
    ]
    message: str
    leader_id: int = 0
    leader_address: str = ""


class ClientResponse(msgspec.Struct, frozen=True, kw_only=True, tag="response"):
    id: int
    ok: bool
    value: str | bool | None = None
    data: bytes | None = None
    """An application call's encoded result (``AppCall``)."""
    status: dict[str, object] | None = None
    error: ErrorReply | None = None


# -- framing ---------------------------------------------------------------------------------

_ENCODER: Final = msgspec.msgpack.Encoder()
_HELLO: Final = msgspec.msgpack.Decoder(Hello | Goodbye)
_PEER: Final = msgspec.msgpack.Decoder(PeerBatch | PeerPart | Goodbye)
_REQUEST: Final = msgspec.msgpack.Decoder(ClientRequest | Goodbye)
_ENVELOPE: Final = msgspec.msgpack.Decoder(_RequestEnvelope)
_RESPONSE: Final = msgspec.msgpack.Decoder(ClientResponse | Goodbye)


def encode_frame(obj: msgspec.Struct) -> bytes:
    body = _ENCODER.encode(obj)
    return _HEADER.pack(len(body)) + body


def _decode(decoder: msgspec.msgpack.Decoder[Any], what: str, data: bytes) -> object:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        # msgspec lets UnicodeDecodeError through for a tag or key that is not UTF-8.
        raise ProtocolError(f"undecodable {what} frame ({len(data)} bytes): {exc}") from None
    except RecursionError:
        # ``object``-typed fields (``ClientResponse.status``) accept any nesting; a frame
        # nested deeper than the interpreter's limit is the sender's fault, not ours.
        raise ProtocolError(f"{what} frame ({len(data)} bytes) is nested too deeply") from None


def decode_hello(data: bytes) -> Hello | Goodbye:
    hello = _decode(_HELLO, "hello", data)
    assert isinstance(hello, Hello | Goodbye)
    if isinstance(hello, Hello) and (
        hello.protocol != PROTOCOL or hello.version != PROTOCOL_VERSION
    ):
        raise ProtocolError(
            f"peer speaks {hello.protocol!r} version {hello.version}; expected "
            f"{PROTOCOL!r} version {PROTOCOL_VERSION}"
        )
    return hello


def decode_peer_batch(data: bytes) -> PeerBatch | PeerPart | Goodbye:
    batch = _decode(_PEER, "peer", data)
    assert isinstance(batch, PeerBatch | PeerPart | Goodbye)
    if isinstance(batch, PeerBatch):
        try:
            check_batch_size(len(batch.messages))
            size = len(data)
            for msg in batch.messages:
                validate_message(msg)
                check_message(msg, size)
        except (InvalidMessage, OutOfBounds) as exc:
            raise ProtocolError(f"invalid Raft message in peer frame: {exc}") from None
    return batch


def decode_client_request(data: bytes) -> ClientRequest | Goodbye:
    """The request in ``data``; a request whose body breaks the protocol comes back with an
    ``InvalidRequest`` body to answer; anything else undecodable is a ``ProtocolError``."""
    try:
        request = _REQUEST.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        try:
            envelope = _ENVELOPE.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            _decode(_REQUEST, "client request", data)  # raises ProtocolError, naming it
            raise  # pragma: no cover - _decode raised
        reason = f"request {envelope.id} ({len(data)} bytes) breaks the protocol: {exc}"
        return ClientRequest(id=envelope.id, body=InvalidRequest(reason=reason))  # type: ignore[arg-type]
    assert isinstance(request, ClientRequest | Goodbye)
    return request


def decode_client_response(data: bytes) -> ClientResponse | Goodbye:
    response = _decode(_RESPONSE, "client response", data)
    assert isinstance(response, ClientResponse | Goodbye)
    return response


_PART_OVERHEAD: Final = 64
"""Bytes a ``PeerPart`` frame spends besides its data (tag, field names, integers)."""


def encode_parts(body: bytes, *, seq: int, max_frame_size: int) -> list[bytes]:
    """Frames carrying ``body`` (an encoded ``PeerBatch``) in parts that each fit in
    ``max_frame_size``."""
    size = max_frame_size - _PART_OVERHEAD
    if size <= 0:
        raise ValueError(f"max_frame_size={max_frame_size} leaves no room for a part's data")
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        encode_frame(PeerPart(seq=seq, index=i, count=len(chunks), data=chunk))
        for i, chunk in enumerate(chunks)
    ]


class Reassembly:
    """Joins the ``PeerPart`` frames of one connection back into peer frames.

    Parts of one message arrive consecutively and in order (a connection has one writer,
    which writes a message's parts back to back); anything else is the sender's fault and
    raises ``ProtocolError``, as does a message that would exceed ``max_message_size``.

    What is held is bounded twice: by bytes (``max_message_size``, counted as the parts
    arrive, joined into one buffer so an empty part costs nothing) and by part count: a part
    announces the message's ``count`` of parts, which must stay the same for every part and
    may not exceed what a correct sender, whose frames are at least ``min_frame_size``
    bytes, needs for a message of ``max_message_size``. (Two million empty parts used to be
    held against a 1 KiB limit.)
    """

    __slots__ = ("_buffer", "_count", "_index", "_max", "_max_parts", "_seq")

    def __init__(self, max_message_size: int, *, min_frame_size: int = MIN_FRAME_SIZE) -> None:
        per_part = min_frame_size - _PART_OVERHEAD
        if per_part <= 0:
            raise ValueError(f"min_frame_size={min_frame_size} leaves no room for a part's data")
        self._max = max_message_size
        self._max_parts = max(1, -(-max_message_size // per_part))
        self._seq: int | None = None
        self._count = 0
        self._index = 0
        self._buffer = bytearray()

    def add(self, part: PeerPart) -> bytes | None:
        """The whole message once ``part`` completes it, else None."""
        if part.count < 1 or not 0 <= part.index < part.count:
            raise ProtocolError(f"peer part {part.index} of {part.count} is out of range")
        if self._seq is None:
            if part.index != 0:
                raise ProtocolError(
                    f"peer message {part.seq} starts at part {part.index}; expected part 0"
                )
            if part.count > self._max_parts:
                raise ProtocolError(
                    f"peer message {part.seq} announces count={part.count} parts; expected at "
                    f"most {self._max_parts} for max_message_size={self._max} bytes"
                )
            self._seq, self._count = part.seq, part.count
        elif part.seq != self._seq or part.index != self._index:
            raise ProtocolError(
                f"peer part {part.index} of message {part.seq} arrived while expecting part "
                f"{self._index} of message {self._seq}"
            )
        elif part.count != self._count:
            raise ProtocolError(
                f"peer part {part.index} of message {part.seq} announces count={part.count}; "
                f"part 0 announced {self._count}"
            )
        if len(self._buffer) + len(part.data) > self._max:
            raise ProtocolError(
                f"peer message {part.seq} exceeds max_message_size={self._max} bytes"
            )
        self._buffer += part.data
        self._index += 1
        if self._index < self._count:
            return None
        body = bytes(self._buffer)
        self._seq, self._count, self._index, self._buffer = None, 0, 0, bytearray()
        return body


class FrameDecoder:
    """Splits a byte stream into frame bodies, refusing frames over ``max_frame_size``."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_frame_size: int) -> None:
        self._buffer = bytearray()
        self._max = max_frame_size

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buffer, pos)
            if size > self._max:
                raise ProtocolError(f"frame of {size} bytes exceeds max_frame_size={self._max}")
            if end - pos < 4 + size:
                break
            frames.append(bytes(buffer[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        del buffer[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)
