"""The peers a node has seen store entries: kept across restarts, refused when corrupt, and
what makes ``--initial-cluster new`` refuse a wiped node whoever leads now."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from framework.runtime.bootstrap import PeerView, wiped_directory_refusal
from framework.runtime.stored_peers import STORED_PEERS_FILE, StoredPeers
from framework.storage.base import StorageError


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _observe_and_save(peers: StoredPeers, progress: dict[int, tuple[str, int, int]]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(peers.run)
        peers.observe(progress)
        while not (peers._path is not None and peers._path.exists()):
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_peers_seen_with_match_are_remembered_across_a_restart(tmp_path: Path) -> None:
    peers = StoredPeers(tmp_path, node_id=1)
    await _observe_and_save(
        peers, {1: ("replicate", 9, 10), 2: ("replicate", 9, 10), 3: ("probe", 0, 1)}
    )
    assert peers.peers == [2]  # itself and a peer that stored nothing are not noted
    again = StoredPeers(tmp_path, node_id=1)
    again.load()
    assert again.peers == [2]
    again.observe({3: ("replicate", 4, 5)})
    assert again.peers == [2, 3]


def test_a_corrupt_file_is_refused_naming_the_file_and_what_it_should_hold(tmp_path: Path) -> None:
    (tmp_path / STORED_PEERS_FILE).write_text('{"version": 1, "peers": "all"}')
    with pytest.raises(StorageError, match=rf"{STORED_PEERS_FILE}.*expected"):
        StoredPeers(tmp_path, node_id=1).load()
    (tmp_path / STORED_PEERS_FILE).write_text('{"version": 7, "peers": []}')
    with pytest.raises(StorageError, match="version=7"):
        StoredPeers(tmp_path, node_id=1).load()


def test_a_node_without_a_directory_keeps_them_in_memory() -> None:
    peers = StoredPeers(None, node_id=1)
    peers.load()
    peers.observe({2: ("replicate", 1, 2)})
    assert peers.peers == [2]


def test_new_refuses_a_wiped_node_that_a_former_leader_saw_store_entries() -> None:
    where = {"node_id": 3, "cluster_id": "c", "data_dir": "/d"}
    leader_now = PeerView(2, cluster_id="c", term=5, commit=40, match_of_me=0)
    former_leader = PeerView(1, cluster_id="c", term=5, commit=40, stored_me=True)
    assert wiped_directory_refusal(**where, views=[leader_now]) is None
    refusal = wiped_directory_refusal(**where, views=[former_leader, leader_now])
    assert refusal is not None and "members remove 3" in refusal
    other_cluster = PeerView(1, cluster_id="other", term=5, commit=40, stored_me=True)
    assert wiped_directory_refusal(**where, views=[other_cluster, leader_now]) is None
