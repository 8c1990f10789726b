"""A node restarting over its data directory restores its snapshot from the store's file
(framework/runtime/restart.py): record by record, the kernel holding it by reference when
the transport streams snapshots; a snapshot file that cannot be restored stops the start
naming it; stores that give the snapshot's bytes (or only a file) still restore."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.core import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from framework.runtime.localcluster import free_ports
from framework.runtime.node import NodeConfig, RaftNode
from framework.runtime.snapshots import NodeSnapshot, encode_node_snapshot, node_snapshot_head
from framework.statemachine import KVStateMachine, Put, Request, encode_request
from framework.storage import LogStore, MemoryLogStore, SQLiteLogStore, StorageError, StoredState
from framework.transport.tcp import TcpTransport

pytestmark = pytest.mark.anyio

KEYS = 400


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _settings() -> Settings:
    return load_settings(
        overrides={
            "raft.snapshot_threshold_entries": 100,
            "raft.snapshot_trailing_entries": 0,  # the keys are only in the snapshot
            "client.request_timeout": "10s",
        }
    )


def _node(data_dir: Path, *, stream: bool = True, store: LogStore | None = None) -> RaftNode:
    """Node 1 of a one-node cluster over ``data_dir``, on TCP (streaming snapshots from the
    store's file, unless ``stream=False``)."""
    address = f"127.0.0.1:{free_ports(1)[0]}"
    transport = TcpTransport(
        node_id=1,
        cluster_id="restart",
        listen=address,
        peers={1: address},
        stream_snapshots=stream,
    )
    config = NodeConfig(
        node_id=1, cluster_id="restart", peers={1: address}, settings=_settings(), data_dir=data_dir
    )
    return RaftNode(config, store=store or SQLiteLogStore(data_dir), transport=transport)


@asynccontextmanager
async def _running(node: RaftNode) -> AsyncIterator[RaftNode]:
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        try:
            yield node
        finally:
            tg.cancel_scope.cancel()


def _state(sm: Any) -> tuple[dict[str, str | None], int, int]:
    """What the state machine holds of the test's keys, its size and its sessions."""
    keys = {f"k{i}": sm.read(f"k{i}") for i in range(KEYS)}
    return keys, len(sm), sm.session_count()


async def _fill(node: RaftNode) -> None:
    async with KVClient({1: node.transport.listen_address}, timeout=20.0) as client:
        for i in range(KEYS):
            await client.put(f"k{i}", f"value {i}")
    with anyio.fail_after(30):
        while node.kernel is None or node.kernel.snapshot.meta.index < KEYS - 100:
            await anyio.sleep(0.01)
        # Until no snapshot is due or under way, and the entries the last let go are
        # deleted (after it is recorded, ``LocalSnapshots`` step 6).
        kernel = node.kernel
        while (
            not node.local_snapshots.idle or kernel.log.applied - kernel.snapshot.meta.index >= 100
        ):
            await anyio.sleep(0.01)


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "by-value-transport"])
async def test_a_restarted_node_restores_its_snapshot_from_the_store_file(
    tmp_path: Path, stream: bool
) -> None:
    async with _running(_node(tmp_path, stream=stream)) as node:
        await _fill(node)
        before = _state(node.sm)
        applied = node.sm.applied_index
        assert node.kernel is not None
        taken = node.kernel.snapshot.meta.index
    assert before[0][f"k{KEYS - 1}"] == f"value {KEYS - 1}"
    async with _running(_node(tmp_path, stream=stream)) as node:
        kernel = node.kernel
        assert kernel is not None and kernel.snapshot.meta.index >= taken
        # The log before the snapshot is gone (no trailing entries): the keys came from it.
        assert kernel.log.offset == kernel.snapshot.meta.index
        assert node.sm.applied_index >= kernel.snapshot.meta.index
        with anyio.fail_after(20):  # the entries after the snapshot are applied again
            while node.sm.applied_index < applied:
                await anyio.sleep(0.01)
        assert _state(node.sm) == before
        stored = SQLiteLogStore.open_snapshot(node.store, kernel.snapshot.meta)  # type: ignore[arg-type]
        assert stored is not None
        with stored:
            data = stored.read()
        if stream:
            # Held by reference, as one it took or installed: the transport streams it.
            assert kernel.snapshot.data == b""
        else:
            # A transport that sends snapshots by value needs the data: read back once
            # the state was restored from the file.
            assert kernel.snapshot.data == data


def _corrupt_store(data_dir: Path, data: bytes, index: int = 50) -> Path:
    """A data directory whose snapshot at ``index`` is ``data`` (its checksum recorded as
    it is: the store itself finds nothing wrong); the snapshot file's path."""
    store = SQLiteLogStore(data_dir)
    try:
        store.initialize(node_id=1, cluster_id="restart", conf_state=ConfState(voters=(1,)))
        meta = SnapshotMeta(index=index, term=1, conf_state=ConfState(voters=(1,)))
        store.save_ready(
            hard_state=HardState(term=1, vote=1, commit=index),
            entries=[],
            snapshot=Snapshot(meta=meta, data=data),
            sync=True,
        )
    finally:
        store.close()
    return data_dir / "snapshots" / f"snap-1-{index}.bin"


def _kv_snapshot(keys: int) -> KVStateMachine:
    sm = KVStateMachine()
    for i in range(1, keys + 1):
        request = Request(client_id=1, seq=i, op=Put(key=f"k{i}", value=f"value {i}"))
        sm.apply(Entry(1, i, EntryKind.NORMAL, encode_request(request)))
    return sm


HEAD = node_snapshot_head(members={1: "127.0.0.1:1"}, flags=b"")
FULL = HEAD + b"".join(_kv_snapshot(50).snapshot_chunks(keys_per_chunk=7))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (FULL[:-5], "snapshot ends inside a record"),
        (FULL[: len(HEAD) + 40], "snapshot"),
        (HEAD + b"\x00" * 64, "snapshot format version 0 is not supported"),
        (b"not a snapshot at all", "is not a raftmw snapshot"),
    ],
    ids=["truncated", "cut-in-the-body", "garbage-body", "garbage"],
)
async def test_a_snapshot_file_that_cannot_be_restored_stops_the_start_naming_it(
    tmp_path: Path, data: bytes, match: str
) -> None:
    path = _corrupt_store(tmp_path, data)
    node = _node(tmp_path)
    with pytest.raises(StorageError, match=match) as raised:
        await node.run()
    message = str(raised.value)
    assert str(path) in message and "index 50" in message, message


async def test_a_snapshot_restoring_to_another_index_stops_the_start(tmp_path: Path) -> None:
    path = _corrupt_store(tmp_path, FULL, index=60)  # the state machine's is at 50
    with pytest.raises(StorageError, match="to index 50; expected 60") as raised:
        await _node(tmp_path).run()
    assert str(path) in str(raised.value)


async def test_a_format_1_snapshot_in_an_old_data_directory_still_restores(
    tmp_path: Path,
) -> None:
    sm = _kv_snapshot(50)
    old = encode_node_snapshot(
        NodeSnapshot(version=1, members={1: "127.0.0.1:1"}, state_machine=sm.snapshot())
    )
    _corrupt_store(tmp_path, old)
    async with _running(_node(tmp_path)) as node:
        assert node.sm.read("k50") == "value 50" and len(node.sm) == 50
        assert node.kernel is not None and node.kernel.snapshot.data == b""


# -- stores other than SQLite ---------------------------------------------------------------


class FileOnlyStore:
    """A ``MemoryLogStore`` whose ``load`` gives the snapshot without its bytes: only
    ``open_snapshot`` has them (as a store keeping them in a file would)."""

    def __init__(self, inner: MemoryLogStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self) -> StoredState | None:
        state = self._inner.load()
        if state is None:
            return None
        return replace(state, snapshot=Snapshot(meta=state.snapshot.meta))


class BytesOnlyStore:
    """A ``LogStore`` written before snapshot files: no ``open_snapshot``,
    ``prepare_snapshot_file`` or ``load_by_reference``; ``load`` gives the bytes."""

    def __init__(self, inner: MemoryLogStore) -> None:
        self._inner = inner
        self.load = inner.load
        self.initialize = inner.initialize
        self.save_snapshot = inner.save_snapshot
        self.prepare_snapshot = inner.prepare_snapshot
        self.commit_snapshot = inner.commit_snapshot
        self.close = inner.close

    def save_ready(self, *, hard_state: Any, entries: Any, snapshot: Any, sync: bool) -> None:
        self._inner.save_ready(hard_state=hard_state, entries=entries, snapshot=snapshot, sync=sync)


@pytest.mark.parametrize("kind", [FileOnlyStore, BytesOnlyStore], ids=["file-only", "bytes-only"])
async def test_other_stores_restore_a_restarted_node(kind: type[Any]) -> None:
    from tests.runtime.inprocess_cluster import cluster

    settings = {"raft.snapshot_threshold_entries": 20, "raft.snapshot_trailing_entries": 0}
    async with cluster(**settings) as c, c.client(timeout=20.0) as client:
        for i in range(80):
            await client.put(f"r{i}", str(i))
        victim = await c.wait_leader()
        with anyio.fail_after(10):
            while c.nodes[victim].local_snapshots.taken == 0:
                await anyio.sleep(0.01)
        c.crash(victim)
        await client.put("after", "crash")
        c.stores[victim] = kind(c.stores[victim])
        node = await c.start(victim)
        kernel = node.kernel
        assert kernel is not None and kernel.snapshot.meta.index > 0
        # Restored, not replayed: the entries before the snapshot are gone.
        assert kernel.log.offset == kernel.snapshot.meta.index
        assert node.sm.applied_index >= kernel.snapshot.meta.index
        assert kernel.snapshot.data  # the in-memory network sends snapshots by value
        with anyio.fail_after(10):
            while node.sm.read("after") != "crash":
                await anyio.sleep(0.01)
        assert all(node.sm.read(f"r{i}") == str(i) for i in range(80))
