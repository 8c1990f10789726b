"""A Ready that only moves the commit index costs no store transaction of its own while
writes keep coming: its hard state goes with the next store (``ready_store.py``), or alone
once the node has stored nothing for an election timeout, before a snapshot, at shutdown."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from framework.core import ConfState, Entry, EntryKind, HardState, Ready, Snapshot
from framework.runtime.kernel_inputs import TimeKeeper
from framework.runtime.ready_store import ReadyStore
from framework.storage import MemoryLogStore
from framework.transport.memory import MemoryNetwork
from tests.runtime.inprocess_cluster import Cluster, fast_settings

pytestmark = pytest.mark.anyio


class RecordingStore(MemoryLogStore):
    """Every ``save_ready`` as (entries, hard state, sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[tuple[tuple[int, ...], HardState | None, bool]] = []

    def save_ready(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        super().save_ready(hard_state=hard_state, entries=entries, snapshot=snapshot, sync=sync)
        self.saves.append((tuple(e.index for e in entries), hard_state, sync))


def _time_keeper() -> TimeKeeper:
    return TimeKeeper(take_inbox=lambda limit: [], ticks_due=int, send=print, on_invalid=print)


def _entry(index: int) -> Entry:
    return Entry(term=1, index=index, kind=EntryKind.NORMAL, data=b"x")


async def test_a_commit_only_hard_state_goes_with_the_next_store() -> None:
    store = RecordingStore()
    store.initialize(node_id=1, cluster_id="c", conf_state=ConfState(voters=(1,)))
    persisted: list[int] = []
    rs = ReadyStore(
        store,
        time_keeper=_time_keeper(),
        on_persisted=lambda index, _now: persisted.append(index),
        idle_after=3600.0,
    )
    kernel = object()  # only handed to the time keeper, which acts on a leader only
    await rs.write(kernel, Ready(entries=(_entry(1),), must_sync=True))  # type: ignore[arg-type]
    rs.defer(Ready(hard_state=HardState(term=1, vote=1, commit=1)))
    assert [s[0] for s in store.saves] == [(1,)]  # deferred: nothing stored for it yet
    assert not rs.idle(anyio.current_time())  # stored just now: not idle
    await rs.write(kernel, Ready(entries=(_entry(2),), must_sync=True))  # type: ignore[arg-type]
    assert store.saves[-1] == ((2,), HardState(term=1, vote=1, commit=1), True)
    assert rs.deferred is None
    # A Ready with a hard state of its own carries the newer one, not the deferred.
    rs.defer(Ready(hard_state=HardState(term=1, vote=1, commit=2)))
    newer = HardState(term=2, vote=0, commit=2)
    await rs.write(kernel, Ready(hard_state=newer, must_sync=True))  # type: ignore[arg-type]
    assert store.saves[-1] == ((), newer, True)
    assert persisted == [1, 2]
    state = store.load()
    assert state is not None and state.hard_state == newer


async def test_an_idle_node_stores_its_deferred_commit_alone() -> None:
    store = RecordingStore()
    store.initialize(node_id=1, cluster_id="c", conf_state=ConfState(voters=(1,)))
    rs = ReadyStore(store, time_keeper=_time_keeper(), on_persisted=lambda *_: None, idle_after=0.5)
    kernel = object()
    await rs.write(kernel, Ready(entries=(_entry(1),), must_sync=True))  # type: ignore[arg-type]
    rs.defer(Ready(hard_state=HardState(term=1, vote=1, commit=1)))
    now = anyio.current_time()
    assert not rs.idle(now)
    assert rs.idle(now + 0.5)
    await rs.flush(kernel)  # type: ignore[arg-type]
    assert store.saves[-1] == ((), HardState(term=1, vote=1, commit=1), False)
    assert not rs.idle(now + 3600)  # nothing deferred any more
    await rs.flush(kernel)  # type: ignore[arg-type]
    assert len(store.saves) == 2  # a flush with nothing deferred stores nothing


async def test_sequential_writes_carry_the_previous_commit_with_their_entries() -> None:
    """Before: every write cost the leader a commit-only transaction after its answer, and
    the next write's proposal waited behind it; no entry save carried a commit index."""
    store = RecordingStore()
    # A long election timeout keeps the idle flush out of the way of 20 quick writes.
    settings = fast_settings(**{"raft.heartbeat_tick": 40, "raft.election_tick": 80})
    async with anyio.create_task_group() as tg:
        c = Cluster(network=MemoryNetwork(seed=7), tg=tg, settings=settings)
        c.stores[1] = store
        await c.start(1)
        try:
            await c.wait_leader()
            async with c.client() as client:
                await client.put("warm", "up")
                first = len(store.saves)
                for i in range(20):
                    await client.put(f"k{i}", "v")
            entry_saves = [s for s in store.saves[first:] if s[0]]
            carried = [s for s in entry_saves if s[1] is not None and s[1].commit == s[0][0] - 1]
            assert len(entry_saves) >= 20
            assert carried, store.saves[first:]
        finally:
            tg.cancel_scope.cancel()
