"""The connection pool seam: the duties every `ConnectionPool` keeps (framework.seams), by
the legacy `LockedConnectionPool`, the `ConnectionPoolActor` and the transport's own
`TransportPool` alike, then what sets them apart, then the pools on real TCP sockets.

A scriptable dialer (``pool_fakes``) stands in for the transport, so every test is about
behaviour (what was written, dialled, closed, reported), never about how fast.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.lowlevel import checkpoint
from pool_fakes import FakeDialer, hb

from framework.config import load_settings
from framework.core import AppendEntries, Entry, Heartbeat, Message
from framework.seams import Component, ConnectionPool, PeerDialer
from framework.transport.pool import (
    WRITE_FLOOR_RATE,
    LinkWrites,
    OutboundQueue,
    TransportPool,
    write_limit,
)
from framework.transport.tcp import TcpTransport
from legacy import FixedTimeouts
from legacy.pool import LockedConnectionPool
from plugins.actors.pool import ConnectionPoolActor

pytestmark = pytest.mark.anyio

KINDS = ("transport", "legacy", "actor")
BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_pool(kind: str, dialer: PeerDialer, *, max_queued: int = 100_000) -> Any:
    low, high = 0.01, 0.05  # redial backoff: quick, but not a busy loop
    if kind == "legacy":
        return LockedConnectionPool(
            dialer, connect_timeout=2.0, write_timeout=5.0, backoff_min=low, backoff_max=high
        )
    if kind == "actor":
        return ConnectionPoolActor(
            dialer,
            max_queued=max_queued,
            connect_timeout=2.0,
            backoff_min=low,
            backoff_max=high,
            crash_backoff_min=low,
            crash_backoff_max=high,
        )
    return TransportPool(dialer, max_queued=max_queued, backoff_min=low, backoff_max=high)


BOOK = {2: "a2", 3: "a3"}


@asynccontextmanager
async def running(pool: Any) -> AsyncIterator[anyio.abc.TaskGroup]:
    """``pool.run`` in a task group, cancelled when the block ends; bounded so a wedged pool
    fails the test instead of hanging it."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            yield tg
            tg.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], what: str = "the condition") -> None:
    try:
        with anyio.fail_after(5):
            while not predicate():
                await anyio.sleep(0.001)
    except TimeoutError:
        pytest.fail(f"gave up waiting for {what}")


def connected(dialer: FakeDialer, *peers: int) -> Callable[[], bool]:
    return lambda: all(dialer.live(p) is not None for p in peers)


def one_connection(pool: Any) -> Callable[[], bool]:
    return lambda: bool(pool.stats().connections_open == 1)


def running_tasks() -> set[tuple[int, str | None]]:
    return {(task.id, task.name) for task in anyio.get_running_tasks()}


def beats(dst: int, terms: Sequence[int]) -> list[Message]:
    return [hb(dst, t) for t in terms]


# == the contract ==============================================================================


async def test_a_pool_dials_every_peer_at_once_and_keeps_them_connected(kind: str) -> None:
    dialer = FakeDialer()
    pool = make_pool(kind, dialer)
    assert isinstance(pool, ConnectionPool) and isinstance(pool, Component)
    pool.set_peers(BOOK)  # before run: dialling starts with run
    async with running(pool):
        # Nothing is sent: a higher-id peer can only reach us over what we dial.
        await until(connected(dialer, 2, 3), "both peers connected")
        stats = pool.stats()
        assert stats.connections_open == 2
        assert {p: s.state for p, s in stats.peers.items()} == {2: "connected", 3: "connected"}
        assert sorted(dialer.dials) == [(2, "a2"), (3, "a3")]
        assert dialer.reports == []
    assert dialer.open == 0


async def test_messages_reach_each_peer_in_order(kind: str) -> None:
    dialer = FakeDialer()
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        for t in range(50):
            pool.send(2, [hb(2, t)])
            pool.send(3, [hb(3, t), hb(3, 1000 + t)])
            if t % 7 == 0:
                await checkpoint()
        await until(lambda: len(dialer.delivered[2]) == 50 and len(dialer.delivered[3]) == 100)
        assert dialer.terms(2) == list(range(50))
        assert dialer.terms(3) == [x for t in range(50) for x in (t, 1000 + t)]
        assert dialer.reports == []


async def test_a_burst_of_sends_is_coalesced(kind: str) -> None:
    dialer = FakeDialer()
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        before = dialer.writes[2]
        for t in range(1000):  # nothing yields between the sends
            pool.send(2, [hb(2, t)])
        await until(lambda: len(dialer.delivered[2]) == 1000, "1000 messages")
        assert dialer.terms(2) == list(range(1000))
        assert dialer.writes[2] - before < 10


async def test_an_idle_link_is_written_at_once_and_what_follows_in_the_pass_coalesced(
    kind: str,
) -> None:
    """``pool.write_at_once``: the first batch of a pass to a link with nothing queued
    leaves within ``send`` (the writer would run only after the caller yields); the rest of
    the pass queues and leaves in one write, in order; the next pass is at once again."""
    dialer = FakeDialer(immediate=True)
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        writes = dialer.writes[2]
        pool.send(2, beats(2, [0, 1]))
        assert dialer.terms(2) == [0, 1]  # nothing yielded: written by send itself
        for t in range(2, 1000):
            pool.send(2, [hb(2, t)])
        assert dialer.terms(2) == [0, 1] and dialer.at_once[2] == 1
        await until(lambda: len(dialer.delivered[2]) == 1000, "1000 messages")
        assert dialer.terms(2) == list(range(1000))
        assert dialer.writes[2] - writes < 10
        await checkpoint()
        pool.send(2, [hb(2, 1000)])
        assert dialer.terms(2)[-1] == 1000 and dialer.at_once[2] == 2
        assert dialer.reports == []


async def test_nothing_is_written_at_once_ahead_of_a_write_that_waits(kind: str) -> None:
    """A write under way (its peer not reading) holds later sends back, in order, until
    it completes; the link is written at once again after."""
    dialer = FakeDialer(immediate=True)
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        dialer.write_gates[2] = gate = anyio.Event()  # its buffers are full
        pool.send(2, [hb(2, 0)])
        await until(lambda: dialer.live(2) is not None and dialer.live(2).writing, "a write")
        del dialer.write_gates[2]  # writable again, but the write under way is not done
        pool.send(2, [hb(2, 1)])
        await checkpoint()
        pool.send(2, [hb(2, 2)])
        assert dialer.terms(2) == []
        gate.set()
        await until(lambda: dialer.terms(2) == [0, 1, 2], "all three, in order")
        assert dialer.at_once[2] == 0
        await checkpoint()
        pool.send(2, [hb(2, 3)])
        assert dialer.terms(2) == [0, 1, 2, 3] and dialer.at_once[2] == 1


async def test_a_connection_that_closes_under_the_pool_is_redialled(kind: str) -> None:
    dialer = FakeDialer()
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        first = dialer.live(2)
        assert first is not None
        first.fail()  # the peer restarted
        await until(lambda: dialer.live(2) not in (None, first), "the redial")
        assert len(dialer.connections[2]) == 2
        pool.send(2, beats(2, range(5)))
        await until(lambda: dialer.terms(2) == list(range(5)), "delivery on the new connection")
        assert first.closed_by == "remote"
        assert len(dialer.connections[3]) == 1  # the other peer never noticed


async def test_an_unknown_peer_is_reported_at_once(kind: str) -> None:
    dialer = FakeDialer()
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        pool.send(9, [hb(9, 1)])
        assert dialer.reports == [9]


async def test_a_peer_that_refuses_is_reported_redialled_with_backoff_and_joins_later(
    kind: str,
) -> None:
    dialer = FakeDialer()
    dialer.refuse.add(3)
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(lambda: sum(p == 3 for p, _ in dialer.dials) >= 3, "three dials to 3")
        started = anyio.current_time()
        term = 0
        while 3 not in dialer.reports:  # Raft keeps sending; the loss must be reported
            term += 1
            pool.send(3, [hb(3, term)])
            await anyio.sleep(0.005)
            assert anyio.current_time() - started < 5, "node 3 was never reported"
        # The healthy peer is served all along.
        pool.send(2, beats(2, range(3)))
        await until(lambda: dialer.terms(2) == [0, 1, 2], "delivery to node 2")
        # Redials back off (0.01s doubling to 0.05s): a busy loop would dial thousands
        # of times in this window.
        dials = sum(p == 3 for p, _ in dialer.dials)
        await anyio.sleep(0.2)
        assert sum(p == 3 for p, _ in dialer.dials) - dials <= 25
        dialer.refuse.clear()
        await until(connected(dialer, 3), "node 3 accepting at last")
        pool.send(3, [hb(3, 9999)])
        await until(lambda: 9999 in dialer.terms(3), "delivery to node 3")


async def test_removing_a_peer_closes_its_connection_without_a_report(kind: str) -> None:
    dialer = FakeDialer()
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        conn = dialer.live(3)
        assert conn is not None
        pool.set_peers({2: "a2"})
        await until(lambda: conn.closed, "the removed peer's connection closed")
        assert conn.closed_by == "pool"
        assert set(pool.stats().peers) == {2}
        assert dialer.reports == []  # removal is not a failure
        pool.send(3, [hb(3, 1)])
        assert dialer.reports == [3]
        await anyio.sleep(0.05)
        assert sum(p == 3 for p, _ in dialer.dials) == 1  # no redial of a removed peer


async def test_a_moved_peer_is_dialled_at_its_new_address(kind: str) -> None:
    dialer = FakeDialer()
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        old = dialer.live(2)
        assert old is not None
        pool.set_peers({2: "b2", 3: "a3"})
        await until(lambda: (c := dialer.live(2)) is not None and c.address == "b2", "redial")
        await until(lambda: old.closed)
        assert old.closed_by == "pool"
        pool.send(2, [hb(2, 7)])
        await until(lambda: dialer.terms(2) == [7])


@BOTH_BACKENDS
async def test_shutdown_closes_every_connection_and_ends_every_task(kind: str) -> None:
    tasks_before = running_tasks()
    dialer = FakeDialer()
    dialer.hang[4] = anyio.Event()  # a dial in flight at shutdown
    pool = make_pool(kind, dialer)
    pool.set_peers({**BOOK, 4: "a4"})
    async with running(pool):
        await until(lambda: connected(dialer, 2, 3)() and 4 in dialer.dialling)
        dialer.write_gates[3] = anyio.Event()  # and a write stuck in flight
        pool.send(3, [hb(3, 1)])
        pool.send(2, [hb(2, 1)])
        await anyio.sleep(0.01)
    assert dialer.open == 0
    assert all(c.closed_by == "pool" for conns in dialer.connections.values() for c in conns)
    assert pool.stats().connections_open == 0
    assert running_tasks() == tasks_before


SWAPS = [
    ("legacy", "actor"),
    ("actor", "legacy"),
    ("transport", "legacy"),
    ("transport", "actor"),
]


@pytest.mark.parametrize(("old_kind", "new_kind"), SWAPS)
async def test_queued_messages_move_across_a_swap(old_kind: str, new_kind: str) -> None:
    dialer = FakeDialer()
    old, new = make_pool(old_kind, dialer), make_pool(new_kind, dialer)
    old.set_peers(BOOK)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            old_scope, new_scope = anyio.CancelScope(), anyio.CancelScope()

            async def run(pool: Any, scope: anyio.CancelScope, *, task_status: Any) -> None:
                with scope:
                    await pool.run(task_status=task_status)

            await tg.start(run, old, old_scope)
            await until(connected(dialer, 2, 3))
            old_conns = [dialer.live(2), dialer.live(3)]
            dialer.write_gates[2] = anyio.Event()  # node 2 stops reading
            old.send(2, [hb(2, 0)])
            await until(lambda: old.stats().peers[2].queued == 0, "the writer took message 0")
            old.send(2, beats(2, range(1, 6)))
            old.send(2, beats(2, range(6, 11)))
            await tg.start(run, new, new_scope)

            # The swap, as Components does it: no await from the export to the cancel.
            state = old.export_state()
            new.import_state(state)
            new.set_peers(BOOK)
            old_scope.cancel()

            assert state == {2: beats(2, range(1, 11))}
            assert old.export_state() == {}  # moved, not copied
            del dialer.write_gates[2]  # node 2 reads again (message 0 died with the old pool)
            await until(lambda: dialer.terms(2) == list(range(1, 11)), "the moved messages")
            await until(lambda: all(c is not None and c.closed for c in old_conns))
            assert all(c is not None and c.closed_by == "pool" for c in old_conns)
            assert dialer.open == 2  # the new pool's own connections
            new.send(3, [hb(3, 5)])
            await until(lambda: dialer.terms(3) == [5])
            tg.cancel_scope.cancel()
    assert dialer.open == 0


async def test_a_write_to_a_peer_that_stops_reading_expires_by_the_policy_and_redials(
    kind: str,
) -> None:
    """Issue 12: a peer write is bounded by the node's timeout policy (``raft_message``),
    sampled by it, and an expired one closes the connection, reports the peer and redials.
    Before, the actor pool waited forever and the legacy pool by a fixed bound the policy
    never heard of (no ``raft_message`` sample at all)."""
    policy = FixedTimeouts(load_settings(env={}))
    dialer = FakeDialer()
    dialer.timeouts = policy
    pool = make_pool(kind, dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        first = dialer.live(2)
        assert first is not None
        dialer.write_gates[2] = anyio.Event()  # node 2 stops reading, and never reads again
        pool.send(2, [hb(2, 1)])
        await until(lambda: first.closed, "the write to node 2 to expire")
        assert first.closed_by == "pool"
        await until(lambda: 2 in dialer.reports, "the report")  # Raft hears of the loss
        assert policy.stats()["raft_message"]["timeouts"] >= 1
        await until(lambda: dialer.live(2) not in (None, first), "the redial")
        del dialer.write_gates[2]  # node 2 reads again
        pool.send(2, beats(2, [2, 3]))
        await until(lambda: dialer.terms(2)[-2:] == [2, 3], "delivery on the new connection")
        pool.send(3, [hb(3, 4)])
        await until(lambda: dialer.terms(3) == [4], "node 3")
        assert len(dialer.connections[3]) == 1  # the other peer never noticed
        seen = policy.stats()["raft_message"]
        assert seen["count"] > seen["timeouts"]  # completed writes are sampled too


async def test_link_writes_count_expired_writes_in_a_row_and_reset_on_completion() -> None:
    """The ``attempt`` a write asks the policy for: writes that expired on the link in a row,
    back to 0 after one completes (what lets an adaptive policy back off on one link)."""
    asked: list[int] = []

    class Recording(FixedTimeouts):
        def timeout(self, operation: str, attempt: int = 0) -> float:
            asked.append(attempt)
            return super().timeout(operation, attempt)

    policy = Recording(load_settings(env={}))
    dialer = FakeDialer()
    conn = await dialer.dial(2, "a2")
    writes = LinkWrites(lambda: policy)
    frames = dialer.encode(2, [hb(2, 1)])
    dialer.write_gates[2] = anyio.Event()
    assert not await writes.send(conn, frames)
    assert not await writes.send(conn, frames)
    del dialer.write_gates[2]
    assert await writes.send(conn, frames)
    assert not conn.closed  # closing is the pool's part
    assert asked == [0, 1, 2]
    assert (writes.attempt, writes.expired) == (0, 2)
    assert policy.stats()["raft_message"]["count"] == 3
    assert policy.stats()["raft_message"]["timeouts"] == 2


def test_a_full_append_on_a_slow_link_gets_more_than_the_policy_value() -> None:
    """The fixed ``raft_message`` base is a round trip (100ms): a write is never bounded
    below what its bytes need at ``WRITE_FLOOR_RATE``, so a full append is not cut."""
    settings = load_settings(env={})
    policy = FixedTimeouts(settings)
    base = policy.timeout("raft_message")
    full = settings.raft.max_size_per_msg
    assert write_limit(policy, 0, 100, 10.0) == base  # heartbeats: the policy's value
    assert write_limit(policy, 0, full, 10.0) == full / WRITE_FLOOR_RATE > base
    assert write_limit(None, 0, 100, 7.0) == 7.0  # no policy yet: the pool's fallback


@pytest.mark.parametrize("kind", ["legacy", "actor"])
async def test_state_of_the_wrong_shape_is_refused_before_any_is_taken(kind: str) -> None:
    pool = make_pool(kind, FakeDialer())
    with pytest.raises(TypeError, match="connection pool state"):
        pool.import_state([("2", [])])
    with pytest.raises(TypeError, match="expected an int peer id"):
        pool.import_state({"2": []})
    assert pool.export_state() == {}


# == what sets them apart ======================================================================


@pytest.mark.parametrize("immediate", [False, True], ids=["queued", "at-once"])
async def test_legacy_holds_every_peer_behind_a_write_in_progress(immediate: bool) -> None:
    """The seed's problem: the one lock is held across the write to a peer that stopped
    reading, and every other peer's messages wait behind it, even those a connection could
    take at once (a write at once takes the lock too, and only a free one)."""
    dialer = FakeDialer(immediate=immediate)
    pool = make_pool("legacy", dialer)
    pool.set_peers({2: "a2", 3: "a3"})
    async with running(pool):
        await until(connected(dialer, 2, 3))
        dialer.write_gates[2] = gate = anyio.Event()  # node 2 stops reading
        pool.send(2, [hb(2, 0)])
        await until(lambda: pool.stats().peers[2].queued == 0, "the write to node 2")
        pool.send(3, beats(3, range(5)))
        for _ in range(50):
            await checkpoint()
        assert dialer.delivered[3] == []  # written to nobody: the lock is held
        gate.set()
        await until(lambda: dialer.terms(3) == list(range(5)), "node 3 after the write")
        assert pool.lock_stats().acquisitions > 0


async def test_legacy_serves_other_peers_while_one_connects() -> None:
    """Issue #19: a dial that never completes (a follower whose link is cut) held the lock
    and the sender for a whole connect timeout, and the leader's healthy follower heard
    nothing meanwhile; the dial now runs beside the sender."""
    dialer = FakeDialer()
    pool = make_pool("legacy", dialer)
    pool.set_peers({2: "a2"})
    async with running(pool):
        await until(connected(dialer, 2))
        dialer.hang[3] = gate = anyio.Event()
        pool.set_peers({2: "a2", 3: "a3"})  # a new peer that takes long to answer
        await until(lambda: 3 in dialer.dialling, "the dial to node 3")
        pool.send(3, beats(3, range(2)))
        pool.send(2, beats(2, range(5)))
        await until(lambda: dialer.terms(2) == list(range(5)), "node 2, meanwhile")
        assert pool.stats().peers[3].state == "connecting"
        assert dialer.dials.count((3, "a3")) == 1  # one dial in flight, not one per walk
        gate.set()
        await until(lambda: dialer.terms(3) == [0, 1], "node 3 once connected")


async def test_legacy_forgets_a_peer_removed_while_its_sender_waits_for_the_lock() -> None:
    """The sender walks the book, then waits for the lock (a dial being recorded, a closed
    connection being removed); a peer removed meanwhile must not be dialled (it was looked
    up in the book and crashed the pool: seen when a node was removed from a cluster)."""
    dialer = FakeDialer()
    dialer.refuse.add(2)
    pool = make_pool("legacy", dialer)
    pool.set_peers({2: "a2"})
    async with running(pool):
        await until(lambda: dialer.dials.count((2, "a2")) >= 1, "a first dial")
        lock = pool._lock
        async with lock:  # held, as while a dial's connection is recorded
            waiting = lock._lock.statistics  # the anyio.Lock inside the counting lock
            await until(lambda: waiting().tasks_waiting > 0, "the sender waits for it")
            pool.set_peers({})
        dials = len(dialer.dials)
        pool.set_peers({3: "a3"})  # the pool still runs: it dials the next peer
        await until(connected(dialer, 3), "node 3")
        assert (2, "a2") not in dialer.dials[dials:]


async def test_the_actor_serves_other_peers_while_one_connects_or_stalls() -> None:
    dialer = FakeDialer()
    pool = make_pool("actor", dialer)
    pool.set_peers({2: "a2", 4: "a4"})
    async with running(pool):
        await until(connected(dialer, 2, 4))
        dialer.hang[3] = anyio.Event()
        pool.set_peers({2: "a2", 3: "a3", 4: "a4"})
        await until(lambda: 3 in dialer.dialling, "the dial to node 3")
        dialer.write_gates[4] = anyio.Event()  # and node 4 stops reading
        pool.send(4, [hb(4, 1)])
        pool.send(2, beats(2, range(5)))
        await until(lambda: dialer.terms(2) == list(range(5)), "node 2, meanwhile")
        assert pool.stats().peers[3].state == "connecting"
        assert dialer.delivered[4] == []
        assert pool.lock_stats().acquisitions == 0


async def test_legacy_buffers_grow_without_bound() -> None:
    dialer = FakeDialer()
    pool = make_pool("legacy", dialer)
    pool.set_peers({2: "a2"})
    async with running(pool):
        await until(connected(dialer, 2))
        dialer.write_gates[2] = gate = anyio.Event()
        pool.send(2, [hb(2, 0)])
        await until(lambda: pool.stats().peers[2].queued == 0, "message 0 in flight")
        for t in range(1, 50_001):
            pool.send(2, [hb(2, t)])
        assert pool.stats().queued == 50_000
        assert dialer.reports == []  # never refuses
        gate.set()
        await until(lambda: len(dialer.delivered[2]) == 50_001, "everything")
        assert dialer.terms(2) == list(range(50_001))


async def test_the_actor_bounds_each_queue_and_reports_overflow_once_per_episode() -> None:
    dialer = FakeDialer()
    pool = make_pool("actor", dialer, max_queued=10)
    pool.set_peers({2: "a2"})
    async with running(pool):
        await until(connected(dialer, 2))
        dialer.write_gates[2] = gate = anyio.Event()
        pool.send(2, [hb(2, 0)])
        await until(lambda: pool.stats().peers[2].queued == 0, "message 0 in flight")
        pool.send(2, beats(2, range(1, 9)))
        pool.send(2, beats(2, range(9, 17)))  # 6 over the bound
        pool.send(2, beats(2, range(17, 21)))  # the same episode
        assert dialer.reports == [2]
        assert pool.stats().peers[2].dropped == 10
        gate.set()
        await until(lambda: dialer.terms(2) == list(range(11)), "message 0 and the first 10")
        pool.send(2, beats(2, range(100, 111)))  # the writer drained: a new episode
        assert dialer.reports == [2, 2]


async def test_the_actor_restarts_a_crashed_peer_task_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="raftmw.actors.pool")
    dialer = FakeDialer()
    pool = make_pool("actor", dialer)
    pool.set_peers(BOOK)
    async with running(pool):
        await until(connected(dialer, 2, 3))
        first = dialer.live(2)
        dialer.crash_encode.add(2)
        pool.send(2, [hb(2, 1)])
        await until(lambda: pool.stats().peers[2].restarts == 1, "the restart")
        assert "the connection task for node 2 crashed" in caplog.text
        assert "a bug while encoding for node 2" in caplog.text  # with its traceback
        assert dialer.reports == [2]  # the crash lost message 1
        await until(lambda: dialer.live(2) not in (None, first), "a fresh connection")
        assert first is not None and first.closed_by == "pool"
        pool.send(2, [hb(2, 2)])
        pool.send(3, [hb(3, 2)])
        await until(lambda: dialer.terms(2) == [2] and dialer.terms(3) == [2])
        assert len(dialer.connections[3]) == 1  # the other peer never noticed


# == on real sockets ===========================================================================


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.unreachable: list[int] = []

    def deliver(self, messages: Sequence[Message]) -> None:
        self.messages.extend(messages)

    def peer_unreachable(self, node_id: int) -> None:
        self.unreachable.append(node_id)

    def terms(self) -> list[int]:
        return [m.term for m in self.messages]


class Clients:
    async def handle(self, request: Any) -> Any:
        raise AssertionError("no clients here")


def tcp(node_id: int) -> TcpTransport:
    return TcpTransport(
        node_id=node_id,
        cluster_id="pool",
        listen="127.0.0.1:0",
        peers={},
        connect_timeout=1.0,
        backoff_min=0.01,
        backoff_max=0.05,
    )


async def exchange(a: TcpTransport, inbox_a: Inbox, b: TcpTransport, inbox_b: Inbox) -> None:
    base_a, base_b = len(inbox_a.messages), len(inbox_b.messages)
    a.send([Heartbeat(src=a.node_id, dst=b.node_id, term=t) for t in range(20)])
    b.send([Heartbeat(src=b.node_id, dst=a.node_id, term=t) for t in range(20)])
    await until(lambda: len(inbox_b.messages) == base_b + 20, "a -> b")
    await until(lambda: len(inbox_a.messages) == base_a + 20, "b -> a")
    assert inbox_b.terms()[base_b:] == inbox_a.terms()[base_a:] == list(range(20))


@BOTH_BACKENDS
@pytest.mark.parametrize("kind", ["legacy", "actor"])
async def test_the_pool_carries_tcp_traffic_both_ways_and_leaves_no_socket(kind: str) -> None:
    t1, t2 = tcp(1), tcp(2)
    inbox1, inbox2 = Inbox(), Inbox()
    pool = make_pool(kind, t1.dialer)
    t1.use_pool(pool)  # before serving, as a node does
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            await tg.start(t1.serve, inbox1, Clients())
            await tg.start(t2.serve, inbox2, Clients())
            book = {1: t1.listen_address, 2: t2.listen_address}
            t1.set_peers(book)
            t2.set_peers(book)
            await until(lambda: t1.connected_peers == {2} and t2.connected_peers == {1})
            await exchange(t1, inbox1, t2, inbox2)
            assert t1.dial_attempts >= 1 and t2.dial_attempts == 0
            assert t1.open_connections == t2.open_connections == 1
            assert pool.stats().connections_open == 1
            tg.cancel_scope.cancel()
    assert t1.open_connections == t2.open_connections == 0
    assert pool.stats().connections_open == 0


async def test_a_serving_transport_swaps_pools_without_losing_the_link() -> None:
    t1, t2 = tcp(1), tcp(2)
    inbox1, inbox2 = Inbox(), Inbox()
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            await tg.start(t1.serve, inbox1, Clients())  # with a TransportPool of its own
            await tg.start(t2.serve, inbox2, Clients())
            book = {1: t1.listen_address, 2: t2.listen_address}
            t1.set_peers(book)
            t2.set_peers(book)
            await until(lambda: t1.connected_peers == {2} and t2.connected_peers == {1})
            assert isinstance(t1.pool, TransportPool)
            await exchange(t1, inbox1, t2, inbox2)

            scopes: list[anyio.CancelScope] = []

            async def run(pool: Any, *, task_status: Any) -> None:
                scope = anyio.CancelScope()
                scopes.append(scope)
                with scope:
                    await pool.run(task_status=task_status)

            for kind in ("legacy", "actor", "legacy"):
                previous = t1.pool
                pool = make_pool(kind, t1.dialer)
                await tg.start(run, pool)
                if len(scopes) > 1:  # between two pools the node runs: Components' swap
                    pool.import_state(previous.export_state())
                    t1.use_pool(pool)
                    scopes[-2].cancel()
                else:  # from the transport's own pool: use_pool moves the state itself
                    t1.use_pool(pool)
                assert t1.pool is pool
                await until(one_connection(pool), f"{kind} connected")
                await until(lambda: t1.connected_peers == {2} and t2.connected_peers == {1})
                await exchange(t1, inbox1, t2, inbox2)
            assert t1.open_connections == t2.open_connections == 1
            tg.cancel_scope.cancel()
    assert t1.open_connections == t2.open_connections == 0


# -- liveness traffic first where it mixes with bulk (issue #12) ---------------------------


def ae(dst: int, index: int) -> AppendEntries:
    return AppendEntries(src=1, dst=dst, term=1, prev_index=index, prev_term=1)


def test_a_prioritizing_queue_hands_over_heartbeats_before_appends() -> None:
    queue = OutboundQueue(None, prioritize=True)
    queue.put([ae(2, 1), hb(2, 1), ae(2, 2), hb(2, 2), ae(2, 3)])
    batch = queue.take()
    assert [type(m).__name__ for m in batch] == ["Heartbeat"] * 2 + ["AppendEntries"] * 3
    assert [m.term for m in batch[:2]] == [1, 2]  # each kind keeps its order
    assert [m.prev_index for m in batch[2:]] == [1, 2, 3]  # type: ignore[attr-defined]
    fifo = OutboundQueue(None)
    fifo.put([ae(2, 1), hb(2, 1)])
    assert [type(m).__name__ for m in fifo.take()] == ["AppendEntries", "Heartbeat"]


def test_a_bulk_budget_leaves_the_backlog_queued_for_later_rounds() -> None:
    """A saturated link: each take is the urgent messages and at most ``bulk_budget`` bytes
    of appends (at least one), oldest first; the rest wait in order, so a heartbeat put
    meanwhile goes out in the next round, ahead of the backlog."""

    def append(index: int, size: int) -> AppendEntries:
        entry = Entry(term=1, index=index, data=b"x" * size)
        return AppendEntries(
            src=1, dst=2, term=1, prev_index=index - 1, prev_term=1, entries=(entry,)
        )

    queue = OutboundQueue(None, prioritize=True, bulk_budget=100)
    queue.put([append(1, 60), append(2, 60), hb(2, 1), append(3, 60), append(4, 500)])
    first = queue.take_round()
    assert [type(m).__name__ for m in first] == ["Heartbeat", "AppendEntries", "AppendEntries"]
    assert len(queue) == 2  # appends 3 and 4 wait
    queue.put([hb(2, 2)])
    second = queue.take_round()
    assert [type(m).__name__ for m in second] == ["Heartbeat", "AppendEntries", "AppendEntries"]
    assert [m.prev_index for m in second[1:]] == [2, 3]  # type: ignore[attr-defined]
    assert not queue.items  # the 500-byte append went whole: at least one per round
    # A swap moves everything, whatever the budget.
    queue.put([append(5, 60), append(6, 60), append(7, 60), hb(2, 3)])
    assert len(queue.take()) == 4 and not queue.items
    with pytest.raises(ValueError, match="bulk_budget=100"):
        OutboundQueue(None, bulk_budget=100)  # only a prioritizing queue has a budget


@pytest.mark.parametrize(
    ("queued", "new", "kept", "dropped"),
    [
        # a full queue of appends: each heartbeat evicts the oldest append
        ("AAAA", "HH", "AAHH", 2),
        # nothing bulk to evict: the new heartbeat is dropped, as in FIFO mode
        ("HHHH", "H", "HHHH", 1),
        # room for one: the heartbeat takes it, the append is dropped
        ("AAA", "AH", "AAAH", 1),
        # bulk never evicts anything
        ("HHHH", "A", "HHHH", 1),
    ],
)
def test_a_full_prioritizing_queue_drops_bulk_first(
    queued: str, new: str, kept: str, dropped: int
) -> None:
    def made(kinds: str, start: int) -> list[Message]:
        return [ae(2, start + i) if k == "A" else hb(2, start + i) for i, k in enumerate(kinds)]

    queue = OutboundQueue(4, prioritize=True)
    assert queue.put(made(queued, 0)) is False
    assert queue.put(made(new, 10)) is True  # the overflow episode starts: report once
    assert "".join("A" if isinstance(m, AppendEntries) else "H" for m in queue.items) == kept
    assert queue.dropped == dropped
    assert len(queue) == 4
    if kept == "AAHH":  # the oldest appends went
        assert [m.prev_index for m in queue.items[:2]] == [2, 3]  # type: ignore[attr-defined]


async def test_the_actor_pool_sends_heartbeats_ahead_of_a_backlog_of_appends() -> None:
    dialer = FakeDialer()
    pool = make_pool("actor", dialer)
    pool.set_peers({2: "a2"})
    async with running(pool):
        await until(connected(dialer, 2))
        dialer.write_gates[2] = gate = anyio.Event()  # the link is saturated
        pool.send(2, [ae(2, 0)])  # the write in flight
        await until(lambda: not pool_has_queued(pool, 2), "the first write to start")
        pool.send(2, [ae(2, i) for i in range(1, 50)])
        pool.send(2, [hb(2, 7)])
        gate.set()
        await until(lambda: len(dialer.delivered[2]) == 51, "every message")
    kinds = [type(m).__name__ for m in dialer.delivered[2]]
    # The append in flight went first; of what waited, the heartbeat went ahead.
    assert kinds[:2] == ["AppendEntries", "Heartbeat"]


def pool_has_queued(pool: Any, peer: int) -> bool:
    return bool(pool.stats().peers[peer].queued)
