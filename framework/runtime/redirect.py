"""Where a node that is not the leader sends a client: the leader it still hears from.

A follower learns who leads from the leader's appends and heartbeats, and keeps the name
after the leader goes silent, until its own election timer fires (one to two election
timeouts, randomised). A client sent to a leader that has hung, stopped or been cut off
waits a whole attempt for nothing, and then is sent back to it by the next follower. So a
follower redirects only to a leader it heard from within the last election timeout: the
kernel's ``election_elapsed`` counts the ticks since then (it restarts on every message from
the leader), and ``election_tick`` is the timeout. Past it the answer is "no leader known",
which the client retries elsewhere after a short backoff: by then an election is under way.
"""

from __future__ import annotations

from framework.core import RawNode, Role

__all__ = ["redirect_target"]


def redirect_target(kernel: RawNode) -> int:
    """The node id to send a client to, or 0 for "no leader known" (never ``kernel.id``)."""
    leader = kernel.leader
    if leader == 0 or leader == kernel.id:
        return 0
    if kernel.role is Role.FOLLOWER and kernel.election_elapsed >= kernel.config.election_tick:
        return 0  # silent for an election timeout: likely hung, stopped or cut off
    return leader
