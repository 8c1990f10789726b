"""Snapshots checked and restored from a file a piece at a time (issue #13): the KV
machine's format 2, the node snapshot's file format, and ``InboundSnapshots`` taking a
streamed snapshot as a file (framework/runtime/snapshots.py, framework/statemachine.py)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import anyio
import pytest

from framework.core import ConfState, Entry, EntryKind, InstallSnapshot, Snapshot, SnapshotMeta
from framework.runtime.app_identity import AppIdentity
from framework.runtime.members import host_port_problem
from framework.runtime.snapshots import (
    NODE_SNAPSHOT_MAGIC,
    BadNodeSnapshot,
    InboundSnapshots,
    check_node_snapshot_file,
    node_snapshot_head,
    restore_node_snapshot_file,
)
from framework.statemachine import MAX_SNAPSHOT_RECORD, KVStateMachine, Put, Request, encode_request
from framework.storage import MemoryLogStore, SnapshotFile

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _machine(keys: int) -> KVStateMachine:
    sm = KVStateMachine()
    for i in range(1, keys + 1):
        request = Request(client_id=i % 7 + 1, seq=i, op=Put(key=f"k{i}", value="v" * 100))
        sm.apply(Entry(1, i, EntryKind.NORMAL, encode_request(request)))
    return sm


class CountingReader(io.BytesIO):
    """Records the largest single read asked for (the most a reader holds of the file at
    once; reading to the end counts as the bytes it returned)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest = 0
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        asked = len(data) if size is None or size < 0 else size
        self.largest = max(self.largest, asked)
        self.reads += 1
        return data


MEMBERS = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}


def _node_snapshot(sm: KVStateMachine, *, keys_per_chunk: int = 100) -> bytes:
    return node_snapshot_head(members=MEMBERS, flags=b"") + b"".join(
        sm.snapshot_chunks(keys_per_chunk)
    )


def test_the_kv_machine_restores_from_a_file_a_record_at_a_time() -> None:
    """The restore never reads more than one record (a chunk of keys) at once, whatever the
    snapshot's size: memory beyond the state itself is bounded by the chunk."""
    source = _machine(5000)
    data = b"".join(source.snapshot_chunks(keys_per_chunk=100))
    file = CountingReader(data)
    restored = KVStateMachine()
    restored.restore_file(file)
    assert file.largest < 16 * 1024 < len(data) // 30  # ~12 KiB records, a 600 KiB snapshot
    assert restored.applied_index == 5000 and len(restored) == 5000
    assert restored.read("k4999") == "v" * 100
    assert restored.session_count() == source.session_count()
    check = CountingReader(data)
    assert KVStateMachine().check_snapshot_file(check) == 5000
    assert check.largest < 16 * 1024


def test_a_node_snapshot_file_is_checked_and_restored_a_piece_at_a_time() -> None:
    sm = _machine(3000)
    data = _node_snapshot(sm)
    file = CountingReader(data)
    check_node_snapshot_file(
        file, index=3000, state_machine=KVStateMachine(), address_problem=host_port_problem
    )
    assert file.largest < 16 * 1024 < len(data) // 10
    restored = KVStateMachine()
    file = CountingReader(data)
    head = restore_node_snapshot_file(
        file, index=3000, state_machine=restored, identity=AppIdentity(1, restored)
    )
    assert head.members == MEMBERS and restored.applied_index == 3000 and len(restored) == 3000
    assert file.largest < 16 * 1024


def _with_head(head: bytes, rest: bytes = b"") -> bytes:
    return NODE_SNAPSHOT_MAGIC + len(head).to_bytes(4, "big") + head + rest


GOOD = _node_snapshot(_machine(20), keys_per_chunk=7)
MAGIC = len(NODE_SNAPSHOT_MAGIC)


@pytest.mark.parametrize(
    ("data", "index", "match"),
    [
        (GOOD[: MAGIC + 2], 20, "snapshot head of"),
        (NODE_SNAPSHOT_MAGIC + b"\xff\xff\xff\xff", 20, "expected at most 16777216"),
        (GOOD[: MAGIC + 10], 20, "snapshot head .* is malformed: .*ends after"),
        (_with_head(b"\x93\x01\x02\x03"), 20, "malformed"),
        (
            node_snapshot_head(members={1: "nowhere"}, flags=b"") + GOOD[len(GOOD) // 2 :],
            20,
            "snapshot member 1",
        ),
        (node_snapshot_head(members=MEMBERS, flags=b"\x01"), 20, "snapshot flag state"),
        (node_snapshot_head(members=MEMBERS, flags=b""), 20, "snapshot state machine: empty"),
        (GOOD[:-3], 20, "snapshot state machine: snapshot ends inside a record"),
        (GOOD, 21, "restores to index 20, but the snapshot claims index 21"),
        (b"junk", 20, "is not a raftmw snapshot"),  # no magic: read as version 1
    ],
)
def test_an_unsound_snapshot_file_is_refused_naming_what_is_wrong(
    data: bytes, index: int, match: str
) -> None:
    with pytest.raises(BadNodeSnapshot, match=match):
        check_node_snapshot_file(
            io.BytesIO(data),
            index=index,
            state_machine=KVStateMachine(),
            address_problem=host_port_problem,
        )


def test_a_record_larger_than_the_limit_is_refused_before_it_is_read() -> None:
    body = b"\x02" + (MAX_SNAPSHOT_RECORD + 1).to_bytes(4, "big")
    file = CountingReader(body)
    with pytest.raises(ValueError, match="expected at most"):
        KVStateMachine().check_snapshot_file(file)
    assert file.largest < 2048  # the header and the record's length, never the record


def _spool(tmp_path: Path, data: bytes) -> SnapshotFile:
    path = tmp_path / "in.snapshot-partial"
    path.write_bytes(data)
    return SnapshotFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _message(index: int) -> InstallSnapshot:
    meta = SnapshotMeta(index=index, term=2, conf_state=ConfState(voters=(1, 2)))
    return InstallSnapshot(src=2, dst=1, term=2, snapshot=Snapshot(meta=meta))


async def _receive(
    tmp_path: Path, data: bytes, index: int, store: object = None
) -> tuple[InboundSnapshots, Any]:
    delivered: list[InstallSnapshot] = []
    inbound = InboundSnapshots(
        node_id=1,
        state_machine=KVStateMachine(),
        address_problem=host_port_problem,
        deliver=delivered.append,
    )
    file = _spool(tmp_path, data)
    async with anyio.create_task_group() as tg:
        inbound.start(tg, store=store if store is not None else MemoryLogStore())
        msg = _message(index)
        inbound.receive(msg, file)
    return inbound, (delivered, msg, file)


async def test_a_streamed_file_that_passes_is_delivered_without_data_and_kept_for_the_store(
    tmp_path: Path,
) -> None:
    inbound, (delivered, msg, file) = await _receive(tmp_path, GOOD, 20)
    assert delivered == [msg] and msg.snapshot.data == b""
    assert inbound.take(Snapshot(meta=msg.snapshot.meta), 0).file is None  # not that object
    assert inbound.take(msg.snapshot, 0).file == file and file.path.exists()
    assert inbound.take(msg.snapshot, 0).file is None  # taken once


async def test_a_store_that_cannot_adopt_files_is_given_the_data_by_value(
    tmp_path: Path,
) -> None:
    """A ``LogStore`` without ``open_snapshot`` (written before snapshot files): the checked
    file is read back and the kernel gets the snapshot with its data, as before."""
    inbound, (delivered, msg, file) = await _receive(tmp_path, GOOD, 20, store=object())
    assert [m.snapshot for m in delivered] == [Snapshot(meta=msg.snapshot.meta, data=GOOD)]
    assert not file.path.exists()
    assert inbound.take(delivered[0].snapshot, 0).file is None


@pytest.mark.parametrize(
    ("data", "index"), [(GOOD[:-3], 20), (GOOD, 21), (b"junk", 20)], ids=["short", "index", "junk"]
)
async def test_a_streamed_file_that_fails_is_deleted_and_never_reaches_the_kernel(
    tmp_path: Path, data: bytes, index: int
) -> None:
    """A stream whose checksum matched what the sender sent, but whose content is not a
    snapshot this node can restore: refused, its file deleted, nothing delivered (so the
    kernel never hears of it and nothing is persisted)."""
    inbound, (delivered, msg, file) = await _receive(tmp_path, data, index)
    assert delivered == [] and inbound.rejected == 1
    assert not file.path.exists()
    assert inbound.take(msg.snapshot, 0).file is None


# -- decoded once: the check's decoded state is what is installed ------------------------------


async def test_a_checked_file_is_installed_from_the_state_its_check_decoded(
    tmp_path: Path,
) -> None:
    """The check decodes into a state of its own (the checking machine is untouched); the
    install takes that state and reads none of the file's records again."""
    data = _node_snapshot(_machine(3000))
    delivered: list[InstallSnapshot] = []
    node_sm = _machine(5)  # the node's own state, until the snapshot is installed
    inbound = InboundSnapshots(
        node_id=1,
        state_machine=node_sm,
        address_problem=host_port_problem,
        deliver=delivered.append,
    )
    msg = _message(3000)
    async with anyio.create_task_group() as tg:
        inbound.start(tg, store=MemoryLogStore())
        inbound.receive(msg, _spool(tmp_path, data))
    assert delivered == [msg]
    assert node_sm.applied_index == 5 and len(node_sm) == 5  # checked, nothing changed
    staged = inbound.take(msg.snapshot, 0)
    assert staged.file is not None and staged.decoded is not None
    file = CountingReader(data)
    restore_node_snapshot_file(
        file,
        index=3000,
        state_machine=node_sm,
        identity=AppIdentity(1, node_sm),
        decoded=staged.decoded,
    )
    assert node_sm.applied_index == 3000 and len(node_sm) == 3000
    assert node_sm.read("k2999") == "v" * 100
    # The head and the application's header only: not one record of keys.
    assert file.reads <= 4 and file.tell() < len(data) // 100
    assert inbound.decoded_once == 1


async def test_a_snapshot_the_kernel_passed_over_is_dropped_at_the_next_ready(
    tmp_path: Path,
) -> None:
    """The kernel installs no snapshot at or below its commit index: once a Ready shows a
    commit index at or past a staged snapshot that is not its own, its file (and decoded
    state) go; one above the commit index stays for the Ready that installs it."""
    inbound, (delivered, msg, file) = await _receive(tmp_path, GOOD, 20)
    assert delivered == [msg]
    assert inbound.take(None, 19).file is None and file.path.exists()  # still installable
    async with anyio.create_task_group() as tg:
        inbound.start(tg, store=MemoryLogStore())
        assert inbound.take(None, 20).file is None
    assert not file.path.exists()
    assert inbound.take(msg.snapshot, 20).file is None
