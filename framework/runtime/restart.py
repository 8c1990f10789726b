"""A node starting over its store: the state it loads, the kernel built over it, and its
snapshot restored from the file.

Theory of operation
-------------------
A node (re)starting over its data directory rebuilds its kernel from what its store holds
(``LogStore.load``), and its state machine, application identity, address book and flag
state from the stored snapshot. The snapshot used to be read whole into one bytes object
(its SHA-256 checked), restored from those bytes, and then held by the kernel until the
next snapshot: a peak of the state plus the whole snapshot, and the snapshot kept after.

Now it restores the way a follower installs a snapshot it received
(``framework.runtime.snapshots``): from the store's file (``open_snapshot``), a record at a
time for the KV machine's format 2, in a worker thread, before the node serves anyone. For
that the store loads the snapshot without its data (``load_by_reference``: the SQLite store
checks the file's size and SHA-256 reading it a piece at a time), and the kernel holds it
by reference, as it holds one it installed or took, when the transport streams snapshots
from the store's file (``use_snapshot_source``). A transport that does not (the in-memory
network, ``TcpTransport(stream_snapshots=False)``) sends snapshots with their data, so the
kernel is given the data, read back from the file once the state is restored (the state
machine's decoding is then over: the peak is the state plus the file's bytes, as that
kernel holds them anyway). A store without ``load_by_reference`` or ``open_snapshot`` (the
memory store, a ``LogStore`` written before snapshot files) is loaded with the data and
restored from it, as before; so is a snapshot in format 1 (one msgpack map, read whole).

A snapshot that cannot be restored stops the start with a ``StorageError`` naming the
snapshot's file and what is wrong (``restore_snapshot``); one whose file fails its size or
checksum is refused by the store's ``load`` the same way.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from functools import partial
from typing import Any

import anyio

from framework.config import RaftSettings
from framework.core import ConfState, RaftConfig, RawNode, Snapshot
from framework.runtime.snapshots import adopt_snapshot_head, restore_snapshot
from framework.storage import StorageError, StoredState

__all__ = ["open_store"]


def build_kernel(node_id: int, raft: RaftSettings, state: StoredState) -> RawNode:
    """The kernel of node ``node_id`` over what its store loaded, with the ``[raft]``
    settings; its election timeouts drawn from the operating system's randomness."""
    config = RaftConfig(
        id=node_id,
        election_tick=raft.election_tick,
        heartbeat_tick=raft.heartbeat_tick,
        max_inflight_msgs=raft.max_inflight_msgs,
        max_size_per_msg=raft.max_size_per_msg,
        max_uncommitted_entries_size=raft.max_uncommitted_entries_size,
        pre_vote=raft.pre_vote,
        check_quorum=raft.check_quorum,
        lease_reads=raft.lease_reads,
        lease_drift_ticks=raft.lease_drift_ticks,
        broadcast_commit=raft.broadcast_commit,
        max_committed_per_ready=raft.max_batch_proposals * 4,
    )
    return RawNode(
        config,
        rng=random.Random(int.from_bytes(os.urandom(8), "big")),
        hard_state=state.hard_state,
        entries=state.entries,
        snapshot=state.snapshot,
        conf_state=state.conf_state,
    )


async def open_store(node: Any) -> StoredState:
    """Load ``node``'s store (a ``RaftNode``; initialized first if new) and restore the
    node from its snapshot, in a worker thread: the state to build the kernel from, its
    snapshot by reference when the transport streams snapshots from the store's file."""
    source = getattr(node.store, "open_snapshot", None)
    use_source = getattr(node.transport, "use_snapshot_source", None)
    streams = source is not None and use_source is not None and use_source(source) is True
    return await anyio.to_thread.run_sync(partial(_open, node, streams=streams))


def _open(node: Any, *, streams: bool) -> StoredState:
    store = node.store
    by_reference = hasattr(store, "load_by_reference") and hasattr(store, "open_snapshot")
    state = _load(node, store.load_by_reference if by_reference else store.load)
    snapshot = state.snapshot
    if snapshot.meta.index == 0 and not snapshot.data:
        return state  # nothing compacted yet
    adopt_snapshot_head(node, restore_snapshot(snapshot, store, node=node))  # before serving
    if snapshot.data or streams:
        return state
    file = store.open_snapshot(snapshot.meta)  # the kernel must hold the data to send it
    if file is None:
        raise StorageError(
            f"node {node.id}: the store no longer holds the snapshot at {snapshot.meta.index}"
        )
    with file:
        data = file.read()
    return replace(state, snapshot=Snapshot(meta=snapshot.meta, data=data))


def _load(node: Any, load: Any) -> StoredState:
    state: StoredState | None = load()
    if state is None:
        config = node.config
        voters = () if config.join else tuple(sorted(config.peers))
        node.store.initialize(
            node_id=node.id, cluster_id=config.cluster_id, conf_state=ConfState(voters=voters)
        )
        state = load()
        assert state is not None
    if state.node_id != node.id or state.cluster_id != node.config.cluster_id:
        raise StorageError(
            f"the data directory belongs to node {state.node_id} of cluster "
            f"{state.cluster_id!r}, not node {node.id} of cluster {node.config.cluster_id!r}"
        )
    return state
