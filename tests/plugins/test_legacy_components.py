"""The legacy components: the read-write lock (sharing, writer preference, accounting,
cancellation under random schedules), the status store, the unbounded queue, fixed
timeouts, the absent send guard, the locked metrics, and the plugin's factories."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import count
from types import SimpleNamespace

import anyio
import pytest
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

import legacy
from framework import hooks
from framework.config import Settings, load_settings
from framework.hooks import BuildContext
from framework.seams import SWAPPABLE_SEAMS, Component, LockStats, NodeStatus, Priority, QueueStats
from legacy import (
    HISTOGRAM_WINDOW,
    CountingLock,
    CountingThreadLock,
    FixedTimeouts,
    LockedConnectionPool,
    LockedMetrics,
    LockedNodeStatus,
    NoGuard,
    RWLock,
    UnboundedQueue,
)
from legacy import plugin as legacy_plugin

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def real_settings() -> Settings:
    return load_settings(env={})


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (bounded, so a wedge fails the test)."""
    with anyio.fail_after(5):
        while not condition():
            await checkpoint()


@asynccontextmanager
async def bounded_task_group() -> AsyncIterator[TaskGroup]:
    """A task group that fails the test, instead of hanging it, when a lock wedges."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            yield tg


# == RWLock ===================================================================================


async def test_readers_share_and_the_uncontended_path_does_not_wait() -> None:
    lock = RWLock()
    async with lock.read(), lock.read():
        assert lock.readers == 2
        assert not lock.writing
    assert lock.readers == 0
    async with lock.write():
        assert lock.writing
    assert lock.stats() == LockStats(acquisitions=3, contended=0, wait_seconds=0.0)


async def test_a_waiting_writer_blocks_new_readers() -> None:
    lock = RWLock()
    log: list[str] = []

    async def writer() -> None:
        async with lock.write():
            log.append("writer in")
            await checkpoint()
            log.append("writer out")

    async def late_reader() -> None:
        async with lock.read():
            log.append("late reader in")

    async with bounded_task_group() as tg, lock.read():
        tg.start_soon(writer)
        await until(lambda: lock.waiting == 1)
        tg.start_soon(late_reader)
        await until(lambda: lock.waiting == 2)
        # The lock is only read-held, yet the new reader queues behind the writer.
        await anyio.wait_all_tasks_blocked()
        assert log == []
        assert lock.readers == 1
    assert log == ["writer in", "writer out", "late reader in"]
    stats = lock.stats()
    assert (stats.acquisitions, stats.contended) == (3, 2)
    assert stats.wait_seconds >= 0


async def test_readers_queued_behind_a_writer_go_in_together() -> None:
    lock = RWLock()
    entered = 0

    async def reader() -> None:
        nonlocal entered
        async with lock.read():
            entered += 1
            # Each stays in until all three are: they can only finish if they share.
            await until(lambda: entered == 3)

    async with bounded_task_group() as tg, lock.write():
        for _ in range(3):
            tg.start_soon(reader)
        await until(lambda: lock.waiting == 3)
    assert lock.stats().contended == 3


async def test_a_writer_waits_for_every_reader() -> None:
    lock = RWLock()
    release = anyio.Event()
    log: list[str] = []

    async def reader(n: int) -> None:
        async with lock.read():
            log.append(f"reader {n} in")
            await release.wait()
            log.append(f"reader {n} out")

    async def writer() -> None:
        async with lock.write():
            log.append("writer in")

    async with bounded_task_group() as tg:
        tg.start_soon(reader, 1)
        tg.start_soon(reader, 2)
        await until(lambda: lock.readers == 2)
        tg.start_soon(writer)
        await until(lambda: lock.waiting == 1)
        release.set()
    assert log[-1] == "writer in"
    assert sorted(log[:-1]) == ["reader 1 in", "reader 1 out", "reader 2 in", "reader 2 out"]


async def test_a_cancelled_waiting_writer_lets_the_readers_behind_it_in() -> None:
    lock = RWLock()
    writer_scope = anyio.CancelScope()
    reader_in = anyio.Event()

    async def writer() -> None:
        with writer_scope:
            async with lock.write():
                pytest.fail("the writer was cancelled while it waited")

    async def reader() -> None:
        async with lock.read():
            reader_in.set()

    async with bounded_task_group() as tg, lock.read():
        tg.start_soon(writer)
        await until(lambda: lock.waiting == 1)
        tg.start_soon(reader)
        await until(lambda: lock.waiting == 2)
        writer_scope.cancel()
        # Still inside our read lock: the reader must get in now, not when we leave.
        with anyio.fail_after(5):
            await reader_in.wait()
    assert (lock.readers, lock.writing, lock.waiting) == (0, False, 0)
    # The cancelled writer acquired nothing.
    assert lock.stats().acquisitions == 2


async def test_a_cancelled_waiting_reader_leaves_no_trace() -> None:
    lock = RWLock()
    scope = anyio.CancelScope()

    async def reader() -> None:
        with scope:
            async with lock.read():
                pytest.fail("the reader was cancelled while it waited")

    async with bounded_task_group() as tg, lock.write():
        tg.start_soon(reader)
        await until(lambda: lock.waiting == 1)
        scope.cancel()
        await until(lambda: lock.waiting == 0)
    assert (lock.readers, lock.writing) == (0, False)
    async with lock.write():
        pass


@pytest.mark.parametrize("waiter_writes", [False, True], ids=["reader", "writer"])
async def test_a_waiter_granted_and_cancelled_at_once_hands_the_lock_on(
    waiter_writes: bool,
) -> None:
    """The release sets the waiter's event and the cancellation lands in the same round:
    the waiter owns the lock without having run, and must pass it on."""
    lock = RWLock()
    scope = anyio.CancelScope()
    entered: list[str] = []

    async def waiter() -> None:
        with scope:
            async with lock.write() if waiter_writes else lock.read():
                entered.append("cancelled waiter")

    async def next_writer() -> None:
        async with lock.write():
            entered.append("next writer")

    async with bounded_task_group() as tg:
        await lock.write().__aenter__()
        tg.start_soon(waiter)
        await until(lambda: lock.waiting == 1)
        tg.start_soon(next_writer)
        await until(lambda: lock.waiting == 2)
        # Cancel, then release before the waiter can run: the release grants it the lock,
        # and it wakes up to its cancellation (on both backends the cancellation reaches
        # the waiter first, whichever of the two is issued first within one round).
        scope.cancel()
        await lock.write().__aexit__(None, None, None)
        assert lock.writing if waiter_writes else lock.readers == 1
    assert entered == ["next writer"]
    assert (lock.readers, lock.writing, lock.waiting) == (0, False, 0)
    # Only the first write and the next writer acquired; the cancelled waiter did not.
    assert lock.stats().acquisitions == 2


async def test_releasing_a_lock_not_held_is_an_error() -> None:
    lock = RWLock()
    with pytest.raises(RuntimeError, match="read lock released but not held"):
        await lock.read().__aexit__(None, None, None)
    with pytest.raises(RuntimeError, match="write lock released but not held"):
        await lock.write().__aexit__(None, None, None)


# A random schedule: each actor waits `start` scheduling rounds, asks for the lock, holds
# it for `hold` rounds; a canceller cancels it after `cancel_after` rounds, whether it is
# waiting, holding, or already gone.
actors_strategy = st.lists(
    st.tuples(
        st.booleans(),  # writer?
        st.integers(0, 6),  # start
        st.integers(0, 4),  # hold
        st.none() | st.integers(0, 10),  # cancel_after
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=150, deadline=None)
@given(actors=actors_strategy)
async def test_random_schedules_with_cancellation_keep_the_lock_safe_fair_and_live(
    actors: list[tuple[bool, int, int, int | None]],
) -> None:
    lock = RWLock()
    readers_in = writers_in = 0
    tickets = count()
    requested: dict[int, tuple[bool, int]] = {}  # actor -> (writer?, ticket), still waiting
    cancelled: set[int] = set()
    entered = 0

    def nobody_waits_needlessly() -> None:
        # Liveness, checked continually: whoever heads the queue could not go in now.
        # (Peeks at the queue: which kind of request heads it is not public.)
        if lock.waiting:
            head_writes = lock._queue[0].writer
            assert lock.writing or (head_writes and lock.readers > 0)

    async def step() -> None:
        nobody_waits_needlessly()
        await checkpoint()
        nobody_waits_needlessly()

    def earlier_waiters(ticket: int, *, writers_only: bool) -> list[int]:
        return [
            n
            for n, (writer, t) in requested.items()
            if t < ticket and n not in cancelled and (writer or not writers_only)
        ]

    async def canceller(n: int, scope: anyio.CancelScope, rounds: int) -> None:
        for _ in range(rounds):
            await step()
        cancelled.add(n)
        scope.cancel()

    async def actor(n: int, writer: bool, start: int, hold: int, scope: anyio.CancelScope) -> None:
        nonlocal readers_in, writers_in, entered
        for _ in range(start):
            await step()
        with scope:
            ticket = next(tickets)
            requested[n] = (writer, ticket)
            async with lock.write() if writer else lock.read():
                del requested[n]
                entered += 1
                # Safety: one writer alone, or readers only.
                assert writers_in == 0
                assert not writer or readers_in == 0
                # Fairness: a writer follows everyone who asked before it; a reader follows
                # the writers who asked before it (unless they were cancelled).
                assert earlier_waiters(ticket, writers_only=not writer) == []
                if writer:
                    writers_in += 1
                else:
                    readers_in += 1
                try:
                    for _ in range(hold):
                        await step()
                finally:
                    if writer:
                        writers_in -= 1
                    else:
                        readers_in -= 1
        requested.pop(n, None)

    with anyio.fail_after(5):  # liveness: nobody waits forever
        async with anyio.create_task_group() as tg:
            for n, (writer, start, hold, cancel_after) in enumerate(actors):
                scope = anyio.CancelScope()
                tg.start_soon(actor, n, writer, start, hold, scope)
                if cancel_after is not None:
                    tg.start_soon(canceller, n, scope, cancel_after)

    assert (lock.readers, lock.writing, lock.waiting) == (0, False, 0)
    stats = lock.stats()
    assert stats.acquisitions == entered
    assert 0 <= stats.contended <= stats.acquisitions
    async with lock.write():  # not wedged
        pass


# == CountingLock, CountingThreadLock ===========================================================


async def test_counting_lock_counts_contended_acquisitions() -> None:
    lock = CountingLock()
    order: list[int] = []

    async def worker(n: int) -> None:
        async with lock:
            order.append(n)

    async with bounded_task_group() as tg, lock:
        for n in range(3):
            tg.start_soon(worker, n)
            await anyio.wait_all_tasks_blocked()  # queued in this order
        assert lock.locked()
    assert order == [0, 1, 2]  # FIFO
    stats = lock.stats()
    assert (stats.acquisitions, stats.contended) == (4, 3)
    assert not lock.locked()


async def test_counting_lock_cancelled_waiter_is_not_counted() -> None:
    lock = CountingLock()
    scope = anyio.CancelScope()

    async def waiter() -> None:
        with scope:
            await lock.acquire()
            pytest.fail("the waiter was cancelled while it waited")

    async with bounded_task_group() as tg, lock:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
    assert lock.stats().acquisitions == 1
    async with lock:
        pass
    assert lock.stats() == LockStats(acquisitions=2, contended=0, wait_seconds=0.0)


def test_counting_thread_lock_is_thread_safe_and_counts_contention() -> None:
    lock = CountingThreadLock()
    total = 0

    def bump() -> None:
        nonlocal total
        for _ in range(2000):
            with lock:
                total += 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert total == 8000
    assert lock.stats().acquisitions == 8000

    # A thread that finds the lock held is counted as contended. Whether it tried before
    # the main thread let go is up to the OS scheduler, so try a few times, waiting longer.
    for attempt in range(10):
        before = lock.stats().contended
        started = threading.Event()

        def contend(started: threading.Event = started) -> None:
            started.set()
            with lock:
                pass

        with lock:
            thread = threading.Thread(target=contend)
            thread.start()
            started.wait()
            time.sleep(0.001 * 2**attempt)
        thread.join()
        if lock.stats().contended > before:
            break
    else:
        pytest.fail("a thread blocked on the held lock was never counted as contended")
    assert not lock.locked()


# == LockedNodeStatus ===========================================================================


async def test_status_store_publishes_and_reads_under_the_lock() -> None:
    store = LockedNodeStatus(3)
    assert isinstance(store, Component)
    assert await store.read() == NodeStatus(node_id=3)
    status = NodeStatus(node_id=3, role="leader", term=4, leader=3, commit=10, voters=(1, 2, 3))
    await store.publish(status)
    assert await store.read() == status
    stats = store.lock_stats()
    assert (stats.acquisitions, stats.contended) == (3, 0)


async def test_status_store_state_moves_to_a_successor() -> None:
    old, new = LockedNodeStatus(2), LockedNodeStatus(2)
    status = NodeStatus(node_id=2, role="follower", term=7, leader=1)
    await old.publish(status)
    new.import_state(old.export_state())
    assert await new.read() == status
    with pytest.raises(ValueError, match="status of node 5 imported into the store of node 2"):
        new.import_state(NodeStatus(node_id=5))
    with pytest.raises(TypeError, match="must be a NodeStatus"):
        new.import_state({"node_id": 2})
    assert await new.read() == status


async def test_status_store_run_reports_started_and_stops_when_cancelled() -> None:
    store = LockedNodeStatus(1)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await store.publish(NodeStatus(node_id=1, role="candidate"))
        tg.cancel_scope.cancel()
    assert (await store.read()).role == "candidate"


# == UnboundedQueue =============================================================================


def test_queue_is_fifo_and_ignores_priority() -> None:
    queue: UnboundedQueue[str] = UnboundedQueue("inbox")
    queue.put_nowait("proposal", Priority.NORMAL)
    queue.put_nowait("append", Priority.HIGH)
    queue.put_nowait("vote", Priority.CRITICAL)
    queue.put_nowait("read")
    assert len(queue) == 4
    assert queue.drain(2) == ["proposal", "append"]
    assert queue.drain(0) == []
    assert queue.drain() == ["vote", "read"]
    assert queue.drain() == []
    with pytest.raises(ValueError, match="drain limit"):
        queue.drain(-1)


def test_queue_never_refuses_and_reports_unbounded_stats() -> None:
    queue: UnboundedQueue[int] = UnboundedQueue("proposals")
    for n in range(50_000):
        queue.put_nowait(n)
    queue.drain(49_990)
    assert queue.stats() == QueueStats(
        name="proposals", depth=10, capacity=None, max_depth=50_000, enqueued=50_000, rejected=0
    )
    assert queue.lock_stats() == LockStats()


def test_queue_state_moves_to_a_successor_once() -> None:
    old: UnboundedQueue[str] = UnboundedQueue("inbox")
    old.put_nowait("a", Priority.CRITICAL)
    old.put_nowait("b")
    state = old.export_state()
    assert state == [("a", Priority.CRITICAL), ("b", Priority.NORMAL)]
    assert len(old) == 0  # draining the old queue after the swap delivers nothing twice

    new: UnboundedQueue[str] = UnboundedQueue("inbox")
    new.put_nowait("already here")
    new.import_state(state)
    assert new.export_state() == [
        ("already here", Priority.NORMAL),
        ("a", Priority.CRITICAL),
        ("b", Priority.NORMAL),
    ]
    new.import_state([("x", 1), ["y", Priority.NORMAL]])
    assert new.drain() == ["x", "y"]


def test_queue_refuses_a_bad_state_without_enqueuing_any_of_it() -> None:
    queue: UnboundedQueue[str] = UnboundedQueue("inbox")
    with pytest.raises(ValueError, match="priority 9"):
        queue.import_state([("ok", 0), ("bad", 9)])
    with pytest.raises(TypeError, match="pairs"):
        queue.import_state(["not a pair"])
    with pytest.raises(TypeError, match="pairs"):
        queue.import_state(42)
    assert len(queue) == 0


# == FixedTimeouts ==============================================================================


def test_timeouts_are_the_base_timeouts_of_the_settings(real_settings: Settings) -> None:
    policy = FixedTimeouts(real_settings)
    table = real_settings.performance.timeouts
    assert table  # the defaults name operations; otherwise this test checks nothing
    for operation, configured in table.items():
        assert policy.timeout(operation) == configured.base_timeout
        # Fixed: no backoff however many attempts failed.
        assert policy.timeout(operation, attempt=5) == configured.base_timeout
    assert policy.timeout("unlisted_operation", 3) == real_settings.client.request_timeout


def test_timeouts_follow_overridden_settings() -> None:
    overridden = load_settings(
        env={},
        overrides={
            "performance.timeouts.raft_message.base_timeout": "250ms",
            "client.request_timeout": "7s",
        },
    )
    policy = FixedTimeouts(overridden)
    assert policy.timeout("raft_message") == 0.25
    assert policy.timeout("unlisted_operation") == 7.0


def test_timeouts_count_observations_and_carry_them_over(real_settings: Settings) -> None:
    policy = FixedTimeouts(real_settings)
    policy.observe("raft_message", 0.01, ok=True)
    policy.observe("raft_message", 0.2, ok=False)
    policy.observe("custom", 1.0, ok=False)
    stats = policy.stats()
    assert stats["raft_message"] == {
        "count": 2,
        "timeouts": 1,
        "timeout_seconds": real_settings.performance.timeouts["raft_message"].base_timeout,
    }
    assert stats["custom"] == {
        "count": 1,
        "timeouts": 1,
        "timeout_seconds": real_settings.client.request_timeout,
    }
    assert stats["connect"]["count"] == 0  # configured operations show before use

    successor = FixedTimeouts(real_settings)
    successor.import_state(policy.export_state())
    assert successor.stats()["raft_message"]["count"] == 2
    assert successor.stats()["custom"]["timeouts"] == 1
    successor.import_state({"rtt": {"srtt": 0.5}, "connect": {"count": True}})  # not counts
    assert successor.stats()["connect"]["count"] == 0
    with pytest.raises(TypeError, match="timeout policy state"):
        successor.import_state([1, 2])
    assert policy.lock_stats() == LockStats()


# == NoGuard ====================================================================================


def test_no_guard_allows_everything_and_counts_failures() -> None:
    guard = NoGuard()
    messages = ["append", "heartbeat"]
    assert list(guard.allow(2, messages)) == messages
    for _ in range(100):
        guard.record(2, ok=False)
    guard.record(3, ok=True)
    assert list(guard.allow(2, messages)) == messages  # no breaker ever opens
    assert guard.states() == {}
    assert guard.failures() == {2: 100}

    successor = NoGuard()
    successor.import_state(guard.export_state())
    successor.import_state({3: "open", True: 1})  # a breaker's states mean nothing here
    assert successor.failures() == {2: 100}
    with pytest.raises(TypeError, match="send guard state"):
        successor.import_state(["open"])
    assert guard.lock_stats() == LockStats()


# == LockedMetrics ==============================================================================


def test_metrics_snapshot_has_counters_and_histogram_summaries() -> None:
    metrics = LockedMetrics()
    metrics.add("proposals")
    metrics.add("proposals", 4)
    for value in range(1, 101):
        metrics.record("commit_latency", float(value))
    snapshot = metrics.snapshot()
    assert snapshot["proposals"] == 5
    assert snapshot["commit_latency"] == {
        "count": 100,
        "sum": 5050.0,
        "p50": 50.0,
        "p99": 99.0,
        "max": 100.0,
    }
    # Every access took the one lock: 2 adds, 100 records, 1 snapshot.
    assert metrics.lock_stats().acquisitions == 103


def test_metrics_histograms_keep_a_bounded_window() -> None:
    metrics = LockedMetrics()
    for value in range(HISTOGRAM_WINDOW + 500):
        metrics.record("h", float(value))
    summary = metrics.snapshot()["h"]
    assert summary["count"] == HISTOGRAM_WINDOW + 500
    assert summary["max"] == HISTOGRAM_WINDOW + 499
    # Percentiles come from the last HISTOGRAM_WINDOW samples only: 500 .. WINDOW + 499.
    assert summary["p50"] == 500 + HISTOGRAM_WINDOW // 2 - 1
    assert len(metrics.export_state()["histograms"]["h"]["samples"]) == HISTOGRAM_WINDOW


def test_metrics_name_is_a_counter_or_a_histogram() -> None:
    metrics = LockedMetrics()
    metrics.add("x")
    metrics.record("y", 1.0)
    with pytest.raises(ValueError, match="'x' is a counter"):
        metrics.record("x", 1.0)
    with pytest.raises(ValueError, match="'y' is a histogram"):
        metrics.add("y")
    assert not metrics._lock.locked()  # an error inside the lock released it


def test_metrics_are_thread_safe() -> None:
    metrics = LockedMetrics()

    def work() -> None:
        for n in range(1000):
            metrics.add("ops")
            metrics.record("latency", float(n))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snapshot = metrics.snapshot()
    assert snapshot["ops"] == 4000
    assert snapshot["latency"]["count"] == 4000
    assert snapshot["latency"]["sum"] == 4 * sum(range(1000))
    assert metrics.lock_stats().acquisitions == 8001


def test_metrics_state_moves_to_a_successor() -> None:
    old = LockedMetrics()
    old.add("ops", 3)
    old.record("latency", 2.0)
    old.record("latency", 4.0)
    new = LockedMetrics()
    new.add("ops")
    new.import_state(old.export_state())
    snapshot = new.snapshot()
    assert snapshot["ops"] == 4
    assert snapshot["latency"] == {"count": 2, "sum": 6.0, "p50": 2.0, "p99": 4.0, "max": 4.0}

    before = new.snapshot()
    with pytest.raises(ValueError, match="both counters and histograms"):
        new.import_state({"counters": {"fresh": 1, "latency": 1}})
    with pytest.raises(TypeError, match="counter 'n' is 'one'"):
        new.import_state({"counters": {"good": 1, "n": "one"}})
    assert new.snapshot() == before  # a refused state changed nothing

    # A predecessor's histogram without samples (e.g. log buckets) keeps its totals.
    new.import_state({"histograms": {"bucketed": {"count": 3, "sum": 1.5, "max": 1.0}}})
    bucketed = new.snapshot()["bucketed"]
    assert (bucketed["count"], bucketed["sum"], bucketed["max"]) == (3, 1.5, 1.0)
    assert math.isnan(bucketed["p50"])


# == every component runs and stops =============================================================


async def test_every_component_runs_until_cancelled(real_settings: Settings) -> None:
    components = [
        LockedNodeStatus(1),
        UnboundedQueue[int]("inbox"),
        FixedTimeouts(real_settings),
        NoGuard(),
        LockedMetrics(),
    ]
    async with anyio.create_task_group() as tg:
        for component in components:
            assert isinstance(component, Component)
            await tg.start(component.run)
        tg.cancel_scope.cancel()


# == the plugin =================================================================================

FLAG_OF_SEAM = {
    "status_store": ("actors", LockedNodeStatus),
    "queue": ("backpressure", UnboundedQueue),
    "timeouts": ("adaptive_timeout", FixedTimeouts),
    "send_guard": ("circuit_breaker", NoGuard),
    "metrics": ("lock_free", LockedMetrics),
    "connection_pool": ("actors", LockedConnectionPool),
}


def _context(settings: Settings, **flags: bool) -> BuildContext:
    # Stand-ins for framework.flags.Evaluation: BuildContext.flag reads only `.value`.
    return BuildContext(
        node_id=4,
        settings=settings,
        flags={name: SimpleNamespace(value=value) for name, value in flags.items()},  # type: ignore[misc]  # duck-typed Evaluation
    )


def _build(seam: str, ctx: BuildContext) -> object:
    factory = getattr(legacy_plugin, f"raftmw_make_{seam}")
    if seam == "queue":
        return factory(ctx, "inbox")
    if seam == "connection_pool":
        return factory(ctx, SimpleNamespace())  # a factory only constructs: no dialling
    return factory(ctx)


def test_the_plugin_has_a_trylast_factory_for_every_seam_and_is_essential() -> None:
    factories = sorted(
        name
        for name in vars(hooks)
        if name.startswith("raftmw_make_") and name != "raftmw_make_transport"
    )
    assert (
        factories
        == sorted(f"raftmw_make_{seam}" for seam in SWAPPABLE_SEAMS)
        == sorted(f"raftmw_make_{seam}" for seam in FLAG_OF_SEAM)
    )
    for name in factories:
        marks = getattr(getattr(legacy_plugin, name), "raftmw_impl", None)
        assert marks is not None and marks["trylast"], name
    assert legacy_plugin.RAFTMW_TIER == "essential"
    assert not hasattr(legacy_plugin, "raftmw_declare_flags")


@pytest.mark.parametrize("seam", sorted(FLAG_OF_SEAM))
def test_factories_answer_when_their_flag_is_off(seam: str, real_settings: Settings) -> None:
    flag, cls = FLAG_OF_SEAM[seam]
    assert isinstance(_build(seam, _context(real_settings)), cls)  # flag undeclared: off
    assert isinstance(_build(seam, _context(real_settings, **{flag: False})), cls)
    assert _build(seam, _context(real_settings, **{flag: True})) is None
    # Other flags do not matter.
    others = {f: True for f, _ in FLAG_OF_SEAM.values() if f != flag}
    assert isinstance(_build(seam, _context(real_settings, **others)), cls)


def test_built_components_are_configured_from_the_context(real_settings: Settings) -> None:
    ctx = _context(real_settings)
    store = legacy_plugin.raftmw_make_status_store(ctx)
    assert isinstance(store, LockedNodeStatus)
    assert store.export_state() == NodeStatus(node_id=4)
    queue = legacy_plugin.raftmw_make_queue(ctx, "proposals")
    assert queue is not None and queue.stats().name == "proposals"
    timeouts = legacy_plugin.raftmw_make_timeouts(ctx)
    assert timeouts is not None
    snapshot = real_settings.performance.timeouts["snapshot"]
    assert timeouts.timeout("snapshot") == snapshot.base_timeout


def test_the_plugin_host_builds_legacy_components(real_settings: Settings) -> None:
    from framework.plugins import PluginError, PluginHost

    host = PluginHost(entry_points=False, plugins=[("legacy", legacy_plugin)])
    component, built_by = host.build("queue", _context(real_settings), name="inbox")
    assert isinstance(component, UnboundedQueue) and built_by == "legacy"
    with pytest.raises(PluginError, match="no plugin provides the status_store component"):
        host.build("status_store", _context(real_settings, actors=True))


def test_public_api() -> None:
    assert sorted(legacy.__all__) == sorted(
        [
            "HISTOGRAM_WINDOW",
            "CountingLock",
            "CountingThreadLock",
            "FixedTimeouts",
            "LockedConnectionPool",
            "LockedMetrics",
            "LockedNodeStatus",
            "NoGuard",
            "RWLock",
            "UnboundedQueue",
        ]
    )
