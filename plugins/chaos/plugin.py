"""The ``chaos`` plugin (optional tier: enable it with ``plugins.enabled = ["chaos"]`` or
``--plugin chaos``): declares flag ``chaos`` and injects the faults ``[plugin.chaos]``
configures on every node where the flag is on.

::

    [default.plugins]
    enabled = ["chaos"]

    [default.plugin.chaos]
    persist_latency = "100ms"   # every log write
    send_latency = "50ms"       # every peer send (to delay_to peers only, if given)
    send_jitter = "20ms"        # plus up to this, drawn per batch (still in order)
    isolate = false             # true: drop every peer message in and out (a partition)
    delay_to = [3]
    drop_to = [2]               # peers whose messages are dropped
    fail = ["send_guard"]       # seams whose component fails to build
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from framework.config import SettingsError
from framework.flags import FlagSpec
from framework.hooks import BuildContext, hookimpl
from plugins.chaos.faults import ChaosConfig, ChaosFault, ChaosStore, ChaosSwitch, ChaosTransport

__all__ = ["FLAG", "RAFTMW_TIER", "switch"]

RAFTMW_TIER = "optional"
FLAG = "chaos"

switch = ChaosSwitch()
"""This process's faults and which of its nodes have them on."""


@hookimpl
def raftmw_declare_flags() -> Sequence[FlagSpec]:
    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description=(
                "Inject the faults of [plugin.chaos] (latency on sends or persistence, "
                "dropped messages, failing components) on this node."
            ),
            owner="chaos",
        )
    ]


@hookimpl
def raftmw_validate_settings(settings: Any) -> list[str]:
    try:
        switch.config = ChaosConfig.from_table(settings.plugin.get("chaos", {}))
    except SettingsError as exc:
        return [str(exc)]
    return []


@hookimpl
def raftmw_on_flag_change(node_id: int, flag: str, value: bool) -> None:
    if flag == FLAG:
        switch.set(node_id, value)


@hookimpl
def raftmw_wrap_log_store(node_id: int, inner: Any) -> ChaosStore | None:
    if not switch.config.persist_latency:
        return None
    return ChaosStore(inner, node_id, switch)


@hookimpl
def raftmw_wrap_transport(node_id: int, inner: Any) -> ChaosTransport | None:
    if not switch.config.wraps_transport:
        return None
    return ChaosTransport(inner, node_id, switch)


def _fail(seam: str, ctx: BuildContext) -> None:
    if ctx.flag(FLAG) and seam in switch.config.fail:
        raise ChaosFault(f"chaos: the {seam} component of node {ctx.node_id} fails to build")


@hookimpl(tryfirst=True)
def raftmw_make_status_store(ctx: BuildContext) -> None:
    _fail("status_store", ctx)


@hookimpl(tryfirst=True)
def raftmw_make_queue(ctx: BuildContext) -> None:
    _fail("queue", ctx)


@hookimpl(tryfirst=True)
def raftmw_make_timeouts(ctx: BuildContext) -> None:
    _fail("timeouts", ctx)


@hookimpl(tryfirst=True)
def raftmw_make_send_guard(ctx: BuildContext) -> None:
    _fail("send_guard", ctx)


@hookimpl(tryfirst=True)
def raftmw_make_metrics(ctx: BuildContext) -> None:
    _fail("metrics", ctx)


@hookimpl(tryfirst=True)
def raftmw_make_connection_pool(ctx: BuildContext) -> None:
    _fail("connection_pool", ctx)
