"""`BreakerGuard`: the `SendGuard` with one circuit breaker per peer, Raft-aware.

Theory of operation
-------------------
The runtime asks the guard, for every outgoing batch, which of the messages to one peer go
now (``allow``), and tells it when a send to a peer failed (``record(peer, ok=False)``,
from the transport's ``peer_unreachable``) and whenever a batch arrives from a peer
(``record(peer, ok=True)``). Each peer has a `CircuitBreaker` (closed / open / half_open,
see ``plugins.circuit_breaker.breaker``); the guard decides *what* a breaker holds back.

1. Only bulky traffic is ever held back: AppendEntries that carry entries, and
   InstallSnapshot. They are what makes sending to a dead peer expensive (encoding up to
   ``max_size_per_msg`` of entries, or a whole snapshot; the memory they occupy in queues;
   the write that waits for a timeout), and the traffic a breaker exists to spare.
2. Every other message always goes, in every state, because Raft needs it for liveness and
   it costs next to nothing:

   - VoteRequest / VoteResponse, pre-vote included (§5.2, dissertation §9.6): a candidate
     needs a majority; holding back votes to a peer that is in fact back could leave the
     cluster without a leader;
   - Heartbeat / HeartbeatResponse (§5.2): without heartbeats a follower campaigns and
     disrupts a healthy leader; without the responses a leader with check-quorum steps
     down, and ReadIndex reads (which ride on heartbeats) are never confirmed;
   - TimeoutNow (dissertation §3.10): one message that completes a leadership transfer;
   - AppendResponse (§5.3): acknowledgements are what the leader counts to commit;
   - AppendEntries without entries: the leader's probe of a follower's log at
     ``next - 1`` and its commit index; small by construction;
   - ReadIndexRequest / ReadIndexResponse: small; holding them back only turns reads
     into client timeouts. Anything the guard does not recognise goes too: a guard that
     cannot tell what a message is must not be the reason it is lost.

   These small messages also keep probing the peer while its breaker is open: a send that
   fails is reported again, one that arrives gets an answer.
3. Half-open lets bulky traffic through one batch per probe (``CircuitBreaker.admit_bulk``):
   the whole bulky part of the batch that becomes the probe goes; the outcome of the next
   ``record`` (or no failure within the probe window) judges it.
4. Holding back is safe: Raft assumes a network that loses messages, so dropping an
   AppendEntries or an InstallSnapshot loses nothing. No entry it carried was acknowledged
   by that peer, so no commit counted on it. The leader sends again: its next heartbeat's
   response frees an in-flight slot and triggers an (always allowed) empty AppendEntries
   that checks the follower's log, whose rejection sends the leader back to probing from
   the last match (§5.3); a held-back snapshot is resent when the kernel's snapshot retry
   expires. The cost is only time: while a peer's breaker is open it falls behind, and
   a commit that needs that peer for its majority waits, as it would for a dead peer.
5. What was held back is counted per peer (``held_back``), for status pages.

Swap state
----------
``export_state()`` is a mapping that the legacy `NoGuard` can read, and carries more:

- ``{peer: failures}`` with int keys: every failure recorded per peer, NoGuard's own
  format (NoGuard keeps these and ignores the string keys below);
- ``"breakers": {peer: CircuitBreaker.export()}``: each breaker's state, counts, and the
  seconds spent in its state (relative, so a successor on another clock reads it);
- ``"held_back": {peer: messages}``.

``import_state`` takes that, or NoGuard's ``{peer: failures}``. NoGuard's counts are
totals over the node's life, not a run of consecutive failures, so they cannot say that a
peer is down now: such peers start closed (what NoGuard did) and keep their totals; the
next failures decide. Import replaces per peer rather than adding, so a state handed back
to its own guard (an aborted swap) changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from framework.core import AppendEntries, InstallSnapshot
from framework.seams import LockStats
from plugins.circuit_breaker.breaker import BreakerConfig, BreakerState, CircuitBreaker, Clock

if TYPE_CHECKING:
    from framework.config import Settings

__all__ = ["BreakerGuard", "is_bulky"]


def is_bulky(message: object) -> bool:
    """True for the traffic an open breaker holds back (rule 1 of the module docstring)."""
    if isinstance(message, AppendEntries):
        return bool(message.entries)
    return isinstance(message, InstallSnapshot)


class BreakerGuard:
    """`SendGuard` with a `CircuitBreaker` per peer that holds back bulky traffic only."""

    __slots__ = ("_breakers", "_clock", "_config", "_held_back")

    def __init__(self, config: BreakerConfig, *, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._breakers: dict[int, CircuitBreaker] = {}
        self._held_back: dict[int, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = time.monotonic) -> BreakerGuard:
        """Thresholds from ``performance.circuit_breaker``; the probe window is the
        transport's connect timeout, within which it reports a failed dial."""
        breaker = settings.performance.circuit_breaker
        return cls(
            BreakerConfig(
                failure_threshold=breaker.failure_threshold,
                timeout=breaker.timeout,
                success_threshold=breaker.success_threshold,
                probe_window=settings.transport.connect_timeout,
            ),
            clock=clock,
        )

    @property
    def config(self) -> BreakerConfig:
        return self._config

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Nothing to serve: breakers change state when asked (the clock is read lazily).
        task_status.started()
        await anyio.sleep_forever()

    def _breaker(self, peer: int) -> CircuitBreaker:
        breaker = self._breakers.get(peer)
        if breaker is None:
            breaker = self._breakers[peer] = CircuitBreaker(self._config, clock=self._clock)
        return breaker

    # -- SendGuard ----------------------------------------------------------------------------

    def allow(self, peer: int, messages: Sequence[Any]) -> Sequence[Any]:
        breaker = self._breaker(peer)
        if breaker.state is BreakerState.CLOSED:
            return messages
        bulky = sum(1 for message in messages if is_bulky(message))
        if not bulky or breaker.admit_bulk():
            return messages
        self._held_back[peer] = self._held_back.get(peer, 0) + bulky
        return [message for message in messages if not is_bulky(message)]

    def record(self, peer: int, *, ok: bool) -> None:
        breaker = self._breaker(peer)
        if ok:
            breaker.record_success()
        else:
            breaker.record_failure()

    def states(self) -> Mapping[int, str]:
        return {peer: breaker.state.value for peer, breaker in self._breakers.items()}

    # -- for status pages and tests -------------------------------------------------------------

    def held_back(self) -> Mapping[int, int]:
        """Bulky messages held back per peer since this node started (carried across swaps)."""
        return dict(self._held_back)

    def failures(self) -> Mapping[int, int]:
        """Failed sends per peer since this node started (carried across swaps), as NoGuard."""
        return {
            peer: breaker.total_failures
            for peer, breaker in self._breakers.items()
            if breaker.total_failures
        }

    def breaker(self, peer: int) -> CircuitBreaker | None:
        """The breaker of ``peer``, if the guard has seen it."""
        return self._breakers.get(peer)

    # -- Component ------------------------------------------------------------------------------

    def export_state(self) -> dict[int | str, Any]:
        # NoGuard's part first: the failures per peer, under int keys.
        state: dict[int | str, Any] = {peer: n for peer, n in self.failures().items()}
        state["breakers"] = {peer: b.export() for peer, b in self._breakers.items()}
        state["held_back"] = dict(self._held_back)
        return state

    def import_state(self, state: Any) -> None:
        if state is None:
            return
        if not isinstance(state, Mapping):
            raise TypeError(
                f"send guard state must be a mapping of peer -> failures, not "
                f"{type(state).__name__}"
            )
        # NoGuard's part: int peer -> int count; anything else is not a count (as NoGuard).
        totals = {
            peer: count
            for peer, count in state.items()
            if type(peer) is int and type(count) is int and count >= 0
        }
        held_back = _counts_by_peer(state.get("held_back", {}), "held_back")
        raw_breakers = state.get("breakers", {})
        if not isinstance(raw_breakers, Mapping):
            raise TypeError(
                f"send guard state 'breakers' must be a mapping of peer -> breaker, not "
                f"{type(raw_breakers).__name__}"
            )
        restored: dict[int, CircuitBreaker] = {}
        for peer, data in raw_breakers.items():
            if type(peer) is not int:
                raise TypeError(f"send guard state 'breakers': peer {peer!r} is not a node id")
            try:
                restored[peer] = CircuitBreaker.restore(
                    self._config, data, clock=self._clock, total_failures=totals.get(peer, 0)
                )
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"send guard state 'breakers', peer {peer}: {exc}") from None
        # Everything is checked: apply (a refused state changed nothing).
        for peer, total in totals.items():
            if peer not in restored:
                breaker = self._breaker(peer)
                breaker.total_failures = total
        self._breakers.update(restored)
        self._held_back.update(held_back)

    def lock_stats(self) -> LockStats:
        return LockStats()


def _counts_by_peer(raw: Any, name: str) -> dict[int, int]:
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"send guard state {name!r} must be a mapping of peer -> count, not "
            f"{type(raw).__name__}"
        )
    counts: dict[int, int] = {}
    for peer, count in raw.items():
        if type(peer) is not int or type(count) is not int or count < 0:
            raise ValueError(
                f"send guard state {name!r}: {peer!r} -> {count!r}; expected a node id -> "
                "an integer >= 0"
            )
        counts[peer] = count
    return counts
