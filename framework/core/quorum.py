"""Majority arithmetic: the commit index a set of voters agrees on, and election outcomes.

Kept apart from the state machine because it is pure maths with its own table tests.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from itertools import repeat

__all__ = ["VoteResult", "committed_index", "majority", "vote_result"]


def majority(n: int) -> int:
    """Smallest number of voters that intersects every other majority of ``n``."""
    return n // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """Highest index stored on a majority of ``voters`` (voters missing from ``match`` hold 0).

    Sort the match indexes descending; the value at position majority-1 is held by at least
    a majority. An empty voter set commits nothing.
    """
    if not voters:
        return 0
    indexes = sorted(map(match.get, voters, repeat(0)), reverse=True)
    return indexes[majority(len(indexes)) - 1]


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    need = majority(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    if granted >= need:
        return VoteResult.WON
    missing = sum(1 for v in voters if v not in votes)
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST
