"""The ``actors`` plugin: components owned by a task, reached by message, when the flag is on.

Registered through the ``raftmw`` entry point group. With flag ``actors`` off each factory
here answers None and the legacy lock-guarded component is built instead. One module for
every actor-backed seam: each factory is a hook function below, reading the same `FLAG`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from framework.hooks import BuildContext, hookimpl
from plugins.actors.status import NodeStatusActor

if TYPE_CHECKING:
    from framework.flags import FlagSpec

__all__ = ["FLAG", "RAFTMW_TIER", "raftmw_declare_flags", "raftmw_make_status_store"]

RAFTMW_TIER = "default"

FLAG = "actors"


@hookimpl
def raftmw_declare_flags() -> Sequence[FlagSpec]:
    # Imported here so this module loads even where framework.flags is not importable yet.
    from framework.flags import FlagSpec

    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description=(
                "Actors instead of locks: the node status is owned by one task and written "
                "through a bounded mailbox, so reads take no lock and never wait behind a "
                "writer. Off: the legacy-locks mode (RwLock-guarded status)."
            ),
            owner="actors",
        )
    ]


@hookimpl
def raftmw_make_status_store(ctx: BuildContext) -> NodeStatusActor | None:
    """A `NodeStatusActor` whose publishes wait at most the ``raft_message`` base timeout,
    when the flag is on."""
    if not ctx.flag(FLAG):
        return None
    return NodeStatusActor.from_settings(ctx.node_id, ctx.settings)
