"""The legacy plugin: today's behaviour, the built-in implementation of every seam.

Each factory answers when its flag is off and returns None when it is on, so the plugin of
the new behaviour answers instead (and if none is installed, the plugin host says that no
plugin provides the seam, rather than silently keeping the old behaviour). The factories
are ``trylast``: a third-party plugin that wants to replace a legacy component whatever
the flags answers at normal priority and wins.

The tier is *essential*: without this plugin a node with a flag off has no component for
that seam. Legacy declares no flags; each new plugin declares its own.
"""

from __future__ import annotations

from typing import Any, Final

from framework.hooks import BuildContext, hookimpl
from framework.seams import (
    ConnectionPool,
    MessageQueue,
    MetricsPrimitives,
    PeerDialer,
    SendGuard,
    StatusStore,
    TimeoutPolicy,
)
from framework.transport.pool import dial_limit
from legacy.metrics import LockedMetrics
from legacy.pool import LockedConnectionPool
from legacy.queue import UnboundedQueue
from legacy.send_guard import NoGuard
from legacy.status import LockedNodeStatus
from legacy.timeouts import FixedTimeouts

RAFTMW_TIER: Final = "essential"


@hookimpl(trylast=True)
def raftmw_make_status_store(ctx: BuildContext) -> StatusStore | None:
    return None if ctx.flag("actors") else LockedNodeStatus(ctx.node_id)


@hookimpl(trylast=True)
def raftmw_make_queue(ctx: BuildContext, name: str) -> MessageQueue[Any] | None:
    return None if ctx.flag("backpressure") else UnboundedQueue[Any](name)


@hookimpl(trylast=True)
def raftmw_make_timeouts(ctx: BuildContext) -> TimeoutPolicy | None:
    return None if ctx.flag("adaptive_timeout") else FixedTimeouts(ctx.settings)


@hookimpl(trylast=True)
def raftmw_make_send_guard(ctx: BuildContext) -> SendGuard | None:
    return None if ctx.flag("circuit_breaker") else NoGuard()


@hookimpl(trylast=True)
def raftmw_make_metrics(ctx: BuildContext) -> MetricsPrimitives | None:
    return None if ctx.flag("lock_free") else LockedMetrics()


@hookimpl(trylast=True)
def raftmw_make_connection_pool(ctx: BuildContext, dialer: PeerDialer) -> ConnectionPool | None:
    if ctx.flag("actors"):
        return None
    transport = ctx.settings.transport
    return LockedConnectionPool(
        dialer,
        # Dials are timed by the node's timeout policy; the pool only backstops them. Writes
        # are timed by the policy's raft_message timeout (framework.transport.pool.write_limit).
        connect_timeout=dial_limit(ctx.settings),
        backoff_min=transport.reconnect_backoff_min,
        backoff_max=ctx.settings.reconnect_backoff_max,
    )
