"""The ``shadow`` flag: with it on for a node, each shadowable seam whose own flag is off
there (``adaptive_timeout``, ``circuit_breaker``, ``backpressure``) runs its new component
in shadow: the legacy one answers, the new one decides beside it and is counted
(``framework/runtime/shadow.py``; the components are wrapped by the node's ``Components``).
"""

from __future__ import annotations

from collections.abc import Sequence

from framework.flags import FlagSpec
from framework.hooks import hookimpl

__all__ = ["FLAG", "RAFTMW_TIER", "raftmw_declare_flags"]

RAFTMW_TIER = "default"
FLAG = "shadow"


@hookimpl
def raftmw_declare_flags() -> Sequence[FlagSpec]:
    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description=(
                "Shadow mode: where adaptive_timeout, circuit_breaker or backpressure is off, "
                "its new component decides beside the legacy one, which alone answers; "
                "agreements and mismatches are counted (status 'shadow', OTel, "
                "raftmw compare --shadow)."
            ),
            owner="shadow",
        )
    ]
