"""The send guard seam's contract, passed by every implementation (the legacy `NoGuard` and
the circuit breakers' `BreakerGuard`), whatever happened to the guard before.

What a guard may decide differs (NoGuard sends everything; BreakerGuard holds back bulky
traffic to a failing peer); what the runtime relies on does not: ``allow`` returns some of
the messages it was given, in order, never the small messages Raft needs for liveness;
``record`` never raises; ``states`` names peers only; the state survives a swap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.core import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from framework.core.entries import ConfState, Entry, Snapshot, SnapshotMeta
from framework.seams import Component, LockStats, SendGuard
from legacy.send_guard import NoGuard
from plugins.circuit_breaker.breaker import BreakerConfig
from plugins.circuit_breaker.guard import BreakerGuard


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Implementation:
    name: str
    make: Callable[[FakeClock], SendGuard]


NO_GUARD = Implementation("NoGuard", lambda clock: NoGuard())
BREAKERS = Implementation(
    "BreakerGuard",
    lambda clock: BreakerGuard(
        BreakerConfig(failure_threshold=2, timeout=5.0, success_threshold=2, probe_window=1.0),
        clock=clock,
    ),
)
IMPLEMENTATIONS = [NO_GUARD, BREAKERS]
BY_NAME = {impl.name: impl for impl in IMPLEMENTATIONS}

STATES = {"closed", "open", "half_open"}
PEERS = (2, 3, 4)


def _messages(dst: int) -> list[Any]:
    snapshot = Snapshot(meta=SnapshotMeta(index=9, term=1, conf_state=ConfState(voters=(1, 2))))
    return [
        VoteRequest(src=1, dst=dst, term=3, last_index=4, last_term=1, pre_vote=True),
        VoteResponse(src=1, dst=dst, term=3, granted=True),
        Heartbeat(src=1, dst=dst, term=3),
        HeartbeatResponse(src=1, dst=dst, term=3),
        TimeoutNow(src=1, dst=dst, term=3),
        AppendResponse(src=1, dst=dst, term=3, index=4),
        AppendEntries(src=1, dst=dst, term=3, prev_index=4, prev_term=1),
        AppendEntries(src=1, dst=dst, term=3, prev_index=4, prev_term=1, entries=(Entry(1, 5),)),
        InstallSnapshot(src=1, dst=dst, term=3, snapshot=snapshot),
    ]


LIVENESS = (VoteRequest, VoteResponse, Heartbeat, HeartbeatResponse, TimeoutNow, AppendResponse)
"""Messages no guard may hold back: elections and leadership depend on them."""

# An operation: ("fail" | "ok", peer), ("wait", seconds), or ("send", peer, message indexes).
operations = st.one_of(
    st.tuples(st.sampled_from(["fail", "ok"]), st.sampled_from(PEERS)),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 5.0])),
    st.tuples(
        st.just("send"),
        st.sampled_from(PEERS),
        st.lists(st.integers(0, len(_messages(2)) - 1), max_size=6),
    ),
)


def _is_subsequence(part: list[Any], whole: list[Any]) -> bool:
    remaining = iter(whole)
    return all(any(item is candidate for candidate in remaining) for item in part)


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda impl: impl.name)
def impl(request: pytest.FixtureRequest) -> Implementation:
    return request.param  # type: ignore[no-any-return]  # pytest params are untyped


def test_subsequence_helper_can_fail() -> None:
    a, b, c = object(), object(), object()
    assert _is_subsequence([a, c], [a, b, c])
    assert not _is_subsequence([c, a], [a, b, c])
    assert not _is_subsequence([object()], [a, b, c])


def test_a_fresh_guard_sends_everything(impl: Implementation) -> None:
    guard = impl.make(FakeClock())
    for peer in PEERS:
        batch = _messages(peer)
        assert list(guard.allow(peer, batch)) == batch
        assert list(guard.allow(peer, [])) == []
    assert set(guard.states().values()) <= {"closed"}


@pytest.mark.parametrize("name", sorted(BY_NAME))
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(operations, max_size=40))
def test_any_history_keeps_the_contract(name: str, ops: list[Any]) -> None:
    clock = FakeClock()
    guard = BY_NAME[name].make(clock)
    seen: set[int] = set()
    for op in ops:
        if op[0] == "wait":
            clock.now += op[1]
        elif op[0] == "send":
            _, peer, picks = op
            pool = _messages(peer)
            batch = [pool[i] for i in picks]
            allowed = list(guard.allow(peer, batch))
            seen.add(peer)
            assert _is_subsequence(allowed, batch), (batch, allowed)
            held = [m for m in batch if not any(m is a for a in allowed)]
            assert not any(isinstance(m, LIVENESS) for m in held), held
        else:
            guard.record(op[1], ok=op[0] == "ok")  # never raises, for any peer and history
            seen.add(op[1])
        states = guard.states()
        assert set(states) <= seen
        assert set(states.values()) <= STATES


@pytest.mark.parametrize("successor_name", sorted(BY_NAME))
def test_failure_counts_survive_a_swap_to_any_guard(
    impl: Implementation, successor_name: str
) -> None:
    clock = FakeClock()
    guard = impl.make(clock)
    for _ in range(3):
        guard.record(2, ok=False)
    guard.record(3, ok=False)
    guard.record(4, ok=True)
    successor = BY_NAME[successor_name].make(clock)
    successor.import_state(guard.export_state())
    assert successor.failures() == {2: 3, 3: 1}  # type: ignore[attr-defined]  # both have it


def test_export_import_round_trips_within_an_implementation(impl: Implementation) -> None:
    clock = FakeClock()
    guard = impl.make(clock)
    for _ in range(3):
        guard.record(2, ok=False)
    guard.allow(2, _messages(2))
    successor = impl.make(clock)
    successor.import_state(guard.export_state())
    assert successor.export_state() == guard.export_state()
    assert successor.states() == guard.states()


def test_import_takes_none_and_refuses_what_is_not_a_mapping(impl: Implementation) -> None:
    guard = impl.make(FakeClock())
    guard.record(2, ok=False)
    before = guard.export_state()
    guard.import_state(None)
    with pytest.raises(TypeError, match="send guard state"):
        guard.import_state(["open"])
    assert guard.export_state() == before


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_runs_until_cancelled_and_takes_no_lock(impl: Implementation) -> None:
    guard = impl.make(FakeClock())
    assert isinstance(guard, Component)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(guard.run)
            tg.cancel_scope.cancel()
    assert guard.lock_stats() == LockStats()
