"""The messages Raft nodes exchange, as frozen msgspec structs that round-trip through msgpack.

Every message carries ``src``, ``dst`` and the sender's ``term``; the tag names the type on
the wire. ``validate_message`` checks what can be checked without the receiver's state
(structure, index arithmetic) so a malformed message is rejected before it touches the log.
"""

from __future__ import annotations

from typing import Final

import msgspec

from framework.core.entries import Entry, Snapshot
from framework.core.errors import InvalidMessage

__all__ = [
    "MAX_TERM",
    "AppendEntries",
    "AppendResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "Message",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
    "decode_message",
    "encode_message",
    "validate_message",
]


MAX_TERM: Final = 2**62
"""The largest term a node takes, from a peer or by campaigning. Terms are stored as signed
64-bit integers; a node at this term does not campaign (it would send a term its peers must
refuse), so a term inflated by a faulty or hostile peer stops here instead of overflowing."""


class _Base(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    src: int
    dst: int
    term: int


class VoteRequest(_Base, frozen=True, kw_only=True, tag="vote"):
    """RequestVote (§5.2), or a pre-vote when ``pre_vote`` (dissertation §9.6).

    A pre-vote carries the term the sender *would* campaign in, without having adopted it.
    ``transfer`` marks a campaign started by TimeoutNow, which voters must not refuse on
    the grounds of having a live leader (check-quorum lease).
    """

    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


class VoteResponse(_Base, frozen=True, kw_only=True, tag="vote_resp"):
    granted: bool
    pre_vote: bool = False


class AppendEntries(_Base, frozen=True, kw_only=True, tag="append"):
    """AppendEntries (§5.3): ``entries`` follow the entry at ``(prev_index, prev_term)``."""

    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...] = ()
    commit: int = 0


class AppendResponse(_Base, frozen=True, kw_only=True, tag="append_resp"):
    """Answer to AppendEntries.

    Accepted: ``index`` is the last index now known to match the leader's log.
    Rejected: ``index`` is the rejected ``prev_index`` and ``(hint_index, hint_term)`` point
    at the last entry that may match, so the leader skips a whole term per round trip.
    """

    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


class Heartbeat(_Base, frozen=True, kw_only=True, tag="heartbeat"):
    """Leader liveness; ``commit`` is capped at what the follower is known to match.

    ``context`` is the newest read waiting for confirmation of leadership, if any: every
    heartbeat carries it, so a read whose own round was lost is confirmed by the next one.
    ``sent_tick`` is the leader's tick count when it sent this round (its own clock, opaque
    to the follower), echoed in the response: a lease starts at a round's send time (D
    §6.4.1), not when the answers arrive.
    """

    commit: int = 0
    context: bytes = b""
    sent_tick: int = 0


class HeartbeatResponse(_Base, frozen=True, kw_only=True, tag="heartbeat_resp"):
    """Echoes the heartbeat's ``context`` and ``sent_tick``.

    A follower sends it without waiting for its disk (``Ready.messages``, and
    ``RawNode.take_messages`` while a Ready is being written), as etcd-io/raft does: its
    ``raft.send`` holds back only MsgAppResp, MsgVoteResp and MsgPreVoteResp
    (``msgsAfterAppend``) and ``handleHeartbeat`` sends MsgHeartbeatResp through
    ``r.msgs`` (raft.go, commit cdfbeed). Why that is safe: the answer promises nothing
    durable. It acknowledges no entry (the leader moves no ``match`` and commits nothing
    on it) and carries no vote. Its term may be one the follower took from this very
    heartbeat and has not synced; a crash forgets that term, which is harmless, since the
    follower cast no vote in it (a vote leaves only once durable). What the leader
    concludes from it holds whatever the follower's disk holds:

    - check-quorum (D §6.2): the follower heard this leader recently;
    - ReadIndex (D §6.4), which counts these answers: when the follower stepped the
      round, it had moved to no later term. A node's term in memory is never behind its
      durable one, and a vote for a later term leaves only after it is durable, so no
      leader of a later term had this node's vote then, with or without a crash after;
    - lease reads (``sent_tick``): the follower refuses disruptive votes for an election
      timeout after the round; that promise lives in memory and was lost by a restart
      before too; a new kernel honours it (see ``RawNode``, lease reads).
    """

    context: bytes = b""
    sent_tick: int = 0


class InstallSnapshot(_Base, frozen=True, kw_only=True, tag="snapshot"):
    """InstallSnapshot (§7): the follower's next entry was compacted away on the leader."""

    snapshot: Snapshot


class TimeoutNow(_Base, frozen=True, kw_only=True, tag="timeout_now"):
    """Leadership transfer (dissertation §3.10): start an election at once."""


class ReadIndexRequest(_Base, frozen=True, kw_only=True, tag="read_index"):
    """A follower forwards a linearizable read to the leader (dissertation §6.4)."""

    context: bytes


class ReadIndexResponse(_Base, frozen=True, kw_only=True, tag="read_index_resp"):
    """``index == 0`` means the leader could not serve the read (e.g. it is stepping down)."""

    context: bytes
    index: int


Message = (
    VoteRequest
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Message)


def encode_message(msg: Message) -> bytes:
    return _ENCODER.encode(msg)


def decode_message(data: bytes) -> Message:
    """Decode and validate one message; raises ``InvalidMessage`` naming what is wrong."""
    try:
        msg: Message = _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        # msgspec lets UnicodeDecodeError through for a str (tag, key) that is not UTF-8.
        raise InvalidMessage(f"undecodable message ({len(data)} bytes): {exc}") from exc
    validate_message(msg)
    return msg


def validate_message(msg: Message) -> None:
    """Reject what no correct sender produces, whatever the receiver's state.

    Runs for every message received: the type's name is only looked up for an error."""
    if msg.src <= 0 or msg.dst <= 0:
        raise InvalidMessage(
            f"{type(msg).__name__} src={msg.src} dst={msg.dst}: node ids must be positive"
        )
    if msg.src == msg.dst:
        raise InvalidMessage(f"{type(msg).__name__} from node {msg.src} addressed to itself")
    if msg.term < 0:
        raise InvalidMessage(f"{type(msg).__name__} from node {msg.src}: negative term {msg.term}")
    if msg.term > MAX_TERM:
        raise InvalidMessage(
            f"{type(msg).__name__} from node {msg.src}: term={msg.term} exceeds the bound "
            f"{MAX_TERM}"
        )
    if isinstance(msg, AppendEntries):
        _validate_append(msg)
    elif isinstance(msg, VoteRequest):
        if msg.last_index < 0 or msg.last_term < 0 or msg.last_term > msg.term:
            raise InvalidMessage(
                f"VoteRequest from node {msg.src}: last log (index={msg.last_index}, "
                f"term={msg.last_term}) impossible for term {msg.term}"
            )
    elif isinstance(msg, AppendResponse):
        if msg.index < 0 or msg.hint_index < 0 or msg.hint_term < 0:
            raise InvalidMessage(f"AppendResponse from node {msg.src}: negative index or hint")
    elif isinstance(msg, Heartbeat | ReadIndexResponse):
        value = msg.commit if isinstance(msg, Heartbeat) else msg.index
        if value < 0:
            raise InvalidMessage(
                f"{type(msg).__name__} from node {msg.src}: negative index {value}"
            )
        if isinstance(msg, Heartbeat) and msg.sent_tick < 0:
            raise InvalidMessage(
                f"{type(msg).__name__} from node {msg.src}: negative sent_tick {msg.sent_tick}"
            )
    elif isinstance(msg, HeartbeatResponse):
        if msg.sent_tick < 0:
            raise InvalidMessage(
                f"{type(msg).__name__} from node {msg.src}: negative sent_tick {msg.sent_tick}"
            )
    elif isinstance(msg, InstallSnapshot):
        meta = msg.snapshot.meta
        if meta.index <= 0 or meta.term <= 0 or meta.term > msg.term:
            raise InvalidMessage(
                f"InstallSnapshot from node {msg.src}: snapshot (index={meta.index}, "
                f"term={meta.term}) impossible for term {msg.term}"
            )
        if not meta.conf_state.voters:
            raise InvalidMessage(f"InstallSnapshot from node {msg.src}: snapshot has no voters")


def _validate_append(msg: AppendEntries) -> None:
    if msg.prev_index < 0 or msg.prev_term < 0 or msg.prev_term > msg.term or msg.commit < 0:
        raise InvalidMessage(
            f"AppendEntries from node {msg.src}: prev (index={msg.prev_index}, "
            f"term={msg.prev_term}) or commit={msg.commit} impossible for term {msg.term}"
        )
    entries = msg.entries
    if not entries:
        return
    # One loop over the entries, the cheapest walk on CPython 3.11 (their attribute loads
    # are specialised; no list is built). Contiguity is checked for every entry before
    # any term, so a message with both faults is reported for its first bad index.
    term = msg.term
    expected = msg.prev_index + 1
    uniform = True  # usually every entry is of the message's term
    for entry in entries:
        if entry.index != expected:
            raise InvalidMessage(
                f"AppendEntries from node {msg.src}: entry index {entry.index} where "
                f"{expected} was expected (entries must be contiguous after prev_index)"
            )
        if entry.term != term:
            uniform = False
        expected += 1
    if uniform:
        return  # valid: prev_term <= term was checked
    last_term = msg.prev_term
    for entry in entries:
        if entry.term < last_term or entry.term > term:
            raise InvalidMessage(
                f"AppendEntries from node {msg.src}: entry {entry.index} has term "
                f"{entry.term}; expected a term between {last_term} and the message "
                f"term {term}"
            )
        last_term = entry.term
