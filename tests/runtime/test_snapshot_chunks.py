"""Snapshots taken without holding the Ready loop (issue #13): the state machine is encoded a
chunk of keys at a time, by copy-on-write of keys, while the node keeps applying."""

from __future__ import annotations

import anyio
import pytest

from framework.core import Entry, EntryKind
from framework.runtime.snapshots import (
    SNAPSHOT_VERSION,
    NodeSnapshot,
    decode_node_snapshot,
    node_snapshot_parts,
)
from framework.statemachine import Delete, KVStateMachine, Put, Request, encode_request


def _apply(sm: KVStateMachine, op: Put | Delete) -> None:
    index = sm.applied_index + 1
    data = encode_request(Request(client_id=1, seq=index, op=op))
    sm.apply(Entry(1, index, EntryKind.NORMAL, data))


def _machine(keys: int) -> KVStateMachine:
    sm = KVStateMachine()
    for i in range(keys):
        _apply(sm, Put(key=f"k{i}", value=str(i)))
    return sm


def _restored(data: bytes) -> KVStateMachine:
    sm = KVStateMachine()
    sm.restore(data)
    return sm


def test_chunks_are_the_state_at_the_call_while_writes_go_on() -> None:
    sm = _machine(100)
    expected = _restored(sm.snapshot())
    chunks = sm.snapshot_chunks(keys_per_chunk=7)
    parts = [next(chunks), next(chunks)]
    _apply(sm, Put(key="k1", value="changed"))
    _apply(sm, Put(key="new", value="x"))
    _apply(sm, Delete(key="k2"))
    # The live machine sees its writes at once (reads go through the overlay).
    assert (sm.read("k1"), sm.read("new"), sm.read("k2"), len(sm)) == ("changed", "x", None, 100)
    parts += list(chunks)
    taken = _restored(b"".join(parts))
    assert taken.applied_index == expected.applied_index == 100
    assert {f"k{i}": taken.read(f"k{i}") for i in range(100)} == {
        f"k{i}": str(i) for i in range(100)
    }
    assert taken.read("new") is None and len(taken) == 100
    assert taken.session_count() == expected.session_count()
    # Afterwards the overlay is folded in: the machine holds every write.
    assert (sm.read("k1"), sm.read("new"), sm.read("k2"), len(sm)) == ("changed", "x", None, 100)
    assert _restored(sm.snapshot()).read("k1") == "changed"


def test_closing_the_chunks_early_keeps_every_write() -> None:
    sm = _machine(20)
    chunks = sm.snapshot_chunks(keys_per_chunk=3)
    next(chunks)
    _apply(sm, Put(key="k0", value="after"))
    chunks.close()
    assert sm.read("k0") == "after"
    with pytest.raises(StopIteration):
        next(chunks)
    next(sm.snapshot_chunks())  # a new one may start


def test_one_chunked_snapshot_at_a_time() -> None:
    sm = _machine(3)
    chunks = sm.snapshot_chunks()
    next(chunks)
    with pytest.raises(RuntimeError, match="already being taken"):
        sm.snapshot_chunks()
    # snapshot() during it is the live state, overlay included.
    _apply(sm, Delete(key="k0"))
    assert _restored(sm.snapshot()).read("k0") is None


def test_a_restore_during_a_chunked_snapshot_wins_and_the_chunks_stay_consistent() -> None:
    sm = _machine(10)
    other = _machine(3).snapshot()
    chunks = sm.snapshot_chunks(keys_per_chunk=4)
    parts = [next(chunks), next(chunks)]
    sm.restore(other)
    _apply(sm, Put(key="z", value="z"))
    taken = _restored(b"".join(parts + list(chunks)))  # the old image, whole
    assert taken.applied_index == 10 and len(taken) == 10
    assert sm.applied_index == 4 and len(sm) == 4 and sm.read("k9") is None


def test_node_snapshot_parts_decode_like_the_whole_encoding() -> None:
    sm = _machine(50)
    parts = node_snapshot_parts(
        members={1: "a:1", 2: "b:2"}, flags=b"", state_machine=list(sm.snapshot_chunks(8))
    )
    snap = decode_node_snapshot(b"".join(parts))
    assert snap == NodeSnapshot(
        version=SNAPSHOT_VERSION,
        members={1: "a:1", 2: "b:2"},
        flags=b"",
        state_machine=snap.state_machine,
    )
    assert _restored(snap.state_machine).read("k49") == "49"


class _Watching(KVStateMachine):
    """Counts entries applied while a chunked snapshot was being encoded."""

    applied_during_snapshot = 0

    def apply(self, entry: Entry) -> object:
        if self._overlay is not None:
            self.applied_during_snapshot += 1
        return super().apply(entry)


@pytest.mark.anyio
async def test_a_node_applies_writes_while_its_snapshot_is_encoded() -> None:
    """Before, the whole state machine was serialised while the Ready loop waited: nothing
    was applied until it finished. Now writes keep being applied meanwhile."""
    from framework.runtime.node import NodeConfig, RaftNode
    from tests.runtime import inprocess_cluster as memory

    settings = memory.fast_settings(
        **{"raft.snapshot_threshold_entries": 200, "raft.snapshot_trailing_entries": 10}
    )
    sm = _Watching()
    sm._data = {f"pre{i}": "x" * 20 for i in range(200_000)}  # state to take a while over
    async with anyio.create_task_group() as tg:
        c = memory.Cluster(network=memory.MemoryNetwork(seed=3), tg=tg, settings=settings)
        c.stores[1] = memory.MemoryLogStore()
        config = NodeConfig(node_id=1, cluster_id="mem", peers=c.peers, settings=settings)
        node = RaftNode(
            config, store=c.stores[1], transport=c.network.transport(1), state_machine=sm
        )
        await tg.start(node.run)
        c.nodes[1] = node
        async with c.client() as client:
            await c.wait_leader()
            done = [0] * 8

            async def writer(w: int) -> None:
                i = 0
                while True:  # until cancelled: writes keep arriving while snapshots run
                    await client.put(f"w{w}-{i}", str(i))
                    done[w] = i
                    i += 1

            # Write until a write was applied while a snapshot was being encoded (never, if
            # encoding held the Ready loop) and two snapshots were taken.
            async with anyio.create_task_group() as writers:
                for w in range(8):
                    writers.start_soon(writer, w)
                with anyio.fail_after(60):  # generous: CI machines may be loaded
                    while node.local_snapshots.taken < 2 or sm.applied_during_snapshot == 0:
                        await anyio.sleep(0.01)
                writers.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    assert sm.applied_during_snapshot > 0
    assert all(sm.read(f"w{w}-{done[w]}") == str(done[w]) for w in range(8))
    assert node.kernel is not None and node.kernel.snapshot.meta.index > 0
    restored = _restored(decode_node_snapshot(node.kernel.snapshot.data).state_machine)
    assert restored.read("pre199999") == "x" * 20
    assert restored.applied_index == node.kernel.snapshot.meta.index


@pytest.mark.anyio
async def test_a_node_restarts_from_a_chunked_snapshot_and_its_trailing_entries() -> None:
    from tests.runtime.inprocess_cluster import cluster

    settings = {"raft.snapshot_threshold_entries": 20, "raft.snapshot_trailing_entries": 5}
    async with cluster(**settings) as c, c.client() as client:
        for i in range(80):
            await client.put(f"r{i}", str(i))
        victim = await c.wait_leader()
        assert c.nodes[victim].local_snapshots.taken > 0
        stored = c.stores[victim].load()
        assert stored is not None and stored.entries[0].index < stored.snapshot.meta.index
        c.crash(victim)
        await client.put("after", "crash")
        node = await c.start(victim)
        with anyio.fail_after(10):
            while node.sm.read("after") != "crash":
                await anyio.sleep(0.01)
        assert all(node.sm.read(f"r{i}") == str(i) for i in range(80))
