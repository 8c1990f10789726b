"""StoreThread: a node's store writes in a thread of their own (runtime/store_thread.py)."""

from __future__ import annotations

import threading

import anyio
import pytest

from framework.runtime.store_thread import StoreThread


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_calls_run_in_order_in_one_thread_and_return_their_results() -> None:
    worker = StoreThread("store-test")
    seen: list[tuple[int, str]] = []

    def record(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 10

    async with worker.running():
        results = [await worker.call(record, i) for i in range(5)]
    assert results == [0, 10, 20, 30, 40]
    assert seen == [(i, "store-test") for i in range(5)]
    assert worker.calls == 5


@pytest.mark.anyio
async def test_an_exception_in_the_thread_is_raised_to_the_caller() -> None:
    worker = StoreThread("store-test")

    def fail() -> None:
        raise OSError("disk full")

    async with worker.running():
        with pytest.raises(OSError, match="disk full"):
            await worker.call(fail)
        assert await worker.call(lambda: "still serving") == "still serving"


@pytest.mark.anyio
async def test_a_cancelled_caller_waits_for_its_call_to_finish() -> None:
    worker = StoreThread("store-test")
    started = threading.Event()
    release = threading.Event()
    events: list[str] = []

    def slow_store() -> None:
        started.set()
        release.wait(10)
        events.append("store finished")

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            await worker.call(slow_store)
        events.append("caller resumed")

    async with worker.running(), anyio.create_task_group() as tg:
        scope = anyio.CancelScope()
        tg.start_soon(caller, scope)
        await anyio.to_thread.run_sync(started.wait)
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert events == []  # cancelled, yet still waiting for the store
        release.set()
    assert events == ["store finished", "caller resumed"]


@pytest.mark.anyio
async def test_outside_its_block_a_call_runs_in_a_worker_thread_of_anyio() -> None:
    worker = StoreThread("store-test")
    name = await worker.call(lambda: threading.current_thread().name)
    assert name != "store-test"
    assert worker.calls == 0
    async with worker.running():
        assert await worker.call(lambda: threading.current_thread().name) == "store-test"
    assert await worker.call(lambda: threading.current_thread().name) != "store-test"
    assert not any(t.name == "store-test" for t in threading.enumerate())  # joined


@pytest.mark.anyio
async def test_running_twice_at_once_is_refused() -> None:
    worker = StoreThread("store-test")
    async with worker.running():
        with pytest.raises(RuntimeError, match="already running"):
            async with worker.running():
                pass
