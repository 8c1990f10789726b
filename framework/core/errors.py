"""Errors raised by the kernel, named for whose fault they are.

``InvalidMessage`` is the remote peer's fault (the runtime logs it and drops the message);
``ProposalRejected`` and its subclasses are expected outcomes the runtime turns into client
errors; ``KernelMisuse`` is the local caller's bug.
"""

from __future__ import annotations

__all__ = [
    "ConfChangeRejected",
    "InvalidMessage",
    "KernelError",
    "KernelMisuse",
    "NotLeader",
    "ProposalRejected",
    "TransferInProgress",
    "UncommittedSizeExceeded",
]


class KernelError(Exception):
    """Base of every error the kernel raises."""


class KernelMisuse(KernelError):
    """The caller broke the kernel's contract (e.g. two ``ready()`` without ``advance()``)."""


class InvalidMessage(KernelError):
    """A message no correct peer would send; the kernel state is unchanged."""


class ProposalRejected(KernelError):
    """The proposal was not appended; nothing changed and it is safe to retry."""


class NotLeader(ProposalRejected):
    def __init__(self, node_id: int, leader: int) -> None:
        self.leader = leader
        where = f"node {leader} is the leader" if leader else "no leader is known"
        super().__init__(f"node {node_id} is not the leader; {where}")


class UncommittedSizeExceeded(ProposalRejected):
    """The leader holds more uncommitted bytes than ``max_uncommitted_entries_size``."""


class TransferInProgress(ProposalRejected):
    """The leader is handing leadership to another node and accepts no proposals."""


class ConfChangeRejected(ProposalRejected):
    """The membership change is not allowed now (another pending, learner behind, ...)."""
