"""Shadow mode: the new component decides beside the legacy one, and only the legacy one's
decision counts (GitHub Scientist's "use / try").

Three seams make decisions that can be computed twice without effect, so an operator can
see what a new mode would decide before it decides anything:

=============  ==================  ====================  ================================
seam           legacy (answers)    new (shadow)          decision kinds compared
=============  ==================  ====================  ================================
timeouts       fixed               ``adaptive_timeout``  ``timeout:<operation>`` (within 10 %)
send_guard     none                ``circuit_breaker``   ``send`` (how many messages go)
queue          unbounded           ``backpressure``      ``admit:<queue>`` (accepted?)
=============  ==================  ====================  ================================

With the ``shadow`` flag on for a node (a per-node or percentage rollout like any flag,
one log entry), each of these seams whose own flag is off there is built as a wrapper
(`Components` asks `shadow_pair`): the legacy component answers every call and owns the
state; the new one is fed the same calls (``observe``/``record`` outcomes too, so an
adaptive timeout learns what it would have learned), and its answer is compared and
thrown away. The shadow queue's items are never handed out: it is drained as the real one
is, by count, so its depth follows the real queue's, and it sheds into a no-op (its
``on_shed`` never answers a client). A shadow that raises is counted as an error and
never reaches the caller.

Counts per decision kind (agreements, mismatches, errors) and the last few mismatches are
in ``raftmw status --json`` (``shadow``), in OpenTelemetry (``raftmw.shadow.decisions``,
attributes ``seam``, ``kind``, ``outcome``) and in ``raftmw compare --shadow``.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from framework.seams import LockStats, Priority, QueueFull

__all__ = [
    "SHADOWED",
    "ShadowQueue",
    "ShadowSendGuard",
    "ShadowTally",
    "ShadowTimeouts",
    "shadow_pair",
    "shadow_status",
]

SHADOWED: Final[Mapping[str, str]] = {
    "timeouts": "adaptive_timeout",
    "send_guard": "circuit_breaker",
    "queue": "backpressure",
}
"""Seam -> the flag whose "on" component is the shadow (when the flag is off)."""
FLAG: Final = "shadow"
_SAMPLES: Final = 10
_TIMEOUT_TOLERANCE: Final = 0.10
_MAX_KINDS: Final = 64
"""Decision kinds per node (operations come from the runtime, but stay bounded anyway)."""

_TALLIES: weakref.WeakKeyDictionary[object, weakref.WeakSet[ShadowTally]] = (
    weakref.WeakKeyDictionary()
)
_TALLIES_LOCK = threading.Lock()


def _report_to(provider: MeterProvider | None, tally: ShadowTally) -> None:
    """Count ``tally`` in ``provider``'s ``raftmw.shadow.decisions`` (made once per
    provider; None: the global one). Read at export: counting a decision costs an
    increment and nothing of OpenTelemetry's."""
    key = metrics.get_meter_provider() if provider is None else provider
    with _TALLIES_LOCK:
        tallies = _TALLIES.get(key)
        if tallies is None:
            tallies = _TALLIES[key] = weakref.WeakSet()
            meter = metrics.get_meter("raftmw", meter_provider=provider)
            meter.create_observable_counter(
                "raftmw.shadow.decisions",
                callbacks=[_observer(tallies)],
                description="Decisions computed twice in shadow mode, by seam, kind and "
                "outcome (agree, mismatch, error)",
            )
        tallies.add(tally)


def _observer(
    tallies: weakref.WeakSet[ShadowTally],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        for tally in list(tallies):
            for kind, counts in list(tally.counts.items()):
                for outcome, n in zip(("agree", "mismatch", "error"), counts, strict=True):
                    attributes: dict[str, str | int] = {
                        "raftmw.node_id": tally.node_id,
                        "seam": tally.seam,
                        "kind": kind,
                        "outcome": outcome,
                    }
                    yield Observation(n, attributes)

    return observe


def shadow_pair(seam: str, flags: Mapping[str, Any]) -> str | None:
    """The flag to turn on for the shadow component of ``seam`` under ``flags`` (the
    node's evaluations), or None when ``seam`` is not shadowed on this node."""
    flag = SHADOWED.get(seam)
    shadow, own = flags.get(FLAG), flags.get(flag or "")
    if flag is None or shadow is None or not shadow.value or own is None or own.value:
        return None
    return flag


class ShadowTally:
    """Per decision kind: agreements, mismatches, errors, and the last mismatches."""

    def __init__(self, node_id: int, seam: str) -> None:
        self.node_id = node_id
        self.seam = seam
        self.counts: dict[str, list[int]] = {}
        self.samples: deque[dict[str, Any]] = deque(maxlen=_SAMPLES)

    def _count(self, kind: str, outcome: int) -> None:
        counts = self.counts.get(kind)
        if counts is None:
            if len(self.counts) >= _MAX_KINDS:
                kind = "other"
            counts = self.counts.setdefault(kind, [0, 0, 0])
        counts[outcome] += 1

    def agree(self, kind: str) -> None:
        self._count(kind, 0)

    def mismatch(self, kind: str, legacy: Any, new: Any) -> None:
        self._count(kind, 1)
        self.samples.append({"kind": kind, "legacy": legacy, "new": new})

    def error(self, kind: str, exc: BaseException) -> None:
        self._count(kind, 2)
        self.samples.append({"kind": kind, "error": repr(exc)[:200]})

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": {
                kind: {"agree": c[0], "mismatch": c[1], "error": c[2]}
                for kind, c in sorted(self.counts.items())
            },
            "mismatch_samples": list(self.samples),
        }


class _Shadowed:
    """What every wrapper shares: two components run, the legacy one owns the state."""

    def __init__(self, legacy: Any, new: Any, tally: ShadowTally) -> None:
        self.legacy = legacy
        self.new = new
        self.tally = tally

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.legacy.run)
            await tg.start(self.new.run)
            task_status.started()

    def export_state(self) -> Any:
        return self.legacy.export_state()

    def import_state(self, state: Any) -> None:
        self.legacy.import_state(state)

    def lock_stats(self) -> LockStats:
        result: LockStats = self.legacy.lock_stats()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.legacy, name)


class ShadowTimeouts(_Shadowed):
    def timeout(self, operation: str, attempt: int = 0) -> float:
        answer: float = self.legacy.timeout(operation, attempt)
        kind = f"timeout:{operation}"
        try:
            other = float(self.new.timeout(operation, attempt))
        except Exception as exc:  # the shadow never reaches the caller
            self.tally.error(kind, exc)
            return answer
        if abs(other - answer) <= _TIMEOUT_TOLERANCE * max(abs(answer), 1e-9):
            self.tally.agree(kind)
        else:
            self.tally.mismatch(kind, round(answer, 4), round(other, 4))
        return answer

    def observe(self, operation: str, seconds: float, *, ok: bool) -> None:
        self.legacy.observe(operation, seconds, ok=ok)
        try:
            self.new.observe(operation, seconds, ok=ok)
        except Exception as exc:
            self.tally.error(f"observe:{operation}", exc)

    def stats(self) -> Mapping[str, Mapping[str, float]]:
        result: Mapping[str, Mapping[str, float]] = self.legacy.stats()
        return result


class ShadowSendGuard(_Shadowed):
    def allow(self, peer: int, messages: Sequence[Any]) -> Sequence[Any]:
        answer: Sequence[Any] = self.legacy.allow(peer, messages)
        try:
            other = len(self.new.allow(peer, messages))
        except Exception as exc:
            self.tally.error("send", exc)
            return answer
        if other == len(answer):
            self.tally.agree("send")
        else:
            self.tally.mismatch(
                "send", f"{len(answer)}/{len(messages)} to {peer}", f"{other}/{len(messages)}"
            )
        return answer

    def record(self, peer: int, *, ok: bool) -> None:
        self.legacy.record(peer, ok=ok)
        try:
            self.new.record(peer, ok=ok)
        except Exception as exc:
            self.tally.error("record", exc)

    def states(self) -> Mapping[int, str]:
        result: Mapping[int, str] = self.legacy.states()
        return result


class ShadowQueue(_Shadowed):
    def __init__(self, legacy: Any, new: Any, tally: ShadowTally, name: str) -> None:
        super().__init__(legacy, new, tally)
        self.kind = f"admit:{name}"

    def put_nowait(self, item: Any, priority: Priority = Priority.NORMAL) -> None:
        try:
            self.legacy.put_nowait(item, priority)
        except QueueFull:
            self._shadow_put(item, priority, admitted=False)
            raise
        self._shadow_put(item, priority, admitted=True)

    def _shadow_put(self, item: Any, priority: Priority, *, admitted: bool) -> None:
        try:
            self.new.put_nowait(item, priority)
            other = True
        except QueueFull:
            other = False
        except Exception as exc:
            self.tally.error(self.kind, exc)
            return
        if other == admitted:
            self.tally.agree(self.kind)
        else:
            self.tally.mismatch(
                self.kind,
                "admitted" if admitted else "refused",
                f"{'admitted' if other else 'refused'} ({priority.name}, depth {len(self.new)})",
            )

    def drain(self, limit: int | None = None) -> list[Any]:
        items: list[Any] = self.legacy.drain(limit)
        if items:
            try:
                self.new.drain(len(items))  # depth follows the real queue's; items unused
            except Exception as exc:
                self.tally.error(self.kind, exc)
        return items

    def __len__(self) -> int:
        return len(self.legacy)

    def stats(self) -> Any:
        return self.legacy.stats()


def wrap(
    seam: str,
    name: str,
    legacy: Any,
    new: Any,
    node_id: int,
    meter_provider: MeterProvider | None = None,
) -> Any:
    """The shadow wrapper of ``seam`` (``name``: the queue's) around two built components,
    its counts reported to ``meter_provider``."""
    label = f"{seam}:{name}" if name else seam
    tally = ShadowTally(node_id, label)
    _report_to(meter_provider, tally)
    if seam == "timeouts":
        return ShadowTimeouts(legacy, new, tally)
    if seam == "send_guard":
        return ShadowSendGuard(legacy, new, tally)
    if seam == "queue":
        return ShadowQueue(legacy, new, tally, name)
    raise ValueError(f"seam {seam!r} cannot be shadowed; shadowed seams: {', '.join(SHADOWED)}")


def shadow_status(components: Mapping[str, Any]) -> dict[str, Any]:
    """The ``shadow`` section of a status page: slot -> counts and samples (running
    shadow wrappers only)."""
    return {
        slot: component.tally.to_dict()
        for slot, component in components.items()
        if isinstance(component, _Shadowed)
    }
