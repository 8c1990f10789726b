"""The chaos plugin: its settings are checked with named errors; its faults act only on
nodes where the ``chaos`` flag is on (persistence latency in the storage thread, dropped
and delayed sends, components that fail to build and so abort their swap)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from framework.config import SettingsError, load_settings
from framework.flags import Evaluation, Reason, Source
from framework.hooks import BuildContext
from framework.plugins import PluginError, PluginHost
from plugins.chaos import faults
from plugins.chaos.faults import ChaosConfig, ChaosStore, ChaosSwitch, ChaosTransport


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"persist_latency": "slow"}, ["plugin.chaos.persist_latency", '"slow"', "ms, s"]),
        ({"send_latency": "20s"}, ["plugin.chaos.send_latency", "out of range", "10s"]),
        ({"drop_to": [0]}, ["plugin.chaos.drop_to", "[0]", "node ids"]),
        ({"fail": ["disk"]}, ["plugin.chaos.fail", '"disk"', "send_guard"]),
        ({"latency": "1s"}, ["plugin.chaos.latency", "not a chaos setting", "persist_latency"]),
        ({"max_delayed": 0}, ["plugin.chaos.max_delayed", "1..1000000"]),
    ],
)
def test_bad_settings_are_refused_naming_key_and_value(
    table: dict[str, Any], named: list[str]
) -> None:
    with pytest.raises(SettingsError) as caught:
        ChaosConfig.from_table(table)
    for text in named:
        assert text in str(caught.value)


def test_a_node_refuses_to_start_with_bad_chaos_settings() -> None:
    from framework.runtime.node_flags import NodeFlags

    host = PluginHost(enabled=["chaos"])
    settings = load_settings(overrides={"plugin.chaos.persist_latency": "forever"})
    with pytest.raises(PluginError, match="persist_latency"):
        NodeFlags(host, node_id=1, settings=settings)


def test_lists_from_a_settings_file_are_accepted(tmp_path: Any) -> None:
    # Settings freeze TOML lists into tuples: a node given fail/drop_to/delay_to in a file
    # must start (the plugin reads its table with from_table), not refuse valid settings.
    file = tmp_path / "chaos.toml"
    file.write_text('[plugin.chaos]\nfail = ["queue"]\ndrop_to = [2]\ndelay_to = [3]\n')
    settings = load_settings(files=[str(file)])
    config = ChaosConfig.from_table(settings.plugin["chaos"])
    assert config.fail == frozenset({"queue"})
    assert config.drop_to == frozenset({2}) and config.delay_to == frozenset({3})


class FakeStore:
    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []
        self.path = "/somewhere"

    def save_ready(self, **kwargs: Any) -> None:
        self.saved.append(kwargs)


def test_persistence_is_slow_only_while_the_flag_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    switch = ChaosSwitch(ChaosConfig(persist_latency=0.25))
    inner = FakeStore()
    store = ChaosStore(inner, 2, switch)
    store.save_ready(entries=(), sync=True)
    switch.set(2, True)
    store.save_ready(entries=(1,), sync=True)
    switch.set(3, True)  # another node's flag changes nothing here
    switch.set(2, False)
    store.save_ready(entries=(2,), sync=True)
    assert slept == [0.25]
    assert [s["entries"] for s in inner.saved] == [(), (1,), (2,)]  # nothing lost
    assert store.path == "/somewhere"  # everything else is the inner store's


@dataclass
class Msg:
    dst: int
    n: int


class FakeTransport:
    listen_address = "here:1"

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    async def serve(self, inbox: Any, clients: Any, *, task_status: Any) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def send(self, messages: Any) -> None:
        self.sent.extend((m.dst, m.n) for m in messages)


@pytest.mark.anyio
async def test_sends_are_dropped_to_chosen_peers_and_delayed_in_order() -> None:
    switch = ChaosSwitch(ChaosConfig(send_latency=0.05, drop_to=frozenset({3})))
    inner = FakeTransport()
    transport = ChaosTransport(inner, 1, switch)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, None, None)
        transport.send([Msg(2, 0)])
        assert inner.sent == [(2, 0)]  # flag off: straight through
        switch.set(1, True)
        transport.send([Msg(2, 1), Msg(3, 2)])
        transport.send([Msg(2, 3)])
        assert inner.sent == [(2, 0)]  # held back
        with anyio.fail_after(10):
            while len(inner.sent) < 3:
                await anyio.sleep(0.01)
        assert inner.sent == [(2, 0), (2, 1), (2, 3)]  # in order; node 3's dropped
        assert transport.dropped == 1
        assert transport.listen_address == "here:1"
        tg.cancel_scope.cancel()


def _ctx(chaos: bool) -> BuildContext:
    evaluation = Evaluation(
        flag="chaos", value=chaos, reason=Reason.STATIC, source=Source.CLUSTER, detail=""
    )
    return BuildContext(node_id=1, settings=load_settings(), flags={"chaos": evaluation})


def test_a_component_named_in_fail_cannot_be_built_while_chaos_is_on() -> None:
    from plugins.chaos import plugin

    host = PluginHost(enabled=["chaos"])
    saved = plugin.switch.config
    plugin.switch.config = ChaosConfig(fail=frozenset({"send_guard"}))
    try:
        _guard, name = host.build("send_guard", _ctx(chaos=False))
        assert name != "chaos"
        with pytest.raises(PluginError, match="send_guard component of node 1 fails"):
            host.build("send_guard", _ctx(chaos=True))
        host.build("timeouts", _ctx(chaos=True))  # only the named seams fail
    finally:
        plugin.switch.config = saved


def test_the_plugin_is_optional_and_wraps_nothing_unless_configured() -> None:
    host = PluginHost()
    assert not host.names["chaos"].loaded and "chaos" not in host.declare_flags()
    enabled = PluginHost(enabled=["chaos"])
    assert "chaos" in enabled.declare_flags()
    store, transport = enabled.wrap_io(
        node_id=1, settings=load_settings(), store="store", transport="transport"
    )
    assert (store, transport) == ("store", "transport")


class FakeInbox:
    def __init__(self) -> None:
        self.got: list[int] = []
        self.unreachable: list[int] = []

    def deliver(self, messages: Any) -> None:
        self.got.extend(m.n for m in messages)

    def peer_unreachable(self, node_id: int) -> None:
        self.unreachable.append(node_id)


class InboxTransport(FakeTransport):
    inbox: Any = None

    async def serve(self, inbox: Any, clients: Any, *, task_status: Any) -> None:
        self.inbox = inbox
        task_status.started()
        await anyio.sleep_forever()


@pytest.mark.anyio
async def test_isolate_drops_peer_traffic_both_ways_only_while_on() -> None:
    switch = ChaosSwitch(ChaosConfig(isolate=True))
    inner = InboxTransport()
    transport = ChaosTransport(inner, 1, switch)
    inbox = FakeInbox()
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, inbox, None)
        inner.inbox.deliver([Msg(1, 0)])
        transport.send([Msg(2, 1)])
        switch.set(1, True)
        inner.inbox.deliver([Msg(1, 2)])  # received while cut off: dropped
        transport.send([Msg(2, 3), Msg(3, 4)])  # sent while cut off: dropped
        inner.inbox.peer_unreachable(2)  # the rest of the inbox is the node's
        switch.set(1, False)
        inner.inbox.deliver([Msg(1, 5)])
        transport.send([Msg(2, 6)])
        assert inbox.got == [0, 5]
        assert inner.sent == [(2, 1), (2, 6)]
        assert transport.dropped == 3
        assert inbox.unreachable == [2]
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_jitter_delays_each_batch_differently_and_keeps_the_order() -> None:
    switch = ChaosSwitch(ChaosConfig(send_latency=0.01, send_jitter=0.05))
    inner = FakeTransport()
    transport = ChaosTransport(inner, 1, switch)
    due: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, None, None)
        real = transport._later

        class Spy:
            def send_nowait(self, item: Any) -> None:
                due.append(item[0])
                real.send_nowait(item)

        transport._later = Spy()
        switch.set(1, True)
        start = anyio.current_time()
        for n in range(5):
            transport.send([Msg(2, n)])
        with anyio.fail_after(10):
            while len(inner.sent) < 5:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    delays = [d - start for d in due]
    assert all(0.01 <= d <= 0.06 + 0.05 for d in delays)
    assert len({round(d, 6) for d in delays}) > 1  # jitter: not one fixed delay
    assert inner.sent == [(2, n) for n in range(5)]


def test_isolate_and_jitter_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match=r"plugin\.chaos\.isolate"):
        ChaosConfig.from_table({"isolate": "yes"})
    config = ChaosConfig.from_table({"send_jitter": "20ms", "isolate": True})
    assert (config.send_jitter, config.isolate, config.wraps_transport) == (0.02, True, True)


@pytest.mark.anyio
async def test_isolate_drops_streamed_snapshots_too(tmp_path: Any) -> None:
    """A snapshot streamed on a connection of its own reaches the node through
    ``deliver_snapshot``, not ``deliver``: isolation drops it (its file deleted) as well."""
    from framework.core import InstallSnapshot, Snapshot, SnapshotMeta
    from framework.transport.snapshot_stream import ReceivedSnapshot

    class SnapshotInbox(FakeInbox):
        def __init__(self) -> None:
            super().__init__()
            self.snapshots: list[int] = []

        def deliver_snapshot(self, received: ReceivedSnapshot) -> None:
            self.snapshots.append(received.message.snapshot.meta.index)

    def received(index: int) -> ReceivedSnapshot:
        path = tmp_path / f"snap-{index}"
        path.write_bytes(b"data")
        meta = SnapshotMeta(index=index, term=1)
        msg = InstallSnapshot(src=2, dst=1, term=1, snapshot=Snapshot(meta=meta, data=b""))
        return ReceivedSnapshot(message=msg, path=path, size=4, sha256="")

    switch = ChaosSwitch(ChaosConfig(isolate=True))
    inner = InboxTransport()
    transport = ChaosTransport(inner, 1, switch)
    inbox = SnapshotInbox()
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, inbox, None)
        inner.inbox.deliver_snapshot(received(10))
        switch.set(1, True)
        inner.inbox.deliver_snapshot(received(20))  # received while cut off: dropped
        with anyio.fail_after(10):
            while (tmp_path / "snap-20").exists():
                await anyio.sleep(0.01)
        switch.set(1, False)
        inner.inbox.deliver_snapshot(received(30))
        assert inbox.snapshots == [10, 30]
        assert transport.dropped == 1
        assert (tmp_path / "snap-10").exists() and (tmp_path / "snap-30").exists()
        tg.cancel_scope.cancel()
