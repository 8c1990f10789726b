"""The status store seam's contract, passed by every implementation (the legacy
RwLock-guarded `LockedNodeStatus` and the `NodeStatusActor`), on asyncio and on trio.

Where the two differ on purpose (a writer holding the legacy lock stalls readers, the
actor's reads never wait; the legacy store counts lock acquisitions, the actor has none),
each test states the behaviour of each side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint

from framework.seams import Component, LockStats, NodeStatus, StatusStore
from legacy.status import LockedNodeStatus
from plugins.actors.status import NodeStatusActor

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class Implementation:
    name: str
    make: Callable[[int], StatusStore]
    takes_locks: bool


LEGACY = Implementation("legacy", LockedNodeStatus, takes_locks=True)
ACTOR = Implementation("actor", NodeStatusActor, takes_locks=False)
IMPLEMENTATIONS = [pytest.param(LEGACY, id="legacy"), pytest.param(ACTOR, id="actor")]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Implementation:
    assert isinstance(request.param, Implementation)
    return request.param


def status(node_id: int = 1, **fields: Any) -> NodeStatus:
    return NodeStatus(node_id=node_id, role="follower", **fields)


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (bounded, so a wedge fails the test)."""
    with anyio.fail_after(5):
        while not condition():
            await checkpoint()


def task_ids() -> set[int]:
    return {task.id for task in anyio.get_running_tasks()}


@dataclass
class Running:
    """A store started the way ``framework.runtime.components`` starts one."""

    store: StatusStore
    scope: anyio.CancelScope
    finished: anyio.Event


async def launch(tg: TaskGroup, store: StatusStore) -> Running:
    """Start ``store.run`` in ``tg`` in its own cancel scope, ready when this returns."""
    running = Running(store, anyio.CancelScope(), anyio.Event())

    async def run(*, task_status: TaskStatus[None]) -> None:
        try:
            with running.scope:
                await store.run(task_status=task_status)
        finally:
            running.finished.set()

    await tg.start(run)
    return running


async def swap(tg: TaskGroup, old: Running, new: StatusStore) -> Running:
    """Replace ``old`` by ``new`` as ``Components._swap`` does."""
    started = await launch(tg, new)
    # No await from here to the cancellation: nobody can publish to the old store after its
    # state was taken.
    new.import_state(old.store.export_state())
    old.scope.cancel()
    return started


@asynccontextmanager
async def serving(store: StatusStore) -> AsyncIterator[Running]:
    """``store`` running for the body, then cancelled; a wedge fails the test."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            running = await launch(tg, store)
            yield running
            running.scope.cancel()


# == the basics ================================================================================


async def test_a_new_store_is_a_component_holding_its_nodes_initial_status(
    impl: Implementation,
) -> None:
    store = impl.make(3)
    assert isinstance(store, Component)
    async with serving(store):
        assert await store.read() == NodeStatus(node_id=3)
        assert isinstance(store.lock_stats(), LockStats)


async def test_a_read_after_a_publish_returns_it(impl: Implementation) -> None:
    store = impl.make(1)
    async with serving(store):
        for commit in range(1, 4):
            published = status(term=2, commit=commit, progress={2: ("replicate", commit, 0)})
            await store.publish(published)
            assert await store.read() == published
        assert store.export_state() == published


async def test_concurrent_writers_and_readers_end_with_a_writers_last_status(
    impl: Implementation,
) -> None:
    # Writer w publishes term=w, commit=1..K in order. Applied in any interleaving, the
    # last status applied must be some writer's last one, and a reader must never see a
    # writer go backwards.
    writers, per_writer, readers = 4, 25, 4
    store = impl.make(1)
    seen: list[NodeStatus] = []
    done_writing = anyio.Event()

    async def writer(w: int) -> None:
        for commit in range(1, per_writer + 1):
            await store.publish(status(term=w, commit=commit))
            await checkpoint()

    async def reader() -> None:
        latest: dict[int, int] = {}
        while not done_writing.is_set():
            got = await store.read()
            seen.append(got)
            assert got.commit >= latest.get(got.term, 0), f"writer {got.term} went backwards"
            latest[got.term] = got.commit
            await checkpoint()

    async with serving(store):
        async with anyio.create_task_group() as tg:
            for _ in range(readers):
                tg.start_soon(reader)
            async with anyio.create_task_group() as writing:
                for w in range(1, writers + 1):
                    writing.start_soon(writer, w)
            done_writing.set()
        last = await store.read()
        assert last in [status(term=w, commit=per_writer) for w in range(1, writers + 1)]
        assert len(seen) > readers  # the readers did read while the writers wrote
        final = status(term=9, commit=1)
        await store.publish(final)
        assert await store.read() == final


# == swapping ==================================================================================


@pytest.mark.parametrize("new_impl", IMPLEMENTATIONS)
async def test_export_import_carries_the_status_across_a_swap(
    impl: Implementation, new_impl: Implementation
) -> None:
    old, new = impl.make(1), new_impl.make(1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            retired = await launch(tg, old)
            before = status(term=4, commit=7, leader=2)
            await old.publish(before)
            running = await swap(tg, retired, new)
            await retired.finished.wait()  # the old store's run returned
            assert await new.read() == before
            after = status(term=4, commit=8, leader=2)
            await new.publish(after)
            assert await new.read() == after
            running.scope.cancel()


async def test_a_swap_from_legacy_to_the_actor_and_back_keeps_every_publish() -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            legacy = LockedNodeStatus(1)
            running = await launch(tg, legacy)
            await legacy.publish(status(commit=1))

            actor = NodeStatusActor(1)
            old = running
            running = await swap(tg, running, actor)
            await old.finished.wait()  # the legacy store's run returned
            assert await actor.read() == status(commit=1)
            await actor.publish(status(commit=2))

            back = LockedNodeStatus(1)
            old = running
            running = await swap(tg, running, back)
            await old.finished.wait()  # the actor stopped ...
            with pytest.raises(RuntimeError, match="NodeStatusActor of node 1"):
                await actor.publish(status(commit=99))  # ... and says so to a late writer
            assert await back.read() == status(commit=2)
            await back.publish(status(commit=3))
            assert await back.read() == status(commit=3)
            running.scope.cancel()


@pytest.mark.parametrize(
    ("state", "error", "message"),
    [
        (status(node_id=2), ValueError, "status of node 2 imported into the store of node 1"),
        ({"node_id": 1}, TypeError, "must be a NodeStatus, not dict"),
    ],
    ids=["another-node", "not-a-status"],
)
async def test_import_state_refuses_what_is_not_this_nodes_status(
    impl: Implementation, state: object, error: type[Exception], message: str
) -> None:
    store = impl.make(1)
    kept = status(commit=5)
    store.import_state(kept)
    with pytest.raises(error, match=message):
        store.import_state(state)
    assert store.export_state() == kept


# == shutdown ==================================================================================


async def test_cancelling_run_ends_it_and_leaves_no_task_behind(impl: Implementation) -> None:
    store = impl.make(1)
    before = task_ids()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            running = await launch(tg, store)
            await store.publish(status(commit=1))
            assert task_ids() > before  # the run task
            running.scope.cancel()
            await running.finished.wait()
            await until(lambda: task_ids() == before)
    assert task_ids() == before
    # The status outlives the task: a successor can still take it over.
    assert store.export_state() == status(commit=1)


# == reads vs a slow writer =====================================================================


async def test_legacy_a_writer_holding_the_lock_blocks_every_read() -> None:
    # The seed's problem, asserted as behaviour: a publish that holds the write lock across
    # a slow await (simulated by holding the store's RWLock directly) stalls all readers.
    store = LockedNodeStatus(1)
    lock = store._lock  # the lock publish() takes; holding it is a publish mid-I/O
    release, holding = anyio.Event(), anyio.Event()
    got: list[NodeStatus] = []

    async def slow_writer() -> None:
        async with lock.write():
            holding.set()
            await release.wait()

    async def reader() -> None:
        got.append(await store.read())

    async with serving(store):
        await store.publish(status(commit=1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_writer)
            await holding.wait()
            tg.start_soon(reader)
            await until(lambda: lock.waiting == 1)  # the reader queued behind the writer
            await anyio.wait_all_tasks_blocked()
            assert got == []
            with pytest.raises(TimeoutError):  # and another read cannot get in either
                with anyio.fail_after(0.05):
                    await store.read()
            release.set()
        assert got == [status(commit=1)]
    assert store.lock_stats().contended >= 1


async def test_actor_a_read_completes_while_publishes_wait_in_the_mailbox() -> None:
    store = NodeStatusActor(1, publish_timeout=30)
    count = 50
    async with serving(store):
        await store.publish(status(commit=1))
        async with anyio.create_task_group() as tg:
            for commit in range(2, count + 2):
                tg.start_soon(store.publish, status(commit=commit))
            # The actor takes one request per scheduling round, so publishes are queued
            # in its mailbox for many rounds.
            await until(lambda: store.stats().mailbox_depth > 0)
            with anyio.fail_after(5):  # a bound, not a measurement: it must not wait
                got = await store.read()
            stuck = store.stats()
            assert stuck.mailbox_depth > 0  # the read returned with publishes still queued
            assert stuck.processed < count + 1
            assert got.commit in range(1, count + 2)
        # Every publish got through in the end.
        assert store.stats().processed == count + 1
        assert (await store.read()).commit in range(2, count + 2)


# == lock accounting ===========================================================================


async def test_lock_accounting_counts_legacy_acquisitions_and_none_for_the_actor(
    impl: Implementation,
) -> None:
    store = impl.make(1)
    async with serving(store), anyio.create_task_group() as tg:
        for commit in range(1, 11):
            tg.start_soon(store.publish, status(commit=commit))
            tg.start_soon(store.read)
    stats = store.lock_stats()
    if impl.takes_locks:
        assert stats.acquisitions >= 20
    else:
        assert stats == LockStats(acquisitions=0, contended=0, wait_seconds=0.0)
