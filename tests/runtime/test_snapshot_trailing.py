"""``raft.snapshot_trailing_entries`` (issue #13): a follower a little behind when the leader
compacts catches up from the log, without a snapshot."""

from __future__ import annotations

import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_briefly_lagging_follower_catches_up_from_trailing_entries() -> None:
    from tests.runtime.inprocess_cluster import cluster

    settings = {"raft.snapshot_threshold_entries": 20, "raft.snapshot_trailing_entries": 200}
    async with cluster(**settings) as c, c.client() as client:
        leader = await c.wait_leader()
        lagging = next(nid for nid in c.nodes if nid != leader)
        c.crash(lagging)
        for i in range(60):
            await client.put(f"t{i}", str(i))
        status = await c.nodes[leader].status()
        assert status["snapshot_index"] > 20  # compacted past what the lagging node has
        assert status["first_index"] < status["snapshot_index"]  # but kept trailing entries
        node = await c.start(lagging)
        with anyio.fail_after(10):
            while node.sm.read("t59") != "59":
                await anyio.sleep(0.01)
        # No snapshot was sent to it: it caught up from the leader's log.
        assert node.snapshots.accepted == node.snapshots.dropped == 0
        assert all(node.sm.read(f"t{i}") == str(i) for i in range(60))
