"""The ``circuit_breaker`` plugin: per-peer breakers around peer sends when the flag is on.

Registered through the ``raftmw`` entry point group. With flag ``circuit_breaker`` off it
answers None and the legacy `NoGuard` (no breakers) is built instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from framework.flags import FlagSpec
from framework.hooks import BuildContext, hookimpl
from plugins.circuit_breaker.guard import BreakerGuard

__all__ = ["FLAG", "RAFTMW_TIER", "raftmw_declare_flags", "raftmw_make_send_guard"]

RAFTMW_TIER = "default"

FLAG = "circuit_breaker"


@hookimpl
def raftmw_declare_flags() -> Sequence[FlagSpec]:
    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description=(
                "Per-peer circuit breakers around peer sends: after repeated failures to a "
                "peer, hold back its bulky traffic (entries, snapshots) until probes get "
                "through; votes, heartbeats and acknowledgements always go. Off: no guard."
            ),
            owner="circuit_breaker",
        )
    ]


@hookimpl
def raftmw_make_send_guard(ctx: BuildContext) -> BreakerGuard | None:
    """A `BreakerGuard` configured from ``performance.circuit_breaker`` when the flag is on."""
    return BreakerGuard.from_settings(ctx.settings) if ctx.flag(FLAG) else None
