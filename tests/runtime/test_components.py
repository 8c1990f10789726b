"""Live component swaps: a swap that cannot move the state, or whose new component cannot be
built, is aborted and the old component keeps running with its state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import legacy.plugin
from framework.config import load_settings
from framework.hooks import BuildContext, hookimpl
from framework.plugins import PluginHost
from framework.runtime.components import Components
from framework.seams import LockStats, Priority, QueueStats

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RefusingQueue:
    """A queue that starts fine but refuses to take over a predecessor's items."""

    running = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        RefusingQueue.running += 1
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            RefusingQueue.running -= 1

    def export_state(self) -> Any:
        return []

    def import_state(self, state: Any) -> None:
        raise ValueError("cannot take these items")

    def lock_stats(self) -> LockStats:
        return LockStats()

    def put_nowait(self, item: Any, priority: Priority = Priority.NORMAL) -> None:
        raise AssertionError("never used")

    def drain(self, limit: int | None = None) -> list[Any]:
        return []

    def __len__(self) -> int:
        return 0

    def stats(self) -> QueueStats:
        return QueueStats(name="x", depth=0, capacity=1, max_depth=0, enqueued=0, rejected=0)


class Refusing:
    @hookimpl
    def raftmw_make_queue(self, ctx: BuildContext, name: str) -> Any:
        return RefusingQueue() if ctx.flag("refusing") else None


class Exploding:
    @hookimpl
    def raftmw_make_queue(self, ctx: BuildContext, name: str) -> Any:
        if ctx.flag("exploding"):
            raise RuntimeError("no memory for queues today")
        return None


def flags(**values: bool) -> dict[str, Any]:
    return {name: SimpleNamespace(value=value) for name, value in values.items()}


async def test_an_aborted_swap_keeps_the_old_component_and_its_items() -> None:
    host = PluginHost(
        entry_points=False,
        plugins=[("legacy", legacy.plugin), ("refusing", Refusing()), ("exploding", Exploding())],
    )
    swaps: list[tuple[str, bool]] = []

    class Observer:
        @hookimpl
        def raftmw_on_plugin_swap(
            self, node_id: int, seam: str, old: str, new: str, ok: bool, error: str | None
        ) -> None:
            swaps.append((f"{seam}:{old}->{new}", ok))

    host.pm.register(Observer(), name="observer")
    components = Components(
        host, node_id=1, settings=load_settings(), on_shed=lambda queue, item: None
    )
    async with anyio.create_task_group() as tg:
        await components.start(tg, flags())
        old = components.proposals
        old.put_nowait("queued write", Priority.NORMAL)

        reports = await components.reconfigure(flags(refusing=True))
        failed = [r for r in reports if not r.ok]
        assert failed and all("cannot take these items" in (r.error or "") for r in failed)
        assert components.proposals is old  # still the legacy queue...
        assert old.drain() == ["queued write"]  # ...with its item given back
        await anyio.lowlevel.checkpoint()  # let the cancelled new components finish
        assert RefusingQueue.running == 0

        reports = await components.reconfigure(flags(exploding=True))
        assert reports and all(not r.ok and "no memory" in (r.error or "") for r in reports)
        assert components.plugins()["queue:proposals"] == "legacy"
        tg.cancel_scope.cancel()
    assert ("queue:proposals:legacy->refusing", False) in swaps
