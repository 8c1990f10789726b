"""``FlagSwitch``: when a node re-evaluates its feature flags, and what it does then.

Theory of operation
-------------------
A flag's value may change in three ways: a ``flags`` entry applied from the log, a
snapshot restored (it carries the cluster's flag state), or a node-local override set or
unset by an operator. Each marks the switch (``mark``, or ``request`` for an operator, who
waits for the outcome); the Ready loop then calls ``apply`` between two Readies, never in
the middle of one, so the kernel sees no half-swapped node. ``apply`` re-evaluates every
flag, tells the plugins of each value that changed (``raftmw_on_flag_change``), sets the
metrics' mode, swaps the components whose flags changed, records the swaps, and releases
the operators waiting for it, even if a swap fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from framework.flags import Evaluation
from framework.metrics import NodeInstruments
from framework.plugins import PluginHost
from framework.runtime.components import Components
from framework.runtime.node_flags import NodeFlags

__all__ = ["FlagSwitch"]

log = logging.getLogger("raftmw.node")


class FlagSwitch:
    def __init__(
        self,
        *,
        node_id: int,
        flags: NodeFlags,
        components: Components,
        instruments: NodeInstruments,
        host: PluginHost,
        wake: Callable[[], None],
    ) -> None:
        self._node_id = node_id
        self._flags = flags
        self._components = components
        self._instruments = instruments
        self._host = host
        self._wake = wake
        self.pending = False
        """A change is marked and the Ready loop has not applied it yet."""
        self._waiters: list[anyio.Event] = []
        """Operators' requests waiting for their re-evaluation (and swap) to finish."""

    def mark(self) -> None:
        """A flag entry applied or a snapshot restored: re-evaluate between two Readies."""
        self.pending = True

    async def request(self) -> None:
        """A node-local override changed: have the Ready loop apply it, and wait for that."""
        done = anyio.Event()
        self._waiters.append(done)
        self.pending = True
        self._wake()
        await done.wait()

    def started(self) -> None:
        """The node's first evaluation is in force: tell the plugins and the metrics."""
        current = self._flags.current
        self._instruments.set_mode(name for name, ev in current.items() if ev.value)
        for ev in current.values():
            self._notify(ev)

    async def apply(self) -> None:
        """Re-evaluate and swap (between two Readies); release the waiting operators."""
        self.pending = False
        waiters, self._waiters = self._waiters, []
        try:
            await self._reevaluate()
        finally:
            for done in waiters:
                done.set()

    async def _reevaluate(self) -> None:
        flags = self._flags
        before = dict(flags.current)
        evaluations = flags.evaluate()
        changed = flags.changed(before)
        if not changed:
            return
        for ev in changed:
            log.info(
                "node %d: flag %s is now %s (%s from %s)",
                self._node_id,
                ev.flag,
                "on" if ev.value else "off",
                ev.reason,
                ev.source.name,
            )
            self._notify(ev)
        self._instruments.set_mode(name for name, ev in evaluations.items() if ev.value)
        flags.record_swaps(await self._components.reconfigure(evaluations))

    def _notify(self, ev: Evaluation) -> None:
        self._host.notify(
            "raftmw_on_flag_change",
            node_id=self._node_id,
            flag=ev.flag,
            value=ev.value,
            reason=str(ev.reason),
            source=ev.source.name,
            log_index=ev.log_index,
        )
