"""A leader never loses leadership to its own pauses (issue #13): messages that arrived
during a pause are stepped before the pause's ticks, and a leader's heartbeats leave on time
while its disk is stalled, and its followers answer them while theirs are."""

from __future__ import annotations

import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from framework.core import (
    AppendEntries,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InvalidMessage,
    Message,
    ReadIndexRequest,
    Role,
    Snapshot,
)
from framework.runtime.kernel_inputs import HELD_MAX, TimeKeeper, follower_burst_max, step_inputs
from framework.runtime.role_changes import RoleChanges
from framework.storage import MemoryLogStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from kernel_harness import drain, make_node, make_stable_leader

ELECTION = 10


def _answers(leader, peers: Sequence[int]) -> list[Message]:  # type: ignore[no-untyped-def]
    """The followers' answers to the leader's latest heartbeat round."""
    return [
        HeartbeatResponse(src=p, dst=leader.id, term=leader.term, sent_tick=leader.clock)
        for p in peers
    ]


def _fail(exc: InvalidMessage) -> None:
    raise AssertionError(exc)


def test_answers_that_arrived_during_a_pause_are_stepped_before_its_ticks() -> None:
    """§6.2 check-quorum runs on a tick; stepping the pause's ticks first made a leader whose
    followers had all answered step down (its answers sat in the inbox)."""
    leader = make_stable_leader(check_quorum=True, election_tick=ELECTION, heartbeat_tick=1)
    for _ in range(2 * ELECTION - 1):  # the first check passes (and clears the marks)
        leader.tick()
    drain(leader)
    # A pause of an election timeout; the followers' answers arrived during it.
    step_inputs(leader, _answers(leader, (2, 3)), ELECTION, on_invalid=_fail)
    assert leader.role is Role.LEADER

    # The old order (ticks, then messages) loses leadership in the same situation.
    old = make_stable_leader(check_quorum=True, election_tick=ELECTION, heartbeat_tick=1)
    for _ in range(2 * ELECTION - 1):
        old.tick()
    drain(old)
    answers = _answers(old, (2, 3))
    for _ in range(ELECTION):
        old.tick()
    for msg in answers:
        old.step(msg)
    assert old.role is Role.FOLLOWER


def test_read_requests_are_stepped_after_the_ticks_of_a_pause() -> None:
    """Lease safety (TickClock): a follower's ReadIndexRequest queued during a pause is judged
    at the leader's clock *after* the pause, never before it."""
    leader = make_stable_leader(
        check_quorum=True, lease_reads=True, election_tick=ELECTION, heartbeat_tick=1
    )
    drain(leader)
    seen: list[int] = []
    original = leader.step

    def step(msg: Message) -> None:
        if isinstance(msg, ReadIndexRequest):
            seen.append(leader.clock)
        original(msg)

    leader.step = step  # type: ignore[method-assign]
    start = leader.clock
    request = ReadIndexRequest(src=2, dst=1, term=leader.term, context=b"r")
    step_inputs(leader, [request], 3, on_invalid=_fail)
    assert seen == [start + 3]


def test_an_invalid_message_is_reported_and_the_rest_still_stepped() -> None:
    leader = make_stable_leader(check_quorum=True, election_tick=ELECTION, heartbeat_tick=1)
    bad = HeartbeatResponse(src=9, dst=1, term=leader.term, sent_tick=0)  # 9 is no member
    invalid: list[InvalidMessage] = []
    step_inputs(leader, [bad, *_answers(leader, (2, 3))], 2, on_invalid=invalid.append)
    assert len(invalid) == 1 and "9" in str(invalid[0])
    assert leader.clock > 0


def test_a_followers_burst_of_ticks_is_capped_so_a_hold_alone_never_makes_it_campaign() -> None:
    """A follower whose own loop was held for three election timeouts, its leader's
    heartbeats of that time still unread: it used to campaign on waking. Capped, it waits
    for the time it really hears nothing (and still campaigns then: only slower)."""
    follower = make_node(2, term=2, election_tick=ELECTION, pre_vote=True)
    follower.step(Heartbeat(src=1, dst=2, term=2, commit=1))
    drain(follower)
    changes = RoleChanges()
    step_inputs(follower, [], 3 * ELECTION, on_invalid=_fail, changes=changes)
    assert follower.role is Role.FOLLOWER and follower.leader == 1
    assert changes.ticks_dropped == 3 * ELECTION - follower_burst_max(follower)
    assert follower_burst_max(follower) == ELECTION // 2
    for _ in range(2 * ELECTION):  # on time from here: it campaigns within a timeout
        step_inputs(follower, [], 1, on_invalid=_fail, changes=changes)
    assert follower.role is Role.PRE_CANDIDATE
    assert changes.to_dict()["last"][-1]["burst"] == 1


def test_a_leaders_burst_of_ticks_is_never_capped() -> None:
    """A leader's lease and check-quorum are counted in its ticks: a leader held for two
    election timeouts with no answers steps down at once (check-quorum), as it must."""
    leader = make_stable_leader(check_quorum=True, election_tick=ELECTION, heartbeat_tick=1)
    changes = RoleChanges()
    clock = leader.clock
    step_inputs(leader, [], 2 * ELECTION, on_invalid=_fail, changes=changes)
    assert leader.clock == clock + 2 * ELECTION and changes.ticks_dropped == 0
    assert leader.role is Role.FOLLOWER
    assert changes.to_dict()["last"][-1]["reason"] == "check_quorum"


def test_time_is_kept_for_one_wait_at_a_time() -> None:
    keeper = TimeKeeper(
        take_inbox=lambda limit: [], ticks_due=lambda: 1, send=print, on_invalid=_fail
    )
    follower = make_node(2, term=2)
    with keeper.keeping(follower):
        nested = keeper.keeping(follower)
        with pytest.raises(RuntimeError, match="already keeping"):
            nested.__enter__()
    with keeper.keeping(follower):  # the failed entry left the first wait to end normally
        pass


def test_the_time_keeper_sends_a_waiting_leaders_heartbeats_between_ready_and_advance() -> None:
    leader = make_stable_leader(check_quorum=True, election_tick=ELECTION, heartbeat_tick=1)
    leader.propose(b"x")
    rd = leader.ready()  # the runtime is persisting this Ready
    sent: list[Message] = []
    inbox = list(_answers(leader, (2, 3)))
    keeper = TimeKeeper(
        take_inbox=lambda limit: [inbox.pop()] if inbox else [],
        ticks_due=lambda: 1,
        send=sent.extend,
        on_invalid=_fail,
    )
    keeper.keep()  # not waiting: does nothing
    assert sent == [] and len(inbox) == 2
    with keeper.keeping(leader):
        for _ in range(3 * ELECTION):
            keeper.keep()
            inbox.extend(_answers(leader, (2, 3)))
    assert leader.role is Role.LEADER
    assert sum(isinstance(m, Heartbeat) for m in sent) >= 3 * ELECTION * 2
    leader.advance(rd)  # the Ready completes as usual afterwards
    assert leader.log.unstable_from > rd.entries[-1].index


def test_the_time_keeper_answers_a_waiting_followers_heartbeats_and_holds_the_rest() -> None:
    follower = make_node(2, term=2)
    follower.step(Heartbeat(src=1, dst=2, term=2, commit=1))
    drain(follower)
    entry = Entry(2, 2, EntryKind.NORMAL, b"x")
    append = AppendEntries(src=1, dst=2, term=2, prev_index=1, prev_term=1, entries=(entry,))
    follower.step(append)
    rd = follower.ready()  # the runtime is persisting this Ready
    later = AppendEntries(src=1, dst=2, term=2, prev_index=2, prev_term=2)
    stranger = Heartbeat(src=3, dst=2, term=2, commit=1)  # not our leader: left for the loop
    inbox: list[Message] = [later, Heartbeat(src=1, dst=2, term=2, commit=1, sent_tick=4)]
    inbox.append(stranger)
    sent: list[Message] = []
    keeper = TimeKeeper(
        take_inbox=lambda limit: [inbox.pop(0) for _ in range(min(len(inbox), limit or 99))],
        ticks_due=lambda: 1,
        send=sent.extend,
        on_invalid=_fail,
    )
    with keeper.keeping(follower):
        keeper.keep()
        assert sent == [HeartbeatResponse(src=2, dst=1, term=2, sent_tick=4)]
        assert follower.log.last_index() == 2  # the later append was not stepped
        inbox.append(Heartbeat(src=1, dst=2, term=2, commit=1, sent_tick=5))
        keeper.keep()
        assert sent[-1] == HeartbeatResponse(src=2, dst=1, term=2, sent_tick=5)
    keeper.keep()  # the wait is over: nothing is stepped or sent
    assert len(sent) == 2
    assert keeper.kept == 2 and follower.role is Role.FOLLOWER
    follower.advance(rd)
    inbox.append(append)
    assert keeper.arrivals() == [later, stranger, append]  # held first, in arrival order


def test_a_waiting_follower_holds_at_most_held_max_messages() -> None:
    follower = make_node(2, term=2)
    follower.step(Heartbeat(src=1, dst=2, term=2, commit=1))
    drain(follower)
    limits: list[int | None] = []

    def take(limit: int | None) -> list[Message]:
        limits.append(limit)
        n = HELD_MAX if limit is None else limit
        return [AppendEntries(src=1, dst=2, term=2, prev_index=1, prev_term=1)] * n

    asked: list[int] = []

    def ticks_due() -> int:
        asked.append(1)
        return 0

    keeper = TimeKeeper(take_inbox=take, ticks_due=ticks_due, send=print, on_invalid=_fail)
    with keeper.keeping(follower):
        keeper.keep()
        keeper.keep()  # full: the inbox is left alone, and the ticks wait for the loop
        assert limits == [HELD_MAX] and len(asked) == 1
        assert len(keeper.arrivals()) == HELD_MAX + HELD_MAX  # the held, then the inbox's
        keeper.keep()
        assert limits[-1] == HELD_MAX


class StallingStore(MemoryLogStore):
    """A store whose ``save_ready`` stalls (in the worker thread) while ``stall`` is set, and
    whose ``commit_snapshot`` (recording a local snapshot) while ``commit_stall`` is."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = 0.0
        self.stalled = 0
        self.commit_stall = 0.0
        self.commits_stalled = 0

    def commit_snapshot(self, prepared: object, *, compact_to: int | None = None) -> None:
        if self.commit_stall:
            self.commits_stalled += 1
            threading.Event().wait(self.commit_stall)
        super().commit_snapshot(prepared, compact_to=compact_to)

    def save_ready(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        if self.stall and entries:
            self.stalled += 1
            threading.Event().wait(self.stall)
        super().save_ready(hard_state=hard_state, entries=entries, snapshot=snapshot, sync=sync)


@asynccontextmanager
async def _stalling_cluster(
    seed: int, **settings: object
) -> AsyncIterator[tuple[dict[int, StallingStore], dict[int, Any], int, int, Any]]:
    """Three in-process nodes on `StallingStore`s and a client whose attempts outlast a
    stall (a stalled write is answered, not retried elsewhere), after one write: the
    stores, the nodes, the leader, its term and the client. ``settings`` (dotted keys) on
    top of a 6 s deadline for a write (a follower's write may wait behind its previous one:
    two stalls per commit, and the node's deadline, 1 s at first, must outlast them)."""
    from framework.client import KVClient
    from tests.runtime import inprocess_cluster as memory

    async with anyio.create_task_group() as tg:
        c = memory.Cluster(
            network=memory.MemoryNetwork(seed=seed),
            tg=tg,
            settings=memory.fast_settings(
                **{
                    "client.request_timeout": "6s",
                    "performance.timeouts.client_request.base_timeout": "6s",
                    "performance.timeouts.client_request.max_timeout": "6s",
                    **settings,
                }
            ),
        )
        stores = {nid: StallingStore() for nid in (1, 2, 3)}
        c.stores.update(stores)
        for nid in stores:
            await c.start(nid)

        @asynccontextmanager
        async def connect(address: str) -> AsyncIterator[object]:
            yield c.network.client(int(address.removeprefix("mem://")))

        client = KVClient(c.peers, timeout=30, attempt_timeout=8, connector=connect)  # type: ignore[arg-type]
        async with client:
            leader = await c.wait_leader()
            await client.put("warm", "up")
            kernel = c.nodes[leader].kernel
            assert kernel is not None
            yield stores, c.nodes, leader, kernel.term, client
        tg.cancel_scope.cancel()


def _same_leadership(nodes: dict[int, Any], term: int, leader: int) -> None:
    for node in nodes.values():
        assert node.kernel is not None
        assert (node.kernel.term, node.kernel.leader) == (term, leader)


@pytest.mark.anyio
@pytest.mark.parametrize("who", ["leader", "followers"])
@pytest.mark.parametrize(("tick", "stall"), [("10ms", 0.18), ("20ms", 1.2)])
async def test_a_leader_keeps_its_leadership_when_a_disk_stalls(
    tick: str, stall: float, who: str
) -> None:
    """Election timeout 20 ticks (randomised up to 40): 200-400 ms with 10 ms ticks,
    400-800 ms with 20 ms ticks. Stalls just under it (0.18 s) and of three times it (1.2 s)
    on every write of the leader, or of both followers: no election. Before, a stall of
    300 ms or more on the leader cost it its leadership each time (its heartbeats waited
    behind the disk), and one on both followers too (their answers waited behind theirs,
    and the leader deposed itself by check-quorum)."""
    async with _stalling_cluster(7, **{"raft.tick_interval": tick}) as (
        stores,
        nodes,
        leader,
        term,
        client,
    ):
        stalled = [leader] if who == "leader" else [n for n in stores if n != leader]
        for nid in stalled:
            stores[nid].stall = stall
        for i in range(3):
            await client.put(f"k{i}", str(i))
        for nid in stalled:
            stores[nid].stall = 0.0
            assert stores[nid].stalled >= 3
        _same_leadership(nodes, term, leader)
        assert all(nodes[nid]._time_keeper.kept > 0 for nid in stalled)


@pytest.mark.anyio
async def test_a_leader_keeps_its_leadership_while_every_node_records_a_snapshot() -> None:
    """The soak's terms (kernel_inputs' point 4): all three nodes reach the snapshot
    threshold at about the same index, and recording the snapshot (deleting the compacted
    entries) held each Ready loop 80-260 ms with nobody keeping time. Here it takes 0.6 s on
    every node, more than the longest election timeout (400 ms): before, a new term each
    time; now none, and the snapshots are all taken."""
    settings = {
        "raft.tick_interval": "10ms",
        "raft.snapshot_threshold_entries": 20,
        "raft.snapshot_trailing_entries": 5,
    }
    async with _stalling_cluster(11, **settings) as (stores, nodes, leader, term, client):
        for store in stores.values():
            store.commit_stall = 0.6
        for i in range(30):
            await client.put(f"k{i}", str(i))
        with anyio.fail_after(10):
            while not all(
                s.commits_stalled
                and not nodes[n].local_snapshots.pending
                and nodes[n].local_snapshots.taken
                for n, s in stores.items()
            ):
                await anyio.sleep(0.05)
        _same_leadership(nodes, term, leader)
