"""The duties of every ``TimeoutPolicy`` (``framework.seams``), checked on each implementation:
the legacy ``FixedTimeouts`` and the ``AdaptiveTimeouts`` of the ``adaptive_timeout`` plugin.

Every policy: timeouts are positive and finite, never above ``max_timeout`` for a configured
operation, whatever was observed and whatever the attempt; ``observe`` never raises, even for
odd durations; ``stats`` shows ``count`` and ``timeouts`` of every observed operation; the
counts survive an export/import round trip into any policy; ``run`` starts and stops.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.config import Settings, load_settings
from framework.seams import Component, TimeoutPolicy
from legacy import FixedTimeouts
from plugins.adaptive_timeout import AdaptiveTimeouts

Factory = Callable[[Settings], TimeoutPolicy]

POLICIES: dict[str, Factory] = {
    "fixed": FixedTimeouts,
    "adaptive": lambda s: AdaptiveTimeouts(s, rng=random.Random(0)),
}

SETTINGS = load_settings(env={})
CONFIGURED = tuple(SETTINGS.performance.timeouts)
OPERATIONS = (*CONFIGURED, "unlisted_operation")

observations = st.lists(
    st.tuples(
        st.sampled_from(OPERATIONS),
        st.one_of(
            st.floats(min_value=0.0, max_value=120.0),
            st.floats(allow_nan=True, allow_infinity=True),  # a clock gone wrong
        ),
        st.booleans(),
    ),
    max_size=60,
)


@pytest.fixture(params=sorted(POLICIES))
def make(request: pytest.FixtureRequest) -> Factory:
    return POLICIES[str(request.param)]


def test_the_default_settings_configure_operations() -> None:
    # Otherwise the bounds checks below check nothing.
    assert {"raft_message", "client_request"} <= set(CONFIGURED)


@given(seen=observations, attempt=st.integers(min_value=0, max_value=40))
@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_timeouts_stay_positive_finite_and_within_max(
    name: str, seen: list[tuple[str, float, bool]], attempt: int
) -> None:
    policy = POLICIES[name](SETTINGS)
    for operation, seconds, ok in seen:
        policy.observe(operation, seconds, ok=ok)  # never raises
        for op in OPERATIONS:
            timeout = policy.timeout(op, attempt)
            assert 0 < timeout < math.inf, (op, timeout)
            if op in SETTINGS.performance.timeouts:
                assert timeout <= SETTINGS.performance.timeouts[op].max_timeout, (op, timeout)


def test_stats_count_every_observed_operation(make: Factory) -> None:
    policy = make(SETTINGS)
    policy.observe("raft_message", 0.01, ok=True)
    policy.observe("raft_message", 0.5, ok=False)
    policy.observe("unlisted_operation", 1.0, ok=False)
    stats = policy.stats()
    assert (stats["raft_message"]["count"], stats["raft_message"]["timeouts"]) == (2, 1)
    assert (stats["unlisted_operation"]["count"], stats["unlisted_operation"]["timeouts"]) == (1, 1)
    for operation in CONFIGURED:  # configured operations show before use
        assert stats[operation]["timeout_seconds"] == policy.timeout(operation)


@pytest.mark.parametrize("successor", sorted(POLICIES))
def test_counts_survive_a_round_trip_into_any_policy(make: Factory, successor: str) -> None:
    policy = make(SETTINGS)
    for seconds, ok in ((0.01, True), (0.02, True), (0.3, False)):
        policy.observe("raft_message", seconds, ok=ok)
    policy.observe("client_request", 0.2, ok=True)
    new = POLICIES[successor](SETTINGS)
    new.import_state(policy.export_state())
    for operation, count, timeouts in (("raft_message", 3, 1), ("client_request", 1, 0)):
        stats = new.stats()[operation]
        assert (stats["count"], stats["timeouts"]) == (count, timeouts)


def test_an_empty_state_and_no_state_are_taken(make: Factory) -> None:
    policy = make(SETTINGS)
    policy.import_state(None)
    policy.import_state(make(SETTINGS).export_state())
    assert all(entry["count"] == 0 for entry in policy.stats().values())
    with pytest.raises(TypeError):
        policy.import_state(42)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_policy_runs_until_cancelled(make: Factory, anyio_backend: str) -> None:
    policy = make(SETTINGS)
    assert isinstance(policy, Component)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(policy.run)
            tg.cancel_scope.cancel()
