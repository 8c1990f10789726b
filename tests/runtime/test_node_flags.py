"""A node's flags across the events that replace its state: InstallSnapshot (the restored
flag state is evaluated and the plugins it selects are swapped in), and a restart (node-local
overrides come back from the data directory, also after SIGKILL, until they are unset)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from framework.config import Rollout, load_settings
from framework.flags import FlagError
from framework.plugins import PluginHost
from framework.runtime.localcluster import LocalCluster
from framework.runtime.node_flags import OVERRIDES_FILE, NodeFlags, OverridesFile
from tests.runtime.test_node_memory import cluster

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_follower_restored_by_install_snapshot_runs_the_restored_flags() -> None:
    async with cluster(**{"raft.snapshot_threshold_entries": 10}) as c, c.client() as client:
        leader = await c.wait_leader()
        lagging = next(nid for nid in c.nodes if nid != leader)
        c.crash(lagging)
        await client.flags("set", assignments={"backpressure": True}, reason="while away")
        for i in range(40):  # the flag entry ends up inside the leader's snapshot
            await client.put(f"k{i}", "v")
        assert (await c.nodes[leader].status())["snapshot_index"] > 10
        node = await c.start(lagging)
        assert node.components.plugins()["queue:inbox"] == "legacy"  # its own log: no flag
        with anyio.fail_after(10):
            while node.sm.read("k39") != "v":
                await anyio.sleep(0.01)
        assert (await node.status())["snapshot_index"] > 0
        assert node.flags.cluster.values() == {"backpressure": True}
        with anyio.fail_after(10):  # the swap happens right after the Ready that installed it
            while node.components.plugins()["queue:inbox"] != "backpressure":
                await anyio.sleep(0.01)
        assert node.flags.current["backpressure"].source.name == "CLUSTER"


def _node_flags(path: Path, node_id: int = 1) -> NodeFlags:
    return NodeFlags(
        PluginHost(),
        node_id=node_id,
        settings=load_settings(env={}),
        overrides_file=OverridesFile(path / OVERRIDES_FILE),
    )


async def test_overrides_are_kept_in_the_data_directory_until_unset(tmp_path: Path) -> None:
    first = _node_flags(tmp_path)
    rollout = Rollout(percent=50, include=(1,))
    await first.set_overrides({"backpressure": True, "actors": rollout})
    again = _node_flags(tmp_path)
    again.load_overrides()
    assert again.overrides == {"backpressure": True, "actors": rollout}
    assert again.evaluate()["backpressure"].source.name == "OVERRIDE"
    await again.unset_overrides(["backpressure"])
    third = _node_flags(tmp_path)
    third.load_overrides()
    assert third.overrides == {"actors": rollout}
    await third.unset_overrides(["actors"])
    assert not (tmp_path / OVERRIDES_FILE).exists()


async def test_a_bad_override_changes_neither_memory_nor_disk(tmp_path: Path) -> None:
    flags = _node_flags(tmp_path)
    await flags.set_overrides({"actors": True})
    before = (tmp_path / OVERRIDES_FILE).read_bytes()
    with pytest.raises(FlagError, match="backpresure"):
        await flags.set_overrides({"backpresure": True, "lock_free": True})
    with pytest.raises(FlagError, match="both included and excluded"):
        await flags.set_overrides({"lock_free": Rollout(include=(1,), exclude=(1,))})
    assert flags.overrides == {"actors": True}
    assert (tmp_path / OVERRIDES_FILE).read_bytes() == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "is not valid"),
        (b'{"version": 1, "overrides": {"actors": "yes"}}', "is not valid"),
        (b'{"version": 2, "overrides": {}}', "version 2; expected 1"),
        (b" " * (2 << 20), "larger than"),
    ],
)
def test_an_overrides_file_that_is_not_ours_is_refused_naming_it(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    (tmp_path / OVERRIDES_FILE).write_bytes(content)
    with pytest.raises(FlagError, match=fragment) as caught:
        _node_flags(tmp_path).load_overrides()
    assert str(tmp_path / OVERRIDES_FILE) in str(caught.value)


def test_an_override_of_a_flag_no_plugin_declares_is_kept(tmp_path: Path) -> None:
    (tmp_path / OVERRIDES_FILE).write_bytes(
        b'{"version": 1, "overrides": {"gone_plugin": true, "actors": true}}'
    )
    flags = _node_flags(tmp_path)
    flags.load_overrides()
    assert flags.overrides == {"gone_plugin": True, "actors": True}
    assert flags.evaluate()["actors"].value is True


async def test_a_node_override_survives_sigkill_and_restart(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path, nodes=3, cluster_id="test")
    local.start_all()
    try:
        await local.wait_serving()
        async with local.client(timeout=10.0) as client:
            await client.flags("set", scope="node", node_id=2, assignments={"backpressure": True})
        local.kill(2)
        local.start(2)
        await local.wait_serving([2])
        async with local.client(timeout=10.0) as client:
            answer = await client.flags("list", scope="node", node_id=2)
            assert answer["flags"]["backpressure"]["source"] == "OVERRIDE"
            assert answer["components"]["queue:inbox"] == "backpressure"
            # Unset, it is gone from the data directory too (restarts: the test above).
            await client.flags("unset", scope="node", node_id=2, names=["backpressure"])
        assert not (local.nodes[2].data_dir / OVERRIDES_FILE).exists()
    finally:
        local.stop_all()
