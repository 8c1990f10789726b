"""Hypothesis throws malformed and hostile-but-well-formed frames at a live node over TCP,
from a connection that passed the peer handshake (a valid peer identity does not make a
message sane): the node never crashes, never persists what it refused, its memory stays
bounded, and it starts again from what it stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal
from hostile_peer import batch, raw_frame, send_as_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.core import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from framework.runtime.localcluster import free_ports
from framework.runtime.node import NodeConfig, RaftNode
from framework.runtime.snapshots import check_node_snapshot
from framework.statemachine import KVStateMachine
from framework.storage.sqlite import SQLiteLogStore
from framework.transport.bounds import MAX_INDEX, MAX_TERM
from framework.transport.tcp import TcpTransport
from framework.transport.wire import PeerPart, encode_frame

TARGET, FORGED = 2, 1
"""The node under attack, and the peer id the attacker poses as (the lower id dials)."""

MAX_RSS_GROWTH = 256 * 1024 * 1024
"""Frames are capped at 64 KiB and messages at 1 MiB here: a node that held what it was
thrown (parts, reads, snapshots) would grow past this."""

# Numbers at and around every bound, and anything msgpack can carry.
_numbers = st.one_of(
    st.integers(0, 5),
    st.sampled_from([MAX_TERM - 1, MAX_TERM, MAX_TERM + 1, 2**63 - 1, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
_small = st.binary(max_size=64)


def _raft(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 10))
    base = {"src": FORGED, "dst": TARGET, "term": draw(_numbers)}
    if kind == 0:
        return Heartbeat(**base, commit=draw(_numbers), context=draw(_small))
    if kind == 1:
        prev = min(draw(_numbers), 2**64 - 8)  # entry indexes must stay encodable
        count = draw(st.integers(0, 5))
        entries = tuple(
            Entry(draw(_numbers), prev + 1 + i, draw(st.sampled_from(EntryKind)), draw(_small))
            for i in range(count)
        )
        return AppendEntries(
            **base,
            prev_index=prev,
            prev_term=draw(_numbers),
            entries=entries,
            commit=draw(_numbers),
        )
    if kind == 2:
        return AppendResponse(
            **base,
            index=draw(_numbers),
            reject=draw(st.booleans()),
            hint_index=draw(_numbers),
            hint_term=draw(_numbers),
        )
    if kind == 3:
        return VoteRequest(
            **base,
            last_index=draw(_numbers),
            last_term=draw(_numbers),
            pre_vote=draw(st.booleans()),
            transfer=draw(st.booleans()),
        )
    if kind == 4:
        return VoteResponse(**base, granted=draw(st.booleans()), pre_vote=draw(st.booleans()))
    if kind == 5:
        meta = SnapshotMeta(
            index=draw(_numbers),
            term=draw(_numbers),
            conf_state=ConfState(voters=tuple(draw(st.lists(_numbers, min_size=1, max_size=4)))),
        )
        return InstallSnapshot(**base, snapshot=Snapshot(meta=meta, data=draw(st.binary())))
    if kind == 6:
        return HeartbeatResponse(**base, context=draw(_small))
    if kind == 7:
        return ReadIndexRequest(**base, context=draw(st.binary(max_size=2048)))
    if kind == 8:
        return ReadIndexResponse(**base, context=draw(_small), index=draw(_numbers))
    if kind == 9:
        return TimeoutNow(**base)
    return Heartbeat(src=draw(_numbers), dst=draw(_numbers), term=draw(_numbers))


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind <= 1:  # well-formed Raft messages with hostile numbers
        return batch(*[_raft(draw) for _ in range(draw(st.integers(1, 3)))])
    if kind == 2:  # a part flood: a huge announced count, little or no data
        count = draw(st.sampled_from([2, 1000, 2_000_001, 2**63 - 1]))
        return b"".join(
            encode_frame(PeerPart(seq=1, index=i, count=count, data=draw(_small)))
            for i in range(draw(st.integers(1, 20)))
        )
    if kind == 3:  # frame-shaped garbage: known tags with values of the wrong kind
        value = draw(
            st.recursive(
                st.none() | st.booleans() | _numbers | st.text(max_size=8) | _small,
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
                ),
                max_leaves=12,
            )
        )
        tag = draw(st.sampled_from(["batch", "part", "heartbeat", "append", "snapshot", "x"]))
        return raw_frame({"type": tag, "messages": [value], "seq": value, "data": value})
    if kind == 4:  # raw bytes under a valid length prefix
        body = draw(st.binary(max_size=512))
        return len(body).to_bytes(4, "big") + body
    # a length prefix past the frame limit
    return draw(st.integers(64 * 1024 + 1, 2**32 - 1)).to_bytes(4, "big") + b"x" * 16


def _settings() -> Settings:
    return load_settings(
        env={},
        overrides={
            "raft.tick_interval": "10ms",
            "transport.max_frame_size": "64KiB",
            "transport.max_message_size": "1MiB",
        },
    )


def _node(data_dir: Path, peers: dict[int, str]) -> RaftNode:
    config = _settings()
    t = config.transport
    transport = TcpTransport(
        node_id=TARGET,
        cluster_id="fuzz",
        listen=peers[TARGET],
        peers={FORGED: peers[FORGED]},
        max_frame_size=t.max_frame_size,
        max_message_size=t.max_message_size,
        connect_timeout=t.connect_timeout,
        backoff_min=t.reconnect_backoff_min,
        backoff_max=config.reconnect_backoff_max,
    )
    return RaftNode(
        NodeConfig(node_id=TARGET, cluster_id="fuzz", peers=peers, settings=config),
        store=SQLiteLogStore(data_dir, sync="os"),
        transport=transport,
    )


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_a_live_node_survives_hostile_frames_and_restarts_from_what_it_stored(
    tmp_path: Path,
) -> None:
    ports = free_ports(2)
    peers = {FORGED: f"127.0.0.1:{ports[0]}", TARGET: f"127.0.0.1:{ports[1]}"}
    with start_blocking_portal("asyncio") as portal:
        node = portal.call(lambda: _node(tmp_path, peers))
        running, _ = portal.start_task(node.run)
        rss_before = _rss()

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(frames=st.lists(_frame(), min_size=1, max_size=4))
        def throw(frames: list[bytes]) -> None:
            send_as_peer(peers[TARGET], frames, as_node=FORGED, cluster_id="fuzz")
            assert not running.done(), running.exception()

        throw()

        async def status() -> dict[str, Any]:
            with anyio.fail_after(30):
                async with KVClient({TARGET: peers[TARGET]}, timeout=10.0) as client:
                    return await client.status(TARGET)

        status_after = portal.call(status)
        assert not running.done()
        assert status_after["term"] <= MAX_TERM
        assert _rss() - rss_before < MAX_RSS_GROWTH
        running.cancel()

    # What the node stored is sane and usable: terms and indexes within bounds, a snapshot
    # (if one was installed) that restores, and the node starts again from it.
    store = SQLiteLogStore(tmp_path)
    state = store.load()
    store.close()
    assert state is not None
    assert state.hard_state.term <= MAX_TERM and state.hard_state.commit <= MAX_INDEX
    assert all(e.term <= MAX_TERM and e.index <= MAX_INDEX for e in state.entries)
    if state.snapshot.data:
        check_node_snapshot(
            state.snapshot.data, index=state.snapshot.meta.index, state_machine=KVStateMachine()
        )

    async def restart() -> None:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await tg.start(_node(tmp_path, peers).run)
                tg.cancel_scope.cancel()

    anyio.run(restart)


def test_a_part_flood_over_tcp_is_dropped_at_the_first_part(tmp_path: Path) -> None:
    """Two million empty parts used to be held against a 1 KiB limit."""
    ports = free_ports(2)
    peers = {FORGED: f"127.0.0.1:{ports[0]}", TARGET: f"127.0.0.1:{ports[1]}"}
    with start_blocking_portal("asyncio") as portal:
        node = portal.call(lambda: _node(tmp_path, peers))
        running, _ = portal.start_task(node.run)
        for count in (2_000_001, 2**63 - 1):
            flood = encode_frame(PeerPart(seq=1, index=0, count=count, data=b""))
            assert send_as_peer(
                peers[TARGET], [flood], as_node=FORGED, cluster_id="fuzz", linger=10
            ), f"a part announcing {count} parts was held"
        assert not running.done()
        running.cancel()
