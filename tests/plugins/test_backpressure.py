"""The ``backpressure`` plugin: BoundedPriorityQueue's rules (see its module docstring)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pluggy
import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import framework.hooks
from framework.config import BackpressureSettings, load_settings
from framework.errors import Overloaded
from framework.flags import Evaluation, FlagSpec, Reason, Source
from framework.hooks import BuildContext
from framework.seams import Component, MessageQueue, Priority, QueueFull, QueueStats
from legacy.queue import UnboundedQueue
from plugins.backpressure import plugin
from plugins.backpressure.queue import (
    BoundedPriorityQueue,
    ProcessMemoryProbe,
    memory_budget_bytes,
    read_memory_fraction,
)

C, H, N = Priority.CRITICAL, Priority.HIGH, Priority.NORMAL


def make_queue(
    capacity: int = 10,
    *,
    enable_priority: bool = True,
    threshold: float = 0.9,
    memory: Callable[[], float] = lambda: 0.0,
    on_shed: Callable[[Any], None] | None = None,
    name: str = "inbox",
) -> BoundedPriorityQueue[Any]:
    return BoundedPriorityQueue(
        name,
        BackpressureSettings(
            max_pending=capacity,
            enable_priority=enable_priority,
            memory_pressure_threshold=threshold,
        ),
        on_shed=on_shed,
        memory_probe=memory,
    )


def put_all(queue: MessageQueue[Any], items: list[tuple[Any, Priority]]) -> None:
    for item, priority in items:
        queue.put_nowait(item, priority)


# -- order --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enable_priority", "puts", "limits", "drains"),
    [
        pytest.param(
            True,
            [("n1", N), ("h1", H), ("c1", C), ("n2", N), ("h2", H), ("c2", C)],
            [None],
            [["c1", "c2", "h1", "h2", "n1", "n2"]],
            id="highest-first-fifo-within",
        ),
        pytest.param(
            True,
            [("n1", N), ("h1", H), ("c1", C), ("n2", N), ("h2", H)],
            [2, 2, 2],
            [["c1", "h1"], ["h2", "n1"], ["n2"]],
            id="limit-spans-classes",
        ),
        pytest.param(
            True,
            [("n1", N)],
            [0, None, None],
            [[], ["n1"], []],
            id="limit-zero-and-empty",
        ),
        pytest.param(
            False,
            [("n1", N), ("h1", H), ("c1", C), ("n2", N)],
            [None],
            [["n1", "h1", "c1", "n2"]],
            id="priorities-off-one-fifo",
        ),
    ],
)
def test_drain_order(
    enable_priority: bool,
    puts: list[tuple[str, Priority]],
    limits: list[int | None],
    drains: list[list[str]],
) -> None:
    queue = make_queue(enable_priority=enable_priority)
    put_all(queue, puts)
    assert [queue.drain(limit) for limit in limits] == drains
    assert len(queue) == 0


def test_negative_drain_limit_is_refused() -> None:
    queue = make_queue()
    queue.put_nowait("n1")
    with pytest.raises(ValueError, match=r"queue 'inbox': drain limit is -1; expected >= 0"):
        queue.drain(-1)
    assert queue.drain() == ["n1"]


# -- capacity, reserve, eviction ------------------------------------------------------------


def test_full_queue_refuses_normal_with_a_message_naming_queue_depth_and_capacity() -> None:
    queue = make_queue(4, name="proposals")
    put_all(queue, [(i, N) for i in range(4)])
    with pytest.raises(QueueFull) as refused:
        queue.put_nowait("late")
    assert isinstance(refused.value, Overloaded)
    assert str(refused.value) == (
        "queue 'proposals' is full: depth 4 of capacity 4; a NORMAL item was refused"
    )
    assert queue.drain() == [0, 1, 2, 3]  # nothing was enqueued


@pytest.mark.parametrize(
    ("capacity", "reserve"),
    [(1, 1), (19, 1), (20, 1), (39, 1), (40, 2), (100, 5), (10_000, 500)],
)
def test_critical_reserve_is_five_percent_at_least_one(capacity: int, reserve: int) -> None:
    queue = make_queue(capacity)
    assert queue.snapshot()["reserve"] == reserve
    put_all(queue, [(i, H) for i in range(capacity)])
    with pytest.raises(QueueFull, match=r"no NORMAL item to shed"):
        queue.put_nowait("high", H)
    put_all(queue, [(f"c{i}", C) for i in range(reserve)])
    assert len(queue) == capacity + reserve
    with pytest.raises(QueueFull) as refused:
        queue.put_nowait("one-too-many", C)
    assert str(refused.value) == (
        f"queue 'inbox' is full: depth {capacity + reserve} of capacity {capacity} plus "
        f"CRITICAL reserve {reserve}, and no NORMAL item to shed"
    )
    assert queue.drain(reserve) == [f"c{i}" for i in range(reserve)]


def test_no_reserve_and_no_eviction_with_priorities_off() -> None:
    shed: list[Any] = []
    queue = make_queue(2, enable_priority=False, on_shed=shed.append)
    put_all(queue, [("n1", N), ("n2", N)])
    for priority in (C, H):
        with pytest.raises(QueueFull):
            queue.put_nowait("urgent", priority)
    assert shed == []
    assert queue.snapshot()["reserve"] == 0


@pytest.mark.parametrize("priority", [C, H])
def test_raft_traffic_evicts_the_newest_normal_item_and_tells_on_shed(
    priority: Priority,
) -> None:
    shed: list[Any] = []
    queue = make_queue(4, on_shed=shed.append)
    put_all(queue, [("h1", H), ("n1", N), ("n2", N), ("n3", N)])
    queue.put_nowait("x", priority)
    assert shed == ["n3"]
    queue.put_nowait("y", priority)
    assert shed == ["n3", "n2"]
    assert len(queue) == 4
    expected = ["x", "y", "h1", "n1"] if priority == C else ["h1", "x", "y", "n1"]
    assert queue.drain() == expected
    assert queue.snapshot()["rejected"] == {"full": 0, "memory": 0, "shed": 2}


def test_critical_evicts_normal_before_using_the_reserve() -> None:
    shed: list[Any] = []
    queue = make_queue(2, on_shed=shed.append)
    put_all(queue, [("n1", N), ("n2", N), ("c1", C), ("c2", C), ("c3", C)])
    assert shed == ["n2", "n1"]
    assert len(queue) == 3  # capacity 2 + reserve 1, used only once no NORMAL was left
    assert queue.drain() == ["c1", "c2", "c3"]


def test_an_on_shed_that_raises_is_logged_and_the_put_still_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(item: Any) -> None:
        raise RuntimeError("owner gone")

    queue = make_queue(1, on_shed=broken)
    queue.put_nowait("n1")
    with caplog.at_level(logging.ERROR):
        queue.put_nowait("h1", H)
    assert "on_shed failed" in caplog.text
    assert queue.drain() == ["h1"]


# -- memory pressure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "threshold", "normal_accepted"),
    [(0.5, 0.9, True), (0.9, 0.9, True), (0.91, 0.9, False), (0.75, 0.7, False), (1.0, 1.0, True)],
)
def test_memory_pressure_refuses_normal_only(
    usage: float, threshold: float, normal_accepted: bool
) -> None:
    probes: list[float] = []

    def probe() -> float:
        probes.append(usage)
        return usage

    queue = make_queue(10, threshold=threshold, memory=probe)
    queue.put_nowait("c1", C)
    queue.put_nowait("h1", H)
    assert probes == []  # Raft traffic never asks the probe
    if normal_accepted:
        queue.put_nowait("n1")
        assert queue.drain() == ["c1", "h1", "n1"]
    else:
        with pytest.raises(QueueFull) as refused:
            queue.put_nowait("n1")
        assert str(refused.value) == (
            f"queue 'inbox' refused a NORMAL item under memory pressure: memory use "
            f"{usage:.0%} is above memory_pressure_threshold {threshold:.0%} "
            "(depth 2 of capacity 10)"
        )
        assert queue.snapshot()["rejected"] == {"full": 0, "memory": 1, "shed": 0}
        assert queue.drain() == ["c1", "h1"]


def test_memory_pressure_lifts_when_the_probe_falls() -> None:
    usage = [0.95]
    queue = make_queue(10, threshold=0.9, memory=lambda: usage[0])
    with pytest.raises(QueueFull):
        queue.put_nowait("n1")
    usage[0] = 0.5
    queue.put_nowait("n2")
    assert queue.drain() == ["n2"]


def test_process_memory_probe_reads_at_most_once_per_refresh_interval() -> None:
    now = [0.0]
    readings = iter([0.25, 0.5, 0.75])
    reads: list[float] = []

    def read() -> float:
        reads.append(value := next(readings))
        return value

    probe = ProcessMemoryProbe(refresh_interval=0.1, read=read, clock=lambda: now[0])
    seen = []
    for t in (0.0, 0.05, 0.0999, 0.1, 0.15, 0.25):
        now[0] = t
        seen.append(probe())
    assert seen == [0.25, 0.25, 0.25, 0.5, 0.5, 0.75]
    assert reads == [0.25, 0.5, 0.75]


def test_default_probe_reads_a_fraction_of_this_process() -> None:
    usage = ProcessMemoryProbe()()
    assert 0.0 <= usage <= 1.0


def _fake_proc(tmp_path: Path, cgroup: str, statm: str | None = "100 25 0 0 0 0 0") -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    if statm is not None:
        (proc / "self" / "statm").write_text(statm)
    return proc


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("cgroup", "files", "budget"),
    [
        pytest.param("0::/app\n", {"app/memory.max": "1000\n"}, 1000, id="v2-own-cgroup"),
        pytest.param("0::/app\n", {"app/memory.max": "max\n"}, 10**6, id="v2-unlimited"),
        pytest.param("0::/\n", {"memory.max": "2000\n"}, 2000, id="v2-root"),
        pytest.param(
            "4:memory:/job\n",
            {"memory/job/memory.limit_in_bytes": "3000\n"},
            3000,
            id="v1-own-cgroup",
        ),
        pytest.param(
            "4:memory:/job\n",
            {"memory/memory.limit_in_bytes": "9223372036854771712\n"},
            10**6,
            id="v1-unlimited-root",
        ),
        pytest.param("", {}, 10**6, id="no-cgroup"),
        pytest.param("0::/\n", {"memory.max": "garbage\n"}, 10**6, id="unreadable-limit"),
    ],
)
def test_memory_budget(tmp_path: Path, cgroup: str, files: dict[str, str], budget: int) -> None:
    proc = _fake_proc(tmp_path, cgroup)
    root = tmp_path / "cgroup"
    root.mkdir()
    for relative, text in files.items():
        _write(root / relative, text)
    assert memory_budget_bytes(proc=proc, cgroup_root=root, physical=10**6) == budget


def test_memory_fraction_from_statm(tmp_path: Path) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    proc = _fake_proc(tmp_path, "", statm="400 25 0 0 0 0 0")
    assert read_memory_fraction(budget=100 * page, proc=proc) == 0.25
    assert read_memory_fraction(budget=10 * page, proc=proc) == 1.0  # clamped
    assert read_memory_fraction(budget=None, proc=proc) == 0.0
    missing = _fake_proc(tmp_path / "other", "", statm=None)
    assert read_memory_fraction(budget=100 * page, proc=missing) == 0.0


# -- adaptive capacity ----------------------------------------------------------------------


def _fill(queue: BoundedPriorityQueue[Any], count: int, priority: Priority = N) -> None:
    for i in range(count):
        queue.put_nowait(i, priority)


def effective(queue: BoundedPriorityQueue[Any]) -> int:
    return queue.snapshot()["effective_capacity"]


def test_normal_limit_shrinks_toward_a_quarter_while_the_consumer_falls_behind() -> None:
    queue = make_queue(100)
    _fill(queue, 100)
    queue.drain(5)  # 95 left, well above 75%: behind once, not yet sustained
    assert effective(queue) == 100
    _fill(queue, 5)
    queue.drain(5)  # behind twice in a row: halve the way down to 25
    assert effective(queue) == 62
    with pytest.raises(QueueFull) as refused:
        queue.put_nowait("late")
    assert str(refused.value) == (
        "queue 'inbox' is full: depth 95 of effective capacity 62 for NORMAL items "
        "(capacity 100, lowered while the consumer falls behind)"
    )
    limits = []
    for _ in range(7):
        queue.drain(5)
        limits.append(effective(queue))
    assert limits == [43, 34, 29, 27, 26, 25, 25]
    queue.put_nowait("high", H)  # Raft traffic is not held to the NORMAL limit
    assert queue.snapshot()["rejected"]["full"] == 1


def test_normal_limit_recovers_when_the_queue_drains_below_a_quarter() -> None:
    queue = make_queue(100)
    _fill(queue, 100)
    for _ in range(9):
        queue.drain(5)
    assert effective(queue) == 25
    limits = []
    for _ in range(8):
        queue.drain()
        limits.append(effective(queue))
    assert limits == [63, 82, 91, 96, 98, 99, 100, 100]
    _fill(queue, 100)  # the whole capacity is open to NORMAL items again


def test_normal_limit_holds_between_a_quarter_and_three_quarters() -> None:
    queue = make_queue(100)
    _fill(queue, 100)
    for _ in range(3):
        queue.drain(5)
    assert effective(queue) == 43
    queue.drain(58)  # 27 left: between 25% and 75% of 43
    assert effective(queue) == 43
    queue.drain(20)  # 7 left: below 25% of 43
    assert effective(queue) == 72


def test_a_backlog_the_consumer_is_working_off_does_not_shrink_the_limit() -> None:
    """Items drained outpace items offered over the window: catching up, not behind."""
    queue = make_queue(100)
    queue.import_state([(i, N) for i in range(90)])  # handed over, not offered
    for _ in range(5):
        queue.drain(1)
    assert len(queue) == 85
    assert effective(queue) == 100


def test_one_behind_drain_is_not_sustained() -> None:
    queue = make_queue(100)
    _fill(queue, 90)
    queue.drain(1)
    queue.drain(80)  # 9 left: not behind, and the streak resets
    _fill(queue, 80)
    queue.drain(1)
    assert effective(queue) == 100


# -- swaps ----------------------------------------------------------------------------------


def test_export_moves_every_item_out_in_drain_order_and_import_restores_it() -> None:
    old = make_queue(10)
    put_all(old, [("n1", N), ("h1", H), ("c1", C), ("n2", N)])
    state = old.export_state()
    assert state == [("c1", C), ("h1", H), ("n1", N), ("n2", N)]
    assert len(old) == 0
    assert old.drain() == []
    new = make_queue(10)
    new.import_state(state)
    assert new.drain() == ["c1", "h1", "n1", "n2"]


def test_import_overflow_goes_to_on_shed_lowest_priority_first() -> None:
    old = make_queue(10)
    put_all(old, [("n1", N), ("h1", H), ("c1", C), ("n2", N), ("h2", H), ("c2", C)])
    shed: list[Any] = []
    new = make_queue(4, on_shed=shed.append)
    new.import_state(old.export_state())
    assert shed == ["n1", "n2"]
    assert new.drain() == ["c1", "c2", "h1", "h2"]
    snapshot = new.snapshot()
    assert snapshot["imported"] == 6
    assert snapshot["rejected"]["shed"] == 2


def test_import_places_entries_in_the_order_given_with_the_put_rules() -> None:
    shed: list[Any] = []
    new = make_queue(4, on_shed=shed.append)
    new.import_state([("c1", C), ("c2", C), ("h1", H), ("n1", N), ("n2", N), ("h2", H)])
    # n2 finds the queue full; h2 then evicts the newest NORMAL item, as a put would.
    assert shed == ["n2", "n1"]
    assert new.drain() == ["c1", "c2", "h1", "h2"]


def test_import_uses_the_critical_reserve_and_ignores_memory_pressure() -> None:
    shed: list[Any] = []
    new = make_queue(2, memory=lambda: 1.0, threshold=0.5, on_shed=shed.append)
    new.import_state([("c1", C), ("c2", C), ("c3", C), ("c4", C)])
    assert shed == ["c4"]
    new2 = make_queue(2, memory=lambda: 1.0, threshold=0.5)
    new2.import_state([("n1", N)])
    assert new2.drain() == ["n1"]


@pytest.mark.parametrize(
    ("state", "error", "problem"),
    [
        (
            42,
            TypeError,
            r"^queue 'inbox': cannot import int 42; expected a list of \(item, priority\) pairs",
        ),
        ("abc", TypeError, r"cannot import str 'abc'"),
        ([("ok", N), "x"], TypeError, r"state entry 1 is 'x'; expected a list of"),
        ([("ok", N), ("x", 2, 1)], TypeError, r"state entry 1 is \('x', 2, 1\)"),
        (
            [("ok", N), ("x", "urgent")],
            ValueError,
            r"state entry 1 has priority 'urgent'; expected one of CRITICAL \(0\), HIGH \(1\)",
        ),
        ([("ok", N), ("x", 7)], ValueError, r"state entry 1 has priority 7"),
    ],
)
def test_malformed_import_state_is_refused_before_anything_is_placed(
    state: Any, error: type[Exception], problem: str
) -> None:
    queue = make_queue(10)
    with pytest.raises(error, match=problem):
        queue.import_state(state)
    assert len(queue) == 0
    assert queue.snapshot()["imported"] == 0


def test_import_accepts_none_lists_and_plain_int_priorities() -> None:
    queue = make_queue(10)
    queue.import_state(None)
    queue.import_state([["n1", 2], ("c1", 0)])
    assert queue.drain() == ["c1", "n1"]


def test_state_moves_between_legacy_and_bounded_queues() -> None:
    legacy: UnboundedQueue[str] = UnboundedQueue("inbox")
    put_all(legacy, [("n1", N), ("vote", C), ("n2", N), ("append", H)])
    bounded = make_queue(10)
    bounded.import_state(legacy.export_state())
    assert len(legacy) == 0
    bounded.put_nowait("n3")
    back: UnboundedQueue[str] = UnboundedQueue("inbox")
    back.import_state(bounded.export_state())
    assert len(bounded) == 0
    assert back.drain() == ["vote", "append", "n1", "n2", "n3"]


# -- stats ----------------------------------------------------------------------------------


def test_stats_and_snapshot_count_everything() -> None:
    shed: list[Any] = []
    usage = [0.0]
    queue = make_queue(3, memory=lambda: usage[0], on_shed=shed.append)
    put_all(queue, [("n1", N), ("n2", N), ("h1", H)])
    with pytest.raises(QueueFull):
        queue.put_nowait("n3")  # full
    queue.put_nowait("c1", C)  # evicts n2
    queue.put_nowait("c2", C)  # evicts n1
    queue.put_nowait("c3", C)  # reserve
    assert queue.drain(2) == ["c1", "c2"]
    usage[0] = 0.99
    with pytest.raises(QueueFull):
        queue.put_nowait("n4")  # memory
    exported = queue.export_state()
    assert exported == [("c3", C), ("h1", H)]

    assert queue.stats() == QueueStats(
        name="inbox",
        depth=0,
        capacity=3,
        max_depth=4,
        enqueued=6,
        rejected=4,
        effective_capacity=3,
        memory_pressure=0.99,
        rejected_by_reason={"full": 1, "memory": 1, "shed": 2},
    )
    assert queue.snapshot() == {
        "name": "inbox",
        "depth": 0,
        "depth_by_priority": {"critical": 0, "high": 0, "normal": 0},
        "capacity": 3,
        "reserve": 1,
        "effective_capacity": 3,
        "rejected": {"full": 1, "memory": 1, "shed": 2},
        "max_depth": 4,
        "enqueued": 6,
        "imported": 0,
        "drained": 2,
        "exported": 2,
    }


def test_snapshot_depth_by_priority() -> None:
    queue = make_queue(10)
    put_all(queue, [("c", C), ("h1", H), ("h2", H), ("n1", N), ("n2", N), ("n3", N)])
    assert queue.snapshot()["depth_by_priority"] == {"critical": 1, "high": 2, "normal": 3}


# -- component ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_reports_started_and_returns_when_cancelled(backend: str) -> None:
    queue = make_queue(10)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            queue.put_nowait("n1")
            tg.cancel_scope.cancel()

    anyio.run(main, backend=backend)
    assert queue.drain() == ["n1"]


def test_is_a_component_without_locks() -> None:
    queue = make_queue(10)
    assert isinstance(queue, Component)
    assert queue.lock_stats().acquisitions == 0


# -- plugin ---------------------------------------------------------------------------------


def _context(flag_on: bool | None, **overrides: object) -> BuildContext:
    flags = {}
    if flag_on is not None:
        flags["backpressure"] = Evaluation(
            flag="backpressure",
            value=flag_on,
            reason=Reason.STATIC,
            source=Source.COMMAND_LINE,
            detail="test",
        )
    return BuildContext(node_id=1, settings=load_settings(overrides=overrides), flags=flags)


def test_plugin_declares_the_backpressure_flag_off_by_default() -> None:
    assert plugin.RAFTMW_TIER == "default"
    [spec] = plugin.raftmw_declare_flags()
    assert isinstance(spec, FlagSpec)
    assert (spec.name, spec.default, spec.owner) == ("backpressure", False, "backpressure")
    assert spec.description


@pytest.mark.parametrize("flag_on", [False, None])
def test_plugin_builds_nothing_when_the_flag_is_off(flag_on: bool | None) -> None:
    assert plugin.raftmw_make_queue(_context(flag_on), "inbox", lambda item: None) is None


def test_plugin_builds_a_bounded_queue_from_settings_through_pluggy() -> None:
    manager = pluggy.PluginManager("raftmw")
    manager.add_hookspecs(framework.hooks)
    manager.register(plugin)
    manager.check_pending()
    ctx = _context(
        True,
        **{
            "performance.backpressure.max_pending": 40,
            "performance.backpressure.enable_priority": True,
        },
    )
    shed: list[Any] = []
    queue = manager.hook.raftmw_make_queue(ctx=ctx, name="proposals", on_shed=shed.append)
    assert isinstance(queue, BoundedPriorityQueue)
    snapshot = queue.snapshot()
    assert (snapshot["name"], snapshot["capacity"], snapshot["reserve"]) == ("proposals", 40, 2)
    _fill(queue, 40)
    queue.put_nowait("vote", C)
    assert shed == [39]  # the hook's on_shed reaches the queue
    assert [s.name for s in manager.hook.raftmw_declare_flags()[0]] == ["backpressure"]


# -- model-based ----------------------------------------------------------------------------


class QueueAgainstModel(RuleBasedStateMachine):
    """Every put is drained exactly once, refused, or shed exactly once; FIFO per priority;
    never more than capacity + reserve items; swaps lose nothing."""

    THRESHOLD = 0.9

    def __init__(self) -> None:
        super().__init__()
        self.usage = 0.0
        self.shed_log: list[int] = []
        self.refused: list[int] = []
        self.drained: list[int] = []
        self.offered = 0
        self.model: dict[Priority, list[int]] = {p: [] for p in Priority}
        self.queue: BoundedPriorityQueue[int] = self._new_queue(1, True)

    def _new_queue(self, capacity: int, enable_priority: bool) -> BoundedPriorityQueue[int]:
        self.capacity = capacity
        self.priorities = enable_priority
        return make_queue(
            capacity,
            enable_priority=enable_priority,
            threshold=self.THRESHOLD,
            memory=lambda: self.usage,
            on_shed=self.shed_log.append,
        )

    @property
    def reserve(self) -> int:
        return max(1, self.capacity * 5 // 100) if self.priorities else 0

    @property
    def depth(self) -> int:
        return sum(len(items) for items in self.model.values())

    def in_drain_order(self) -> list[int]:
        return [item for p in Priority for item in self.model[p]]

    def place(self, priority: Priority, normal_limit: int, memory_high: bool) -> str:
        """What the rules say happens to an item: placed, evicts, or refused."""
        depth = self.depth
        if priority == N:
            return "refused" if depth >= normal_limit or memory_high else "placed"
        if depth < self.capacity:
            return "placed"
        if self.model[N]:
            return "evicts"
        if priority == C and depth < self.capacity + self.reserve:
            return "placed"
        return "refused"

    def apply(self, item: int, priority: Priority, outcome: str, shed_before: int) -> None:
        if outcome == "evicts":
            assert self.shed_log[shed_before:] == [self.model[N].pop()]
        else:
            assert self.shed_log[shed_before:] == []
        if outcome != "refused":
            self.model[priority].append(item)

    @initialize(capacity=st.integers(1, 12), enable_priority=st.booleans())
    def build(self, capacity: int, enable_priority: bool) -> None:
        self.queue = self._new_queue(capacity, enable_priority)

    @rule(priority=st.sampled_from(Priority), count=st.integers(1, 6))
    def put(self, priority: Priority, count: int) -> None:
        cls = priority if self.priorities else N
        for _ in range(count):
            item = self.offered
            self.offered += 1
            limit = self.queue.snapshot()["effective_capacity"]
            outcome = self.place(cls, limit, self.usage > self.THRESHOLD)
            shed_before = len(self.shed_log)
            try:
                self.queue.put_nowait(item, priority)
            except QueueFull:
                assert outcome == "refused"
                self.refused.append(item)
            else:
                assert outcome != "refused"
            self.apply(item, cls, outcome, shed_before)

    @rule(limit=st.none() | st.integers(0, 15))
    def drain(self, limit: int | None) -> None:
        expected = self.in_drain_order()[:limit]
        assert self.queue.drain(limit) == expected
        self.drained.extend(expected)
        for item in expected:
            for items in self.model.values():
                if items and items[0] == item:
                    items.pop(0)
                    break

    @rule(usage=st.sampled_from([0.0, 0.5, 0.95]))
    def memory(self, usage: float) -> None:
        self.usage = usage

    @rule(capacity=st.integers(1, 12), enable_priority=st.booleans())
    def swap(self, capacity: int, enable_priority: bool) -> None:
        state = self.queue.export_state()
        assert state == [(item, p) for p in Priority for item in self.model[p]]
        assert len(self.queue) == 0
        self.model = {p: [] for p in Priority}
        self.queue = self._new_queue(capacity, enable_priority)
        shed_before = len(self.shed_log)
        expected_shed: list[int] = []
        for item, priority in state:
            cls = priority if enable_priority else N
            outcome = self.place(cls, capacity, memory_high=False)
            if outcome == "evicts":
                expected_shed.append(self.model[N].pop())
            if outcome == "refused":
                expected_shed.append(item)
            else:
                self.model[cls].append(item)
        self.queue.import_state(state)
        assert self.shed_log[shed_before:] == expected_shed

    @invariant()
    def bounded_and_consistent(self) -> None:
        snapshot = self.queue.snapshot()
        assert len(self.queue) == self.depth <= self.capacity + self.reserve
        assert snapshot["depth_by_priority"] == {
            p.name.lower(): len(self.model[p]) for p in Priority
        }
        assert max(1, -(-self.capacity // 4)) <= snapshot["effective_capacity"] <= self.capacity
        assert snapshot["enqueued"] + snapshot["imported"] == (
            snapshot["drained"]
            + snapshot["rejected"]["shed"]
            + snapshot["exported"]
            + snapshot["depth"]
        )

    def teardown(self) -> None:
        self.drained.extend(self.queue.drain())
        outcomes = self.drained + self.refused + self.shed_log
        assert sorted(outcomes) == list(range(self.offered))  # each exactly once


TestQueueAgainstModel = QueueAgainstModel.TestCase
TestQueueAgainstModel.settings = hypothesis_settings(
    max_examples=200, stateful_step_count=40, deadline=None
)


@pytest.mark.anyio
async def test_adaptive_capacity_and_memory_pressure_show_in_status_and_otel() -> None:
    """Issue #12: the queue's detailed state was never read by the runtime; now a node's
    status page and its OpenTelemetry gauges carry the admission limit in force and the
    memory pressure the queue sees (and legacy queues report neither)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from tests.test_metrics import cluster, points

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    async with cluster(provider, **{"flags.backpressure": True}) as c, c.client() as client:
        leader = await c.wait_leader()
        for i in range(5):
            await client.put(f"k{i}", "v")
        queues = (await c.nodes[leader].status())["performance"]["queues"]
        for name in ("inbox", "proposals"):
            stats = queues[name]
            assert 0 < stats["effective_capacity"] <= stats["capacity"]
            assert 0.0 <= stats["memory_pressure"] < 1.0
            assert set(stats["rejected_by_reason"]) == {"full", "memory", "shed"}
        with anyio.fail_after(10):
            while len(points(reader, "raftmw.queue.effective_capacity")) < 6:
                await anyio.sleep(0.01)
        pressure = points(reader, "raftmw.queue.memory_pressure")
        seen = {(a["raftmw.node_id"], a["queue"]) for a, _ in pressure}
        assert seen == {(nid, q) for nid in c.nodes for q in ("inbox", "proposals")}
    async with cluster(None) as legacy:
        node = legacy.nodes[1]
        queues = (await node.status())["performance"]["queues"]
        assert queues["inbox"]["effective_capacity"] is None
        assert queues["inbox"]["memory_pressure"] is None
