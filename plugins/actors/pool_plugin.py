"""The ``actors_pool`` plugin: the `ConnectionPoolActor` when flag ``actors`` is on.

Registered through the ``raftmw`` entry point group as ``actors_pool``, beside the
``actors`` plugin (``plugins.actors.plugin``), which declares the flag and builds the status
actor; this module only reads the flag. With the flag off it answers None and the legacy
``LockedConnectionPool`` is built instead.
"""

from __future__ import annotations

from framework.hooks import BuildContext, hookimpl
from framework.seams import PeerDialer
from framework.transport.pool import dial_limit
from plugins.actors.pool import ConnectionPoolActor, queue_capacity_from

__all__ = ["FLAG", "RAFTMW_TIER", "raftmw_make_connection_pool"]

RAFTMW_TIER = "default"

FLAG = "actors"
"""Declared by the ``actors`` plugin, not here: one flag, one owner."""


@hookimpl
def raftmw_make_connection_pool(
    ctx: BuildContext, dialer: PeerDialer
) -> ConnectionPoolActor | None:
    """A `ConnectionPoolActor` when the flag is on: peer queues bounded by
    ``queue_capacity_from(settings)``; dials timed by the node's timeout policy (the pool
    only backstops them, `dial_limit`) and retried with ``transport.reconnect_backoff_*``,
    as the legacy pool does; writes bounded by the policy's ``raft_message`` timeout
    (``framework.transport.pool.write_limit``)."""
    if not ctx.flag(FLAG):
        return None
    transport = ctx.settings.transport
    return ConnectionPoolActor(
        dialer,
        max_queued=queue_capacity_from(ctx.settings),
        # One full append per write round after the urgent messages (see the pool's doc).
        bulk_budget=ctx.settings.raft.max_size_per_msg,
        connect_timeout=dial_limit(ctx.settings),
        backoff_min=transport.reconnect_backoff_min,
        backoff_max=ctx.settings.reconnect_backoff_max,
    )
