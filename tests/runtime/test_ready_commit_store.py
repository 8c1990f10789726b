"""A Ready that only moves the commit index is stored after the writes it commits are
answered: their entries are durable already (Ready step 2 of the Ready before), so no
answer waits for the commit index to reach the store."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
import pytest

from framework.core import Entry, HardState, Snapshot
from framework.storage import MemoryLogStore
from framework.transport.memory import MemoryNetwork
from tests.runtime.inprocess_cluster import Cluster, fast_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class GatedStore(MemoryLogStore):
    """Holds the first commit-only save after ``arm()`` until ``release()``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.holding = threading.Event()
        self.released = threading.Event()
        self.saves: list[str] = []
        self.stored_commit = 0

    def save_ready(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        commit_only = hard_state is not None and not entries and snapshot is None and not sync
        if self.armed:
            self.saves.append("commit only" if commit_only else f"{len(entries)} entries")
        if self.armed and commit_only:
            self.armed = False
            self.holding.set()
            self.released.wait(timeout=30)  # bounded: a failing test still ends
        super().save_ready(hard_state=hard_state, entries=entries, snapshot=snapshot, sync=sync)
        if hard_state is not None:
            self.stored_commit = hard_state.commit


async def test_a_write_is_answered_before_its_commit_index_is_stored() -> None:
    store = GatedStore()
    async with anyio.create_task_group() as tg:
        c = Cluster(network=MemoryNetwork(seed=7), tg=tg, settings=fast_settings())
        c.stores[1] = store
        await c.start(1)
        try:
            await c.wait_leader()
            async with c.client() as client:
                await client.put("warm", "up")  # the term's first entries are behind us
                kernel = c.nodes[1].kernel
                assert kernel is not None
                with anyio.fail_after(10):  # until the warm-up's commit index is stored too
                    while store.stored_commit < kernel.log.committed:
                        await anyio.sleep(0.01)
                store.armed = True
                with anyio.fail_after(10):
                    await client.put("k", "v")  # before: waited for the held save, timed out
                committed = kernel.log.committed
                with anyio.fail_after(10):
                    while not store.holding.is_set():
                        await anyio.sleep(0.01)
                # Answered, and the commit index that covers the write is still held back.
                assert store.stored_commit < committed, store.saves
                assert store.saves[0] != "commit only", store.saves  # the entry came first
        finally:
            store.released.set()
            tg.cancel_scope.cancel()
