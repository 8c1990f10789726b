"""`BoundedPriorityQueue`: the queue between two tasks when flag ``backpressure`` is on.

Theory of operation
-------------------
Producers (the transport, client sessions) call ``put_nowait``; the Ready loop calls
``drain``. Both run on one event loop, so there are no locks; both are O(1) per item (one
deque per priority class) and neither ever blocks. An item is either accepted, and then
leaves exactly once (drained, shed to ``on_shed``, or exported at a swap), or refused with
`QueueFull` and never enqueued. The rules, with ``capacity`` =
``performance.backpressure.max_pending`` counting items of every priority:

1. Order. ``drain`` returns CRITICAL, then HIGH, then NORMAL items, FIFO within a class.
   With ``enable_priority = false`` the priority argument is ignored: one FIFO class, and
   every item is admitted as a NORMAL one (no reserve, no eviction).
2. NORMAL admission (client work). Refused when the queue holds ``effective_capacity``
   items or more (reason ``full``), or when the memory probe reads above
   ``memory_pressure_threshold`` (reason ``memory``), however much room is left.
3. HIGH and CRITICAL admission (Raft traffic). Accepted below ``capacity``. At or above it,
   the newest NORMAL item is evicted to make room (reason ``shed``; the newest, because the
   oldest have waited longest and are next to be served) and handed to ``on_shed`` so its
   owner can answer "overloaded". With no NORMAL item to evict, a
   CRITICAL item may still use a reserve of 5% of capacity (at least 1) above ``capacity``,
   so client load can never starve elections or heartbeats; anything else is refused.
   Hence ``len(queue) <= capacity + reserve`` always.
4. Adaptive capacity. ``effective_capacity`` (NORMAL's admission limit, on the total
   depth) starts at ``capacity`` and moves only in ``drain``, from cheap counters: the
   items offered (every ``put_nowait`` call, accepted or not) and drained over the last 8
   drains, kept in a ring of per-drain counts. After each drain:

   - the consumer is *behind* when the items it left are above 75% of
     ``effective_capacity`` and producers offered at least as many items as it drained
     over the window. From the second behind drain in a row, each behind drain halves the
     distance from ``effective_capacity`` to the floor, 25% of ``capacity`` (at least 1);
   - when the items left are below 25% of ``effective_capacity``, each drain halves the
     distance back up to ``capacity``;
   - otherwise the limit holds.

   A slow consumer thus turns client work away early (bounded queueing delay, a fast
   ``Overloaded`` that clients back off from) instead of letting it wait in a full queue.
5. Memory pressure. ``memory_probe()`` returns this process's memory use as a fraction of
   its budget. The default, `ProcessMemoryProbe`, reads the resident set size from
   ``/proc/self/statm`` against the cgroup limit (or physical RAM), at most every 100 ms;
   unreadable means 0.0 (no pressure). It is asked only on NORMAL puts.

Swaps. The state is the one the legacy queue uses: ``[(item, Priority), ...]``.
``export_state()`` moves every queued item out, in drain order, so draining this queue after
the swap delivers nothing twice. ``import_state(state)`` places the pairs in the order given
by rules 1 and 3 against ``capacity`` (the items were admitted once already: no memory or
adaptive check), so on overflow NORMAL items are the ones handed to ``on_shed``. With
priorities off every item is kept, and exported, as NORMAL.

Counters: ``enqueued`` counts items ``put_nowait`` accepted and ``imported`` every item
``import_state`` was handed, so ``enqueued + imported == drained + shed + exported +
len(queue)``; ``QueueStats.rejected`` is full + memory + shed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar

import anyio
from anyio.abc import TaskStatus

from framework.seams import LockStats, Priority, QueueFull, QueueStats

if TYPE_CHECKING:
    from framework.config import BackpressureSettings

__all__ = [
    "BackpressureSnapshot",
    "BoundedPriorityQueue",
    "ProcessMemoryProbe",
    "memory_budget_bytes",
    "read_memory_fraction",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_CRITICAL = Priority.CRITICAL
_NORMAL = Priority.NORMAL

_RESERVE_PERCENT = 5
"""CRITICAL items may go this far (percent of capacity, at least 1 item) above capacity."""
_WINDOW_DRAINS = 8
"""Drains over which offered and drained items are compared."""
_SUSTAINED_DRAINS = 2
"""Behind drains in a row before the NORMAL limit starts to fall."""

_PROC = Path("/proc")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


# -- memory probe -----------------------------------------------------------------------------


def _physical_memory_bytes() -> int | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return total if total > 0 else None


def _cgroup_limit_files(proc: Path, cgroup_root: Path) -> list[Path]:
    """Limit files to try, most specific first: this process's own cgroup (v2 ``0::PATH``,
    v1 ``N:memory:PATH``), then the hierarchy's root (what a container sees as its own)."""
    candidates: list[Path] = []
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.strip().lstrip("/")
        if hierarchy == "0" and not controllers:
            candidates.append(cgroup_root / relative / "memory.max")
        elif "memory" in controllers.split(","):
            candidates.append(cgroup_root / "memory" / relative / "memory.limit_in_bytes")
    candidates.append(cgroup_root / "memory.max")
    candidates.append(cgroup_root / "memory" / "memory.limit_in_bytes")
    return candidates


def memory_budget_bytes(
    *, proc: Path = _PROC, cgroup_root: Path = _CGROUP_ROOT, physical: int | None = None
) -> int | None:
    """The cgroup memory limit when one is set below physical RAM, else physical RAM.

    None when neither is readable. "No limit" is ``max`` in cgroup v2 and a huge number in
    v1; both fall through to physical RAM. ``physical`` overrides the RAM lookup (tests).
    """
    ram = _physical_memory_bytes() if physical is None else physical
    for path in _cgroup_limit_files(proc, cgroup_root):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            break
        try:
            limit = int(text)
        except ValueError:
            continue
        if limit > 0 and (ram is None or limit < ram):
            return limit
        break
    return ram


def read_memory_fraction(*, budget: int | None, proc: Path = _PROC) -> float:
    """Resident set size over ``budget`` bytes, clamped to 0..1; 0.0 if anything is unknown."""
    if not budget:
        return 0.0
    try:
        # statm holds sizes in pages: total resident shared text lib data dirty.
        resident_pages = int((proc / "self" / "statm").read_text().split()[1])
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError, AttributeError):
        return 0.0
    return min(1.0, max(0.0, resident_pages * page_size / budget))


class ProcessMemoryProbe:
    """Call it for this process's memory use as a fraction (0..1) of its budget.

    The budget (`memory_budget_bytes`) is looked up on the first call; the usage is re-read
    when ``refresh_interval`` seconds of ``clock`` have passed since the last read, and the
    cached value is returned in between, because the queue asks on every NORMAL put.
    ``read`` replaces the whole reading (tests pin it, with ``clock``).
    """

    __slots__ = ("_budget", "_clock", "_next_read", "_read", "_refresh_interval", "_value")

    def __init__(
        self,
        *,
        refresh_interval: float = 0.1,
        read: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._refresh_interval = refresh_interval
        self._read = read if read is not None else self._read_process
        self._clock = clock
        self._budget: int | None = None
        self._value = 0.0
        self._next_read = float("-inf")

    def __call__(self) -> float:
        now = self._clock()
        if now >= self._next_read:
            self._next_read = now + self._refresh_interval
            self._value = self._read()
        return self._value

    def _read_process(self) -> float:
        if self._budget is None:
            self._budget = memory_budget_bytes() or 0
        return read_memory_fraction(budget=self._budget)


# -- the queue --------------------------------------------------------------------------------


class BackpressureSnapshot(TypedDict):
    """The plan's ``BackpressureSnapshot``: one queue's depth, limits and counters."""

    name: str
    depth: int
    depth_by_priority: dict[str, int]
    """Keyed ``critical``, ``high``, ``normal``."""
    capacity: int
    reserve: int
    """Extra room above ``capacity`` for CRITICAL items only (0 with priorities off)."""
    effective_capacity: int
    """The current NORMAL admission limit (adaptive, between 25% and 100% of capacity)."""
    rejected: dict[str, int]
    """Keyed by reason: ``full``, ``memory`` (both refused with QueueFull) and ``shed``
    (accepted, then evicted or not importable, and passed to ``on_shed``)."""
    max_depth: int
    enqueued: int
    """Items ``put_nowait`` accepted."""
    imported: int
    """Items ``import_state`` was handed (placed, or shed when they did not fit)."""
    drained: int
    exported: int


class BoundedPriorityQueue(Generic[T]):
    """A bounded `MessageQueue` with priority classes, shedding and adaptive capacity.

    ``settings`` is ``settings.performance.backpressure``. ``on_shed(item)`` is told about
    every accepted item that will not be drained after all (evicted for Raft traffic, or
    not fitting at ``import_state``); an exception from it is logged, not raised to the
    producer whose own item was accepted. ``memory_probe()`` returns memory use as a
    fraction 0..1 (default `ProcessMemoryProbe`). See the module docstring for the rules.
    """

    __slots__ = (
        "_behind_drains",
        "_capacity",
        "_classes",
        "_depth",
        "_drained",
        "_effective",
        "_enqueued",
        "_exported",
        "_floor",
        "_imported",
        "_max_depth",
        "_memory_probe",
        "_memory_threshold",
        "_normal",
        "_offered_since_drain",
        "_on_shed",
        "_priorities",
        "_refused_full",
        "_refused_memory",
        "_reserve",
        "_shed",
        "_window_drained",
        "_window_drained_sum",
        "_window_offered",
        "_window_offered_sum",
        "_window_pos",
        "name",
    )

    def __init__(
        self,
        name: str,
        settings: BackpressureSettings,
        *,
        on_shed: Callable[[T], None] | None = None,
        memory_probe: Callable[[], float] | None = None,
    ) -> None:
        capacity = settings.max_pending
        if capacity < 1:
            raise ValueError(
                f"queue {name!r}: performance.backpressure.max_pending is {capacity}; "
                "expected an integer of at least 1"
            )
        self.name = name
        self._on_shed = on_shed
        self._capacity = capacity
        self._priorities = settings.enable_priority
        self._reserve = max(1, capacity * _RESERVE_PERCENT // 100) if self._priorities else 0
        self._floor = max(1, -(-capacity // 4))
        self._effective = capacity
        self._memory_threshold = settings.memory_pressure_threshold
        self._memory_probe = memory_probe if memory_probe is not None else ProcessMemoryProbe()
        # Indexed by Priority: CRITICAL = 0, HIGH = 1, NORMAL = 2.
        self._classes: tuple[deque[T], ...] = tuple(deque() for _ in Priority)
        self._normal = self._classes[_NORMAL]
        self._depth = 0
        self._max_depth = 0
        self._enqueued = 0
        self._imported = 0
        self._drained = 0
        self._exported = 0
        self._refused_full = 0
        self._refused_memory = 0
        self._shed = 0
        self._offered_since_drain = 0
        self._window_offered = [0] * _WINDOW_DRAINS
        self._window_drained = [0] * _WINDOW_DRAINS
        self._window_offered_sum = 0
        self._window_drained_sum = 0
        self._window_pos = 0
        self._behind_drains = 0

    # -- MessageQueue ---------------------------------------------------------------------

    def put_nowait(self, item: T, priority: Priority = Priority.NORMAL) -> None:
        """Enqueue ``item`` or raise `QueueFull` (nothing enqueued); never blocks.

        A HIGH or CRITICAL item may evict the newest NORMAL one, which goes to ``on_shed``.
        """
        self._offered_since_drain += 1
        if not self._priorities:
            priority = _NORMAL
        if priority == _NORMAL and self._depth < self._effective:
            usage = self._memory_probe()
            if usage > self._memory_threshold:
                self._refused_memory += 1
                raise QueueFull(
                    f"queue {self.name!r} refused a NORMAL item under memory pressure: "
                    f"memory use {usage:.0%} is above memory_pressure_threshold "
                    f"{self._memory_threshold:.0%} (depth {self._depth} of capacity "
                    f"{self._capacity})"
                )
        if not self._place(item, priority, self._effective):
            self._refused_full += 1
            raise QueueFull(self._full_message(priority))
        self._enqueued += 1

    def drain(self, limit: int | None = None) -> list[T]:
        """Take up to ``limit`` items (all when None), highest priority first, FIFO within
        a priority; then adjust the NORMAL limit (rule 4)."""
        taken: list[T] = []
        if limit is None:
            for items in self._classes:
                if items:
                    taken.extend(items)
                    items.clear()
        else:
            if limit < 0:
                raise ValueError(f"queue {self.name!r}: drain limit is {limit}; expected >= 0")
            remaining = limit
            for items in self._classes:
                take = min(remaining, len(items))
                popleft = items.popleft
                taken.extend(popleft() for _ in range(take))
                remaining -= take
                if not remaining:
                    break
        self._depth -= len(taken)
        self._drained += len(taken)
        self._adapt(len(taken))
        return taken

    def __len__(self) -> int:
        return self._depth

    def stats(self) -> QueueStats:
        return QueueStats(
            name=self.name,
            depth=self._depth,
            capacity=self._capacity,
            max_depth=self._max_depth,
            enqueued=self._enqueued,
            rejected=self._refused_full + self._refused_memory + self._shed,
            effective_capacity=self._effective,
            memory_pressure=self._memory_probe(),
            rejected_by_reason={
                "full": self._refused_full,
                "memory": self._refused_memory,
                "shed": self._shed,
            },
        )

    def snapshot(self) -> BackpressureSnapshot:
        """Depth per priority, limits and counters (see `BackpressureSnapshot`)."""
        return BackpressureSnapshot(
            name=self.name,
            depth=self._depth,
            depth_by_priority={p.name.lower(): len(self._classes[p]) for p in Priority},
            capacity=self._capacity,
            reserve=self._reserve,
            effective_capacity=self._effective,
            rejected={
                "full": self._refused_full,
                "memory": self._refused_memory,
                "shed": self._shed,
            },
            max_depth=self._max_depth,
            enqueued=self._enqueued,
            imported=self._imported,
            drained=self._drained,
            exported=self._exported,
        )

    # -- Component ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing to serve: producers and the consumer call in. Usable at once."""
        task_status.started()
        await anyio.sleep_forever()

    def export_state(self) -> list[tuple[T, Priority]]:
        """Move every queued item out, as ``(item, priority)`` pairs in drain order."""
        state = [(item, priority) for priority in Priority for item in self._classes[priority]]
        for items in self._classes:
            items.clear()
        self._exported += len(state)
        self._depth = 0
        return state

    def import_state(self, state: Any) -> None:
        """Place a predecessor's ``(item, priority)`` pairs in order (rules 1 and 3 against
        ``capacity``); items that do not fit go to ``on_shed``. None is no items. A state of
        the wrong shape raises ``TypeError``, an unknown priority ``ValueError``, both before
        anything is placed."""
        entries = _parse_state(self.name, state)
        self._imported += len(entries)
        for item, priority in entries:
            if not self._place(item, priority if self._priorities else _NORMAL, self._capacity):
                self._shed += 1
                self._notify_shed(item)

    def lock_stats(self) -> LockStats:
        return LockStats()

    # -- internals ------------------------------------------------------------------------

    def _place(self, item: T, priority: Priority, normal_limit: int) -> bool:
        """Append ``item`` by rules 2 (depth only) and 3, evicting if needed; False if not."""
        depth = self._depth
        if priority == _NORMAL:
            if depth >= normal_limit:
                return False
        elif depth >= self._capacity:
            if self._normal:
                # Swap the newest NORMAL item for this one; the depth does not change.
                evicted = self._normal.pop()
                self._classes[priority].append(item)
                self._shed += 1
                self._notify_shed(evicted)
                return True
            if priority != _CRITICAL or depth >= self._capacity + self._reserve:
                return False
        self._classes[priority].append(item)
        self._depth = depth + 1
        if depth >= self._max_depth:
            self._max_depth = depth + 1
        return True

    def _notify_shed(self, item: T) -> None:
        callback = self._on_shed
        if callback is None:
            return
        try:
            callback(item)
        except Exception:
            # The producer's own item was accepted; failing its put would make it retry a
            # message that is already queued.
            logger.exception("queue %r: on_shed failed for an evicted item", self.name)

    def _adapt(self, drained: int) -> None:
        """Rule 4: slide the window by one drain, then move the NORMAL limit."""
        pos = self._window_pos
        offered = self._offered_since_drain
        self._offered_since_drain = 0
        self._window_offered_sum += offered - self._window_offered[pos]
        self._window_drained_sum += drained - self._window_drained[pos]
        self._window_offered[pos] = offered
        self._window_drained[pos] = drained
        self._window_pos = (pos + 1) % _WINDOW_DRAINS

        left, limit = self._depth, self._effective
        if 4 * left > 3 * limit and self._window_offered_sum >= self._window_drained_sum:
            self._behind_drains += 1
            if self._behind_drains >= _SUSTAINED_DRAINS:
                self._effective = self._floor + (limit - self._floor) // 2
        else:
            self._behind_drains = 0
            if 4 * left < limit:
                self._effective = self._capacity - (self._capacity - limit) // 2

    def _full_message(self, priority: Priority) -> str:
        prefix = f"queue {self.name!r} is full: depth {self._depth} of "
        if priority == _NORMAL and self._effective < self._capacity:
            return (
                f"{prefix}effective capacity {self._effective} for NORMAL items (capacity "
                f"{self._capacity}, lowered while the consumer falls behind)"
            )
        if priority == _CRITICAL:
            return (
                f"{prefix}capacity {self._capacity} plus CRITICAL reserve {self._reserve}, "
                "and no NORMAL item to shed"
            )
        if priority == _NORMAL:
            return f"{prefix}capacity {self._capacity}; a NORMAL item was refused"
        return f"{prefix}capacity {self._capacity}, and no NORMAL item to shed"


def _parse_state(name: str, state: Any) -> list[tuple[Any, Priority]]:
    """The ``(item, priority)`` pairs of an exported state, all checked before any is used."""
    if state is None:
        return []
    expected = "expected a list of (item, priority) pairs, as export_state returns"
    if isinstance(state, str | bytes) or not isinstance(state, Iterable):
        raise TypeError(
            f"queue {name!r}: cannot import {type(state).__name__} {state!r:.80}; {expected}"
        )
    entries: list[tuple[Any, Priority]] = []
    for position, entry in enumerate(state):
        if not (isinstance(entry, tuple | list) and len(entry) == 2):
            raise TypeError(f"queue {name!r}: state entry {position} is {entry!r:.80}; {expected}")
        item, raw_priority = entry
        try:
            priority = Priority(raw_priority)
        except ValueError:
            raise ValueError(
                f"queue {name!r}: state entry {position} has priority {raw_priority!r:.40}; "
                f"expected one of {', '.join(f'{p.name} ({p.value})' for p in Priority)}"
            ) from None
        entries.append((item, priority))
    return entries
