"""The kernel's view of the replicated log: a compacted prefix, then entries in memory.

Indexes are 1-based. ``offset`` is the index of the last compacted entry (the snapshot's
index) and ``offset_term`` its term; ``entries[i]`` has index ``offset + 1 + i``. The kernel
keeps every live entry in memory (compaction bounds it) and tracks which suffix is not yet
on stable storage (``unstable_from``) so the runtime can persist exactly that.

``entries`` is read freely but changed only through this class's methods: it keeps running
byte totals of the entries' data alongside (``_byte_sums``), which a change from outside
would leave stale.

Invariants kept here (and checked, raising ``KernelMisuse``/``InvalidMessage`` if broken):
- entries are contiguous and terms never decrease along the log;
- committed entries are never truncated (a leader asking for it is a protocol violation);
- ``offset <= applied <= committed <= last_index``.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from framework.core.entries import Entry, SnapshotMeta
from framework.core.errors import InvalidMessage, KernelMisuse

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = (
        "_byte_sums",
        "applied",
        "committed",
        "entries",
        "offset",
        "offset_term",
        "unstable_from",
    )

    def __init__(
        self,
        *,
        snapshot: SnapshotMeta | None = None,
        entries: list[Entry] | None = None,
        committed: int = 0,
    ) -> None:
        meta = snapshot or SnapshotMeta()
        self.offset = meta.index
        self.offset_term = meta.term
        self.entries: list[Entry] = list(entries or [])
        self._byte_sums = [0]
        """Running totals of the entries' data bytes: ``_byte_sums[p]`` is the total before
        position ``p`` (plus a base), ``_byte_sums[q] - _byte_sums[p]`` the bytes of
        ``entries[p:q]``. Extended on demand (``_byte_sums_to``), only on a leader, so each
        entry's size is read once instead of once per follower sent to and once more when
        committed; cut back with ``entries`` (truncation, compaction, restore)."""
        for position, entry in enumerate(self.entries):
            if entry.index != self.offset + 1 + position:
                raise KernelMisuse(
                    f"stored entries are not contiguous after snapshot index {self.offset}: "
                    f"found index {entry.index} at position {position}"
                )
        if committed > self.last_index():
            raise KernelMisuse(
                f"stored commit index {committed} is past the last stored entry {self.last_index()}"
            )
        self.committed = max(committed, self.offset)
        self.applied = self.offset
        # Everything given at construction came from stable storage.
        self.unstable_from = self.last_index() + 1

    @classmethod
    def from_storage(cls, meta: SnapshotMeta, entries: list[Entry], commit: int) -> RaftLog:
        """The log as stored: a snapshot at ``meta``, then ``entries``, which may begin before
        the snapshot's index (the trailing entries ``compact(trailing=...)`` kept). Then the
        first stored entry becomes the compacted prefix's last, and the log is applied up to
        the snapshot, which the state machine restores from."""
        if not entries or entries[0].index > meta.index:
            return cls(snapshot=meta, entries=entries, committed=commit)
        first = entries[0]
        at_snapshot = meta.index - first.index
        if at_snapshot >= len(entries) or entries[at_snapshot].term != meta.term:
            raise KernelMisuse(
                f"stored entries {first.index}..{entries[-1].index} before the snapshot at "
                f"{meta.index} (term {meta.term}) do not reach it with its term"
            )
        log = cls(
            snapshot=SnapshotMeta(index=first.index, term=first.term),
            entries=entries[1:],
            committed=max(commit, meta.index),
        )
        log.applied = meta.index
        return log

    # -- queries ---------------------------------------------------------------------------

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None when compacted away or beyond the end."""
        # By position, without calling last_index(): this runs several times per message.
        position = index - self.offset - 1
        if position == -1:
            return self.offset_term
        if position < -1 or position >= len(self.entries):
            return None
        return self.entries[position].term

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up to date as ours."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with ``lo <= index < hi``; at least one, then at most ``max_bytes``."""
        self._require_live(lo)
        start = lo - self.offset - 1
        stop = min(hi - self.offset - 1, len(self.entries))
        window = self.entries[start:stop]
        if max_bytes is None or not window:
            return window
        # From the running totals, since this runs for every append sent: the entries up to
        # the last position whose total is within ``max_bytes`` of the window's start (a
        # bisection). The first entry always goes, even when larger than ``max_bytes``.
        stop = start + len(window)  # ``hi`` may have been below ``lo``, even negative
        sums = self._byte_sums_to(stop)
        limit = sums[start] + max_bytes
        if sums[stop] <= limit:
            return window
        fits = bisect_right(sums, limit, start, stop + 1) - 1 - start
        return window[: max(1, fits)]

    def data_size(self, lo: int, hi: int) -> int:
        """Sum of ``Entry.size()`` (the data's length) over ``lo <= index < hi``."""
        self._require_live(lo)
        start = lo - self.offset - 1
        stop = min(hi - self.offset - 1, len(self.entries))
        positions = range(len(self.entries))[start:stop]  # what ``entries[start:stop]`` holds
        if not positions:
            return 0
        sums = self._byte_sums_to(positions.stop)
        return sums[positions.stop] - sums[positions.start]

    def _require_live(self, lo: int) -> None:
        if lo <= self.offset:
            raise KernelMisuse(
                f"entries from {lo} requested but the log is compacted to {self.offset}"
            )

    def _byte_sums_to(self, stop: int) -> list[int]:
        """``_byte_sums``, extended to cover ``entries[:stop]``."""
        sums = self._byte_sums
        known = len(sums) - 1
        if known < stop:
            sizes = [len(entry.data) for entry in self.entries[known:stop]]
            # ``accumulate`` starts from the last total, which it yields again: popped first.
            sums.extend(accumulate(sizes, initial=sums.pop()))
        return sums

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.unstable_from - self.offset - 1 :]

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index ``<= index`` whose term is ``<= term`` (etcd's conflict hint search).

        Used on both sides of a rejected append: every entry skipped has a term the other
        log cannot match, so the leader jumps a whole term per round trip.
        """
        index = min(index, self.last_index())
        while index > self.offset:
            entry_term = self.entries[index - self.offset - 1].term
            if entry_term <= term:
                break
            index -= 1
        return index

    # -- changes ---------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Leader-side append of freshly created entries (they follow ``last_index``)."""
        self.entries.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower-side AppendEntries (§5.3). Returns the last new index, or None on mismatch.

        Entries already present with the same term are skipped (duplicates and reordered
        messages are harmless); from the first conflict on, our suffix is replaced.
        """
        if not self.matches(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for position, entry in enumerate(entries):
            if entry.index <= self.offset:
                continue  # already compacted, hence committed, hence equal (log matching)
            existing = self.term(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                if entry.index <= self.committed:
                    raise InvalidMessage(
                        f"AppendEntries would overwrite committed entry {entry.index} "
                        f"(term {existing}) with term {entry.term}"
                    )
                self._truncate_from(entry.index)
            self.entries.extend(entries[position:])
            break
        self.commit_to(min(commit, last_new))
        return last_new

    def _truncate_from(self, index: int) -> None:
        position = index - self.offset - 1
        del self.entries[position:]
        del self._byte_sums[position + 1 :]
        self.unstable_from = min(self.unstable_from, index)

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise InvalidMessage(
                    f"commit index {index} is past the last log index {self.last_index()}"
                )
            self.committed = index

    def committed_to_apply(self, max_entries: int | None = None) -> list[Entry]:
        lo = self.applied + 1
        hi = self.committed + 1
        if max_entries is not None:
            hi = min(hi, lo + max_entries)
        if lo >= hi:
            return []
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def applied_to(self, index: int) -> None:
        if index > self.committed or index < self.applied:
            raise KernelMisuse(f"applied index {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``(index, term)`` reached stable storage, unless since replaced."""
        if index >= self.unstable_from and self.term(index) == term:
            self.unstable_from = index + 1

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (which a snapshot now covers)."""
        if index <= self.offset:
            return
        if index > self.applied:
            raise KernelMisuse(f"cannot compact to {index}: only {self.applied} is applied")
        term = self.term(index)
        assert term is not None
        dropped = index - self.offset
        del self.entries[:dropped]
        if len(self._byte_sums) > dropped:
            del self._byte_sums[:dropped]  # the total before the new first entry is the base
        else:
            self._byte_sums = [0]
        self.offset = index
        self.offset_term = term

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot received from the leader (§7)."""
        self.entries = []
        self._byte_sums = [0]
        self.offset = meta.index
        self.offset_term = meta.term
        self.committed = meta.index
        self.unstable_from = meta.index + 1
