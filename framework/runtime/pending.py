"""Outcomes the Ready loop owes someone, and the deadlines after which it gives up on them.

A client write or read is not a task: it is a ``Waiter`` parked in the node's tables (by
log index, by ReadIndex context) until the Ready loop settles it. A waiter is settled once,
with a value or an ``ErrorReply``; later attempts are ignored, so "the entry applied after
its client timed out" and "the node shut down while the write was in flight" need no
special cases. Settling either sets an event (for an admin coroutine awaiting it) or calls
``on_done`` (for a client request answered straight onto its connection, which costs no
task, no cancel scope and no event per request: at 20,000 writes a second, that matters).

``Deadlines`` expires callback waiters that nobody settled in time. Requests arrive with
nearly the same time limit, so arrival order is nearly deadline order: a deque swept from
the front is enough, and settled waiters at the front are dropped as the sweep passes them.
A waiter whose limit was shorter than its elder neighbour's is expired at most that
difference late, which only delays a ``retry`` answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from framework.transport.wire import ErrorReply

__all__ = ["Deadlines", "Waiter"]


class Waiter:
    """One outcome: ``succeed(value)`` or ``fail(kind, message)``, whichever comes first."""

    __slots__ = ("_event", "deadline", "done", "error", "on_done", "value")

    def __init__(
        self, on_done: Callable[[Waiter], None] | None = None, deadline: float = 0.0
    ) -> None:
        self.on_done = on_done
        """Called once, on the event loop, when the outcome is known (instead of an event)."""
        self.deadline = deadline
        self.done = False
        self.value: object = None
        self.error: ErrorReply | None = None
        self._event: anyio.Event | None = None

    def succeed(self, value: object) -> None:
        if not self.done:
            self.value = value
            self._settle()

    def fail(self, kind: Any, message: str, leader_id: int = 0, address: str = "") -> None:
        if not self.done:
            self.error = ErrorReply(
                kind=kind, message=message, leader_id=leader_id, leader_address=address
            )
            self._settle()

    def _settle(self) -> None:
        self.done = True
        if self.on_done is not None:
            self.on_done(self)
        elif self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Until settled (for waiters without ``on_done``)."""
        if self.done:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class Deadlines:
    """Callback waiters in arrival order, expired by ``expire(now)``."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[Waiter] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, waiter: Waiter) -> None:
        self._queue.append(waiter)

    def expire(self, now: float) -> list[Waiter]:
        """Forget settled waiters at the front; return the unsettled ones past their deadline
        (the caller fails them)."""
        queue = self._queue
        expired: list[Waiter] = []
        while queue:
            first = queue[0]
            if first.done:
                queue.popleft()
            elif first.deadline <= now:
                expired.append(queue.popleft())
            else:
                break
        return expired

    def drain(self) -> list[Waiter]:
        """Every unsettled waiter (at shutdown)."""
        waiters = [w for w in self._queue if not w.done]
        self._queue.clear()
        return waiters
