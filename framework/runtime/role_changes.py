"""``RoleChanges``: why this node's role changed, for the status page's ``health``.

Theory of operation
-------------------
The soak benchmark saw terms begin with no long pause anywhere (README, "Pauses and
snapshots"), and nothing said why. The cause of a term is local to the node that began it
or lost its leadership, at the input that changed its role, so each node records that:
``kernel_inputs.step_inputs`` reads the kernel's role and term around every input it steps
and reports a change here. Nothing in the kernel changes; what is recorded follows from the
inputs alone (deterministic), and each input costs two attribute reads.

Reasons (``reason``):

- ``election_timeout``: a follower's tick started a campaign. With it, the ticks since the
  node last stepped a message from its leader (``ticks_since_leader``; None if it heard
  none since it started or lost its previous leader) and how many ticks were due in that
  drain (``burst``: more than one means the node itself was held, its loop or its process,
  for that many tick intervals; a follower is given at most ``follower_burst_max`` of them,
  ``kernel_inputs``' point 5);
- ``check_quorum``: a leader's tick found no quorum heard within an election timeout
  (D §6.2) and it stepped down (``tick`` if check-quorum is off: a removed leader handing
  over);
- ``higher_term``: the node became a follower on a message of a later term, from node
  ``peer`` (``message`` names its type: a pre-vote's refusal, an append from a new
  leader, a vote request...);
- ``pre_vote_won`` (the term begins here) and ``vote_won``, on the vote that decided it;
- ``message``: any other change under a message (a lost vote, TimeoutNow, a candidate
  that learns of a leader).

Kept: a count per ``from->to reason`` and the last ``KEPT`` changes (bounded whatever the
run's length); ``total`` numbers them, so a reader that polls sees which are new.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from framework.core import Message, RawNode, Role

__all__ = ["KEPT", "RoleChanges"]

KEPT: Final = 16
"""Role changes kept in full (the newest)."""


class RoleChanges:
    __slots__ = ("_last", "counts", "heard_at", "ticks_dropped", "total")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0
        self.heard_at: int | None = None
        """The kernel's tick count when it last stepped a message from its leader as a
        follower (``step_inputs`` sets it)."""
        self.ticks_dropped = 0
        """Ticks a follower was not given, past the cap on one burst (``kernel_inputs``'s
        point 5)."""
        self._last: deque[dict[str, Any]] = deque(maxlen=KEPT)

    def on_message(self, kernel: RawNode, msg: Message, role: Role, term: int) -> None:
        """``msg`` moved the kernel from ``role`` in ``term`` to its present role/term."""
        new = kernel.role
        if new is Role.FOLLOWER and kernel.term > term:
            reason = "higher_term"
        elif new is Role.CANDIDATE and role is Role.PRE_CANDIDATE:
            reason = "pre_vote_won"
        elif new is Role.LEADER:
            reason = "vote_won"
        else:
            reason = "message"
        self._record(kernel, role, reason, peer=msg.src, message=type(msg).__name__)

    def on_tick(self, kernel: RawNode, role: Role, burst: int) -> None:
        """A tick (one of ``burst`` delivered together) moved the kernel from ``role``."""
        if role is Role.LEADER:
            reason = "check_quorum" if kernel.config.check_quorum else "tick"
            self._record(kernel, role, reason)
            return
        heard = self.heard_at
        self._record(
            kernel,
            role,
            "election_timeout",
            ticks_since_leader=None if heard is None else kernel.clock - heard,
            burst=burst,
        )

    def _record(self, kernel: RawNode, role: Role, reason: str, **detail: Any) -> None:
        new = kernel.role
        if new is not Role.FOLLOWER or kernel.leader == 0:
            self.heard_at = None  # a new leader is heard afresh
        key = f"{role.value}->{new.value} {reason}"
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1
        self._last.append(
            {
                "n": self.total,
                "tick": kernel.clock,
                "term": kernel.term,
                "from": role.value,
                "to": new.value,
                "reason": reason,
                **detail,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "counts": dict(self.counts),
            "last": list(self._last),
            "ticks_dropped": self.ticks_dropped,
        }
