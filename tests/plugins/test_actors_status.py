"""`NodeStatusActor` beyond the status store contract: the bounded mailbox, publish
deadlines and their errors, shutdown with publishers still waiting, its counters, and the
``actors`` plugin that builds it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import anyio
import pytest
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint

import plugins.actors
from framework.config import Settings, load_settings
from framework.flags import Evaluation, FlagSpec, Reason, Source
from framework.hooks import BuildContext
from framework.plugins import PluginHost
from framework.seams import LockStats, NodeStatus
from legacy.status import LockedNodeStatus
from plugins.actors import NodeStatusActor, plugin
from plugins.actors.status import (
    DEFAULT_PUBLISH_TIMEOUT,
    MAILBOX_CAPACITY,
    StatusActorStats,
    publish_timeout_from,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(env={})


def status(commit: int, node_id: int = 1) -> NodeStatus:
    return NodeStatus(node_id=node_id, role="leader", term=1, commit=commit)


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (bounded, so a wedge fails the test)."""
    with anyio.fail_after(5):
        while not condition():
            await checkpoint()


async def run_in(
    scope: anyio.CancelScope, actor: NodeStatusActor, *, task_status: TaskStatus[None]
) -> None:
    with scope:
        await actor.run(task_status=task_status)


# == the mailbox ===============================================================================


def test_the_mailbox_holds_a_fixed_1024_requests() -> None:
    assert MAILBOX_CAPACITY == 1024
    assert NodeStatusActor(1).stats().mailbox_capacity == 1024


async def test_a_full_mailbox_makes_publishers_wait_instead_of_growing() -> None:
    # Before run, nothing drains the mailbox: 1024 requests fit, the rest wait for room.
    actor = NodeStatusActor(1, publish_timeout=60)
    extra = 3
    total = MAILBOX_CAPACITY + extra
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for commit in range(1, total + 1):
                tg.start_soon(actor.publish, status(commit))
            await until(lambda: actor.stats().waiting_publishers == extra)
            await anyio.wait_all_tasks_blocked()
            full = actor.stats()
            assert (full.mailbox_depth, full.waiting_publishers) == (MAILBOX_CAPACITY, extra)
            assert full.processed == 0
            assert await actor.read() == NodeStatus(node_id=1)  # nothing applied yet

            scope = anyio.CancelScope()
            await tg.start(run_in, scope, actor)
            await until(lambda: actor.stats().processed == total)
            scope.cancel()
    done = actor.stats()
    assert done.mailbox_high_water == MAILBOX_CAPACITY  # never more than the bound
    assert done.processed == total


async def test_publishes_are_applied_in_mailbox_order() -> None:
    actor = NodeStatusActor(1, publish_timeout=60, mailbox_capacity=4)
    applied: list[int] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            await tg.start(run_in, scope, actor)
            for commit in range(1, 21):
                await actor.publish(status(commit))
                applied.append((await actor.read()).commit)
            scope.cancel()
    assert applied == list(range(1, 21))


# == deadlines =================================================================================


def test_the_publish_timeout_is_the_raft_message_base_timeout(settings: Settings) -> None:
    assert (
        publish_timeout_from(settings) == settings.performance.timeouts["raft_message"].base_timeout
    )
    slower = load_settings(
        env={},
        overrides={
            "performance.timeouts.raft_message.base_timeout": "250ms",
            "performance.timeouts.raft_message.max_timeout": "2s",
        },
    )
    assert publish_timeout_from(slower) == 0.25
    without = dataclasses.replace(
        settings, performance=dataclasses.replace(settings.performance, timeouts={})
    )
    assert publish_timeout_from(without) == DEFAULT_PUBLISH_TIMEOUT == 1.0
    assert NodeStatusActor.from_settings(1, slower).publish_timeout == 0.25


async def test_a_publish_not_applied_in_time_raises_timeout_error_naming_the_actor() -> None:
    actor = NodeStatusActor(7, publish_timeout=0.01)
    with pytest.raises(TimeoutError) as caught:
        await actor.publish(status(1, node_id=7))  # queued, but the actor is not running
    message = str(caught.value)
    assert message.startswith("NodeStatusActor of node 7: publish not applied within 0.01s")
    assert "it is queued and may still be applied" in message
    assert "mailbox holds 1 of 1024" in message
    assert "the actor's run task has not started" in message
    # And it is: the queued request is applied once the actor runs.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            await tg.start(run_in, scope, actor)
            await until(lambda: actor.stats().processed == 1)
            assert await actor.read() == status(1, node_id=7)
            scope.cancel()


async def test_a_publish_that_finds_no_room_in_time_says_so() -> None:
    actor = NodeStatusActor(2, publish_timeout=0.05, mailbox_capacity=1)
    outcomes: list[str] = []

    async def first() -> None:
        with pytest.raises(TimeoutError) as caught:
            await actor.publish(status(1, node_id=2))
        outcomes.append(str(caught.value))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await until(lambda: actor.stats().mailbox_depth == 1)
            # The first request stays in the buffer even after its publisher gave up.
            with pytest.raises(TimeoutError, match="it never got into the full mailbox"):
                await actor.publish(status(2, node_id=2))
    assert len(outcomes) == 1
    assert "NodeStatusActor of node 2" in outcomes[0]
    assert "mailbox holds 1 of 1" in outcomes[0]
    # Close the never-started actor's mailbox.
    with anyio.CancelScope() as cancelled:
        cancelled.cancel()
        await actor.run()


# == shutdown ==================================================================================


STOPPED = "NodeStatusActor of node 1 is stopped"


async def test_stopping_fails_every_waiting_publisher_with_a_named_error() -> None:
    # Two requests in a two-slot mailbox, three more publishers waiting for room, and the
    # actor cancelled before it applies any: all five fail at once, none hangs.
    actor = NodeStatusActor(1, publish_timeout=60, mailbox_capacity=2)
    errors: list[BaseException] = []

    async def publisher(commit: int) -> None:
        try:
            await actor.publish(status(commit))
        except RuntimeError as error:
            errors.append(error)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for commit in range(1, 6):
                tg.start_soon(publisher, commit)
            await until(lambda: actor.stats().waiting_publishers == 3)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await actor.run()
    assert len(errors) == 5
    assert all(str(error).startswith(STOPPED) for error in errors)
    assert actor.stats().processed == 0
    assert await actor.read() == NodeStatus(node_id=1)


async def test_stopping_a_busy_actor_applies_or_fails_each_publish_never_both() -> None:
    actor = NodeStatusActor(1, publish_timeout=60)
    count = 50
    ok: list[int] = []
    failed: list[str] = []

    async def publisher(commit: int) -> None:
        try:
            await actor.publish(status(commit))
        except RuntimeError as error:
            failed.append(str(error))
        else:
            ok.append(commit)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            await tg.start(run_in, scope, actor)
            for commit in range(1, count + 1):
                tg.start_soon(publisher, commit)
            await until(lambda: actor.stats().mailbox_depth > 0)
            scope.cancel()
    assert len(ok) + len(failed) == count
    assert len(ok) == actor.stats().processed
    assert failed
    assert all(message.startswith(STOPPED) for message in failed)


async def test_publishers_cancelled_with_the_actor_see_their_cancellation_not_an_error() -> None:
    # A node shutting down cancels its actor and the tasks publishing to it together.
    actor = NodeStatusActor(1, publish_timeout=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as node:
            await node.start(actor.run)
            for commit in range(1, 51):
                node.start_soon(actor.publish, status(commit))
            await until(lambda: actor.stats().mailbox_depth > 0)
            node.cancel_scope.cancel()
    # Nothing but the cancellation left the task group. A publish that starts after the
    # actor stopped, from a task already being cancelled, is cancelled too.
    with anyio.CancelScope() as scope:
        scope.cancel()
        await actor.publish(status(99))
    assert scope.cancelled_caught


async def test_a_publish_after_the_actor_stopped_fails_at_once() -> None:
    actor = NodeStatusActor(1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            await tg.start(run_in, scope, actor)
            await actor.publish(status(1))
            scope.cancel()
    with pytest.raises(RuntimeError, match=STOPPED):
        await actor.publish(status(2))
    assert await actor.read() == status(1)  # reads still answer with the last status
    assert actor.stats().mailbox_depth == 0


async def test_an_actor_runs_once() -> None:
    actor = NodeStatusActor(1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await actor.run()
    with pytest.raises(RuntimeError, match="NodeStatusActor of node 1 was already started"):
        await actor.run()


# == counters and state ========================================================================


async def test_stats_count_requests_and_the_mailbox_high_water_mark() -> None:
    actor = NodeStatusActor(4)
    assert actor.stats() == StatusActorStats(
        name="NodeStatusActor of node 4",
        processed=0,
        mailbox_depth=0,
        mailbox_high_water=0,
        mailbox_capacity=1024,
        waiting_publishers=0,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            await tg.start(run_in, scope, actor)
            for commit in range(1, 6):  # one at a time: each waits for its acknowledgement
                await actor.publish(status(commit, node_id=4))
            one_at_a_time = actor.stats()
            async with anyio.create_task_group() as burst:
                for commit in range(6, 16):
                    burst.start_soon(actor.publish, status(commit, node_id=4))
            scope.cancel()
    assert (one_at_a_time.processed, one_at_a_time.mailbox_high_water) == (5, 1)
    after = actor.stats()
    assert after.processed == 15
    assert 1 < after.mailbox_high_water <= 10  # the burst queued up
    assert actor.lock_stats() == LockStats()


async def test_imported_state_is_what_the_actor_serves_from_its_start() -> None:
    actor = NodeStatusActor(1)
    imported = status(42)
    actor.import_state(imported)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            await tg.start(run_in, scope, actor)
            assert await actor.read() == imported
            assert actor.export_state() is imported
            scope.cancel()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"publish_timeout": -1}, "publish_timeout -1 is negative; expected seconds >= 0"),
        ({"mailbox_capacity": 0}, "mailbox_capacity 0 is below 1; expected a positive count"),
    ],
)
def test_bad_construction_arguments_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeStatusActor(1, **kwargs)  # type: ignore[arg-type]


# == the plugin ================================================================================


def context(settings: Settings, *, actors: bool | None) -> BuildContext:
    flags = {}
    if actors is not None:
        flags["actors"] = Evaluation(
            flag="actors",
            value=actors,
            reason=Reason.STATIC,
            source=Source.COMMAND_LINE,
            detail="test",
        )
    return BuildContext(node_id=5, settings=settings, flags=flags)


def test_the_package_exports_the_actor() -> None:
    assert plugins.actors.__all__ == ["NodeStatusActor"]
    assert plugins.actors.NodeStatusActor is NodeStatusActor


def test_the_plugin_declares_the_actors_flag_off_by_default() -> None:
    assert plugin.RAFTMW_TIER == "default"
    [spec] = plugin.raftmw_declare_flags()
    assert isinstance(spec, FlagSpec)
    assert (spec.name, spec.default, spec.owner) == ("actors", False, "actors")
    assert spec.description


def test_the_plugin_builds_the_actor_only_when_the_flag_is_on(settings: Settings) -> None:
    assert plugin.raftmw_make_status_store(context(settings, actors=None)) is None
    assert plugin.raftmw_make_status_store(context(settings, actors=False)) is None
    built = plugin.raftmw_make_status_store(context(settings, actors=True))
    assert isinstance(built, NodeStatusActor)
    assert built.export_state() == NodeStatus(node_id=5)
    assert built.publish_timeout == publish_timeout_from(settings)


def test_the_installed_plugin_host_picks_the_actor_by_flag(settings: Settings) -> None:
    host = PluginHost()
    info = host.names["actors"]
    assert "status_store" in info.seams
    assert "actors" in host.declare_flags()
    component, name = host.build("status_store", context(settings, actors=True))
    assert (type(component), name) == (NodeStatusActor, "actors")
    component, name = host.build("status_store", context(settings, actors=False))
    assert (type(component), name) == (LockedNodeStatus, "legacy")
