"""The wire protocol: frames, the handshake, and the client/admin requests.

Every connection carries length-prefixed frames: a 4-byte big-endian length, then that many
bytes of msgpack (msgspec). The first frame each side sends is a ``Hello``; a peer speaking
another protocol or version is told why in a ``Goodbye`` and disconnected.

- Peer connections (``Hello.role == "peer"``) then carry ``PeerBatch`` frames: many Raft
  messages coalesced into one write. A single message too large for one frame (a snapshot)
  travels as consecutive ``PeerPart`` frames, each within ``max_frame_size``, which the
  receiver joins (up to ``max_message_size``) and decodes as one ``PeerBatch``.
- Client connections (``Hello.role == "client"``) carry ``ClientRequest`` frames, each
  answered by a ``ClientResponse`` with the same ``id`` (responses may come out of order).

``FrameDecoder`` is sans-IO: feed it bytes, take frames; it raises ``ProtocolError`` naming
what is wrong (oversized frame, undecodable body) and never buffers more than one frame.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Final, Literal

import msgspec

from framework.core import Message, validate_message
from framework.core.errors import InvalidMessage
from framework.flags import RolloutWire

__all__ = [
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "AdminFlags",
    "AdminMembers",
    "AdminService",
    "AdminTransfer",
    "ClientRequest",
    "ClientResponse",
    "ErrorReply",
    "FrameDecoder",
    "Goodbye",
    "Hello",
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


class ProtocolError(Exception):
    """The remote end sent something this protocol does not allow; close the connection."""


class Hello(msgspec.Struct, frozen=True, kw_only=True, tag="hello"):
    protocol: str
    version: int
    role: Literal["peer", "client"]
    node_id: int = 0
    """The sender's node id (peers only)."""
    cluster_id: str = ""


class Goodbye(msgspec.Struct, frozen=True, kw_only=True, tag="goodbye"):
    reason: str


class PeerBatch(msgspec.Struct, frozen=True, kw_only=True, tag="batch"):
    messages: list[Message]


class PeerPart(msgspec.Struct, frozen=True, kw_only=True, tag="part"):
    """Part ``index`` (from 0) of ``count`` of the encoded ``PeerBatch`` numbered ``seq``."""

    seq: int
    index: int
    count: int
    data: bytes


# -- client and admin requests ---------------------------------------------------------------


class KVOp(msgspec.Struct, frozen=True, kw_only=True, tag="kv"):
    """A KV operation. ``op`` is one of get/put/delete/append/cas.

    Writes carry the client session ``(client_id, seq)``; a retry reuses them so the write
    applies once. ``get`` is a linearizable read (ReadIndex) and needs no session.
    """

    op: Literal["get", "put", "delete", "append", "cas"]
    key: str
    value: str | None = None
    expected: str | None = None
    client_id: int = 0
    seq: int = 0


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True, tag="status"):
    pass


class AdminMembers(msgspec.Struct, frozen=True, kw_only=True, tag="members"):
    action: Literal["add", "add_learner", "remove", "promote"]
    node_id: int
    address: str = ""


class AdminTransfer(msgspec.Struct, frozen=True, kw_only=True, tag="transfer"):
    to: int


class AdminFlags(msgspec.Struct, frozen=True, kw_only=True, tag="flags"):
    """Read or change feature flags.

    ``scope="cluster"`` changes go through the leader as one ``flags`` log entry (atomic,
    applied at the same index everywhere); ``scope="node"`` sets or clears a node-local
    override on the node that receives the request (break-glass). ``list``/``get``/
    ``history`` read the receiving node's evaluations.
    """

    action: Literal["list", "get", "set", "unset", "history"]
    scope: Literal["cluster", "node"] = "cluster"
    assignments: dict[str, bool | RolloutWire] = msgspec.field(default_factory=dict)
    names: list[str] = msgspec.field(default_factory=list)
    reason: str = ""


class AdminService(msgspec.Struct, frozen=True, kw_only=True, tag="service"):
    """A request for a node service (``framework.services``), e.g. ``raftmw migrate``:
    ``action`` and an opaque ``payload`` the service validates."""

    service: Annotated[str, msgspec.Meta(max_length=64)]
    action: Annotated[str, msgspec.Meta(max_length=64)]
    payload: Annotated[bytes, msgspec.Meta(max_length=256 * 1024)] = b""


RequestBody = KVOp | StatusRequest | AdminMembers | AdminTransfer | AdminFlags | AdminService


class ClientRequest(msgspec.Struct, frozen=True, kw_only=True, tag="request"):
    id: int
    body: RequestBody


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request failed.

    ``kind``: ``not_leader`` (retry at ``leader_address`` if given), ``overloaded`` (retry
    later), ``unavailable`` (no quorum now), ``retry`` (outcome unknown; retry with the same
    session), ``bad_request`` (will never succeed as sent).
    """

    kind: Literal["not_leader", "overloaded", "unavailable", "retry", "bad_request"]
    message: str
    leader_id: int = 0
    leader_address: str = ""


class ClientResponse(msgspec.Struct, frozen=True, kw_only=True, tag="response"):
    id: int
    ok: bool
    value: str | bool | None = None
    status: dict[str, object] | None = None
    error: ErrorReply | None = None


# -- framing ---------------------------------------------------------------------------------

_ENCODER: Final = msgspec.msgpack.Encoder()
_HELLO: Final = msgspec.msgpack.Decoder(Hello | Goodbye)
_PEER: Final = msgspec.msgpack.Decoder(PeerBatch | PeerPart | Goodbye)
_REQUEST: Final = msgspec.msgpack.Decoder(ClientRequest | Goodbye)
_RESPONSE: Final = msgspec.msgpack.Decoder(ClientResponse | Goodbye)


def encode_frame(obj: msgspec.Struct) -> bytes:
    body = _ENCODER.encode(obj)
    return _HEADER.pack(len(body)) + body


def _decode(decoder: msgspec.msgpack.Decoder[Any], what: str, data: bytes) -> object:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
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
        for msg in batch.messages:
            try:
                validate_message(msg)
            except InvalidMessage as exc:
                raise ProtocolError(f"invalid Raft message in peer frame: {exc}") from None
    return batch


def decode_client_request(data: bytes) -> ClientRequest | Goodbye:
    request = _decode(_REQUEST, "client request", data)
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
    """

    __slots__ = ("_max", "_parts", "_received", "_seq")

    def __init__(self, max_message_size: int) -> None:
        self._max = max_message_size
        self._seq: int | None = None
        self._parts: list[bytes] = []
        self._received = 0

    def add(self, part: PeerPart) -> bytes | None:
        """The whole message once ``part`` completes it, else None."""
        if part.count < 1 or not 0 <= part.index < part.count:
            raise ProtocolError(f"peer part {part.index} of {part.count} is out of range")
        if self._seq is None:
            if part.index != 0:
                raise ProtocolError(
                    f"peer message {part.seq} starts at part {part.index}; expected part 0"
                )
            self._seq = part.seq
        elif part.seq != self._seq or part.index != len(self._parts):
            raise ProtocolError(
                f"peer part {part.index} of message {part.seq} arrived while expecting part "
                f"{len(self._parts)} of message {self._seq}"
            )
        self._received += len(part.data)
        if self._received > self._max:
            raise ProtocolError(
                f"peer message {part.seq} exceeds max_message_size={self._max} bytes"
            )
        self._parts.append(part.data)
        if len(self._parts) < part.count:
            return None
        body = b"".join(self._parts)
        self._seq, self._parts, self._received = None, [], 0
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
