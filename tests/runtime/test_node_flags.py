"""A node's flags across the events that replace its state: InstallSnapshot (the restored
flag state is evaluated and the plugins it selects are swapped in), and a restart (node-local
overrides come back from the data directory, also after SIGKILL, until they are unset)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from framework.config import Rollout, load_settings
from framework.flags import FlagError
from framework.hooks import BuildContext, hookimpl
from framework.plugins import PluginHost
from framework.runtime.flag_outcomes import wait_for_outcomes
from framework.runtime.localcluster import LocalCluster
from framework.runtime.node_flags import OVERRIDES_FILE, NodeFlags, OverridesFile
from legacy.queue import UnboundedQueue
from tests.runtime.inprocess_cluster import cluster

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_follower_restored_by_install_snapshot_runs_the_restored_flags() -> None:
    # No trailing entries: the lagging follower must be caught up by InstallSnapshot.
    settings = {"raft.snapshot_threshold_entries": 10, "raft.snapshot_trailing_entries": 0}
    async with cluster(**settings) as c, c.client() as client:
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


class RivalQueue:
    """A third-party queue plugin answering for the same flag at the same priority."""

    @hookimpl
    def raftmw_make_queue(self, ctx: BuildContext, name: str) -> object | None:
        return UnboundedQueue(name) if ctx.flag("backpressure") else None


async def test_a_failed_swap_is_reported_as_that_nodes_outcome() -> None:
    async with cluster() as c, c.client() as client:
        await c.wait_leader()
        c.nodes[2].host.pm.register(RivalQueue(), name="rival_queue")
        result = await client.flags("set", assignments={"backpressure": True})
        outcomes = await wait_for_outcomes(
            client, c.nodes, result["log_index"], ["backpressure"], deadline=10
        )
        assert [o.state for o in outcomes.values()] == ["ok", "failed", "ok"]
        assert "queue:inbox kept legacy" in outcomes[2].detail
        assert "both provide the queue component" in outcomes[2].detail
        assert c.nodes[2].components.plugins()["queue:inbox"] == "legacy"
        assert "legacy -> backpressure" in outcomes[1].detail


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


def test_flags_set_reports_each_node_and_fails_where_a_node_lacks_the_plugin(
    tmp_path: Path,
) -> None:
    """One process cluster (to keep the suite short) for two behaviours: `flags set` exits 1
    naming the node that lacks the plugin, and a node-local override survives SIGKILL."""
    from click.testing import CliRunner

    from framework.cli import main

    local = LocalCluster(tmp_path, nodes=3, cluster_id="test")
    local.nodes[3].extra_args += ["--plugin", "no:backpressure"]
    local.start_all()
    try:
        anyio.run(_leader_not, local, 3)
        runner = CliRunner(env=local.environment())
        peers = ["--peers", local.peers_arg()]
        result = runner.invoke(main, ["flags", "set", "backpressure=on", *peers])
        assert result.exit_code == 1, result.output
        assert "node 3: failed: no plugin here declares flag 'backpressure'" in result.output
        for node_id in (1, 2):
            assert f"node {node_id}: ok: applied at index" in result.output, result.output
            assert "queue:inbox legacy -> backpressure" in result.output
        assert "did not take effect on node(s) [3]" in result.output
        skipped = runner.invoke(main, ["flags", "set", "actors=on", "--no-wait", *peers])
        assert skipped.exit_code == 0, skipped.output
        assert "node 1:" not in skipped.output
        anyio.run(_override_survives_sigkill, local)
    finally:
        local.stop_all()


async def _leader_not(local: LocalCluster, node_id: int) -> None:
    await local.wait_serving()
    leader = await local.leader()
    if leader == node_id:  # the leader validates a change against its own plugins
        async with local.client(timeout=10.0) as client:
            await client.transfer_leader(1)
        with anyio.fail_after(30):
            while await local.leader() in (0, node_id):
                await anyio.sleep(0.05)


async def _override_survives_sigkill(local: LocalCluster) -> None:
    async with local.client(timeout=10.0) as client:
        await client.flags("set", scope="node", node_id=2, assignments={"backpressure": False})
    local.kill(2)
    local.start(2)
    await local.wait_serving([2])
    async with local.client(timeout=10.0) as client:
        answer = await client.flags("list", scope="node", node_id=2)
        assert answer["flags"]["backpressure"]["source"] == "OVERRIDE"
        assert answer["flags"]["backpressure"]["value"] is False
        assert answer["components"]["queue:inbox"] == "legacy"
        # Unset, it is gone from the data directory too (restart: the unit test above).
        await client.flags("unset", scope="node", node_id=2, names=["backpressure"])
    assert not (local.nodes[2].data_dir / OVERRIDES_FILE).exists()
