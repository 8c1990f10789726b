"""A seeded, in-process network for the simulator: loss, delay, reordering, duplication
and partitions, all drawn from one ``random.Random`` so a seed replays exactly.

Time is the simulator's tick. A message sent at tick ``t`` is delivered at ``t + delay``
(``delay`` drawn from ``[min_delay, max_delay]``); messages due in the same tick are
delivered in a random order, which together with the delay spread is the reordering.
A partition is a connectivity relation, possibly one-way (A's messages reach B, B's do not
reach A): a message is lost if its link is cut when it is sent or when it is due. With
probability ``long_delay`` a message is held back up to ``long_delay_max`` ticks instead, so
messages of long-past terms arrive among current ones.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["LinkFaults", "Partition", "SimNetwork"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 1
    max_delay: int = 1
    long_delay: float = 0.0
    """Probability that a message is held back for up to ``long_delay_max`` ticks."""
    long_delay_max: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "long_delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LinkFaults.{name}={value}: expected a probability in [0, 1]")
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError(
                f"LinkFaults delays min={self.min_delay} max={self.max_delay}: "
                "expected 0 <= min_delay <= max_delay"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """Who can talk to whom; ``groups`` of nodes that see each other, plus bridges."""

    name: str
    groups: tuple[frozenset[int], ...]
    """Nodes in a common group reach each other; nodes in no group reach everyone."""
    cut: frozenset[tuple[int, int]] = frozenset()
    """Directed links ``(src, dst)`` that lose every message, whatever the groups say."""

    def connected(self, a: int, b: int) -> bool:
        if (a, b) in self.cut:
            return False
        grouped = [g for g in self.groups if a in g or b in g]
        if not any(a in g for g in grouped) or not any(b in g for g in grouped):
            return True
        return any(a in g and b in g for g in grouped)

    @staticmethod
    def none() -> Partition:
        return Partition(name="none", groups=())

    @staticmethod
    def halves(nodes: list[int], rng: random.Random) -> Partition:
        shuffled = nodes[:]
        rng.shuffle(shuffled)
        cut = len(shuffled) // 2
        return Partition(
            name=f"halves {sorted(shuffled[:cut])}|{sorted(shuffled[cut:])}",
            groups=(frozenset(shuffled[:cut]), frozenset(shuffled[cut:])),
        )

    @staticmethod
    def isolate(node: int, nodes: list[int]) -> Partition:
        rest = frozenset(n for n in nodes if n != node)
        return Partition(name=f"isolate {node}", groups=(frozenset({node}), rest))

    @staticmethod
    def one_way(deaf: int, nodes: list[int]) -> Partition:
        """``deaf`` hears nobody, but everyone hears it (a half-broken link, a full inbound
        queue): a leader that keeps sending but never learns of later terms."""
        cut = frozenset((n, deaf) for n in nodes if n != deaf)
        return Partition(name=f"{deaf} hears nobody", groups=(), cut=cut)

    @staticmethod
    def mute(node: int, nodes: list[int]) -> Partition:
        """``node`` hears everyone, but nobody hears it."""
        cut = frozenset((node, n) for n in nodes if n != node)
        return Partition(name=f"nobody hears {node}", groups=(), cut=cut)

    @staticmethod
    def sever(a: int, b: int) -> Partition:
        """The one link between ``a`` and ``b`` is cut, both ways; everything else works."""
        return Partition(name=f"link {a}-{b} cut", groups=(), cut=frozenset({(a, b), (b, a)}))

    @staticmethod
    def bridge(nodes: list[int], rng: random.Random) -> Partition:
        """Two sides that cannot talk, and one node that talks to both."""
        shuffled = nodes[:]
        rng.shuffle(shuffled)
        middle, rest = shuffled[0], shuffled[1:]
        cut = len(rest) // 2
        left = frozenset({middle, *rest[:cut]})
        right = frozenset({middle, *rest[cut:]})
        return Partition(name=f"bridge via {middle}", groups=(left, right))

    @staticmethod
    def majorities_ring(nodes: list[int]) -> Partition:
        """Each node reaches its nearest ring neighbours, enough to see a majority, but no
        two nodes see the same majority (Jepsen's "majorities ring")."""
        ordered = sorted(nodes)
        n = len(ordered)
        reach = (n // 2 + 1) // 2  # neighbours per side: with itself, >= a majority
        pairs = {
            frozenset({ordered[i], ordered[(i + k) % n]})
            for i in range(n)
            for k in range(1, reach + 1)
        }
        return Partition(name="majorities ring", groups=tuple(sorted(pairs, key=sorted)))


@dataclass(order=True, slots=True)
class _InFlight(Generic[T]):
    due: int
    order: float
    seq: int
    src: int = field(compare=False)
    dst: int = field(compare=False)
    payload: T = field(compare=False)


class SimNetwork(Generic[T]):
    def __init__(self, rng: random.Random, faults: LinkFaults | None = None) -> None:
        self._rng = rng
        self.faults = faults or LinkFaults()
        self._queue: list[_InFlight[T]] = []
        self._seq = 0
        self._partition = Partition.none()
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    @property
    def partition(self) -> Partition:
        return self._partition

    def set_partition(self, partition: Partition) -> None:
        self._partition = partition

    def connected(self, a: int, b: int) -> bool:
        return self._partition.connected(a, b)

    def send(self, now: int, src: int, dst: int, payload: T) -> bool:
        """Queue a message; False when it is lost at once because its link is cut (what a
        transport notices: the peer is unreachable). Random loss is silent."""
        self.sent += 1
        faults = self.faults
        rng = self._rng
        if not self._partition.connected(src, dst):
            self.dropped += 1
            return False
        if faults.drop and rng.random() < faults.drop:
            self.dropped += 1
            return True
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        if copies == 2:
            self.duplicated += 1
        for _ in range(copies):
            delay = rng.randint(faults.min_delay, faults.max_delay)
            if faults.long_delay and rng.random() < faults.long_delay:
                delay = rng.randint(faults.max_delay, max(faults.max_delay, faults.long_delay_max))
            self._seq += 1
            heapq.heappush(
                self._queue, _InFlight(now + delay, rng.random(), self._seq, src, dst, payload)
            )
        return True

    def due(self, now: int) -> Iterable[tuple[int, int, T]]:
        """Pop messages due by ``now`` in delivery order; cut links lose them here too."""
        queue = self._queue
        while queue and queue[0].due <= now:
            item = heapq.heappop(queue)
            if not self._partition.connected(item.src, item.dst):
                self.dropped += 1
                continue
            yield item.src, item.dst, item.payload

    def take_for(self, node: int, now: int, limit: int) -> list[T]:
        """Take up to ``limit`` messages for ``node`` that are due by ``now`` and not yet
        delivered (they arrive while the node is busy); cut links lose them as in ``due``."""
        mine = sorted(item for item in self._queue if item.dst == node and item.due <= now)
        mine = mine[:limit]
        if not mine:
            return []
        taken = {id(item) for item in mine}
        # In place: ``due`` may be iterating over this very list.
        self._queue[:] = [item for item in self._queue if id(item) not in taken]
        heapq.heapify(self._queue)
        out = []
        for item in mine:
            if self._partition.connected(item.src, item.dst):
                out.append(item.payload)
            else:
                self.dropped += 1
        return out

    def drop_to(self, node: int) -> None:
        """Lose everything in flight to ``node`` (it crashed)."""
        kept = [item for item in self._queue if item.dst != node]
        self.dropped += len(self._queue) - len(kept)
        heapq.heapify(kept)
        self._queue = kept

    def __len__(self) -> int:
        return len(self._queue)
