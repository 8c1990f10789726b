"""An application of your own: a counter with notes, replicated by raftmw.

Run a cluster of it with ``raftmw node --app counter ...`` (or ``--app raftmw_counter:Counter``)
and use it with ``ObjectClient(peers, Counter)``, or embed a node in your process with
``raftmw.embed(Counter, ...)``. Every replica runs the same methods on the same calls, in log
order: a method depends only on its arguments, ``self`` and ``self.now`` (the leader's time).
"""

from __future__ import annotations

from raftmw import ReplicatedObject, query, replicated

__all__ = ["Counter"]


class Counter(ReplicatedObject):
    app_name = "counter"
    app_version = "1.0"

    value: int
    notes: list[str]
    last_change: float

    def __init__(self) -> None:
        self.value = 0
        self.notes = []
        self.last_change = 0.0

    @replicated
    def incr(self, by: int = 1, note: str = "") -> int:
        """Add ``by``; remember ``note`` (exactly once per call, even when retried)."""
        if not isinstance(by, int) or isinstance(by, bool):
            raise TypeError(f"by={by!r}: expected an integer")
        self.value += by
        if note:
            self.notes.append(note)
        self.last_change = self.now
        return self.value

    @replicated
    def set(self, value: int) -> int:
        if value < 0:
            raise ValueError(f"value {value} is negative; expected >= 0")
        self.value = value
        self.last_change = self.now
        return self.value

    @query
    def get(self) -> int:
        return self.value

    @query
    def noted(self) -> list[str]:
        return list(self.notes)

    @query(stale=True)
    def get_stale(self) -> int:
        """From whichever node answers, as it is (may lag the leader)."""
        return self.value
