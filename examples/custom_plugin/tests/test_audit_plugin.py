"""The example plugin, installed from its own package: found by entry point, declares its
flag, writes audit records when the flag is on, and adds a CLI subcommand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.config import load_settings
from framework.plugins import PluginHost
from framework.runtime.node import NodeConfig, RaftNode
from framework.storage import MemoryLogStore
from framework.transport.memory import MemoryNetwork


@pytest.fixture(autouse=True)
def fresh_audit_state() -> None:
    """Each test's nodes start with no remembered flag state (ids repeat across tests)."""
    from raftmw_audit import plugin

    plugin._enabled.clear()
    plugin._configured = None


def test_the_plugin_is_found_by_its_entry_point() -> None:
    host = PluginHost()
    host.declare_flags()
    info = host.names["audit"]
    assert info.loaded and info.version == "0.1.0"
    assert info.flags == ("audit_log",)
    assert "raftmw_on_leader_change" in info.hooks


@asynccontextmanager
async def three_nodes(flag_on: bool, **more: object) -> AsyncIterator[dict[int, RaftNode]]:
    settings = load_settings(
        overrides={"raft.tick_interval": "5ms", "flags.audit_log": flag_on, **more}
    )
    network = MemoryNetwork(seed=1)
    peers = {n: f"mem://{n}" for n in (1, 2, 3)}
    nodes = {
        n: RaftNode(
            NodeConfig(node_id=n, cluster_id="audit", peers=peers, settings=settings),
            store=MemoryLogStore(),
            transport=network.transport(n),
        )
        for n in peers
    }
    async with anyio.create_task_group() as tg:
        for node in nodes.values():
            await tg.start(node.run)
        yield nodes
        tg.cancel_scope.cancel()


async def _wait_for_leader(nodes: dict[int, RaftNode]) -> int:
    with anyio.fail_after(10):
        while True:
            for node in nodes.values():
                if (await node.status())["role"] == "leader":
                    return node.id
            await anyio.sleep(0.01)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_leader_changes_are_audited_when_the_flag_is_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("AUDIT_LOG_PATH", str(log))
    async with three_nodes(flag_on=True) as nodes:
        leader = await _wait_for_leader(nodes)
        with anyio.fail_after(10):
            while not log.exists() or f'"leader": {leader}' not in log.read_text():
                await anyio.sleep(0.01)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"flag", "leader"} <= {r["event"] for r in records}
    assert any(r["event"] == "leader" and r["leader"] == leader for r in records)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_nothing_is_written_when_the_flag_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("AUDIT_LOG_PATH", str(log))
    async with three_nodes(flag_on=False) as nodes:
        await _wait_for_leader(nodes)
    assert not log.exists()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_audit_file_comes_from_the_plugins_settings_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    env_log, table_log = tmp_path / "env.jsonl", tmp_path / "table.jsonl"
    monkeypatch.setenv("AUDIT_LOG_PATH", str(env_log))
    async with three_nodes(flag_on=True, **{"plugin.audit.log_path": str(table_log)}) as nodes:
        leader = await _wait_for_leader(nodes)
        with anyio.fail_after(10):
            while not table_log.exists() or f'"leader": {leader}' not in table_log.read_text():
                await anyio.sleep(0.01)
    assert not env_log.exists()  # the settings table wins over the plugin's own variable


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"plugin.audit.log_path": 5}, "[plugin.audit] log_path = 5 is not a file path"),
        ({"plugin.audit.logpath": "x"}, "[plugin.audit] logpath = 'x' is not a setting"),
    ],
)
def test_a_bad_plugin_setting_stops_the_node_naming_it(
    table: dict[str, object], named: str
) -> None:
    from framework.plugins import PluginError

    settings = load_settings(overrides=table)
    config = NodeConfig(node_id=1, cluster_id="audit", peers={1: "mem://1"}, settings=settings)
    with pytest.raises(PluginError) as refused:
        RaftNode(config, store=MemoryLogStore(), transport=MemoryNetwork(seed=1).transport(1))
    assert named in str(refused.value)


def test_the_cli_gains_an_audit_command(tmp_path: Path) -> None:
    PluginHost().add_cli(main)
    log = tmp_path / "a.jsonl"
    log.write_text(
        json.dumps({"time": 1, "node": 2, "event": "leader", "leader": 3, "term": 4}) + "\n"
    )
    result = CliRunner().invoke(main, ["audit", "show", "--file", str(log)])
    assert result.exit_code == 0, result.output
    assert "node 2 leader: leader=3, term=4" in result.output


def test_migration_events_are_recorded_while_the_flag_is_on(tmp_path: Path) -> None:
    from raftmw_audit import plugin

    plugin._configured = tmp_path / "audit.jsonl"
    host = PluginHost()
    event = {
        "migration": "m1",
        "event": "rollback",
        "step": 1,
        "log_index": 42,
        "detail": "p99 3x the old cohort",
    }
    host.notify("raftmw_on_migration_event", node_id=7, **event)  # flag off: nothing
    assert not plugin._configured.exists()
    plugin._enabled[7] = True
    host.notify("raftmw_on_migration_event", node_id=7, **event)
    (line,) = plugin._configured.read_text().splitlines()
    record = json.loads(line)
    assert record["event"] == "migration" and record["node"] == 7
    assert (record["migration"], record["migration_event"], record["step"]) == ("m1", "rollback", 1)
    assert record["log_index"] == 42 and record["detail"] == "p99 3x the old cohort"
