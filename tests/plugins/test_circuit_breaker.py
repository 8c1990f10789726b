"""The ``circuit_breaker`` plugin: the breaker state machine (a table, one row per rule), the
Raft-aware filtering of what an open breaker holds back, swap state with the legacy
`NoGuard` and with another `BreakerGuard`, and the flag selecting the guard through the
plugin host and a live component swap.

Time is a `FakeClock` advanced by the tests: nothing sleeps, nothing is timed.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, get_args

import anyio
import pytest

import legacy.plugin
from framework.config import Settings, load_settings
from framework.core import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from framework.core.entries import ConfState, Entry, Snapshot, SnapshotMeta
from framework.flags import FlagLayer, Source, evaluate_all
from framework.hooks import BuildContext
from framework.plugins import PluginHost
from framework.runtime.components import Components
from framework.seams import Component, LockStats
from legacy.send_guard import NoGuard
from plugins import circuit_breaker
from plugins.circuit_breaker import plugin as breaker_plugin
from plugins.circuit_breaker.breaker import BreakerConfig, BreakerState, CircuitBreaker
from plugins.circuit_breaker.guard import BreakerGuard, is_bulky


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


CONFIG = BreakerConfig(failure_threshold=3, timeout=10.0, success_threshold=2, probe_window=1.0)


# == the breaker: a table of transitions ========================================================
#
# Each step is "EVENT->STATE": the event, then the state the breaker must be in right after.
# Events: "fail" / "ok" (an outcome), "+S" (S seconds pass), "bulk=yes" / "bulk=no" (ask to
# send bulky traffic, and the expected answer). CONFIG: 3 failures open, 10 s open, 2
# successful probes close, 1 s probe window.

OPEN_IT = ["fail->closed", "fail->closed", "fail->open"]
HALF_OPEN_IT = [*OPEN_IT, "+10->half_open"]

TRANSITIONS: list[tuple[str, list[str]]] = [
    # A single lost connection is noise: below the threshold the breaker stays closed and
    # bulky traffic goes.
    ("closed below the threshold", ["fail->closed", "fail->closed", "bulk=yes->closed"]),
    # A run of failure_threshold consecutive failures means the peer is down: open.
    ("closed -> open after consecutive failures", OPEN_IT),
    # "Consecutive": a success in between (the peer was heard from) resets the count.
    (
        "a success resets the failure count",
        ["fail->closed", "fail->closed", "ok->closed", "fail->closed", "fail->closed"],
    ),
    # Open: bulky traffic is held back; that is what spares a dead peer's sends.
    ("open holds bulky traffic back", [*OPEN_IT, "bulk=no->open", "+9.5->open", "bulk=no->open"]),
    # Open -> half_open after `timeout`, by itself (read from the clock, no timer task).
    ("open -> half_open after the timeout", [*OPEN_IT, "+9.5->open", "+0.5->half_open"]),
    # A peer heard from while open is probed at once, not after the timeout: a restarted
    # follower must not fall behind (nor hold up commits) for a whole timeout. The success
    # counts as its first good probe.
    ("open -> half_open when the peer answers", [*OPEN_IT, "ok->half_open", "ok->closed"]),
    ("a peer that answers then fails opens again", [*OPEN_IT, "ok->half_open", "fail->open"]),
    # Failures while open are expected (small messages still go and fail); they do not
    # restart the timeout, so a peer that is back gets probed on schedule.
    ("failures while open keep the timeout", [*OPEN_IT, "+5->open", "fail->open", "+5->half_open"]),
    # Half-open: one bulky batch per probe; a second one waits while the first is judged.
    ("half_open admits one probe", [*HALF_OPEN_IT, "bulk=yes->half_open", "bulk=no->half_open"]),
    # success_threshold successful probes (judged by the next record) close the breaker.
    (
        "half_open -> closed after successful probes",
        [
            *HALF_OPEN_IT,
            "bulk=yes->half_open",
            "ok->half_open",
            "bulk=yes->half_open",
            "ok->closed",
        ],
    ),
    # A probe that fails means the peer is not back: open again, for a whole new timeout.
    (
        "half_open -> open on a failure, timeout restarted",
        [*HALF_OPEN_IT, "bulk=yes->half_open", "fail->open", "+9->open", "+1->half_open"],
    ),
    # The node reports every lost send but a success only once per recovery: a probe no
    # failure was reported for within the probe window counts as delivered, and the batch
    # asking becomes the next probe.
    (
        "half_open: an unreported probe counts as delivered after the window",
        [
            *HALF_OPEN_IT,
            "bulk=yes->half_open",
            "+0.5->half_open",
            "bulk=no->half_open",
            "+0.5->half_open",
            "bulk=yes->half_open",
            "+1->half_open",
            "bulk=yes->closed",
        ],
    ),
    # Successes must be consecutive: a failure in between starts the count again.
    (
        "half_open successes restart after a re-open",
        [*HALF_OPEN_IT, "ok->half_open", "fail->open", "+10->half_open", "ok->half_open"],
    ),
    # Once closed again, opening takes a whole new run of failures.
    (
        "closed again forgets the old failures",
        [*HALF_OPEN_IT, "ok->half_open", "ok->closed", "fail->closed", "fail->closed"],
    ),
]


def _step(breaker: CircuitBreaker, clock: FakeClock, step: str) -> None:
    event, expected_state = step.split("->")
    if event == "fail":
        breaker.record_failure()
    elif event == "ok":
        breaker.record_success()
    elif event.startswith("+"):
        clock.advance(float(event[1:]))
    elif event.startswith("bulk="):
        assert breaker.admit_bulk() is (event == "bulk=yes"), step
    else:
        raise AssertionError(f"unknown step {step!r}")
    assert breaker.state is BreakerState(expected_state), step


@pytest.mark.parametrize(("rule", "steps"), TRANSITIONS, ids=[rule for rule, _ in TRANSITIONS])
def test_breaker_transitions(rule: str, steps: list[str]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock=clock)
    assert breaker.state is BreakerState.CLOSED
    for step in steps:
        _step(breaker, clock, step)


def test_breaker_counts_every_failure_in_every_state() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock=clock)
    for step in [*HALF_OPEN_IT, "fail->open", "fail->open"]:
        _step(breaker, clock, step)
    assert breaker.total_failures == 5
    assert breaker.consecutive_failures == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("success_threshold", 1.5),
        ("timeout", 0),
        ("probe_window", float("inf")),
        ("timeout", True),
    ],
)
def test_config_refuses_what_cannot_work(field: str, value: Any) -> None:
    good = {"failure_threshold": 1, "timeout": 1.0, "success_threshold": 1, "probe_window": 1.0}
    with pytest.raises(ValueError, match=f"circuit breaker {field} is"):
        BreakerConfig(**{**good, field: value})


# == Raft-aware filtering =======================================================================

ENTRY = Entry(1, 5)
SNAPSHOT = Snapshot(meta=SnapshotMeta(index=9, term=1, conf_state=ConfState(voters=(1, 2, 3))))

SMALL: dict[str, Any] = {
    "vote request": VoteRequest(src=1, dst=2, term=3, last_index=4, last_term=1),
    "pre-vote request": VoteRequest(src=1, dst=2, term=3, last_index=4, last_term=1, pre_vote=True),
    "vote response": VoteResponse(src=1, dst=2, term=3, granted=True),
    "pre-vote response": VoteResponse(src=1, dst=2, term=3, granted=False, pre_vote=True),
    "heartbeat": Heartbeat(src=1, dst=2, term=3, commit=4),
    "heartbeat response": HeartbeatResponse(src=1, dst=2, term=3),
    "timeout now": TimeoutNow(src=1, dst=2, term=3),
    "append response": AppendResponse(src=1, dst=2, term=3, index=4),
    "empty append (probe / commit)": AppendEntries(src=1, dst=2, term=3, prev_index=4, prev_term=1),
    "read index request": ReadIndexRequest(src=1, dst=2, term=3, context=b"r"),
    "read index response": ReadIndexResponse(src=1, dst=2, term=3, context=b"r", index=4),
}
BULKY: dict[str, Any] = {
    "append with entries": AppendEntries(
        src=1, dst=2, term=3, prev_index=4, prev_term=1, entries=(Entry(1, 5), Entry(2, 6))
    ),
    "install snapshot": InstallSnapshot(src=1, dst=2, term=3, snapshot=SNAPSHOT),
}


def test_every_message_type_is_classified() -> None:
    # A message type added to the kernel must get a decision here: does an open breaker hold
    # it back or not?
    classified = {type(m) for m in (*SMALL.values(), *BULKY.values())}
    assert classified == set(get_args(Message))
    assert not any(is_bulky(m) for m in SMALL.values())
    assert all(is_bulky(m) for m in BULKY.values())


def _guard_in(state: str, clock: FakeClock, peer: int = 2) -> BreakerGuard:
    guard = BreakerGuard(CONFIG, clock=clock)
    if state in ("open", "half_open"):
        for _ in range(CONFIG.failure_threshold):
            guard.record(peer, ok=False)
    if state == "half_open":
        clock.advance(CONFIG.timeout)
    assert guard.states().get(peer, "closed") == state
    return guard


@pytest.mark.parametrize("state", ["closed", "open", "half_open"])
@pytest.mark.parametrize("kind", sorted(SMALL))
def test_small_messages_pass_in_every_state(state: str, kind: str) -> None:
    # Votes, heartbeats, TimeoutNow and acknowledgements keep elections and leadership
    # alive; they are never held back, even while a probe is being judged.
    clock = FakeClock()
    guard = _guard_in(state, clock)
    if state == "half_open":
        assert list(guard.allow(2, [BULKY["append with entries"]]))  # the probe in flight
    message = SMALL[kind]
    assert list(guard.allow(2, [message])) == [message]
    assert guard.held_back().get(2, 0) == 0


@pytest.mark.parametrize(
    ("state", "first_passes", "second_passes"),
    [
        ("closed", True, True),  # nothing is held back while the peer is healthy
        ("open", False, False),  # the point of the breaker
        ("half_open", True, False),  # one bulky batch per probe
    ],
)
@pytest.mark.parametrize("kind", sorted(BULKY))
def test_bulky_messages_by_state(
    state: str, first_passes: bool, second_passes: bool, kind: str
) -> None:
    clock = FakeClock()
    guard = _guard_in(state, clock)
    message = BULKY[kind]
    assert list(guard.allow(2, [message])) == ([message] if first_passes else [])
    assert list(guard.allow(2, [message])) == ([message] if second_passes else [])
    held = [first_passes, second_passes].count(False)
    assert guard.held_back().get(2, 0) == held


def test_an_open_breaker_keeps_the_small_messages_of_a_batch_in_order() -> None:
    clock = FakeClock()
    guard = _guard_in("open", clock)
    batch = [
        SMALL["heartbeat"],
        BULKY["append with entries"],
        SMALL["vote response"],
        BULKY["install snapshot"],
        SMALL["append response"],
    ]
    assert list(guard.allow(2, batch)) == [batch[0], batch[2], batch[4]]
    assert guard.held_back() == {2: 2}
    # Breakers are per peer: peer 3 is healthy and gets everything.
    assert guard.allow(3, batch) == batch
    assert guard.states() == {2: "open", 3: "closed"}


def test_a_half_open_probe_sends_the_whole_batch_and_is_judged_by_the_next_record() -> None:
    clock = FakeClock()
    guard = _guard_in("half_open", clock)
    two_appends = [BULKY["append with entries"], SMALL["heartbeat"], BULKY["append with entries"]]
    assert guard.allow(2, two_appends) == two_appends  # the probe: the whole batch
    assert list(guard.allow(2, two_appends)) == [SMALL["heartbeat"]]  # waiting for a verdict
    guard.record(2, ok=True)
    assert guard.allow(2, two_appends) == two_appends  # next probe
    guard.record(2, ok=True)
    assert guard.states() == {2: "closed"}
    assert guard.held_back() == {2: 2}


def test_a_failed_probe_reopens_the_breaker() -> None:
    clock = FakeClock()
    guard = _guard_in("half_open", clock)
    assert list(guard.allow(2, [BULKY["install snapshot"]]))
    guard.record(2, ok=False)
    assert guard.states() == {2: "open"}
    assert list(guard.allow(2, [BULKY["install snapshot"]])) == []


# == swap state =================================================================================


def test_state_from_no_guard_carries_failures_and_starts_closed() -> None:
    legacy_guard = NoGuard()
    for _ in range(7):
        legacy_guard.record(2, ok=False)
    legacy_guard.record(3, ok=False)
    clock = FakeClock()
    guard = BreakerGuard(CONFIG, clock=clock)
    guard.import_state(legacy_guard.export_state())
    assert guard.failures() == {2: 7, 3: 1}
    # Totals over a node's life do not say the peer is down now: closed, as NoGuard was.
    assert guard.states() == {2: "closed", 3: "closed"}
    assert guard.allow(2, [BULKY["append with entries"]]) == [BULKY["append with entries"]]
    # The next run of failures decides.
    for _ in range(CONFIG.failure_threshold):
        guard.record(2, ok=False)
    assert guard.states()[2] == "open"
    assert guard.failures()[2] == 7 + CONFIG.failure_threshold


def test_state_to_no_guard_keeps_the_failure_counts() -> None:
    clock = FakeClock()
    guard = _guard_in("open", clock)
    guard.record(3, ok=False)
    guard.allow(2, [BULKY["install snapshot"]])
    successor = NoGuard()
    successor.import_state(guard.export_state())
    assert successor.failures() == {2: CONFIG.failure_threshold, 3: 1}
    # ...and back again: nothing lost over a round trip through the legacy guard.
    again = BreakerGuard(CONFIG, clock=clock)
    again.import_state(successor.export_state())
    assert again.failures() == guard.failures()


def test_state_moves_between_breaker_guards_on_different_clocks() -> None:
    clock = FakeClock(90.0)
    old = BreakerGuard(CONFIG, clock=clock)
    for _ in range(CONFIG.failure_threshold):
        old.record(3, ok=False)  # peer 3 opens at 90...
    clock.now = 100.0
    old.record(3, ok=True)  # ...is half-open at 100, with one successful probe
    for _ in range(CONFIG.failure_threshold):
        old.record(2, ok=False)  # peer 2 opens at 100
    old.allow(4, [SMALL["heartbeat"]])  # peer 4 known and closed
    old.record(5, ok=False)  # one failure, still closed
    clock.now = 104.0  # peer 2 has been open for 4 of its 10 seconds
    old.allow(2, [BULKY["append with entries"]])
    state = old.export_state()

    other_clock = FakeClock(5_000.0)
    new = BreakerGuard(CONFIG, clock=other_clock)
    new.import_state(state)
    assert new.states() == {2: "open", 3: "half_open", 4: "closed", 5: "closed"}
    assert new.failures() == old.failures()
    assert new.held_back() == old.held_back()
    breaker3 = new.breaker(3)
    assert breaker3 is not None and breaker3.successes == 1
    breaker5 = new.breaker(5)
    assert breaker5 is not None and breaker5.consecutive_failures == 1
    # Peer 2 keeps the 6 seconds it had left, on the new clock.
    other_clock.advance(5.9)
    assert new.states()[2] == "open"
    other_clock.advance(0.1)
    assert new.states()[2] == "half_open"
    new.record(3, ok=True)  # the second successful probe closes peer 3
    assert new.states()[3] == "closed"


def test_a_state_handed_back_to_its_own_guard_changes_nothing() -> None:
    # An aborted swap gives the exported state back to the old component.
    clock = FakeClock()
    guard = _guard_in("open", clock)
    guard.allow(2, [BULKY["install snapshot"]])
    before = guard.export_state()
    guard.import_state(before)
    assert guard.export_state() == before


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        (["open"], TypeError, "must be a mapping"),
        ({"breakers": [2]}, TypeError, "'breakers' must be a mapping"),
        ({"breakers": {"2": {"state": "open"}}}, TypeError, "peer '2' is not a node id"),
        ({"breakers": {2: {"state": "ajar"}}}, ValueError, "peer 2: breaker state 'ajar'"),
        ({"breakers": {2: {"state": "open", "elapsed": -1}}}, ValueError, "elapsed is -1"),
        ({"breakers": {2: {"state": "open", "successes": "1"}}}, ValueError, "successes"),
        ({"held_back": {2: -1}}, ValueError, "'held_back': 2 -> -1"),
    ],
)
def test_a_refused_state_names_the_problem_and_changes_nothing(
    state: Any, error: type[Exception], match: str
) -> None:
    clock = FakeClock()
    guard = _guard_in("open", clock)
    before = guard.export_state()
    with pytest.raises(error, match=match):
        guard.import_state({7: 1, **state} if isinstance(state, dict) else state)
    assert guard.export_state() == before


def test_unknown_keys_are_ignored_as_no_guard_does() -> None:
    guard = BreakerGuard(CONFIG, clock=FakeClock())
    guard.import_state(None)
    guard.import_state({2: 3, 3: "open", True: 1, "future": {"x": 1}})
    assert guard.failures() == {2: 3}


# == the plugin ================================================================================


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(env={})


def _evaluated(registry: Any, **values: bool) -> dict[str, Any]:
    layers = [FlagLayer(source=Source.COMMAND_LINE, values=values)] if values else []
    return evaluate_all(registry, 1, layers)


def test_the_plugin_declares_its_flag_off_by_default() -> None:
    assert breaker_plugin.RAFTMW_TIER == "default"
    [spec] = breaker_plugin.raftmw_declare_flags()
    assert (spec.name, spec.default, spec.owner) == ("circuit_breaker", False, "circuit_breaker")
    assert spec.description


def test_the_plugin_builds_a_guard_from_settings_only_when_the_flag_is_on(
    settings: Settings,
) -> None:
    host = PluginHost(entry_points=False, plugins=[("circuit_breaker", breaker_plugin)])
    registry = host.declare_flags()
    off = BuildContext(node_id=1, settings=settings, flags=_evaluated(registry))
    assert breaker_plugin.raftmw_make_send_guard(off) is None
    on = BuildContext(
        node_id=1, settings=settings, flags=_evaluated(registry, circuit_breaker=True)
    )
    guard = breaker_plugin.raftmw_make_send_guard(on)
    assert isinstance(guard, BreakerGuard)
    section = settings.performance.circuit_breaker
    assert guard.config == BreakerConfig(
        failure_threshold=section.failure_threshold,
        timeout=section.timeout,
        success_threshold=section.success_threshold,
        probe_window=settings.transport.connect_timeout,
    )


@pytest.mark.parametrize(
    ("flag_on", "expected", "built_by"),
    [
        (False, NoGuard, "legacy"),
        (True, BreakerGuard, "circuit_breaker"),
    ],
)
def test_the_flag_selects_the_guard_through_the_plugin_host(
    settings: Settings, flag_on: bool, expected: type, built_by: str
) -> None:
    host = PluginHost(
        entry_points=False,
        plugins=[("legacy", legacy.plugin), ("circuit_breaker", breaker_plugin)],
    )
    registry = host.declare_flags()
    assert registry.get("circuit_breaker").default is False
    values = {"circuit_breaker": True} if flag_on else {}
    ctx = BuildContext(node_id=1, settings=settings, flags=_evaluated(registry, **values))
    guard, plugin = host.build("send_guard", ctx)
    assert isinstance(guard, expected) and plugin == built_by


def test_the_plugin_is_installed_by_entry_point() -> None:
    [entry] = [
        e for e in importlib.metadata.entry_points(group="raftmw") if e.name == "circuit_breaker"
    ]
    assert entry.value == "plugins.circuit_breaker.plugin"
    assert entry.load() is breaker_plugin


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_live_swap_moves_the_failures_both_ways(settings: Settings) -> None:
    host = PluginHost(
        entry_points=False,
        plugins=[("legacy", legacy.plugin), ("circuit_breaker", breaker_plugin)],
    )
    registry = host.declare_flags()
    components = Components(host, node_id=1, settings=settings, on_shed=lambda q, item: None)
    async with anyio.create_task_group() as tg:
        await components.start(tg, _evaluated(registry))
        assert isinstance(components.send_guard, NoGuard)
        components.send_guard.record(2, ok=False)

        reports = await components.reconfigure(_evaluated(registry, circuit_breaker=True))
        assert [(r.slot, r.old, r.new, r.ok) for r in reports] == [
            ("send_guard", "legacy", "circuit_breaker", True)
        ]
        guard = components.send_guard
        assert isinstance(guard, BreakerGuard)
        assert guard.failures() == {2: 1}
        for _ in range(guard.config.failure_threshold):
            guard.record(2, ok=False)
        assert guard.states() == {2: "open"}

        await components.reconfigure(_evaluated(registry))
        assert isinstance(components.send_guard, NoGuard)
        assert components.send_guard.failures() == {2: 1 + guard.config.failure_threshold}
        tg.cancel_scope.cancel()


def test_public_api() -> None:
    assert sorted(circuit_breaker.__all__) == [
        "BreakerConfig",
        "BreakerGuard",
        "BreakerState",
        "CircuitBreaker",
        "is_bulky",
    ]
    guard = BreakerGuard(CONFIG)
    assert isinstance(guard, Component)
    assert guard.lock_stats() == LockStats()
