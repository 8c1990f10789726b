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
A retried request carries the same ``(client_id, seq)`` and takes effect once: the KV
machine keeps a ``framework.sessions.ClientSessions`` table, the one every application
keeps (see that module for the rules and for expiry by log position). Every replica must be
configured with the same ``max_sessions``.

Client requests
---------------
The runtime knows no application's requests: it hands each client request body to
``StateMachine.client_request``, which answers a ``ClientCommand`` (bytes to propose) or a
``ClientQuery`` (what ``read`` answers once ReadIndex allows), or refuses with
``BadClientRequest``. The KV machine takes ``KVOp`` (its own request codec); replicated
objects take ``AppCall`` through ``app_call_request``, which a hand-written machine can
use too.

Snapshots
---------
Every application's snapshot starts with a header naming the application and its version
(``snapshot_header``), so a node of another application (or of an incompatible version)
refuses it by name before it reads anything else (``open_snapshot``). The KV snapshot
then has a version byte followed by msgpack of the store, the sessions (in
least-recently-used order, so eviction continues identically after a restore) and
``applied_index``. Map keys are sorted, so two replicas in the same state produce the same
bytes. ``restore()`` decodes and checks everything before it replaces anything: bad input
raises ``BadSnapshot`` naming the problem and leaves the machine as it was. A KV snapshot
without the header (written before it existed) is read as the KV application's.

``snapshot_chunks`` writes format version 2, made to be read a piece at a time
(``restore_file``, ``check_snapshot_file``): after the version byte, length-prefixed records
(4 bytes, big-endian, then msgpack): one ``begin`` (``applied_index`` and the number of
keys), ``keys`` records of at most ``MAX_SNAPSHOT_RECORD`` bytes each (a chunk of keys, in
storage order), one ``end`` (the sessions). Reading one holds one record at a time besides
the state being built. ``restore_file`` is ``decode_snapshot_file`` (a fresh state, checked,
nothing of the machine touched) then ``install_snapshot`` (swapped in), so that a follower
installs the state its check decoded instead of decoding the file twice. ``snapshot()``
still writes version 1 (one msgpack map, keys sorted); both versions restore through both
entry points.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from itertools import islice
from typing import IO, Annotated, Final, Protocol, TypeAlias, runtime_checkable

import msgspec

from framework.canonical_msgpack import encode_canonical
from framework.core.entries import Entry, EntryKind
from framework.sessions import (
    DEFAULT_MAX_SESSIONS,
    ClientSessions,
    Session,
    StaleRequest,
    check_rows,
)
from framework.transport.wire import AppCall, KVOp

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "LEGACY_SNAPSHOT_APPLICATION",
    "MAX_SNAPSHOT_RECORD",
    "SNAPSHOT_MAGIC",
    "AppCommand",
    "Append",
    "BadClientRequest",
    "BadCommand",
    "BadSnapshot",
    "Cas",
    "ClientCommand",
    "ClientQuery",
    "Command",
    "CommandError",
    "Delete",
    "Get",
    "KVResult",
    "KVSnapshot",
    "KVStateMachine",
    "OutOfOrderApply",
    "Put",
    "Request",
    "StaleRequest",
    "StateMachine",
    "app_call_request",
    "app_name",
    "app_version",
    "compatible",
    "decode_app_command",
    "decode_request",
    "encode_app_command",
    "encode_request",
    "open_snapshot",
    "open_snapshot_file",
    "snapshot_application",
    "snapshot_header",
]


# --------------------------------------------------------------------------------------
# The seam
# --------------------------------------------------------------------------------------


class ClientCommand(msgspec.Struct, frozen=True):
    """``client_request``'s answer for a write: the entry data to propose."""

    data: bytes


class ClientQuery(msgspec.Struct, frozen=True):
    """``client_request``'s answer for a read: ``read(query)`` answers it, on the leader
    after ReadIndex, or on the receiving node from its state as it is when ``stale``."""

    query: object
    stale: bool = False


class BadClientRequest(ValueError):
    """A client request the application refuses; the message says what was expected."""


@runtime_checkable
class StateMachine(Protocol):
    """What the runtime drives: a deterministic machine fed with committed entries.

    The runtime has no path of its own for any application: client requests, reads,
    snapshots and the application's identity all go through these members (and
    ``app_name``/``app_version`` attributes, read by ``app_name()``/``app_version()``).
    """

    @property
    def applied_index(self) -> int:
        """Index of the last entry applied (or restored from a snapshot); 0 at the start."""
        ...

    def client_request(self, body: object, *, now: float) -> ClientCommand | ClientQuery:
        """Turn a client request body (``KVOp``, ``AppCall``) into a proposal or a read;
        raise ``BadClientRequest`` naming what is wrong (the client gets ``bad_request``).
        ``now`` is this node's wall clock: a leader's proposal may carry it (the one clock
        a deterministic machine may read). Must not change anything."""
        ...

    def apply(self, entry: Entry) -> object:
        """Apply one committed entry and return the result for the client that proposed it.

        Called for every committed entry in log order, whatever its kind, each index once:
        ``entry.index == applied_index + 1``. Must be deterministic: the same entries give
        the same state and results on every replica. Must not raise for any ``data`` a
        committed entry can carry (a bad command is a result, not an exception). A retried
        command must take effect once (``framework.sessions.ClientSessions``).
        """
        ...

    def read(self, query: object) -> object:
        """Answer a ``ClientQuery.query`` from the state as applied so far; the runtime
        calls it once ReadIndex says the state is recent enough. Must not change anything."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as of ``applied_index`` (sessions included), starting with
        ``snapshot_header``, for log compaction and InstallSnapshot."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a ``snapshot()``; on bad data (another
        application's included) raise ``BadSnapshot``, change nothing."""
        ...

    # Optional, outside the protocol so that existing machines still satisfy it:
    #
    #     def check_snapshot(self, data: bytes) -> int
    #
    # The ``applied_index`` that ``restore(data)`` would leave, changing nothing; raises
    # ``ValueError`` (``BadSnapshot``) naming what is wrong. Called in a worker thread on
    # every snapshot a leader sends, before the node replaces its log with it: a machine
    # that has it never has its log wiped by a snapshot it cannot restore.
    #
    #     def snapshot_chunks(self) -> Iterator[bytes]
    #
    # ``snapshot()`` in pieces, encoded by the runtime one at a time between Readies while
    # the machine keeps applying (``framework.runtime.local_snapshots``).
    #
    #     def check_snapshot_file(self, file: IO[bytes]) -> int
    #     def restore_file(self, file: IO[bytes]) -> None
    #
    # ``check_snapshot`` and ``restore`` reading the snapshot from ``file`` (positioned at
    # its start, read to its end) a piece at a time, so that a large snapshot is never held
    # whole in memory (a worker thread calls them). A machine without them is given the
    # snapshot read whole, as bytes.


def app_name(machine: object) -> str:
    """The application a state machine is (``app_name``; the KV machine is ``"kv"``)."""
    return str(getattr(machine, "app_name", "kv"))


def app_version(machine: object) -> str:
    """Its version (``app_version``, ``"1"`` when it has none); same major = compatible."""
    return str(getattr(machine, "app_version", "1"))


def compatible(ours: tuple[str, str], theirs: tuple[str, str]) -> bool:
    """Same name and same major version (the part of ``version`` before the first dot)."""
    return ours[0] == theirs[0] and ours[1].split(".")[0] == theirs[1].split(".")[0]


def wrong_application(runs: str, wanted: str) -> BadClientRequest:
    return BadClientRequest(
        f"the cluster runs the application {runs!r}; the request is for {wanted!r}"
    )


# --------------------------------------------------------------------------------------
# Errors and result markers
# --------------------------------------------------------------------------------------


class BadCommand(ValueError):
    """Bytes that are not an encoded ``Request``; the message says what is wrong."""


class BadSnapshot(ValueError):
    """Bytes that are not a KV snapshot; the message says what is wrong."""


class OutOfOrderApply(RuntimeError):
    """The caller skipped or repeated an index; applying it would diverge from the log."""


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


def app_call_request(machine: object, body: object, *, now: float) -> ClientCommand | ClientQuery:
    """``client_request`` for an application called through ``AppCall``: a write becomes an
    ``AppCommand`` with the caller's session and the leader's clock ``now``, a read a
    ``ClientQuery`` of the payload. A hand-written ``StateMachine`` may use it as is."""
    app = app_name(machine)
    if not isinstance(body, AppCall):
        wanted = "kv" if isinstance(body, KVOp) else type(body).__name__
        raise wrong_application(app, wanted)
    if body.app != app:
        raise wrong_application(app, body.app)
    if body.read:
        return ClientQuery(body.payload, stale=body.stale)
    if body.client_id <= 0 or body.seq <= 0:
        raise BadClientRequest(
            f"an {app} call needs a client session: client_id={body.client_id} "
            f"seq={body.seq}; expected both >= 1"
        )
    command = AppCommand(client_id=body.client_id, seq=body.seq, time=now, payload=body.payload)
    return ClientCommand(encode_app_command(command))


# --------------------------------------------------------------------------------------
# Snapshot format
# --------------------------------------------------------------------------------------

SNAPSHOT_MAGIC: Final = b"\xc1raftmw-snapshot\x00"
"""The start of every application snapshot (``0xc1``: a byte msgpack never uses)."""

MAX_HEADER: Final = 1024
"""The longest application header (name and version, msgpack) a snapshot may carry."""

_HEADER_ENCODER: Final = msgspec.msgpack.Encoder()
_HEADER_DECODER: Final = msgspec.msgpack.Decoder(tuple[str, str])


def snapshot_header(machine: object) -> bytes:
    """The bytes an application's snapshot starts with: its name and version."""
    encoded = _HEADER_ENCODER.encode((app_name(machine), app_version(machine)))
    if len(encoded) > MAX_HEADER:
        raise ValueError(
            f"application name and version take {len(encoded)} bytes; expected at most {MAX_HEADER}"
        )
    return SNAPSHOT_MAGIC + len(encoded).to_bytes(2, "big") + encoded


def snapshot_application(data: bytes | memoryview) -> tuple[tuple[str, str] | None, int]:
    """The application a snapshot names and where its body starts: ``(None, 0)`` for a
    snapshot without a header. Raises ``BadSnapshot`` for a header that does not decode."""
    magic = len(SNAPSHOT_MAGIC)
    if bytes(data[:magic]) != SNAPSHOT_MAGIC:
        return None, 0
    size = int.from_bytes(data[magic : magic + 2], "big")
    end = magic + 2 + size
    if size > MAX_HEADER or end > len(data):
        raise BadSnapshot(
            f"snapshot application header of {size} bytes in a snapshot of {len(data)}: "
            f"expected at most {MAX_HEADER} bytes, within the snapshot"
        )
    try:
        name, version = _HEADER_DECODER.decode(data[magic + 2 : end])
    except msgspec.DecodeError as exc:
        raise BadSnapshot(f"snapshot application header is malformed: {exc}") from None
    return (name, version), end


def open_snapshot(
    data: bytes, machine: object, *, default: tuple[str, str] | None = None
) -> memoryview:
    """The body of ``machine``'s snapshot ``data``, after checking that the snapshot is of
    this application in a compatible version; ``BadSnapshot`` names both otherwise.
    ``default``: the application a snapshot without a header is taken to be (``None``:
    such a snapshot is refused)."""
    theirs, start = snapshot_application(data)
    _check_application(machine, theirs, default, f"({len(data)} bytes) ")
    return memoryview(data)[start:]


def open_snapshot_file(
    file: IO[bytes], machine: object, *, default: tuple[str, str] | None = None
) -> None:
    """``open_snapshot`` for a snapshot read from ``file`` (seekable, positioned at the
    snapshot's start): checks its header and leaves ``file`` at the start of the body."""
    start = file.tell()
    prefix = file.read(len(SNAPSHOT_MAGIC) + 2 + MAX_HEADER)
    theirs, body = snapshot_application(prefix)
    _check_application(machine, theirs, default, "")
    file.seek(start + body)


def _check_application(
    machine: object, theirs: tuple[str, str] | None, default: tuple[str, str] | None, size: str
) -> None:
    ours = (app_name(machine), app_version(machine))
    if theirs is None:
        if default is None:
            raise BadSnapshot(
                f"the snapshot {size}names no application; this node runs "
                f"{ours[0]!r} version {ours[1]}"
            )
        theirs = default
    if not compatible(ours, theirs):
        raise BadSnapshot(
            f"the snapshot is of application {theirs[0]!r} version {theirs[1]}; this node "
            f"runs {ours[0]!r} version {ours[1]} (expected the same name and major version)"
        )


LEGACY_SNAPSHOT_APPLICATION: Final = ("kv", "1")
"""The application of a snapshot without a header: only the KV machine wrote those."""

_SNAPSHOT_VERSION: Final = 1
"""One msgpack map (``snapshot()``), read whole."""
_CHUNKED_VERSION: Final = 2
"""Length-prefixed records (``snapshot_chunks``), read one at a time."""
MAX_SNAPSHOT_RECORD: Final = 64 * 1024 * 1024
"""The largest record of a version 2 KV snapshot, in bytes (a reader refuses larger)."""


class _SnapshotBody(msgspec.Struct, frozen=True, kw_only=True):
    applied_index: Annotated[int, msgspec.Meta(ge=0)]
    data: dict[str, str]
    sessions: list[Session[str | bool | None]]
    """Least recently used first."""


class _Begin(msgspec.Struct, frozen=True, array_like=True, tag="begin"):
    applied_index: Annotated[int, msgspec.Meta(ge=0)]
    keys: Annotated[int, msgspec.Meta(ge=0)]


class _Keys(msgspec.Struct, frozen=True, array_like=True, tag="keys"):
    data: dict[str, str]


class _End(msgspec.Struct, frozen=True, array_like=True, tag="end"):
    sessions: list[Session[str | bool | None]]


_SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(_SnapshotBody)
_RECORD_ENCODER: Final = msgspec.msgpack.Encoder()
_RECORD_DECODER: Final = msgspec.msgpack.Decoder(_Begin | _Keys | _End)


def _framed(encoded: bytes) -> bytes:
    if len(encoded) > MAX_SNAPSHOT_RECORD:
        raise ValueError(
            f"a snapshot record of {len(encoded)} bytes (one key and its value) exceeds "
            f"MAX_SNAPSHOT_RECORD={MAX_SNAPSHOT_RECORD}"
        )
    return len(encoded).to_bytes(4, "big") + encoded


def _key_records(chunk: dict[str, str]) -> bytes:
    """``chunk`` as one ``keys`` record, or halved until each is within the record limit."""
    encoded = _RECORD_ENCODER.encode(_Keys(chunk))
    if len(encoded) > MAX_SNAPSHOT_RECORD and len(chunk) > 1:
        items = list(chunk.items())
        half = len(items) // 2
        return _key_records(dict(items[:half])) + _key_records(dict(items[half:]))
    return _framed(encoded)


def _read_exact(file: IO[bytes], size: int, what: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise BadSnapshot(f"snapshot ends inside {what}: {len(data)} of {size} bytes")
    return data


def _records(file: IO[bytes]) -> Iterator[_Begin | _Keys | _End]:
    """The records of a version 2 body, one read at a time, until the end of ``file``."""
    while prefix := file.read(4):
        if len(prefix) < 4:
            raise BadSnapshot(f"snapshot ends inside a record length ({len(prefix)} of 4 bytes)")
        size = int.from_bytes(prefix, "big")
        if size > MAX_SNAPSHOT_RECORD:
            raise BadSnapshot(
                f"snapshot record of {size} bytes: expected at most {MAX_SNAPSHOT_RECORD}"
            )
        try:
            yield _RECORD_DECODER.decode(_read_exact(file, size, "a record"))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise BadSnapshot(f"snapshot record ({size} bytes) is malformed: {exc}") from None


def _read_chunked(file: IO[bytes], *, keep: bool) -> _SnapshotBody:
    """A version 2 body from ``file``; ``keep=False`` checks it without keeping the keys."""
    records = _records(file)
    begin = next(records, None)
    if not isinstance(begin, _Begin):
        raise BadSnapshot(f"snapshot body starts with {type(begin).__name__}: expected begin")
    data: dict[str, str] = {}
    keys = 0
    for record in records:
        if isinstance(record, _Keys):
            keys += len(record.data)
            if keys > begin.keys:
                raise BadSnapshot(f"snapshot holds more than the {begin.keys} keys it declares")
            if keep:
                data.update(record.data)
            continue
        if isinstance(record, _Begin):
            raise BadSnapshot("snapshot body has a second begin record")
        if keys != begin.keys:
            raise BadSnapshot(f"snapshot holds {keys} keys; it declares {begin.keys}")
        if next(records, None) is not None:
            raise BadSnapshot("snapshot body goes on after its end record")
        problem = check_rows(record.sessions, begin.applied_index)
        if problem is not None:
            raise BadSnapshot(problem)
        return _SnapshotBody(applied_index=begin.applied_index, data=data, sessions=record.sessions)
    raise BadSnapshot("snapshot body ends without its end record")


def _decode_whole(body: bytes | memoryview) -> _SnapshotBody:
    try:
        decoded = _SNAPSHOT_DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadSnapshot(f"snapshot body ({len(body)} bytes) is malformed: {exc}") from None
    problem = check_rows(decoded.sessions, decoded.applied_index)
    if problem is not None:
        raise BadSnapshot(problem)
    return decoded


def _read_snapshot(machine: KVStateMachine, file: IO[bytes], *, keep: bool) -> _SnapshotBody:
    """A KV snapshot of either version from ``file`` (seekable, at the snapshot's start)."""
    start = file.tell()
    if not file.read(1):
        raise BadSnapshot("empty snapshot: expected a version byte followed by msgpack")
    file.seek(start)
    open_snapshot_file(file, machine, default=LEGACY_SNAPSHOT_APPLICATION)
    version = file.read(1)
    if not version:
        raise BadSnapshot("empty KV snapshot body: expected a version byte followed by msgpack")
    if version[0] == _CHUNKED_VERSION:
        return _read_chunked(file, keep=keep)
    if version[0] != _SNAPSHOT_VERSION:
        raise BadSnapshot(
            f"snapshot format version {version[0]} is not supported (expected "
            f"{_SNAPSHOT_VERSION} or {_CHUNKED_VERSION})"
        )
    return _decode_whole(file.read())  # version 1 is one msgpack map: read whole


class KVSnapshot:
    """A KV snapshot decoded and checked, for ``KVStateMachine.install_snapshot`` (once)."""

    __slots__ = ("_body", "applied_index")

    def __init__(self, body: _SnapshotBody) -> None:
        self._body: _SnapshotBody | None = body
        self.applied_index: Final = body.applied_index

    def take(self) -> _SnapshotBody:
        body, self._body = self._body, None
        if body is None:
            raise RuntimeError("this decoded snapshot was installed already")
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
        self.sessions: ClientSessions[str | bool | None] = ClientSessions(max_sessions)
        self.max_sessions: Final = max_sessions
        self._data: dict[str, str] = {}
        self._overlay: dict[str, str | None] | None = None
        """While ``snapshot_chunks`` reads ``_data``: the writes since (None: deleted), so
        ``_data`` stays exactly the state the snapshot is of (see ``snapshot_chunks``)."""
        self._applied_index = 0

    # ---- reading -------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def read(self, query: object) -> str | None:
        """The value of the key ``query`` as of ``applied_index``; for reads served by
        ReadIndex (``client_request`` makes a ``get`` the ``ClientQuery`` of its key)."""
        if not isinstance(query, str):
            raise TypeError(f"a KV read is of a key (str), got {type(query).__name__}")
        return self._get(query)

    def _get(self, key: str) -> str | None:
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
        return len(self.sessions)

    # ---- client requests -------------------------------------------------------------

    def client_request(self, body: object, *, now: float) -> ClientCommand | ClientQuery:
        """The KV client protocol (``KVOp``) as this application's own request codec: a
        ``get`` is a ReadIndex read of its key, every other op a ``Request`` to propose."""
        if not isinstance(body, KVOp):
            wanted = body.app if isinstance(body, AppCall) else type(body).__name__
            raise wrong_application("kv", wanted)
        if body.op == "get":
            return ClientQuery(body.key)
        if body.client_id <= 0 or body.seq <= 0:
            raise BadClientRequest(
                f"{body.op} needs a client session: client_id={body.client_id} "
                f"seq={body.seq}; expected both >= 1"
            )
        if body.op != "delete" and body.value is None:
            raise BadClientRequest(f"{body.op} {body.key!r} needs a value")
        request = Request(client_id=body.client_id, seq=body.seq, op=_command(body))
        return ClientCommand(encode_request(request))

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
        replay = self.sessions.lookup(client_id, seq, index)
        if replay is not None:
            return replay.result
        result = self._execute(request.op)
        self.sessions.record(client_id, seq, index, result)
        return result

    def _execute(self, op: Command) -> str | bool | None:
        read = self._get
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
            sessions=self.sessions.rows(),
        )
        return snapshot_header(self) + bytes((_SNAPSHOT_VERSION,)) + encode_canonical(body)

    def snapshot_chunks(self, keys_per_chunk: int = 2048) -> Iterator[bytes]:
        """The state as of now (``applied_index`` at this call), in pieces whose
        concatenation ``restore`` and ``restore_file`` take (format version 2: a record per
        piece of keys, in storage order, not sorted). ``apply`` may run between pieces: the
        caller encodes one piece at a time and lets the event loop run in between, so no
        piece holds it for long.

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
            snapshot_header(self)
            + bytes((_CHUNKED_VERSION,))
            + _framed(_RECORD_ENCODER.encode(_Begin(self._applied_index, len(base))))
        )
        tail = _framed(_RECORD_ENCODER.encode(_End(self.sessions.rows())))
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
            while chunk := dict(islice(items, keys_per_chunk)):
                yield _key_records(chunk)
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
        return self.check_snapshot_file(io.BytesIO(data))

    def check_snapshot_file(self, file: IO[bytes]) -> int:
        """``check_snapshot`` reading ``file`` (seekable, at the snapshot's start) a record
        at a time: the keys are decoded and dropped."""
        return _read_snapshot(self, file, keep=False).applied_index

    def restore(self, data: bytes) -> None:
        self.restore_file(io.BytesIO(data))

    def restore_file(self, file: IO[bytes]) -> None:
        """``restore`` reading ``file`` (seekable, at the snapshot's start) a record at a
        time (format version 2; version 1 is one map and is read whole)."""
        self.install_snapshot(self.decode_snapshot_file(file))

    def decode_snapshot_file(self, file: IO[bytes]) -> KVSnapshot:
        """``check_snapshot_file`` that keeps what it decodes: a fresh state, not yet in use
        (reads nothing of this machine: safe in a worker thread while it applies), for
        ``install_snapshot``. ``BadSnapshot`` if ``restore_file`` would fail."""
        return KVSnapshot(_read_snapshot(self, file, keep=True))

    def install_snapshot(self, snapshot: KVSnapshot) -> None:
        """Replace this machine's state with ``snapshot`` (from ``decode_snapshot_file``,
        once; whatever was applied since is dropped, as by ``restore``)."""
        body = snapshot.take()
        self._data = body.data
        self._overlay = None  # a chunked snapshot under way keeps reading the old map
        self.sessions.restore(body.sessions)
        self._applied_index = body.applied_index


def _command(op: KVOp) -> Put | Delete | Append | Cas:
    """The command of a KV write (its value checked by ``client_request``)."""
    value = op.value or ""
    if op.op == "put":
        return Put(key=op.key, value=value)
    if op.op == "delete":
        return Delete(key=op.key)
    if op.op == "append":
        return Append(key=op.key, value=value)
    return Cas(key=op.key, expected=op.expected, new=value)
