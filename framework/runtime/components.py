"""``Components``: a node's swappable parts, one per seam, and the live swap between them.

Theory of operation
-------------------
Each slot (a seam, and for queues a queue name) holds one running component built by the
plugin host from the node's current flag evaluations. ``reconfigure(flags)`` asks the host
which plugin would build each slot now; where that differs from the running one it swaps:

1. build the new component (a factory that raises aborts the swap);
2. start it in the node's task group, in its own cancel scope (a failed start aborts);
3. with no await in between, so no producer can slip an item into the old component
   after its state was taken: ``state = old.export_state()``, ``new.import_state(state)``,
   and the slot now points at the new component. If ``import_state`` raises, the state is
   handed back to the old one (``old.import_state(state)``), the new one is cancelled, and
   the old one keeps running;
4. cancel the old component's scope: it returns from ``run`` having released what it took.

Every outcome is reported: the log, ``swaps`` (for status pages), and the
``raftmw_on_plugin_swap`` observer hook. The Ready loop calls ``reconfigure`` between two
Ready iterations, so the kernel never sees a half-swapped node.

The ``connection_pool`` slot exists only when the node's transport keeps connections (a
``PooledTransport``, like TCP; the in-memory network has none). Its factory gets the
transport's ``dialer``, and every pool installed in the slot, at start or by a swap, is
handed to the transport (``use_pool``) in step 3, with no await between the state moving
and the transport switching, so every message the node sends lands in exactly one pool.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from framework.hooks import BuildContext
from framework.plugins import PluginError, PluginHost
from framework.runtime import shadow
from framework.seams import LockStats, PooledTransport

__all__ = ["Components", "SwapReport"]

log = logging.getLogger("raftmw.components")

SLOTS: tuple[tuple[str, str], ...] = (
    ("status_store", ""),
    ("queue", "inbox"),
    ("queue", "proposals"),
    ("timeouts", ""),
    ("send_guard", ""),
    ("metrics", ""),
)
POOL_SLOT: tuple[str, str] = ("connection_pool", "")
"""Added to ``SLOTS`` for a node whose transport keeps connections (``PooledTransport``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SwapReport:
    slot: str
    old: str
    new: str
    ok: bool
    error: str | None
    at: float


@dataclass(slots=True)
class _Running:
    component: Any
    plugin: str
    scope: anyio.CancelScope


class Components:
    def __init__(
        self,
        host: PluginHost,
        *,
        node_id: int,
        settings: Any,
        on_shed: Callable[[str, Any], None],
        transport: object = None,
        meter_provider: Any = None,
    ) -> None:
        self.host = host
        self.meter_provider = meter_provider
        """Where shadow mode's counts are reported (None: the global provider)."""
        self.node_id = node_id
        self.settings = settings
        self._on_shed = on_shed
        self._pooled = transport if isinstance(transport, PooledTransport) else None
        self.slots: tuple[tuple[str, str], ...] = (
            SLOTS if self._pooled is None else (*SLOTS, POOL_SLOT)
        )
        self._running: dict[str, _Running] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.swaps: list[SwapReport] = []

    @staticmethod
    def slot_name(seam: str, name: str) -> str:
        return f"{seam}:{name}" if name else seam

    # -- access (hot path: plain dict lookups, no hooks) ---------------------------------------

    @property
    def ready(self) -> bool:
        """Whether every slot has a running component."""
        return len(self._running) == len(self.slots)

    def get(self, slot: str) -> Any:
        return self._running[slot].component

    @property
    def status_store(self) -> Any:
        return self._running["status_store"].component

    @property
    def inbox(self) -> Any:
        return self._running["queue:inbox"].component

    @property
    def proposals(self) -> Any:
        return self._running["queue:proposals"].component

    @property
    def timeouts(self) -> Any:
        return self._running["timeouts"].component

    @property
    def send_guard(self) -> Any:
        return self._running["send_guard"].component

    @property
    def metrics(self) -> Any:
        return self._running["metrics"].component

    @property
    def connection_pool(self) -> Any:
        """The running pool, or None for a transport without connections."""
        running = self._running.get("connection_pool")
        return None if running is None else running.component

    def plugins(self) -> dict[str, str]:
        """slot -> name of the plugin whose component runs there."""
        return {slot: running.plugin for slot, running in self._running.items()}

    def running(self) -> dict[str, Any]:
        """slot -> the component running there."""
        return {slot: running.component for slot, running in self._running.items()}

    def lock_stats(self) -> dict[str, LockStats]:
        return {slot: r.component.lock_stats() for slot, r in self._running.items()}

    # -- lifecycle ----------------------------------------------------------------------------

    def _build(self, seam: str, name: str, flags: Mapping[str, Any]) -> tuple[Any, str]:
        ctx = BuildContext(node_id=self.node_id, settings=self.settings, flags=flags)
        kwargs: dict[str, Any] = {}
        if seam == "queue":
            kwargs = {"name": name, "on_shed": lambda item: self._on_shed(name, item)}
        elif seam == "connection_pool":
            assert self._pooled is not None
            kwargs = {"dialer": self._pooled.dialer}
        component, plugin = self.host.build(seam, ctx, **kwargs)
        flag = shadow.shadow_pair(seam, flags)
        if flag is None:
            return component, plugin
        # Shadow mode (framework/runtime/shadow.py): the flag's "on" component decides
        # beside this one and is never heard; its queue sheds into nothing.
        on = {**flags, flag: dataclasses.replace(flags[flag], value=True)}
        if seam == "queue":
            kwargs = {"name": name, "on_shed": lambda item: None}
        ctx = BuildContext(node_id=self.node_id, settings=self.settings, flags=on)
        new, new_plugin = self.host.build(seam, ctx, **kwargs)
        wrapper = shadow.wrap(seam, name, component, new, self.node_id, self.meter_provider)
        return wrapper, f"{plugin}+shadow:{new_plugin}"

    def _installed(self, slot: str, component: Any) -> None:
        """``component`` now fills ``slot``: tell whoever uses it directly."""
        if slot == "connection_pool" and self._pooled is not None:
            self._pooled.use_pool(component)
        elif slot == "timeouts" and self._pooled is not None:
            self._pooled.use_timeouts(component)

    async def start(self, tg: anyio.abc.TaskGroup, flags: Mapping[str, Any]) -> None:
        """Build and start every slot; a failure here stops the node (PluginError)."""
        self._tg = tg
        for seam, name in self.slots:
            component, plugin = self._build(seam, name, flags)
            slot = self.slot_name(seam, name)
            self._running[slot] = await self._launch(component, plugin)
            self._installed(slot, component)

    async def _launch(self, component: Any, plugin: str) -> _Running:
        assert self._tg is not None
        scope = anyio.CancelScope()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with scope:
                await component.run(task_status=task_status)

        try:
            await self._tg.start(run)
        except Exception as exc:
            raise PluginError(f"plugin {plugin!r}: its component failed to start: {exc!r}") from exc
        return _Running(component=component, plugin=plugin, scope=scope)

    async def reconfigure(self, flags: Mapping[str, Any]) -> list[SwapReport]:
        """Swap every slot whose plugin choice changed under ``flags``."""
        reports = []
        for seam, name in self.slots:
            slot = self.slot_name(seam, name)
            current = self._running[slot]
            try:
                component, plugin = self._build(seam, name, flags)
            except PluginError as exc:
                reports.append(self._report(slot, current.plugin, "?", str(exc)))
                continue
            if plugin == current.plugin and type(component) is type(current.component):
                continue  # same choice: keep the running one (and its state) untouched
            reports.append(await self._swap(slot, current, component, plugin))
        return reports

    async def _swap(self, slot: str, old: _Running, component: Any, plugin: str) -> SwapReport:
        try:
            new = await self._launch(component, plugin)
        except PluginError as exc:
            return self._report(slot, old.plugin, plugin, str(exc))
        # No await from here to the slot update: producers cannot interleave.
        state = old.component.export_state()
        try:
            new.component.import_state(state)
        except Exception as exc:
            old.component.import_state(state)
            new.scope.cancel()
            return self._report(
                slot,
                old.plugin,
                plugin,
                f"plugin {plugin!r} could not take over the state: {exc!r}",
            )
        self._running[slot] = new
        self._installed(slot, new.component)
        old.scope.cancel()
        return self._report(slot, old.plugin, plugin, None)

    def _report(self, slot: str, old: str, new: str, error: str | None) -> SwapReport:
        report = SwapReport(
            slot=slot, old=old, new=new, ok=error is None, error=error, at=time.time()
        )
        self.swaps.append(report)
        del self.swaps[:-50]
        if error is None:
            log.info("node %d swapped %s: %s -> %s", self.node_id, slot, old, new)
        else:
            log.error(
                "node %d kept %s on %s; swap to %s aborted: %s", self.node_id, slot, old, new, error
            )
        self.host.notify(
            "raftmw_on_plugin_swap",
            node_id=self.node_id,
            seam=slot,
            old=old,
            new=new,
            ok=error is None,
            error=error,
        )
        return report
