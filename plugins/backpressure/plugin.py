"""The ``backpressure`` plugin: bounded priority queues between tasks when the flag is on.

Registered through the ``raftmw`` entry point group. With flag ``backpressure`` off it
answers None and the legacy unbounded queue is built instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from framework.hooks import BuildContext, hookimpl
from plugins.backpressure.queue import BoundedPriorityQueue

if TYPE_CHECKING:
    from framework.flags import FlagSpec

__all__ = ["FLAG", "RAFTMW_TIER", "raftmw_declare_flags", "raftmw_make_queue"]

RAFTMW_TIER = "default"

FLAG = "backpressure"


@hookimpl
def raftmw_declare_flags() -> Sequence[FlagSpec]:
    # Imported here so this module loads even where framework.flags is not importable yet.
    from framework.flags import FlagSpec

    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description=(
                "Bounded queues between tasks: priority classes (Raft traffic before client "
                "work), shedding of client work when full or under memory pressure, and a "
                "client admission limit that shrinks while the consumer falls behind. Off: "
                "unbounded FIFO queues."
            ),
            owner="backpressure",
        )
    ]


@hookimpl
def raftmw_make_queue(
    ctx: BuildContext, name: str, on_shed: Callable[[Any], None]
) -> BoundedPriorityQueue[Any] | None:
    """A `BoundedPriorityQueue` sized by ``performance.backpressure`` when the flag is on;
    accepted items it evicts, or cannot take over at a swap, go to ``on_shed``."""
    if not ctx.flag(FLAG):
        return None
    return BoundedPriorityQueue(name, ctx.settings.performance.backpressure, on_shed=on_shed)
