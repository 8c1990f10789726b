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
(the leader sends another).

Over TCP a snapshot arrives streamed on a connection of its own, written to a temporary
file in the data directory's ``snapshots-incoming`` and checked against its size and
SHA-256 before it is delivered here (``framework.transport.snapshot_stream``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup

from framework.core import InstallSnapshot
from framework.flags import ClusterFlagState, FlagError
from framework.runtime.members import AddressCheck, generic_address_problem
from framework.transport.bounds import MAX_MEMBERS, MAX_NODE_ID

__all__ = [
    "SNAPSHOT_VERSION",
    "BadNodeSnapshot",
    "InboundSnapshots",
    "NodeSnapshot",
    "check_node_snapshot",
    "decode_node_snapshot",
    "encode_node_snapshot",
    "node_snapshot_parts",
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
    """Decode and check ``data`` (the snapshot at log ``index``) as fully as restoring it
    would, changing nothing; ``BadNodeSnapshot`` says what is wrong."""
    snap = decode_node_snapshot(data)
    if len(snap.members) > MAX_MEMBERS:
        raise BadNodeSnapshot(
            f"snapshot lists {len(snap.members)} member addresses; expected at most {MAX_MEMBERS}"
        )
    for node_id, address in snap.members.items():
        if not 1 <= node_id <= MAX_NODE_ID:
            raise BadNodeSnapshot(
                f"snapshot member id {node_id}: expected a node id in 1..{MAX_NODE_ID}"
            )
        problem = address_problem(address)
        if problem is not None:
            raise BadNodeSnapshot(f"snapshot member {node_id}: {problem}")
    if snap.flags:
        try:
            ClusterFlagState.from_bytes(snap.flags)
        except FlagError as exc:
            raise BadNodeSnapshot(f"snapshot flag state: {exc}") from None
    check = getattr(state_machine, "check_snapshot", None)
    if check is not None:
        try:
            applied = check(snap.state_machine)
        except ValueError as exc:
            raise BadNodeSnapshot(f"snapshot state machine: {exc}") from None
        if applied != index:
            raise BadNodeSnapshot(
                f"snapshot state machine restores to index {applied}, but the snapshot "
                f"claims index {index}"
            )
    return snap


class InboundSnapshots:
    """Checks ``InstallSnapshot`` messages off the event loop, one at a time, and passes on
    only those that pass (``deliver``); the others are dropped and counted."""

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
        self.rejected = 0
        """Snapshots that failed the check (they never reached the kernel)."""
        self.dropped = 0
        """Snapshots that arrived while another was being checked."""
        self.accepted = 0
        """Snapshots that passed the check and went on to the kernel."""

    def start(self, tg: TaskGroup, transport: object = None, data_dir: Path | None = None) -> None:
        """Check snapshots in tasks of ``tg``; a transport that streams snapshots
        (``use_snapshot_dir``) spools them in ``data_dir``."""
        self._tg = tg
        use_spool = getattr(transport, "use_snapshot_dir", None)
        if use_spool is not None and data_dir is not None:
            use_spool(data_dir / SPOOL_DIR)

    def receive(self, msg: InstallSnapshot) -> None:
        """Check ``msg`` in a worker thread, then deliver it if it passes."""
        if self._checking or self._tg is None:
            self.dropped += 1
            return
        self._checking = True
        self._tg.start_soon(self._check, msg)

    async def _check(self, msg: InstallSnapshot) -> None:
        try:
            await anyio.to_thread.run_sync(self._check_sync, msg)
        except Exception as exc:
            # BadNodeSnapshot names the problem; anything else is a snapshot this node
            # cannot check (a state machine's bug, say), which it must not install either.
            self.rejected += 1
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
        self.accepted += 1
        self._deliver(msg)

    def _check_sync(self, msg: InstallSnapshot) -> Any:
        return check_node_snapshot(
            msg.snapshot.data,
            index=msg.snapshot.meta.index,
            state_machine=self._state_machine,
            address_problem=self._address_problem,
        )
