"""Actors instead of locks (flag ``actors``; the plan's 1.1 Actor Pattern).

`NodeStatusActor` is the ``StatusStore`` built when the flag is on: one task owns the node
status and writers reach it through a bounded mailbox, so reads take no lock and never wait
behind a writer. The hook implementations live in ``plugins.actors.plugin``.
"""

from plugins.actors.status import NodeStatusActor

__all__ = ["NodeStatusActor"]
