"""What a decoded Raft message may hold: every term, index, id, count and size bounded.

Theory of operation
-------------------
The kernel's ``validate_message`` checks what is impossible for *any* correct sender
(negative terms, entries that are not contiguous); it does not know how large a number may
get before it breaks something downstream. This module does: it runs at the decode boundary
(``wire.decode_peer_batch``), before a message reaches the kernel, the log or the store, and
refuses with a ``ProtocolError`` naming the message, the field, the value and the bound, so
the connection is dropped and the node lives.

Why these bounds:

- Terms and indexes are stored as SQLite INTEGERs (signed 64-bit). A term of ``2**63 - 1``
  cannot even be incremented by the next election without overflowing, which used to kill
  the node in ``save_ready`` (and again after every restart). ``MAX_TERM`` (the
  kernel's, ``framework.core.MAX_TERM``) and ``MAX_INDEX`` are ``2**62``. The kernel never
  campaigns past ``MAX_TERM``, so every term a correct node sends is one its peers accept; a
  log can still grow by ``2**62`` entries past the largest index a peer may name before it
  reaches the storage limit. (A peer that
  *may* send terms, an authenticated one, can still inflate a cluster's term up to the
  bound: that is what authentication is for; this bound keeps the node alive.)
- Node ids are 1..``MAX_NODE_ID`` (a signed 32-bit range: ids are named by operators).
- Counts and sizes (entries per message, bytes per entry, members in a snapshot, read
  contexts) are capped far above what a correct node sends with any valid settings, and far
  below what would exhaust memory.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final

from framework.core import (
    MAX_TERM,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_ENTRIES_PER_MESSAGE",
    "MAX_ENTRY_BYTES",
    "MAX_INDEX",
    "MAX_MEMBERS",
    "MAX_MESSAGES_PER_BATCH",
    "MAX_NODE_ID",
    "MAX_TERM",
    "OutOfBounds",
    "check_batch_size",
    "check_message",
]

MAX_INDEX: Final = 2**62
MAX_NODE_ID: Final = 2**31 - 1
MAX_ENTRIES_PER_MESSAGE: Final = 1 << 20
"""A leader slices appends by ``max_size_per_msg`` bytes (1-4 MiB in the shipped profiles);
a client write encodes to more than 8 bytes, so a correct append holds far fewer."""
MAX_ENTRY_BYTES: Final = 256 * 1024 * 1024
"""A client write is at most a frame (``max_frame_size``, 64 MiB by default)."""
MAX_MEMBERS: Final = 1024
"""Voters plus learners in a membership."""
MAX_CONTEXT_BYTES: Final = 1024
"""A read's context is the runtime's ``"<node>:<seq>"``: a few bytes."""
MAX_MESSAGES_PER_BATCH: Final = 1 << 20


class OutOfBounds(ValueError):
    """A decoded value is outside what this protocol allows; the sender is at fault."""


def _at_most(what: str, field: str, value: int, bound: int) -> None:
    if value > bound:
        raise OutOfBounds(f"{what}: {field}={value} exceeds the bound {bound}")


def _node_id(what: str, field: str, value: int) -> None:
    if not 1 <= value <= MAX_NODE_ID:
        raise OutOfBounds(f"{what}: {field}={value}; expected a node id in 1..{MAX_NODE_ID}")


def check_batch_size(count: int) -> None:
    _at_most("PeerBatch", "len(messages)", count, MAX_MESSAGES_PER_BATCH)


def check_message(msg: Message, frame_bytes: int) -> None:
    """Raise ``OutOfBounds`` if any number or size in ``msg`` is past its bound.

    ``frame_bytes`` is the size of the frame ``msg`` was decoded from: no entry, and no
    count of entries, can be larger than it, so a frame smaller than the size bounds (all
    but a giant snapshot) skips those checks. Called on every decoded peer message before
    the kernel sees it, so the common case is a few comparisons per message
    (``benchmarks/bench_decode_bounds.py``); only a message that fails is examined field by
    field (``_explain``) for the error.
    """
    if not (
        0 < msg.src <= MAX_NODE_ID and 0 < msg.dst <= MAX_NODE_ID and msg.term <= MAX_TERM
    ) or not _FAST[type(msg)](msg, frame_bytes):
        _explain(msg)


def _append_ok(msg: AppendEntries, frame_bytes: int) -> bool:
    entries = msg.entries
    if msg.prev_index + len(entries) > MAX_INDEX or msg.commit > MAX_INDEX:
        return False
    if not entries or frame_bytes <= _SIZES_CANNOT_EXCEED:
        return True
    return (
        len(entries) <= MAX_ENTRIES_PER_MESSAGE
        and max(map(len, map(_DATA, entries))) <= MAX_ENTRY_BYTES
    )


def _snapshot_ok(msg: InstallSnapshot, frame_bytes: int) -> bool:
    meta = msg.snapshot.meta
    conf = meta.conf_state
    members = (*conf.voters, *conf.learners)
    return (
        meta.index <= MAX_INDEX
        and len(members) <= MAX_MEMBERS
        and all(1 <= nid <= MAX_NODE_ID for nid in members)
    )


_DATA: Final = attrgetter("data")
_SIZES_CANNOT_EXCEED: Final = min(MAX_ENTRY_BYTES, MAX_ENTRIES_PER_MESSAGE)
_FAST: Final[dict[type, Callable[[Any, int], bool]]] = {
    AppendEntries: _append_ok,
    AppendResponse: lambda m, _: (
        m.index <= MAX_INDEX and m.hint_index <= MAX_INDEX and m.hint_term <= MAX_TERM
    ),
    Heartbeat: lambda m, _: m.commit <= MAX_INDEX and len(m.context) <= MAX_CONTEXT_BYTES,
    HeartbeatResponse: lambda m, _: len(m.context) <= MAX_CONTEXT_BYTES,
    VoteRequest: lambda m, _: m.last_index <= MAX_INDEX,
    VoteResponse: lambda m, _: True,
    TimeoutNow: lambda m, _: True,
    ReadIndexRequest: lambda m, _: len(m.context) <= MAX_CONTEXT_BYTES,
    ReadIndexResponse: lambda m, _: m.index <= MAX_INDEX and len(m.context) <= MAX_CONTEXT_BYTES,
    InstallSnapshot: _snapshot_ok,
}


def _explain(msg: Message) -> None:
    """Raise ``OutOfBounds`` naming the first field of ``msg`` past its bound."""
    what = f"{type(msg).__name__} from node {msg.src}"
    _node_id(what, "src", msg.src)
    _node_id(what, "dst", msg.dst)
    _at_most(what, "term", msg.term, MAX_TERM)
    if isinstance(msg, AppendEntries):
        _at_most(what, "prev_index", msg.prev_index, MAX_INDEX)
        _at_most(what, "commit", msg.commit, MAX_INDEX)
        entries = msg.entries
        if entries:
            _at_most(what, "len(entries)", len(entries), MAX_ENTRIES_PER_MESSAGE)
            _at_most(what, "last entry index", msg.prev_index + len(entries), MAX_INDEX)
            largest = max(len(entry.data) for entry in entries)
            _at_most(what, "bytes in one entry", largest, MAX_ENTRY_BYTES)
    elif isinstance(msg, Heartbeat):
        _at_most(what, "commit", msg.commit, MAX_INDEX)
        _at_most(what, "len(context)", len(msg.context), MAX_CONTEXT_BYTES)
    elif isinstance(msg, AppendResponse):
        _at_most(what, "index", msg.index, MAX_INDEX)
        _at_most(what, "hint_index", msg.hint_index, MAX_INDEX)
        _at_most(what, "hint_term", msg.hint_term, MAX_TERM)
    elif isinstance(msg, VoteRequest):
        _at_most(what, "last_index", msg.last_index, MAX_INDEX)
    elif isinstance(msg, HeartbeatResponse | ReadIndexRequest):
        _at_most(what, "len(context)", len(msg.context), MAX_CONTEXT_BYTES)
    elif isinstance(msg, ReadIndexResponse):
        _at_most(what, "index", msg.index, MAX_INDEX)
        _at_most(what, "len(context)", len(msg.context), MAX_CONTEXT_BYTES)
    elif isinstance(msg, InstallSnapshot):
        meta = msg.snapshot.meta
        _at_most(what, "snapshot index", meta.index, MAX_INDEX)
        conf = meta.conf_state
        _at_most(what, "snapshot members", len(conf.voters) + len(conf.learners), MAX_MEMBERS)
        for nid in (*conf.voters, *conf.learners):
            _node_id(what, "snapshot member", nid)
    raise AssertionError(f"{what} failed a bound check that names no field")  # pragma: no cover
