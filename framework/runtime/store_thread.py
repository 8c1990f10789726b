"""``StoreThread``: the one thread a node's log-store writes run in.

Theory of operation
-------------------
Every Ready with entries, a term, a vote or a snapshot is written to the log store before
its messages that promise durability leave, so a single write waits for a store on the
leader and on a follower. A blocking call may not run on the event loop, so each store is
handed to a thread; what that hand-over costs is on every write's path. anyio's
``to_thread.run_sync`` is general (a pool of threads, a capacity limiter, the context
copied into the thread, cancellation scopes around the wait), and on the development
machine it took about 67 us a round trip and 80 us of CPU against 23 us and 26 us for a
thread that does nothing else (``benchmarks`` note in the README: issue #15). A node's
stores are strictly sequential anyway (the Ready loop awaits each), so one dedicated
thread loses nothing.

The rules:

1. ``call(fn, *args)`` queues ``fn(*args)`` for the thread and waits for it; its result
   or exception comes back. Calls run one at a time, in the order they were made.
2. A call is never abandoned: a caller cancelled while its call runs waits (shielded)
   until it finishes, then the cancellation goes on, as with ``to_thread.run_sync``'s
   default. A store half done behind the loop's back would race the next one.
3. The thread belongs to the ``async with`` block that started it (``running()``): leaving
   the block stops the thread after the calls queued before it, and joins it. Outside
   that block, ``call`` runs ``fn`` through ``anyio.to_thread.run_sync`` (a store before
   the node serves, or after it stopped).
4. The thread wakes its caller through the event loop's thread-safe callback (asyncio:
   ``call_soon_threadsafe``; trio: the trio token's ``run_sync_soon``), which sets an
   ``anyio.Event`` on the loop's own thread. If the loop is gone by then, nobody waits.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import sniffio

__all__ = ["StoreThread"]


class _Call:
    __slots__ = ("args", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = None


class StoreThread:
    """One worker thread for a node's store writes (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.calls = 0
        """Calls run by the thread (not by the fallback), for tests."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StoreThread]:
        """Run the thread for the duration of the block (rule 3)."""
        if self._thread is not None:
            raise RuntimeError(f"store thread {self._name!r} is already running")
        wake = _loop_callback()
        thread = threading.Thread(target=self._serve, args=(wake,), name=self._name, daemon=True)
        thread.start()
        self._thread = thread
        try:
            yield self
        finally:
            self._thread = None  # calls from now on take the fallback
            self._calls.put(_STOP)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the store thread; its result, or its exception raised here."""
        if self._thread is None:
            return await anyio.to_thread.run_sync(fn, *args)
        call = _Call(fn, args)
        self._calls.put(call)
        try:
            await call.done.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):  # rule 2: never abandoned
                await call.done.wait()
            raise
        if call.error is not None:
            raise call.error
        return call.result

    def _serve(self, wake: Callable[[Callable[[], object]], None]) -> None:
        calls = self._calls
        while True:
            call = calls.get()
            if call is None:
                return
            try:
                call.result = call.fn(*call.args)
            except BaseException as exc:  # handed to the caller, re-raised there
                call.error = exc
            self.calls += 1
            try:
                wake(call.done.set)
            except RuntimeError:
                return  # the event loop is closed: nobody is waiting any more (rule 4)


def _loop_callback() -> Callable[[Callable[[], object]], None]:
    """A function another thread may call to run a callback on this event loop's thread."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    if library == "asyncio":
        import asyncio

        loop = asyncio.get_running_loop()

        def call_soon(callback: Callable[[], object]) -> None:
            loop.call_soon_threadsafe(callback)

        return call_soon
    raise RuntimeError(f"event loop {library!r}: expected asyncio or trio")
