"""Adaptive timeouts: the RFC 6298 estimator against hand-computed values; the policy's
bounds, backoff and jitter, fixed behaviour where adaptation is off, the client deadline
rule, swap state both ways with the legacy policy, and the flag choosing the plugin."""

from __future__ import annotations

import dataclasses
import math
import random
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

import legacy.plugin
import plugins.adaptive_timeout
from framework.config import Settings, TimeoutSettings, load_settings
from framework.hooks import BuildContext
from framework.plugins import PluginHost
from framework.runtime.components import Components
from framework.seams import LockStats, TimeoutPolicy
from legacy import FixedTimeouts
from plugins.adaptive_timeout import JITTER, AdaptiveTimeouts, RttEstimator
from plugins.adaptive_timeout import plugin as adaptive_plugin

# == the estimator (RFC 6298) ==================================================================

# Each row: the measured round trips, and (SRTT, RTTVAR, RTO) after each of them, worked by
# hand from §2.2 (first: SRTT = R, RTTVAR = R/2) and §2.3 (RTTVAR = 3/4 RTTVAR + 1/4 |SRTT -
# R'| with the old SRTT, then SRTT = 7/8 SRTT + 1/8 R'), RTO = SRTT + 4 RTTVAR. The samples
# are binary fractions so the expected values are exact.
RFC_6298_TABLE = [
    pytest.param([1.0], [(1.0, 0.5, 3.0)], id="first sample: srtt=R, rttvar=R/2"),
    pytest.param(
        [1.0, 2.0, 1.0],
        [(1.0, 0.5, 3.0), (1.125, 0.625, 3.625), (1.109375, 0.5, 3.109375)],
        # With the new SRTT the second RTTVAR would be 0.59375: the order matters.
        id="rttvar is updated with the old srtt",
    ),
    pytest.param(
        [0.5, 0.5, 0.5],
        [(0.5, 0.25, 1.5), (0.5, 0.1875, 1.25), (0.5, 0.140625, 1.0625)],
        id="a steady path: rttvar decays by 3/4 per sample",
    ),
    pytest.param(
        [0.0, 4.0],
        [(0.0, 0.0, 0.0), (0.5, 1.0, 4.5)],
        id="a zero first sample, then a jump",
    ),
    pytest.param(
        [2.0, 0.0],
        [(2.0, 1.0, 6.0), (1.75, 1.25, 6.75)],
        id="a sample far below srtt widens rttvar",
    ),
]


def numbers(estimator: RttEstimator) -> tuple[float | None, float | None, float]:
    return estimator.srtt, estimator.rttvar, estimator.rto


@pytest.mark.parametrize(("samples", "expected"), RFC_6298_TABLE)
def test_the_estimator_follows_rfc_6298(
    samples: list[float], expected: list[tuple[float, float, float]]
) -> None:
    estimator = RttEstimator(1.0, min_rto=0.0)
    assert numbers(estimator) == (None, None, 1.0)  # §2.1
    for sample, row in zip(samples, expected, strict=True):
        estimator.sample(sample)
        assert numbers(estimator) == row


def test_a_timeout_doubles_rto_up_to_the_maximum_and_a_sample_ends_the_backoff() -> None:
    estimator = RttEstimator(1.0, max_rto=5.0)
    rtos = []
    for _ in range(4):
        estimator.backoff()  # §5.5, also before the first sample
        rtos.append(estimator.rto)
    assert rtos == [2.0, 4.0, 5.0, 5.0]
    assert estimator.srtt is None  # a timeout is not a measurement
    estimator.sample(0.25)
    assert numbers(estimator) == (0.25, 0.125, 0.75)
    estimator.backoff()
    assert estimator.rto == 1.5
    estimator.sample(0.25)  # recomputed from SRTT/RTTVAR: the backoff is over
    assert estimator.rto == 0.25 + 4 * 0.09375


def test_rto_is_kept_within_its_bounds() -> None:
    estimator = RttEstimator(1.0, min_rto=1.0, max_rto=2.0)
    estimator.sample(0.01)  # §2.4: rounded up to the minimum
    assert estimator.rto == 1.0 and estimator.srtt == 0.01
    estimator.sample(10.0)
    assert estimator.rto == 2.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.5])
def test_a_sample_that_is_not_a_duration_is_ignored(bad: float) -> None:
    estimator = RttEstimator(1.0)
    estimator.sample(bad)
    assert (estimator.srtt, estimator.rto) == (None, 1.0)
    estimator.sample(1.0)
    estimator.sample(bad)
    assert numbers(estimator) == (1.0, 0.5, 3.0)


@pytest.mark.parametrize(
    ("initial", "low", "high"), [(1.0, 2.0, 3.0), (4.0, 0.0, 3.0), (1.0, -1.0, 3.0)]
)
def test_inconsistent_bounds_are_refused(initial: float, low: float, high: float) -> None:
    with pytest.raises(ValueError, match="min_rto <= initial_rto <= max_rto"):
        RttEstimator(initial, min_rto=low, max_rto=high)


def test_restore_takes_over_an_estimate_and_checks_it() -> None:
    estimator = RttEstimator(1.0, max_rto=10.0)
    estimator.backoff()
    estimator.restore(0.5, 0.25)
    assert numbers(estimator) == (0.5, 0.25, 1.5)
    with pytest.raises(ValueError, match="rttvar"):
        estimator.restore(0.5, math.nan)
    assert estimator.rttvar == 0.25  # unchanged by the refused restore


# == the policy =================================================================================


def policy_settings(
    *, client_deadline: float = 5.0, client_request: TimeoutSettings | None = None
) -> Settings:
    """Settings with a known table: ``rpc`` adaptive in [0.1, 1], ``fixed`` not adaptive,
    ``client_request`` adaptive in [1, 10], and the client's own deadline."""
    base = load_settings(env={})
    table = {
        "rpc": TimeoutSettings(base_timeout=0.1, max_timeout=1.0, enable_adaptive=True),
        "fixed": TimeoutSettings(base_timeout=0.3, max_timeout=3.0, enable_adaptive=False),
        "client_request": client_request
        or TimeoutSettings(base_timeout=1.0, max_timeout=10.0, enable_adaptive=True),
    }
    return dataclasses.replace(
        base,
        performance=dataclasses.replace(base.performance, timeouts=table),
        client=dataclasses.replace(base.client, request_timeout=client_deadline),
    )


def test_with_no_samples_an_operation_gets_its_base_timeout() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    assert policy.timeout("rpc") == 0.1
    assert policy.timeout("client_request") == 1.0


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        pytest.param(0.01, 0.1, id="rto 0.03 is raised to base_timeout"),
        pytest.param(0.125, 0.375, id="rto within the bounds is used as is"),
        pytest.param(0.5, 1.0, id="rto 1.5 is cut to max_timeout"),
    ],
)
def test_the_timeout_is_the_rto_clamped_to_base_and_max(sample: float, expected: float) -> None:
    policy = AdaptiveTimeouts(policy_settings())
    policy.observe("rpc", sample, ok=True)
    assert policy.timeout("rpc") == expected
    assert policy.stats()["rpc"]["srtt"] == sample


def test_a_timed_out_operation_backs_off_to_max_timeout() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    seen = []
    for _ in range(5):
        policy.observe("rpc", 0.1, ok=False)
        seen.append(policy.timeout("rpc"))
    assert seen == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert "srtt" not in policy.stats()["rpc"]  # timed-out observations are no samples
    policy.observe("rpc", 0.125, ok=True)
    assert policy.timeout("rpc") == 0.375


def test_retries_back_off_exponentially_with_seeded_jitter() -> None:
    policy = AdaptiveTimeouts(policy_settings(), rng=random.Random(7))
    policy.observe("rpc", 0.01, ok=True)  # timeout at the 0.1 floor
    draws = random.Random(7)
    expected = [0.1] + [min(1.0, 0.1 * 2**n * (1 + JITTER * draws.random())) for n in (1, 2, 3)]
    got = [policy.timeout("rpc", attempt) for attempt in range(4)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[1] < got[2] < got[3] == 1.0  # seed 7: attempt 3 draws past max_timeout
    assert policy.timeout("rpc", attempt=4) == 1.0  # 1.6 and more: clamped
    assert policy.timeout("rpc", attempt=10_000) == 1.0  # no overflow


@pytest.mark.parametrize("seed", range(20))
def test_jitter_only_lengthens_and_each_retry_waits_longer(seed: int) -> None:
    policy = AdaptiveTimeouts(policy_settings(), rng=random.Random(seed))
    unjittered = AdaptiveTimeouts(policy_settings(), jitter=0.0)
    for attempt in (1, 2):  # attempt 3 may reach max_timeout (0.8 * 1.5 > 1.0)
        low = unjittered.timeout("rpc", attempt)
        assert low == 0.1 * 2**attempt
        got = policy.timeout("rpc", attempt)
        assert low <= got < low * (1 + JITTER)
        # Ranges of consecutive attempts do not overlap.
        assert got < unjittered.timeout("rpc", attempt + 1)


def test_a_first_attempt_draws_no_jitter() -> None:
    rng = random.Random(3)
    policy = AdaptiveTimeouts(policy_settings(), rng=rng)
    before = rng.getstate()
    for operation in ("rpc", "fixed", "unknown", "client_request"):
        policy.timeout(operation)
    policy.stats()
    assert rng.getstate() == before


def test_a_negative_attempt_or_jitter_is_refused() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    with pytest.raises(ValueError, match="attempt"):
        policy.timeout("rpc", attempt=-1)
    with pytest.raises(ValueError, match="jitter"):
        AdaptiveTimeouts(policy_settings(), jitter=-0.1)


def test_non_adaptive_and_unknown_operations_behave_like_fixed_timeouts() -> None:
    settings = policy_settings(client_deadline=7.0)
    policy = AdaptiveTimeouts(settings, rng=random.Random(1))
    fixed = FixedTimeouts(settings)
    for operation in ("fixed", "unknown"):
        for seconds, ok in ((2.0, True), (9.0, False), (9.0, False), (0.001, True)):
            policy.observe(operation, seconds, ok=ok)
            for attempt in range(4):
                assert policy.timeout(operation, attempt) == fixed.timeout(operation, attempt)
    assert policy.timeout("fixed", 3) == 0.3
    assert policy.timeout("unknown", 3) == 7.0
    # Still estimated, for the status page.
    assert policy.stats()["fixed"]["srtt"] == pytest.approx(2.0 * 7 / 8 + 0.001 / 8)
    assert policy.stats()["unknown"]["timeouts"] == 2


def test_a_client_request_never_gets_less_than_its_base_timeout() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    for _ in range(50):
        policy.observe("client_request", 0.002, ok=True)  # commits are fast
    assert policy.timeout("client_request") == 1.0


def test_a_client_request_grows_with_commit_latency_up_to_the_client_deadline() -> None:
    policy = AdaptiveTimeouts(policy_settings(client_deadline=5.0))
    policy.observe("client_request", 0.5, ok=True)
    assert policy.timeout("client_request") == 1.5
    policy.observe("client_request", 2.0, ok=True)
    assert policy.timeout("client_request") == 0.6875 + 4 * 0.5625
    policy.observe("client_request", 5.0, ok=True)
    stats = policy.stats()["client_request"]
    assert stats["srtt"] + 4 * stats["rttvar"] == 7.2265625
    # Within max_timeout (10s), but the client gives up after 5s.
    assert policy.timeout("client_request") == 5.0
    assert policy.timeout("client_request", attempt=3) == 5.0


def test_an_expired_client_request_does_not_back_off() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    for _ in range(10):
        policy.observe("client_request", 1.0, ok=False)
    assert policy.timeout("client_request") == 1.0
    assert policy.stats()["client_request"]["timeouts"] == 10


def test_a_client_request_base_above_the_client_deadline_stays_at_base() -> None:
    settings = policy_settings(
        client_deadline=2.0,
        client_request=TimeoutSettings(base_timeout=3.0, max_timeout=10.0, enable_adaptive=True),
    )
    policy = AdaptiveTimeouts(settings)
    policy.observe("client_request", 9.0, ok=True)
    assert policy.timeout("client_request") == 3.0


def test_stats_show_counts_the_current_timeout_and_the_estimate() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    policy.observe("rpc", 0.125, ok=True)
    policy.observe("rpc", 0.125, ok=False)
    stats = policy.stats()
    assert stats["rpc"] == {
        "count": 2,
        "timeouts": 1,
        "timeout_seconds": 0.75,  # rto 0.375, doubled by the timeout
        "srtt": 0.125,
        "rttvar": 0.0625,
    }
    assert stats["client_request"] == {"count": 0, "timeouts": 0, "timeout_seconds": 1.0}
    assert policy.lock_stats() == LockStats()


# == swap state =================================================================================


def test_state_moves_from_the_fixed_policy_and_back() -> None:
    settings = policy_settings()
    fixed = FixedTimeouts(settings)
    fixed.observe("rpc", 0.05, ok=True)
    fixed.observe("rpc", 0.2, ok=False)
    fixed.observe("custom", 1.0, ok=True)

    adaptive = AdaptiveTimeouts(settings)
    adaptive.import_state(fixed.export_state())
    stats = adaptive.stats()
    assert (stats["rpc"]["count"], stats["rpc"]["timeouts"]) == (2, 1)
    assert stats["custom"]["count"] == 1
    assert "srtt" not in stats["rpc"]  # the fixed policy measured nothing
    assert adaptive.timeout("rpc") == 0.1

    adaptive.observe("rpc", 0.5, ok=True)
    state = adaptive.export_state()
    assert state["rpc"] == {"count": 3, "timeouts": 1, "srtt": 0.5, "rttvar": 0.25}
    back = FixedTimeouts(settings)
    back.import_state(state)  # ignores srtt and rttvar
    assert back.stats()["rpc"] == {"count": 3, "timeouts": 1, "timeout_seconds": 0.1}
    assert back.stats()["custom"]["count"] == 1


def test_state_moves_between_adaptive_policies_with_the_estimates() -> None:
    settings = policy_settings()
    old = AdaptiveTimeouts(settings)
    old.observe("rpc", 0.125, ok=True)
    old.observe("rpc", 0.125, ok=True)
    old.observe("unknown", 2.0, ok=False)
    new = AdaptiveTimeouts(settings)
    new.import_state(old.export_state())
    assert new.stats() == old.stats()
    assert new.export_state() == old.export_state()
    assert new.timeout("rpc") == old.timeout("rpc") == 0.125 + 4 * 0.046875


def test_a_backoff_in_progress_is_not_carried_over() -> None:
    settings = policy_settings()
    old = AdaptiveTimeouts(settings)
    old.observe("rpc", 0.125, ok=True)
    old.observe("rpc", 0.125, ok=False)
    assert old.timeout("rpc") == 0.75
    new = AdaptiveTimeouts(settings)
    new.import_state(old.export_state())
    assert new.timeout("rpc") == 0.375


def test_import_skips_malformed_entries_and_refuses_a_non_mapping() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    policy.import_state(None)
    policy.import_state(
        {
            "rpc": {"count": 2, "timeouts": 0, "srtt": "fast", "rttvar": 0.1},  # counts only
            "connect": {"count": True},  # a bool is not a count: skipped
            "snapshot": {"count": -1},  # skipped
            "raft": {"srtt": math.inf, "rttvar": 0.0},  # no estimate, no counts
            7: {"count": 1},  # not an operation name
            "x": [1, 2],  # not a mapping
            "fixed": {"count": 1, "srtt": 0.25, "rttvar": 0.125},
        }
    )
    stats = policy.stats()
    assert stats["rpc"]["count"] == 2 and "srtt" not in stats["rpc"]
    assert policy.timeout("rpc") == 0.1
    assert "connect" not in stats and "snapshot" not in stats and "x" not in stats
    assert stats["fixed"]["srtt"] == 0.25 and stats["fixed"]["timeout_seconds"] == 0.3
    with pytest.raises(TypeError, match="timeout policy state"):
        policy.import_state([("rpc", 1)])
    assert policy.stats()["rpc"]["count"] == 2


def test_imported_counts_add_to_the_policys_own() -> None:
    policy = AdaptiveTimeouts(policy_settings())
    policy.observe("rpc", 0.1, ok=False)
    policy.import_state({"rpc": {"count": 4, "timeouts": 2}})
    assert (policy.stats()["rpc"]["count"], policy.stats()["rpc"]["timeouts"]) == (5, 3)


# == the plugin =================================================================================


def context(settings: Settings, **flags: bool) -> BuildContext:
    # Stand-ins for framework.flags.Evaluation: BuildContext.flag reads only `.value`.
    return BuildContext(
        node_id=2,
        settings=settings,
        flags={name: SimpleNamespace(value=value) for name, value in flags.items()},  # type: ignore[misc]  # duck-typed Evaluation
    )


def test_the_plugin_declares_its_flag_off_by_default() -> None:
    (spec,) = adaptive_plugin.raftmw_declare_flags()
    assert (spec.name, spec.default, spec.owner) == ("adaptive_timeout", False, "adaptive_timeout")
    assert adaptive_plugin.RAFTMW_TIER == "default"


def test_the_plugin_builds_the_policy_only_when_the_flag_is_on() -> None:
    settings = load_settings(env={})
    built = adaptive_plugin.raftmw_make_timeouts(context(settings, adaptive_timeout=True))
    assert isinstance(built, AdaptiveTimeouts)
    configured = settings.performance.timeouts["raft_message"]
    assert built.timeout("raft_message") == configured.base_timeout
    assert adaptive_plugin.raftmw_make_timeouts(context(settings, adaptive_timeout=False)) is None
    assert adaptive_plugin.raftmw_make_timeouts(context(settings)) is None


def test_the_plugin_host_picks_the_policy_by_flag() -> None:
    settings = load_settings(env={})
    host = PluginHost(
        entry_points=False,
        plugins=[("legacy", legacy.plugin), ("adaptive_timeout", adaptive_plugin)],
    )
    assert host.declare_flags().get("adaptive_timeout").default is False
    component, name = host.build("timeouts", context(settings, adaptive_timeout=True))
    assert (type(component), name) == (AdaptiveTimeouts, "adaptive_timeout")
    component, name = host.build("timeouts", context(settings, adaptive_timeout=False))
    assert (type(component), name) == (FixedTimeouts, "legacy")


def test_the_plugin_is_installed_by_entry_point() -> None:
    host = PluginHost()
    info = host.names["adaptive_timeout"]
    assert info.loaded and "timeouts" in info.seams
    assert "adaptive_timeout" in host.declare_flags().names()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_live_swap_carries_the_counts_both_ways(anyio_backend: str) -> None:
    host = PluginHost(
        entry_points=False,
        plugins=[("legacy", legacy.plugin), ("adaptive_timeout", adaptive_plugin)],
    )
    components = Components(
        host, node_id=1, settings=policy_settings(), on_shed=lambda queue, item: None
    )

    def flags(on: bool) -> dict[str, Any]:
        return {"adaptive_timeout": SimpleNamespace(value=on)}

    async with anyio.create_task_group() as tg:
        await components.start(tg, flags(False))
        assert isinstance(components.timeouts, FixedTimeouts)
        components.timeouts.observe("rpc", 0.05, ok=True)

        reports = await components.reconfigure(flags(True))
        assert [(r.slot, r.ok) for r in reports] == [("timeouts", True)]
        adaptive = components.timeouts
        assert isinstance(adaptive, AdaptiveTimeouts)
        adaptive.observe("rpc", 0.125, ok=True)
        assert adaptive.stats()["rpc"]["count"] == 2
        assert adaptive.timeout("rpc") == 0.375

        await components.reconfigure(flags(False))
        assert isinstance(components.timeouts, FixedTimeouts)
        assert components.timeouts.stats()["rpc"]["count"] == 2
        tg.cancel_scope.cancel()


def test_public_api() -> None:
    assert sorted(plugins.adaptive_timeout.__all__) == [
        "AdaptiveTimeouts",
        "CLIENT_REQUEST",
        "JITTER",
        "RttEstimator",
    ]
    policy: TimeoutPolicy = AdaptiveTimeouts(policy_settings())  # mypy checks the protocol
    assert policy.timeout("rpc") == 0.1


@pytest.mark.anyio
@pytest.mark.parametrize("actors", [False, True], ids=["legacy pool", "actor pool"])
async def test_the_pools_leave_a_dial_to_the_policys_deadline(actors: bool) -> None:
    """Issue #12: both pools wrapped each dial in the fixed transport.connect_timeout, which
    fired before any adaptive connect timeout above it could. A dial that outlasts that
    fixed value but not the policy's bound now completes, first time."""
    from pool_fakes import FakeDialer

    settings = load_settings(
        env={},
        overrides={
            "transport.connect_timeout": "50ms",
            "performance.timeouts.connect.max_timeout": "5s",
            "transport.reconnect_backoff_min": "10ms",
            "transport.reconnect_backoff_max": "20ms",
        },
    )
    flags = {"actors": SimpleNamespace(value=actors)}
    ctx = BuildContext(node_id=1, settings=settings, flags=flags)  # type: ignore[arg-type]
    dialer = FakeDialer()
    pool, _ = PluginHost().build("connection_pool", ctx, dialer=dialer)
    dialer.hang[2] = gate = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            pool.set_peers({2: "a2"})
            while 2 not in dialer.dialling:
                await anyio.sleep(0.005)
            await anyio.sleep(0.3)  # six times the fixed connect_timeout
            gate.set()
            while dialer.live(2) is None:
                await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    assert dialer.dials == [(2, "a2")]  # one dial, never cut short and redialled
