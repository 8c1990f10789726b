"""The legacy locks, with the plan's lock accounting: a read-write lock and two mutexes.

Theory of operation
-------------------
`RWLock` is the Python twin of the ``tokio::sync::RwLock`` behind the seed's
``Arc<RwLock<NodeStatus>>``: one FIFO queue of waiting readers and writers, so

- readers share the lock while no writer holds it and none waits ahead of them;
- a waiting writer blocks every reader that arrives after it (writer preference: a stream
  of readers cannot starve a writer), and readers queued behind a writer go in together as
  soon as that writer is done (so a stream of writers cannot starve readers either).

A request is granted by the task that frees the lock: it updates the holder count, marks
the waiter ``granted`` and sets its event. A waiter therefore leaves in one of two states:

- cancelled before it was granted: it removes itself from the queue and re-runs the
  granting step, because a writer at the head of the queue may have been all that kept the
  readers behind it waiting;
- granted, but cancelled before it ran again (the event was set in the same scheduling round
  as the cancellation): it owns the lock without knowing it, so it releases it, which hands
  the lock on. Either way a cancelled waiter leaves no trace.

The uncontended path takes the lock without yielding to the event loop, as tokio does;
it only checks for a pending cancellation, so ``read()`` / ``write()`` are cancel points.

Accounting (``stats()``, the plan's lock metrics): every acquisition is counted; one that
had to queue is *contended* and adds the time from queueing to running again to
``wait_seconds`` (event-loop clock: ``anyio.current_time()``, virtual under trio's
``MockClock``). A wait that ends in cancellation acquired nothing and is not counted.

`CountingLock` is an ``anyio.Lock`` with the same accounting, for the legacy mutexes.
`CountingThreadLock` is a ``threading.Lock`` with the same accounting, for the legacy
metrics, which worker threads update too.

None of these locks is re-entrant: a task asking again for a lock it holds waits forever
(or, for `CountingLock`, raises), exactly like the locks they stand in for.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from types import TracebackType

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from framework.seams import LockStats

__all__ = ["CountingLock", "CountingThreadLock", "RWLock"]


class _Waiter:
    """One queued request; ``granted`` is set by the task that hands the lock over."""

    __slots__ = ("event", "granted", "writer")

    def __init__(self, *, writer: bool) -> None:
        self.writer = writer
        self.granted = False
        self.event = anyio.Event()


class _RWGuard:
    """``async with lock.read():`` / ``async with lock.write():``."""

    __slots__ = ("_lock", "_writer")

    def __init__(self, lock: RWLock, *, writer: bool) -> None:
        self._lock = lock
        self._writer = writer

    async def __aenter__(self) -> None:
        await self._lock._acquire(writer=self._writer)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock._release(writer=self._writer)


class RWLock:
    """A fair, writer-preferring anyio read-write lock with lock accounting."""

    __slots__ = ("_acquisitions", "_contended", "_queue", "_readers", "_wait_seconds", "_writer")

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._queue: deque[_Waiter] = deque()
        self._acquisitions = 0
        self._contended = 0
        self._wait_seconds = 0.0

    def read(self) -> _RWGuard:
        """Shared access: ``async with lock.read(): ...``."""
        return _RWGuard(self, writer=False)

    def write(self) -> _RWGuard:
        """Exclusive access: ``async with lock.write(): ...``."""
        return _RWGuard(self, writer=True)

    @property
    def readers(self) -> int:
        """Readers holding the lock now (granted ones included)."""
        return self._readers

    @property
    def writing(self) -> bool:
        """Whether a writer holds the lock now."""
        return self._writer

    @property
    def waiting(self) -> int:
        """Requests queued and not yet granted."""
        return len(self._queue)

    def stats(self) -> LockStats:
        return LockStats(self._acquisitions, self._contended, self._wait_seconds)

    # -- acquiring and releasing ----------------------------------------------------------

    def _available(self, *, writer: bool) -> bool:
        # Nobody may pass a queued request: that is both the writer preference and fairness.
        if self._queue or self._writer:
            return False
        return not writer or self._readers == 0

    def _take(self, *, writer: bool) -> None:
        if writer:
            self._writer = True
        else:
            self._readers += 1

    async def _acquire(self, *, writer: bool) -> None:
        await checkpoint_if_cancelled()
        if self._available(writer=writer):
            self._take(writer=writer)
            self._acquisitions += 1
            return
        waiter = _Waiter(writer=writer)
        self._queue.append(waiter)
        queued_at = anyio.current_time()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                # Handed the lock as the cancellation arrived: hand it on.
                self._release(writer=writer)
            else:
                self._queue.remove(waiter)
                # A writer leaving the head of the queue may free the readers behind it.
                self._grant()
            raise
        self._acquisitions += 1
        self._contended += 1
        self._wait_seconds += anyio.current_time() - queued_at

    def _release(self, *, writer: bool) -> None:
        if writer:
            if not self._writer:
                raise RuntimeError("RWLock: write lock released but not held")
            self._writer = False
        else:
            if self._readers == 0:
                raise RuntimeError("RWLock: read lock released but not held")
            self._readers -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand the lock to the head of the queue: one writer, or every reader up to the
        next queued writer."""
        while self._queue and not self._writer:
            head = self._queue[0]
            if head.writer and self._readers:
                return
            self._queue.popleft()
            self._take(writer=head.writer)
            head.granted = True
            head.event.set()
            if head.writer:
                return


class CountingLock:
    """An ``anyio.Lock`` (FIFO, not re-entrant) that counts acquisitions, contention and
    waiting: ``async with lock: ...``."""

    __slots__ = ("_acquisitions", "_contended", "_lock", "_wait_seconds")

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._acquisitions = 0
        self._contended = 0
        self._wait_seconds = 0.0

    async def acquire(self) -> None:
        await checkpoint_if_cancelled()
        try:
            self._lock.acquire_nowait()
        except anyio.WouldBlock:
            queued_at = anyio.current_time()
            await self._lock.acquire()
            self._contended += 1
            self._wait_seconds += anyio.current_time() - queued_at
        self._acquisitions += 1

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting (counted); False if it is held."""
        try:
            self._lock.acquire_nowait()
        except anyio.WouldBlock:
            return False
        self._acquisitions += 1
        return True

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def stats(self) -> LockStats:
        return LockStats(self._acquisitions, self._contended, self._wait_seconds)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class CountingThreadLock:
    """A ``threading.Lock`` that counts acquisitions, contention and waiting:
    ``with lock: ...``. Thread-safe: the counters change only while the lock is held."""

    __slots__ = ("_acquisitions", "_contended", "_lock", "_wait_seconds")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acquisitions = 0
        self._contended = 0
        self._wait_seconds = 0.0

    def acquire(self) -> None:
        if not self._lock.acquire(blocking=False):
            queued_at = time.perf_counter()
            self._lock.acquire()
            self._contended += 1
            self._wait_seconds += time.perf_counter() - queued_at
        self._acquisitions += 1

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def stats(self) -> LockStats:
        """The counters, read consistently (this read is not itself counted)."""
        with self._lock:
            return LockStats(self._acquisitions, self._contended, self._wait_seconds)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
