"""The legacy timeout policy: one fixed timeout per operation.

The seed had no adaptive timeout handling: an operation got the same deadline on every
attempt whatever the network did, so a slow link timed out again and again, and a fast one
waited the full deadline for a lost message. Here that is ``base_timeout`` from
``[performance.timeouts.<operation>]``, or the client request timeout for an operation the
table does not name; the attempt number is ignored (no backoff). The adaptive timeout
plugin (RTT estimate, backoff with jitter, bounds) is measured against this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from framework.config import Settings
from framework.seams import LockStats

__all__ = ["FixedTimeouts"]


class FixedTimeouts:
    """`TimeoutPolicy` with fixed per-operation timeouts, read once from the settings.

    ``stats()`` maps each operation (configured or observed) to ``count`` (observations),
    ``timeouts`` (observations that did not finish in time) and ``timeout_seconds`` (the
    timeout it gets). State carried across a swap: the counts, as
    ``{operation: {"count": n, "timeouts": n}}``; keys it does not know are ignored.
    """

    __slots__ = ("_count", "_default", "_fixed", "_timeouts")

    def __init__(self, settings: Settings) -> None:
        self._fixed: dict[str, float] = {
            operation: timeout.base_timeout
            for operation, timeout in settings.performance.timeouts.items()
        }
        self._default = settings.client.request_timeout
        self._count: dict[str, int] = {}
        self._timeouts: dict[str, int] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def timeout(self, operation: str, attempt: int = 0) -> float:
        return self._fixed.get(operation, self._default)

    def observe(self, operation: str, seconds: float, *, ok: bool) -> None:
        self._count[operation] = self._count.get(operation, 0) + 1
        if not ok:
            self._timeouts[operation] = self._timeouts.get(operation, 0) + 1

    def stats(self) -> Mapping[str, Mapping[str, float]]:
        operations = dict.fromkeys([*self._fixed, *self._count])
        return {
            operation: {
                "count": self._count.get(operation, 0),
                "timeouts": self._timeouts.get(operation, 0),
                "timeout_seconds": self.timeout(operation),
            }
            for operation in operations
        }

    def export_state(self) -> dict[str, dict[str, int]]:
        return {
            operation: {"count": count, "timeouts": self._timeouts.get(operation, 0)}
            for operation, count in self._count.items()
        }

    def import_state(self, state: Any) -> None:
        if state is None:
            return
        if not isinstance(state, Mapping):
            raise TypeError(
                "timeout policy state must be a mapping of operation -> "
                f'{{"count", "timeouts"}}, not {type(state).__name__}'
            )
        counts: list[tuple[str, int, int]] = []
        for operation, numbers in state.items():
            if not isinstance(operation, str) or not isinstance(numbers, Mapping):
                continue
            count, timeouts = numbers.get("count", 0), numbers.get("timeouts", 0)
            if _is_count(count) and _is_count(timeouts):
                counts.append((operation, count, timeouts))
        for operation, count, timeouts in counts:
            self._count[operation] = self._count.get(operation, 0) + count
            if timeouts:
                self._timeouts[operation] = self._timeouts.get(operation, 0) + timeouts

    def lock_stats(self) -> LockStats:
        return LockStats()


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
