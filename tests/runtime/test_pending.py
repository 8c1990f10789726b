"""Waiters (one outcome, delivered once) and the deadline sweep that expires them."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from framework.runtime.pending import Deadlines, Waiter

pytestmark = pytest.mark.anyio


def test_the_first_outcome_wins_and_on_done_runs_once() -> None:
    seen: list[object] = []
    waiter = Waiter(lambda w: seen.append(w.error.kind if w.error else w.value))
    waiter.succeed("v")
    waiter.fail("retry", "too late")
    waiter.succeed("again")
    assert seen == ["v"] and waiter.value == "v" and waiter.error is None


def test_a_failure_carries_the_redirect() -> None:
    waiter = Waiter()
    waiter.fail("not_leader", "ask node 2", 2, "h:2")
    assert waiter.done and waiter.error is not None
    assert (waiter.error.kind, waiter.error.leader_id, waiter.error.leader_address) == (
        "not_leader",
        2,
        "h:2",
    )


async def test_wait_returns_when_settled_before_or_after() -> None:
    early = Waiter()
    early.succeed(1)
    with anyio.fail_after(1):
        await early.wait()
    late = Waiter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(late.wait)
        await anyio.lowlevel.checkpoint()
        late.succeed(2)
    assert late.value == 2


def test_expire_returns_only_unsettled_waiters_past_their_deadline() -> None:
    deadlines = Deadlines()
    settled, late, on_time = Waiter(deadline=1.0), Waiter(deadline=2.0), Waiter(deadline=9.0)
    for waiter in (settled, late, on_time):
        deadlines.add(waiter)
    settled.succeed(None)
    assert deadlines.expire(now=1.5) == []  # the settled one is only dropped
    assert len(deadlines) == 2
    assert deadlines.expire(now=5.0) == [late]
    assert deadlines.expire(now=5.0) == []
    assert deadlines.drain() == [on_time] and len(deadlines) == 0


def test_a_live_waiter_at_the_front_holds_back_the_sweep_behind_it() -> None:
    # Arrival order approximates deadline order: a later waiter with an earlier deadline
    # expires when the front one does, never before its own deadline.
    deadlines = Deadlines()
    front, behind = Waiter(deadline=5.0), Waiter(deadline=3.0)
    deadlines.add(front)
    deadlines.add(behind)
    assert deadlines.expire(now=4.0) == []
    assert deadlines.expire(now=5.0) == [front, behind]
