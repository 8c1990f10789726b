"""When a removed node may be stopped: once the voters its removal left have applied it.

Theory of operation
-------------------
A membership change takes effect on each node when that node *applies* it (see the
membership notes in ``framework/core/raft.py``). ``members remove N`` returns once the leader
applied the removal; a voter that has not yet learnt that the removal committed still counts
node N's vote. If N is stopped at that moment and it was one of two voters, the one left
needs a vote that will never come: it can never be elected, and the cluster stops for good.
(Node N, if it still runs, grants that voter its vote without the usual log check, which is
what gets the cluster through when N stays up a little longer.) So the operator's rule is:
stop a removed node only after every voter its removal left reports a membership without
it. ``wait_removal_applied`` asks them until they do, within a deadline; the simulator's
operator follows the same rule before it decommissions a node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import anyio

from framework.errors import RaftError

__all__ = ["wait_removal_applied"]

_POLL_SECONDS = 0.05


class _StatusSource(Protocol):
    async def status(self, node_id: int) -> dict[str, Any]: ...


async def wait_removal_applied(
    client: _StatusSource, node_id: int, voters: Iterable[int], *, timeout: float
) -> list[int]:
    """Ask each of ``voters`` (the membership the removal of ``node_id`` left) until its
    status lists ``node_id`` as neither voter nor learner; returns those that still did not
    after ``timeout`` seconds (empty: node ``node_id`` may be stopped)."""
    waiting = sorted(set(voters) - {node_id})
    deadline = anyio.current_time() + timeout
    while waiting:
        still: list[int] = []
        for voter in waiting:
            try:
                status = await client.status(voter)
            except RaftError:
                still.append(voter)
                continue
            if node_id in status.get("voters", ()) or node_id in status.get("learners", ()):
                still.append(voter)
        waiting = still
        if not waiting or anyio.current_time() >= deadline:
            break
        await anyio.sleep(_POLL_SECONDS)
    return waiting
