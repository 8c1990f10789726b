"""Plugin ``lock_free``: declares flag ``lock_free`` and builds ``LockFreeMetrics``."""

from __future__ import annotations

from framework.flags import FlagSpec
from framework.hooks import BuildContext, hookimpl
from plugins.lock_free.metrics import LockFreeMetrics

RAFTMW_TIER = "default"
FLAG = "lock_free"


@hookimpl
def raftmw_declare_flags() -> list[FlagSpec]:
    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description="Single-writer counters and log-bucket histograms instead of the "
            "legacy lock-guarded metrics.",
            owner="lock_free",
        )
    ]


@hookimpl
def raftmw_make_metrics(ctx: BuildContext) -> LockFreeMetrics | None:
    return LockFreeMetrics() if ctx.flag(FLAG) else None
