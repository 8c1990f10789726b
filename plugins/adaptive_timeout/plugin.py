"""The ``adaptive_timeout`` plugin: adaptive per-operation timeouts when the flag is on.

Registered through the ``raftmw`` entry point group. With flag ``adaptive_timeout`` off it
answers None and the legacy ``FixedTimeouts`` is built instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from framework.flags import FlagSpec
from framework.hooks import BuildContext, hookimpl
from plugins.adaptive_timeout.policy import AdaptiveTimeouts

__all__ = ["FLAG", "RAFTMW_TIER", "raftmw_declare_flags", "raftmw_make_timeouts"]

RAFTMW_TIER = "default"

FLAG = "adaptive_timeout"


@hookimpl
def raftmw_declare_flags() -> Sequence[FlagSpec]:
    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description=(
                "Per-operation timeouts from an RTT estimate (RFC 6298: SRTT + 4 * RTTVAR) "
                "between base_timeout and max_timeout, doubled after a timeout, with "
                "exponential backoff and jitter on retries. Off: fixed base_timeout."
            ),
            owner="adaptive_timeout",
        )
    ]


@hookimpl
def raftmw_make_timeouts(ctx: BuildContext) -> AdaptiveTimeouts | None:
    return AdaptiveTimeouts(ctx.settings) if ctx.flag(FLAG) else None
