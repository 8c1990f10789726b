"""The legacy guard around peer sends: none.

The seed had no circuit breakers: messages to a peer that is down are sent (and fail)
every time, and each failure costs a connection attempt and its timeout, which is how one
dead peer slows the sends to the live ones. `NoGuard` lets everything through and only
counts failures, so status pages can show what breakers would have seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus

from framework.seams import LockStats

__all__ = ["NoGuard"]


class NoGuard:
    """`SendGuard` that allows every message and has no breaker states.

    State carried across a swap: failures per peer, ``{peer: count}``. A breaker's state
    means nothing here (there are no breakers), so anything else in a predecessor's state
    is dropped; that is the legacy behaviour being restored.
    """

    __slots__ = ("_failures",)

    def __init__(self) -> None:
        self._failures: dict[int, int] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def allow(self, peer: int, messages: Sequence[Any]) -> Sequence[Any]:
        return messages

    def record(self, peer: int, *, ok: bool) -> None:
        if not ok:
            self._failures[peer] = self._failures.get(peer, 0) + 1

    def states(self) -> Mapping[int, str]:
        return {}

    def failures(self) -> Mapping[int, int]:
        """Failed sends per peer since this node started (carried across swaps)."""
        return dict(self._failures)

    def export_state(self) -> dict[int, int]:
        return dict(self._failures)

    def import_state(self, state: Any) -> None:
        if state is None:
            return
        if not isinstance(state, Mapping):
            raise TypeError(
                f"send guard state must be a mapping of peer -> failures, not "
                f"{type(state).__name__}"
            )
        for peer, failures in state.items():
            # bool is an int; neither a peer id nor a count is ever one.
            if type(peer) is int and type(failures) is int and failures > 0:
                self._failures[peer] = self._failures.get(peer, 0) + failures

    def lock_stats(self) -> LockStats:
        return LockStats()
