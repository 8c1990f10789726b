"""A local snapshot is recorded in one short transaction; the entries it lets go are deleted
afterwards, a batch at a time, between the Ready loop's stores (``LocalSnapshots``, step 6).

Recording a snapshot used to delete every compacted entry in the same synced transaction,
and the Ready loop waited for it: 45 ms for 100,000 entries on a quiet machine, over
100 ms under load, with every write and heartbeat answer of the node behind it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from framework.runtime import local_snapshots
from framework.storage.sqlite import SQLiteLogStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_snapshot_is_recorded_alone_and_its_entries_pruned_a_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.runtime.inprocess_cluster import Cluster, MemoryNetwork, fast_settings

    recorded: list[int | None] = []
    deleted: list[int] = []
    commit, prune = SQLiteLogStore.commit_snapshot, SQLiteLogStore.prune

    def counting_commit(self: SQLiteLogStore, prepared: object, **kw: Any) -> None:
        recorded.append(kw.get("compact_to"))
        commit(self, prepared, **kw)

    def counting_prune(self: SQLiteLogStore, upto: int, *, limit: int) -> bool:
        before = _count(self)
        done = prune(self, upto, limit=limit)
        deleted.append(before - _count(self))
        return done

    monkeypatch.setattr(SQLiteLogStore, "commit_snapshot", counting_commit)
    monkeypatch.setattr(SQLiteLogStore, "prune", counting_prune)
    monkeypatch.setattr(local_snapshots, "PRUNE_BATCH", 40)
    settings = fast_settings(
        **{"raft.snapshot_threshold_entries": 300, "raft.snapshot_trailing_entries": 10}
    )
    async with anyio.create_task_group() as tg:
        c = Cluster(network=MemoryNetwork(seed=3), tg=tg, settings=settings)
        for nid in (1, 2, 3):
            c.stores[nid] = SQLiteLogStore(tmp_path / f"n{nid}")  # type: ignore[assignment]
        for nid in (1, 2, 3):
            await c.start(nid)
        async with c.client() as client:
            for i in range(330):
                await client.put(f"k{i}", str(i))
        with anyio.fail_after(10):
            while not all(
                n.local_snapshots.taken and n.local_snapshots.idle for n in c.nodes.values()
            ):
                await anyio.sleep(0.01)
        firsts = {nid: n.kernel.log.offset + 1 for nid, n in c.nodes.items() if n.kernel}
        tg.cancel_scope.cancel()
    assert recorded and set(recorded) == {0}  # recorded alone, never with its deletions
    assert len(deleted) >= 3 * 7 and max(deleted) == 40  # 290 entries a node, 40 at a time
    # Nothing stored before the kernel's first entry is left, and nothing after it went.
    stored = {nid: _first(tmp_path / f"n{nid}" / "raft.db") for nid in firsts}
    assert stored == firsts


def _count(store: SQLiteLogStore) -> int:
    return int(store._connection().execute("SELECT count(*) FROM entries").fetchone()[0])


def _first(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT min(idx) FROM entries").fetchone()[0])
    finally:
        conn.close()
