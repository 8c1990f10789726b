"""Runtime snapshots: what they hold, and the check an inbound one passes before the kernel.

Theory of operation
-------------------
A runtime snapshot (``NodeSnapshot``) wraps the state machine's bytes with the member
address book and the cluster's flag state, so a node restored from it knows how to reach
everyone and which flags are on.

A snapshot from the leader (``InstallSnapshot``) replaces the whole log: once the kernel has
stepped it, the Ready loop persists it (deleting every entry) before restoring the state
machine from it. A snapshot that then fails to restore used to leave a node with no log and
no state that refused to start. So ``InboundSnapshots`` checks every inbound snapshot
*completely* before the kernel sees it: the wrapper decodes, its version is known, every
address is usable, the flag state decodes, and the state machine can restore from its bytes
to exactly the index the snapshot claims (``StateMachine.check_snapshot``, when the machine
has one). A snapshot that fails is dropped and counted, the kernel never hears of it (so it
neither adopts its term nor believes it installed it), and nothing is persisted.

Checking decodes the whole snapshot, so it runs in a worker thread, one at a time: while a
check is in flight, further snapshots are dropped like any message the node cannot take
(the leader sends another). A state machine that can decode a snapshot into a state of its
own (``decode_snapshot_file``, ``install_snapshot``: the KV machine) is checked by decoding
it, and that state is what the Ready installs: decoded once (``InboundSnapshots``).

Over TCP a snapshot arrives streamed on a connection of its own, written to a temporary
file in the data directory's ``snapshots-incoming`` and checked against its size and
SHA-256 before it is delivered here (``framework.transport.snapshot_stream``) as that file:
the check reads the file a piece at a time (``check_node_snapshot_file``), the kernel is
given the ``InstallSnapshot`` without its data, the store adopts the file when it persists
the Ready (``take_file``), and the state machine restores from the store's file
(``restore_node_snapshot_file``). A state machine with ``check_snapshot_file`` and
``restore_file`` (the KV machine) never holds the snapshot whole; one without them is given
its part read whole.

The file format (version 2, ``node_snapshot_head``): ``NODE_SNAPSHOT_MAGIC``, a 4-byte
big-endian length, the msgpack ``NodeSnapshotHead`` (version, members, flags), then the
state machine's snapshot to the end of the file. Version 1, one msgpack ``NodeSnapshot``
map, is still read (whole).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup

from framework.core import InstallSnapshot, Snapshot
from framework.flags import ClusterFlagState, FlagError
from framework.runtime.heap_trim import trim_free_heap
from framework.runtime.members import AddressCheck, generic_address_problem
from framework.statemachine import MAX_HEADER, SNAPSHOT_MAGIC
from framework.storage import SnapshotFile, StorageError
from framework.transport.bounds import MAX_MEMBERS, MAX_NODE_ID
from framework.transport.snapshot_stream import ReceivedSnapshot

__all__ = [
    "NODE_SNAPSHOT_MAGIC",
    "SNAPSHOT_FILE_VERSION",
    "SNAPSHOT_VERSION",
    "BadNodeSnapshot",
    "InboundSnapshots",
    "NodeSnapshot",
    "NodeSnapshotHead",
    "Staged",
    "adopt_snapshot_head",
    "check_node_snapshot",
    "check_node_snapshot_file",
    "decode_node_snapshot",
    "encode_node_snapshot",
    "node_snapshot_head",
    "node_snapshot_parts",
    "restore_node_snapshot_file",
    "restore_snapshot",
]

log = logging.getLogger("raftmw.snapshots")

SNAPSHOT_VERSION: Final = 1
SPOOL_DIR: Final = "snapshots-incoming"
"""The data directory's subdirectory where snapshots streamed from the leader are written
while they arrive (``framework.transport.snapshot_stream``)."""


class NodeSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What a runtime snapshot holds besides the state machine's own bytes."""

    version: int
    members: dict[int, str]
    state_machine: bytes
    flags: bytes = b""
    """The cluster's replicated flag state (``ClusterFlagState.to_bytes``)."""


class BadNodeSnapshot(ValueError):
    """Snapshot bytes this node cannot install; the message names what is wrong."""


SNAPSHOT_FILE_VERSION: Final = 2
NODE_SNAPSHOT_MAGIC: Final = b"\xc1raftmw-node-snapshot\x00"
"""The start of a version 2 snapshot (``0xc1``: no msgpack value, so no version 1, starts
with it)."""
MAX_HEAD: Final = 16 * 1024 * 1024
"""The largest ``NodeSnapshotHead`` (members and flag state) a snapshot may carry."""


class NodeSnapshotHead(msgspec.Struct, frozen=True, kw_only=True):
    """What a version 2 snapshot holds before the state machine's own bytes."""

    version: int
    members: dict[int, str]
    flags: bytes = b""


_HEAD_DECODER: Final = msgspec.msgpack.Decoder(NodeSnapshotHead)


def node_snapshot_head(*, members: dict[int, str], flags: bytes) -> bytes:
    """The bytes a version 2 snapshot starts with; the state machine's follow to the end."""
    head = _ENCODER.encode(
        NodeSnapshotHead(version=SNAPSHOT_FILE_VERSION, members=members, flags=flags)
    )
    if len(head) > MAX_HEAD:
        raise ValueError(f"snapshot head of {len(head)} bytes: expected at most {MAX_HEAD}")
    return NODE_SNAPSHOT_MAGIC + len(head).to_bytes(4, "big") + head


def _read_head(file: IO[bytes]) -> NodeSnapshotHead | None:
    """The head of a version 2 snapshot, leaving ``file`` at the state machine's bytes; None
    for any other (``file`` back at its start)."""
    start = file.tell()
    if file.read(len(NODE_SNAPSHOT_MAGIC)) != NODE_SNAPSHOT_MAGIC:
        file.seek(start)
        return None
    prefix = file.read(4)
    size = int.from_bytes(prefix, "big")
    if len(prefix) < 4 or size > MAX_HEAD:
        raise BadNodeSnapshot(
            f"snapshot head of {size} bytes: expected at most {MAX_HEAD}, within the snapshot"
        )
    encoded = file.read(size)
    try:
        if len(encoded) < size:
            raise msgspec.DecodeError(f"the snapshot ends after {len(encoded)} of its bytes")
        head = _HEAD_DECODER.decode(encoded)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BadNodeSnapshot(f"snapshot head ({size} bytes) is malformed: {exc}") from None
    if head.version != SNAPSHOT_FILE_VERSION:
        raise BadNodeSnapshot(
            f"snapshot format version {head.version} is not supported (expected "
            f"{SNAPSHOT_FILE_VERSION} in a file, or {SNAPSHOT_VERSION})"
        )
    return head


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(NodeSnapshot)


def encode_node_snapshot(snapshot: NodeSnapshot) -> bytes:
    return _ENCODER.encode(snapshot)


def node_snapshot_parts(
    *, members: dict[int, str], flags: bytes, state_machine: list[bytes]
) -> list[bytes]:
    """``encode_node_snapshot`` as pieces around the state machine's own pieces (from
    ``snapshot_chunks``), so that a large snapshot is joined once, in a worker thread
    (``bytes.join`` lets go of the GIL), instead of copied again on the event loop."""
    size = sum(map(len, state_machine))
    if size >= 1 << 32:
        raise ValueError(f"state machine snapshot of {size} bytes: expected less than 4 GiB")
    head = (
        b"\x84"
        + _ENCODER.encode("version")
        + _ENCODER.encode(SNAPSHOT_VERSION)
        + _ENCODER.encode("members")
        + _ENCODER.encode(members)
        + _ENCODER.encode("state_machine")
        + b"\xc6"
        + size.to_bytes(4, "big")
    )
    tail = _ENCODER.encode("flags") + _ENCODER.encode(flags)
    return [head, *state_machine, tail]


def decode_node_snapshot(data: bytes) -> NodeSnapshot:
    try:
        snap = _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BadNodeSnapshot(
            f"snapshot ({len(data)} bytes) is not a raftmw snapshot: {exc}"
        ) from None
    if snap.version != SNAPSHOT_VERSION:
        raise BadNodeSnapshot(
            f"snapshot format version {snap.version} is not supported (expected {SNAPSHOT_VERSION})"
        )
    return snap


def check_node_snapshot(
    data: bytes,
    *,
    index: int,
    state_machine: object,
    address_problem: AddressCheck = generic_address_problem,
) -> NodeSnapshot:
    """Decode and check ``data`` (the snapshot at log ``index``, either version) as fully
    as restoring it would, changing nothing; ``BadNodeSnapshot`` says what is wrong."""
    file = io.BytesIO(data)
    head = _read_head(file)
    if head is None:
        snap = decode_node_snapshot(data)
        _check_head(snap.members, snap.flags, address_problem)
        _check_state_machine(state_machine, io.BytesIO(snap.state_machine), index)
        return snap
    _check_head(head.members, head.flags, address_problem)
    body = file.tell()
    _check_state_machine(state_machine, file, index)
    return NodeSnapshot(
        version=head.version,
        members=head.members,
        state_machine=data[body:],
        flags=head.flags,
    )


def check_node_snapshot_file(
    file: IO[bytes],
    *,
    index: int,
    state_machine: object,
    address_problem: AddressCheck = generic_address_problem,
    keep: bool = False,
) -> object | None:
    """``check_node_snapshot`` reading ``file`` (seekable, at the snapshot's start): a
    version 2 snapshot a piece at a time if the state machine has ``check_snapshot_file``
    (else its part is read whole), a version 1 snapshot whole. ``keep``: the state it
    decoded, for ``restore_node_snapshot_file(decoded=...)``, if the state machine can
    decode without installing (``decode_snapshot_file`` and ``install_snapshot``), else
    None (it is then decoded again when restored)."""
    head = _read_head(file)
    if head is None:
        snap = decode_node_snapshot(file.read())
        _check_head(snap.members, snap.flags, address_problem)
        return _check_state_machine(state_machine, io.BytesIO(snap.state_machine), index, keep)
    _check_head(head.members, head.flags, address_problem)
    return _check_state_machine(state_machine, file, index, keep)


def _check_head(members: dict[int, str], flags: bytes, address_problem: AddressCheck) -> None:
    if len(members) > MAX_MEMBERS:
        raise BadNodeSnapshot(
            f"snapshot lists {len(members)} member addresses; expected at most {MAX_MEMBERS}"
        )
    for node_id, address in members.items():
        if not 1 <= node_id <= MAX_NODE_ID:
            raise BadNodeSnapshot(
                f"snapshot member id {node_id}: expected a node id in 1..{MAX_NODE_ID}"
            )
        problem = address_problem(address)
        if problem is not None:
            raise BadNodeSnapshot(f"snapshot member {node_id}: {problem}")
    if flags:
        try:
            ClusterFlagState.from_bytes(flags)
        except FlagError as exc:
            raise BadNodeSnapshot(f"snapshot flag state: {exc}") from None


def _check_state_machine(
    state_machine: object, file: IO[bytes], index: int, keep: bool = False
) -> object | None:
    check_file = getattr(state_machine, "check_snapshot_file", None)
    check = getattr(state_machine, "check_snapshot", None)
    decode = getattr(state_machine, "decode_snapshot_file", None)
    if not keep or not hasattr(state_machine, "install_snapshot"):
        decode = None
    decoded: object | None = None
    try:
        if decode is not None:
            decoded = decode(file)
            applied = getattr(decoded, "applied_index", None)
        elif check_file is not None:
            applied = check_file(file)
        elif check is not None:
            applied = check(file.read())
        else:
            return None
    except ValueError as exc:
        raise BadNodeSnapshot(f"snapshot state machine: {exc}") from None
    if applied != index:
        raise BadNodeSnapshot(
            f"snapshot state machine restores to index {applied}, but the snapshot "
            f"claims index {index}"
        )
    return decoded


def restore_snapshot(
    snapshot: Snapshot, store: object, *, node: Any, decoded: object | None = None
) -> NodeSnapshotHead:
    """Restore ``node``'s state machine and application identity (a ``RaftNode``'s) from
    ``snapshot``'s data, or from ``store``'s file of it when the kernel holds it without
    its data (a worker thread); ``decoded``: its state machine's state as
    ``check_node_snapshot_file(keep=True)`` decoded it from that very data. Returns the
    snapshot's head, whose address book and flag state the caller adopts on the event
    loop (``adopt_snapshot_head``): the loop reads both while this runs. ``StorageError``
    naming the snapshot (its file, if it has one) if it cannot."""
    index = snapshot.meta.index
    file = _snapshot_data(snapshot, store)
    if file is None:
        raise StorageError(f"node {node.id}: the store holds no data for the snapshot at {index}")
    name = getattr(file, "name", None)
    what = f"snapshot at index {index}" + (f" (file {name})" if isinstance(name, str) else "")
    with file:
        try:
            head = restore_node_snapshot_file(
                file, index=index, state_machine=node.sm, identity=node.identity, decoded=decoded
            )
        except ValueError as exc:  # BadNodeSnapshot, or the state machine's BadSnapshot
            raise StorageError(f"node {node.id}: {what} cannot be restored: {exc}") from exc
    applied = getattr(node.sm, "applied_index", index)
    if applied != index:
        raise StorageError(
            f"node {node.id}: {what} restored the state machine to index {applied}; "
            f"expected {index}"
        )
    # The state replaced is freed now; glibc keeps its pages (a follower installing a 1 GiB
    # snapshot over a 1 GiB state stayed at twice the state's RSS). Give them back.
    trim_free_heap()
    return head


def adopt_snapshot_head(node: Any, head: NodeSnapshotHead) -> None:
    """Take a restored snapshot's address book and flag state into ``node``."""
    node.addresses.update(head.members)
    node.flags.restore(head.flags)


def _snapshot_data(snapshot: Snapshot, store: object) -> IO[bytes] | None:
    if snapshot.data:
        return io.BytesIO(snapshot.data)
    open_snapshot = getattr(store, "open_snapshot", None)
    if open_snapshot is None:
        return None
    file: IO[bytes] | None = open_snapshot(snapshot.meta)
    return file


def restore_node_snapshot_file(
    file: IO[bytes],
    *,
    index: int,
    state_machine: Any,
    identity: Any,
    decoded: object | None = None,
) -> NodeSnapshotHead:
    """Restore ``state_machine`` from ``file`` (either version, at its start; a worker
    thread), after ``identity`` (``AppIdentity``) learned the application it names; the
    members and flag state, for the node to take. ``decoded``: the state machine's part,
    already decoded from this file (``check_node_snapshot_file(keep=True)``), installed
    instead of read again. ``BadNodeSnapshot`` if it does not decode; the state machine's
    own errors as they are."""
    head = _read_head(file)
    if head is None:
        snap = decode_node_snapshot(file.read())
        head = NodeSnapshotHead(version=snap.version, members=snap.members, flags=snap.flags)
        file = io.BytesIO(snap.state_machine)
    body = file.tell()
    identity.restored(file.read(len(SNAPSHOT_MAGIC) + 2 + MAX_HEADER), index)
    file.seek(body)
    restore_file = getattr(state_machine, "restore_file", None)
    if decoded is not None:
        state_machine.install_snapshot(decoded)
    elif restore_file is not None:
        restore_file(file)
    else:
        state_machine.restore(file.read())
    return head


@dataclass(slots=True)
class Staged:
    """What ``InboundSnapshots`` kept of a checked snapshot for the Ready that installs it."""

    snapshot: Snapshot | None = None
    file: SnapshotFile | None = None
    """The file holding its data, for the store to adopt (None: it came with its data)."""
    decoded: object | None = None
    """Its state machine's state, decoded by the check (None: decoded when restored)."""


class InboundSnapshots:
    """Checks ``InstallSnapshot`` messages off the event loop, one at a time, and passes on
    only those that pass (``deliver``); the others are dropped and counted. A snapshot that
    arrived as a file is checked from it, delivered without its data, and its file kept for
    the Ready that persists it (``take``).

    Decoded once: a state machine that can decode a snapshot into a state of its own
    without installing it (``decode_snapshot_file`` and ``install_snapshot``: the KV
    machine) is checked by decoding, and the decoded state is kept with the snapshot, so
    that installing it decodes nothing again. Only the newest check's state is kept (an
    older one is dropped when a check begins: besides the node's own state, at most one
    more is held), and a snapshot the kernel passed over is dropped at the next Ready
    (``take``). A machine without them (replicated objects, the lock service, user
    machines) is checked, then decoded again when restored: its only entry points are
    ``check_snapshot`` and ``restore``, and the runtime cannot build a second instance of
    it to restore into."""

    MAX_STAGED: Final = 2
    """Checked snapshots kept for the kernel's next Readies (older ones' files deleted)."""

    def __init__(
        self,
        *,
        node_id: int,
        state_machine: object,
        address_problem: AddressCheck,
        deliver: Callable[[InstallSnapshot], None],
    ) -> None:
        self.node_id = node_id
        self._state_machine = state_machine
        self._address_problem = address_problem
        self._deliver = deliver
        self._tg: TaskGroup | None = None
        self._checking = False
        self._staged: list[Staged] = []
        self._by_reference = True
        self.rejected = 0
        """Snapshots that failed the check (they never reached the kernel)."""
        self.dropped = 0
        """Snapshots that arrived while another was being checked."""
        self.accepted = 0
        """Snapshots that passed the check and went on to the kernel."""
        self.decoded_once = 0
        """Snapshots installed from the state their check decoded (not decoded again)."""

    def start(
        self,
        tg: TaskGroup,
        transport: object = None,
        data_dir: Path | None = None,
        store: object = None,
    ) -> None:
        """Check snapshots in tasks of ``tg``; a transport that streams snapshots
        (``use_snapshot_dir``) spools them in ``data_dir``. A ``store`` without
        ``open_snapshot`` (a ``LogStore`` written before snapshot files) is given a
        streamed snapshot's data read back from its file, by value."""
        self._tg = tg
        self._by_reference = hasattr(store, "open_snapshot")
        use_spool = getattr(transport, "use_snapshot_dir", None)
        if use_spool is not None and data_dir is not None:
            use_spool(data_dir / SPOOL_DIR)

    def receive(self, msg: InstallSnapshot, file: SnapshotFile | None = None) -> None:
        """Check ``msg`` (its data, or ``file`` holding it) in a worker thread, then
        deliver it if it passes. ``file`` is this object's from now on."""
        if self._checking or self._tg is None:
            self.dropped += 1
            if file is not None:
                self._discard(file)
            return
        self._checking = True
        for staged in self._staged:  # at most one decoded state besides the node's own
            staged.decoded = None
        self._tg.start_soon(self._check, msg, file)

    def receive_file(self, received: ReceivedSnapshot) -> None:
        """``receive`` for a snapshot streamed into a file (``hand_over``)."""
        file = SnapshotFile(path=received.path, size=received.size, sha256=received.sha256)
        self.receive(received.message, file)

    def take(self, snapshot: Snapshot | None, committed: int) -> Staged:
        """What was kept for ``snapshot`` (a Ready's snapshot, the very object delivered;
        called for every Ready, with the kernel's commit index after ``ready()``). A staged
        snapshot at or below ``committed`` that is not this Ready's was passed over by the
        kernel (it installs none at or below its commit index): it is dropped."""
        found = Staged()
        kept: list[Staged] = []
        for staged in self._staged:
            if staged.snapshot is snapshot:
                found = staged
            elif staged.snapshot is not None and staged.snapshot.meta.index <= committed:
                if staged.file is not None:
                    self._discard(staged.file)
            else:
                kept.append(staged)
        self._staged = kept
        if found.decoded is not None:
            self.decoded_once += 1
        return found

    async def _check(self, msg: InstallSnapshot, file: SnapshotFile | None) -> None:
        try:
            msg, decoded = await anyio.to_thread.run_sync(self._check_sync, msg, file)
        except Exception as exc:
            # BadNodeSnapshot names the problem; anything else is a snapshot this node
            # cannot check (a state machine's bug, say), which it must not install either.
            self.rejected += 1
            if file is not None:
                self._discard(file)
            log.log(
                logging.WARNING if isinstance(exc, BadNodeSnapshot) else logging.ERROR,
                "node %d refused the snapshot at index %d from node %d (term %d): %s",
                self.node_id,
                msg.snapshot.meta.index,
                msg.src,
                msg.term,
                exc if isinstance(exc, BadNodeSnapshot) else repr(exc),
            )
            return
        finally:
            self._checking = False
        kept = file if file is not None and self._by_reference else None
        if kept is not None or decoded is not None:
            self._staged.append(Staged(msg.snapshot, kept, decoded))
            if len(self._staged) > self.MAX_STAGED:
                oldest = self._staged.pop(0)
                if oldest.file is not None:
                    self._discard(oldest.file)
        self.accepted += 1
        self._deliver(msg)

    def _check_sync(
        self, msg: InstallSnapshot, file: SnapshotFile | None
    ) -> tuple[InstallSnapshot, object | None]:
        """``msg`` once checked (by reference, or with its file's data read back, and the
        file deleted, for a store that cannot adopt files) and the state it decoded."""
        index = msg.snapshot.meta.index
        check = partial(
            check_node_snapshot_file,
            index=index,
            state_machine=self._state_machine,
            address_problem=self._address_problem,
            keep=True,
        )
        if file is None:
            return msg, check(io.BytesIO(msg.snapshot.data))
        with open(file.path, "rb") as f:
            decoded = check(f)
        if self._by_reference:
            return msg, decoded
        data = file.path.read_bytes()
        _unlink(file.path)
        snapshot = Snapshot(meta=msg.snapshot.meta, data=data)
        return InstallSnapshot(src=msg.src, dst=msg.dst, term=msg.term, snapshot=snapshot), decoded

    def _discard(self, file: SnapshotFile) -> None:
        if self._tg is None:
            _unlink(file.path)
        else:
            self._tg.start_soon(anyio.to_thread.run_sync, _unlink, file.path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
