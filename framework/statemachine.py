"""The replicated state machine seam and the key-value machine that ships with raftmw.

Theory of operation
===================

The runtime hands every committed entry to ``StateMachine.apply`` in log order, exactly
once per node lifetime (or per ``restore``). Every replica applies the same entries in the
same order, so every rule below depends only on the log: a replica's state after applying
index ``i`` is a function of entries ``1..i`` (or of the snapshot it restored plus the
entries after it). Nothing here reads a clock, a random source or the environment.

Commands
--------
A ``NORMAL`` entry's ``data`` is one msgpack-encoded ``Request``: ``(client_id, seq, op)``
where ``op`` is one of ``Get``, ``Put``, ``Delete``, ``Append``, ``Cas``. Results:

=========================  ==========================================================
``Get(key)``               the value, or ``None`` when the key is absent
``Put(key, value)``        ``None``
``Delete(key)``            ``None`` (deleting an absent key is not an error)
``Append(key, value)``     the new value, ``(old or "") + value``
``Cas(key, expected, new)`` ``True`` and sets ``new`` if the value equals ``expected``
                           (``expected=None`` means "the key is absent"); else ``False``
=========================  ==========================================================

``NOOP``, ``FLAGS`` and ``CONF_CHANGE`` entries are meant for the kernel and the runtime;
the KV machine only records them as applied and returns ``None``.

An entry whose ``data`` does not decode as a ``Request`` cannot have come from a correct
client, but it is committed all the same, so it must not stop or split the replicas: every
replica returns a ``CommandError`` for it and moves on, with no change but ``applied_index``.
(The error's message is for the proposer's eyes only; it is not part of replicated state.)

Client sessions (Raft dissertation §6.3)
----------------------------------------
A client that times out retries the same proposal with the same ``(client_id, seq)``; the
first attempt may have committed too, so one command can appear in the log several times.
The session table keeps, per client, the last ``seq`` applied and its result:

* ``seq > last``: a new request; apply it and remember ``(seq, result)``;
* ``seq == last``: a retry of the request already applied; return the remembered result and
  change nothing, so the command takes effect exactly once;
* ``seq < last``: the client has already moved past this request (it issues one request at a
  time with increasing ``seq``); it is never applied and the answer is ``StaleRequest``.

Only the last result per client is kept, so a client must wait for one request's outcome
before it issues the next ``seq`` (``KVClient`` does).

Sessions expire by log position, not by time, so expiry is identical on every replica: at
most ``max_sessions`` clients are remembered, and when a new client would exceed that, the
one whose latest request sits lowest in the log is forgotten. The trade-off the dissertation
names follows: a client silent for longer than ``max_sessions`` other clients' activity
loses its session, and if it then retries a request that had in fact been applied, the retry
is applied a second time. Every replica must be configured with the same ``max_sessions``.

Snapshots
---------
``snapshot()`` is a version byte followed by msgpack of the store, the sessions (in
least-recently-used order, so eviction continues identically after a restore) and
``applied_index``. Map keys are sorted, so two replicas in the same state produce the same
bytes. ``restore()`` decodes and checks everything before it replaces anything: bad input
raises ``BadSnapshot`` naming the problem and leaves the machine as it was.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from itertools import islice
from typing import Annotated, Final, Protocol, TypeAlias, runtime_checkable

import msgspec

from framework.core.entries import Entry, EntryKind

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "AppCommand",
    "Append",
    "BadCommand",
    "BadSnapshot",
    "Cas",
    "Command",
    "CommandError",
    "Delete",
    "Get",
    "KVResult",
    "KVStateMachine",
    "OutOfOrderApply",
    "Put",
    "Request",
    "StaleRequest",
    "StateMachine",
    "app_name",
    "app_version",
    "decode_app_command",
    "decode_request",
    "encode_app_command",
    "encode_request",
]


# --------------------------------------------------------------------------------------
# The seam
# --------------------------------------------------------------------------------------


@runtime_checkable
class StateMachine(Protocol):
    """What the runtime drives: a deterministic machine fed with committed entries."""

    @property
    def applied_index(self) -> int:
        """Index of the last entry applied (or restored from a snapshot); 0 at the start."""
        ...

    def apply(self, entry: Entry) -> object:
        """Apply one committed entry and return the result for the client that proposed it.

        Called for every committed entry in log order, whatever its kind, each index once:
        ``entry.index == applied_index + 1``. Must be deterministic: the same entries give
        the same state and results on every replica. Must not raise for any ``data`` a
        committed entry can carry (a bad command is a result, not an exception).
        """
        ...

    def read(self, query: object) -> object:
        """Answer a read (a ``KVOp`` get's key, or an ``AppCall``'s payload) from the
        state as applied so far; the runtime calls it once ReadIndex says the state is
        recent enough. Must not change anything."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as of ``applied_index``, for log compaction and InstallSnapshot."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a ``snapshot()``; on bad data raise, change nothing."""
        ...

    # Optional, outside the protocol so that existing machines still satisfy it:
    #
    #     def check_snapshot(self, data: bytes) -> int
    #
    # The ``applied_index`` that ``restore(data)`` would leave, changing nothing; raises
    # ``ValueError`` (``BadSnapshot``) naming what is wrong. Called in a worker thread on
    # every snapshot a leader sends, before the node replaces its log with it: a machine
    # that has it never has its log wiped by a snapshot it cannot restore.


def app_name(machine: object) -> str:
    """The application a state machine is (``app_name``; the KV machine is ``"kv"``)."""
    return str(getattr(machine, "app_name", "kv"))


def app_version(machine: object) -> str:
    """Its version (``app_version``, ``"1"`` when it has none); same major = compatible."""
    return str(getattr(machine, "app_version", "1"))


# --------------------------------------------------------------------------------------
# Errors and result markers
# --------------------------------------------------------------------------------------


class BadCommand(ValueError):
    """Bytes that are not an encoded ``Request``; the message says what is wrong."""


class BadSnapshot(ValueError):
    """Bytes that are not a KV snapshot; the message says what is wrong."""


class OutOfOrderApply(RuntimeError):
    """The caller skipped or repeated an index; applying it would diverge from the log."""


class StaleRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a request older than the client's last applied one; nothing changed."""

    client_id: int
    seq: int
    last_seq: int
    """The client's latest applied ``seq``, which it has already moved past ``seq`` to."""


class CommandError(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a committed entry whose data is not a command; nothing changed."""

    index: int
    message: str


# --------------------------------------------------------------------------------------
# Commands and their encoding
# --------------------------------------------------------------------------------------


class Get(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag="get"):
    key: str


class Put(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag="put"):
    key: str
    value: str


class Delete(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag="delete"):
    key: str


class Append(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag="append"):
    key: str
    value: str


class Cas(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag="cas"):
    key: str
    expected: str | None
    """``None`` means "only if the key is absent"."""
    new: str


Command: TypeAlias = Get | Put | Delete | Append | Cas

_Positive = Annotated[int, msgspec.Meta(ge=1)]


class Request(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One client command with its session identity (dissertation §6.3).

    ``client_id`` names the client session; ``seq`` increases by at least one per new
    request and stays the same when the client retries. Both are at least 1.
    """

    client_id: _Positive
    seq: _Positive
    op: Command


KVResult: TypeAlias = str | bool | StaleRequest | CommandError | None
"""What ``KVStateMachine.apply`` returns; see the module docstring for each command."""

_REQUEST_ENCODER: Final = msgspec.msgpack.Encoder()
_REQUEST_DECODER: Final = msgspec.msgpack.Decoder(Request)


def encode_request(request: Request) -> bytes:
    """The bytes to propose for ``request`` (the ``data`` of a ``NORMAL`` entry)."""
    return _REQUEST_ENCODER.encode(request)


def decode_request(data: bytes) -> Request:
    """Decode a proposal; raise ``BadCommand`` naming what is wrong if it is not one."""
    try:
        return _REQUEST_DECODER.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise BadCommand(
            f"bad command ({len(data)} bytes): {exc}; expected a msgpack array "
            f"[client_id >= 1, seq >= 1, [op name, key, ...]]"
        ) from None


class AppCommand(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """The ``data`` of a ``NORMAL`` entry proposed for an ``AppCall`` write: the client's
    session and payload, and the leader's wall-clock time when it proposed the call (the
    one clock a deterministic machine may read: every replica sees the same value)."""

    client_id: _Positive
    seq: _Positive
    time: float
    payload: bytes


_APP_ENCODER: Final = msgspec.msgpack.Encoder()
_APP_DECODER: Final = msgspec.msgpack.Decoder(AppCommand)


def encode_app_command(command: AppCommand) -> bytes:
    return _APP_ENCODER.encode(command)


def decode_app_command(data: bytes) -> AppCommand:
    """Decode an application entry; raise ``BadCommand`` naming what is wrong."""
    try:
        return _APP_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise BadCommand(
            f"bad application command ({len(data)} bytes): {exc}; expected a msgpack array "
            "[client_id >= 1, seq >= 1, time, payload]"
        ) from None


# --------------------------------------------------------------------------------------
# Snapshot format
# --------------------------------------------------------------------------------------

_SNAPSHOT_VERSION: Final = 1
DEFAULT_MAX_SESSIONS: Final = 100_000


class _Session(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A client's latest applied request: the result returned for a retry of it."""

    client_id: _Positive
    last_seq: _Positive
    last_index: _Positive
    """Log index of the client's latest request (any outcome); orders eviction."""
    result: str | bool | None


class _SnapshotBody(msgspec.Struct, frozen=True, kw_only=True):
    applied_index: Annotated[int, msgspec.Meta(ge=0)]
    data: dict[str, str]
    sessions: list[_Session]
    """Least recently used first."""


_SNAPSHOT_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(_SnapshotBody)


_CHUNK_ENCODER: Final = msgspec.msgpack.Encoder()


def _without_map_header(encoded: bytes) -> bytes:
    """The key/value pairs of an encoded msgpack map (fixmap, map16 or map32 header)."""
    first = encoded[0]
    if first == 0xDE:
        return encoded[3:]
    if first == 0xDF:
        return encoded[5:]
    return encoded[1:]


def _decode_snapshot(data: bytes) -> _SnapshotBody:
    if not data:
        raise BadSnapshot("empty snapshot: expected a version byte followed by msgpack")
    if data[0] != _SNAPSHOT_VERSION:
        raise BadSnapshot(
            f"snapshot format version {data[0]} is not supported (expected {_SNAPSHOT_VERSION})"
        )
    try:
        body = _SNAPSHOT_DECODER.decode(data[1:])
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadSnapshot(f"snapshot body ({len(data) - 1} bytes) is malformed: {exc}") from None
    seen: set[int] = set()
    previous_index = 0
    for position, session in enumerate(body.sessions):
        where = f"sessions[{position}] (client {session.client_id})"
        if session.client_id in seen:
            raise BadSnapshot(f"{where}: client appears twice in the session table")
        if session.last_index <= previous_index:
            raise BadSnapshot(
                f"{where}: last_index {session.last_index} is not above the previous "
                f"session's {previous_index}; sessions must be in least-recently-used order"
            )
        if session.last_index > body.applied_index:
            raise BadSnapshot(
                f"{where}: last_index {session.last_index} is beyond applied_index "
                f"{body.applied_index}"
            )
        seen.add(session.client_id)
        previous_index = session.last_index
    return body


# --------------------------------------------------------------------------------------
# The KV machine
# --------------------------------------------------------------------------------------


class KVStateMachine:
    """A string-to-string map with exactly-once client sessions; a ``StateMachine``.

    Linearizable reads normally bypass the log: the runtime waits for ReadIndex and then
    calls ``read(key)``, which touches no session. A ``Get`` proposed through the log is
    also supported (the simulator uses it) and is deduplicated like any other command.
    """

    def __init__(self, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions!r}")
        self.max_sessions: Final = max_sessions
        self._data: dict[str, str] = {}
        self._overlay: dict[str, str | None] | None = None
        """While ``snapshot_chunks`` reads ``_data``: the writes since (None: deleted), so
        ``_data`` stays exactly the state the snapshot is of (see ``snapshot_chunks``)."""
        # client_id -> session, least recently used first (by log index, hence identical on
        # every replica): the front is what eviction removes.
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._applied_index = 0

    # ---- reading -------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def read(self, key: str) -> str | None:
        """The value of ``key`` as of ``applied_index``; for reads served by ReadIndex."""
        overlay = self._overlay
        if overlay is not None and key in overlay:
            return overlay[key]
        return self._data.get(key)

    def __len__(self) -> int:
        """Number of keys stored."""
        overlay = self._overlay
        if overlay is None:
            return len(self._data)
        data = self._data
        added = sum(1 for k, v in overlay.items() if v is not None and k not in data)
        removed = sum(1 for k, v in overlay.items() if v is None and k in data)
        return len(data) + added - removed

    def _put(self, key: str, value: str) -> None:
        if self._overlay is not None:
            self._overlay[key] = value
        else:
            self._data[key] = value

    def _delete(self, key: str) -> None:
        if self._overlay is not None:
            self._overlay[key] = None
        else:
            self._data.pop(key, None)

    def session_count(self) -> int:
        """Number of client sessions remembered (at most ``max_sessions``)."""
        return len(self._sessions)

    # ---- applying ------------------------------------------------------------------

    def apply(self, entry: Entry) -> KVResult:
        expected = self._applied_index + 1
        if entry.index != expected:
            raise OutOfOrderApply(
                f"entry index {entry.index} applied after index {self._applied_index}; "
                f"expected {expected} (entries must be applied once each, in log order)"
            )
        self._applied_index = entry.index
        if entry.kind is not EntryKind.NORMAL:
            return None
        try:
            request = decode_request(entry.data)
        except BadCommand as exc:
            return CommandError(index=entry.index, message=str(exc))
        return self._apply_request(request, entry.index)

    def _apply_request(self, request: Request, index: int) -> KVResult:
        client_id, seq = request.client_id, request.seq
        session = self._sessions.get(client_id)
        if session is not None:
            # Any request from the client, even a duplicate, shows it is alive.
            self._sessions.move_to_end(client_id)
            if seq <= session.last_seq:
                self._sessions[client_id] = _Session(
                    client_id=client_id,
                    last_seq=session.last_seq,
                    last_index=index,
                    result=session.result,
                )
                if seq == session.last_seq:
                    return session.result
                return StaleRequest(client_id=client_id, seq=seq, last_seq=session.last_seq)
        result = self._execute(request.op)
        self._sessions[client_id] = _Session(
            client_id=client_id, last_seq=seq, last_index=index, result=result
        )
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return result

    def _execute(self, op: Command) -> str | bool | None:
        read = self.read
        match op:
            case Get(key=key):
                return read(key)
            case Put(key=key, value=value):
                self._put(key, value)
                return None
            case Delete(key=key):
                self._delete(key)
                return None
            case Append(key=key, value=value):
                new_value = (read(key) or "") + value
                self._put(key, new_value)
                return new_value
            case Cas(key=key, expected=expected_value, new=new_value):
                if read(key) != expected_value:
                    return False
                self._put(key, new_value)
                return True
        raise AssertionError(f"unhandled command {op!r}")  # pragma: no cover - exhaustive

    # ---- snapshots -----------------------------------------------------------------

    def snapshot(self) -> bytes:
        data = self._data
        if self._overlay is not None:  # a chunked snapshot is under way: merge the view
            data = {**data, **{k: v for k, v in self._overlay.items() if v is not None}}
            for key in [k for k, v in self._overlay.items() if v is None]:
                data.pop(key, None)
        body = _SnapshotBody(
            applied_index=self._applied_index,
            data=data,
            sessions=list(self._sessions.values()),
        )
        return bytes((_SNAPSHOT_VERSION,)) + _SNAPSHOT_ENCODER.encode(body)

    def snapshot_chunks(self, keys_per_chunk: int = 2048) -> Iterator[bytes]:
        """The state as of now (``applied_index`` at this call), in pieces whose
        concatenation ``restore`` takes like ``snapshot()`` (keys in storage order, not
        sorted). ``apply`` may run between pieces: the caller encodes one piece at a time
        and lets the event loop run in between, so no piece holds it for long.

        Copy-on-write at the level of keys: from this call until the iterator is exhausted
        or closed, writes go to an overlay and the map being read stays the snapshot's
        image; the overlay is folded in at the end (a cost in the number of keys written
        meanwhile). Capturing costs O(sessions), not O(keys). One at a time.
        """
        if self._overlay is not None:
            raise RuntimeError("a chunked snapshot is already being taken")
        if keys_per_chunk < 1:
            raise ValueError(f"keys_per_chunk={keys_per_chunk!r}: expected >= 1")
        base = self._data
        overlay: dict[str, str | None] = {}
        self._overlay = overlay
        head = (
            bytes((_SNAPSHOT_VERSION, 0x83))
            + _SNAPSHOT_ENCODER.encode("applied_index")
            + _SNAPSHOT_ENCODER.encode(self._applied_index)
            + _SNAPSHOT_ENCODER.encode("data")
            + b"\xdf"
            + len(base).to_bytes(4, "big")
        )
        tail = _SNAPSHOT_ENCODER.encode("sessions") + _SNAPSHOT_ENCODER.encode(
            list(self._sessions.values())
        )
        return self._chunks(base, overlay, head, tail, keys_per_chunk)

    def _chunks(
        self,
        base: dict[str, str],
        overlay: dict[str, str | None],
        head: bytes,
        tail: bytes,
        keys_per_chunk: int,
    ) -> Iterator[bytes]:
        try:
            yield head
            items = iter(base.items())
            encode = _CHUNK_ENCODER.encode
            while chunk := dict(islice(items, keys_per_chunk)):
                yield _without_map_header(encode(chunk))
            yield tail
        finally:
            if self._overlay is overlay:  # not replaced by a restore meanwhile
                self._overlay = None
                for key, value in overlay.items():
                    if value is None:
                        base.pop(key, None)
                    else:
                        base[key] = value

    def check_snapshot(self, data: bytes) -> int:
        """The ``applied_index`` that ``restore(data)`` would leave; ``BadSnapshot`` if it
        would fail. Reads nothing of this machine (safe in a worker thread)."""
        return _decode_snapshot(data).applied_index

    def restore(self, data: bytes) -> None:
        body = _decode_snapshot(data)
        sessions = OrderedDict((session.client_id, session) for session in body.sessions)
        # A snapshot from a replica with a larger bound (a misconfiguration) is trimmed the
        # same way eviction would have trimmed it: least recently used first.
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        self._data = body.data
        self._overlay = None  # a chunked snapshot under way keeps reading the old map
        self._sessions = sessions
        self._applied_index = body.applied_index
