"""``wait_removal_applied``: the rule for when a removed node may be stopped."""

from __future__ import annotations

from typing import Any

import pytest

from framework.errors import Unavailable
from framework.member_removal import wait_removal_applied

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Cluster:
    """Status pages of voters that apply the removal of node 1 after some asks."""

    def __init__(
        self, applies_after: dict[int, int | None], unreachable: frozenset[int] = frozenset()
    ) -> None:
        self.applies_after = applies_after
        self.unreachable = unreachable
        self.asked: dict[int, int] = {}

    async def status(self, node_id: int) -> dict[str, Any]:
        self.asked[node_id] = self.asked.get(node_id, 0) + 1
        if node_id in self.unreachable:
            raise Unavailable(f"node {node_id} did not answer")
        after = self.applies_after[node_id]
        applied = after is not None and self.asked[node_id] > after
        return {"voters": [2, 3] if applied else [1, 2, 3], "learners": []}


async def test_returns_when_every_voter_left_applied_it() -> None:
    cluster = _Cluster({2: 0, 3: 2})
    assert await wait_removal_applied(cluster, 1, [2, 3], timeout=30) == []
    assert cluster.asked == {2: 1, 3: 3}


async def test_names_the_voters_that_did_not_apply_it_by_the_deadline() -> None:
    cluster = _Cluster({2: 0, 3: None, 4: 0}, unreachable={4})
    assert await wait_removal_applied(cluster, 1, [2, 3, 4], timeout=0.2) == [3, 4]
    assert cluster.asked[2] == 1


async def test_the_removed_node_is_not_asked() -> None:
    cluster = _Cluster({2: 0})
    assert await wait_removal_applied(cluster, 1, [1, 2], timeout=30) == []
    assert 1 not in cluster.asked
