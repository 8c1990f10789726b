"""The ``LogStore`` protocol: what the runtime needs from durable storage.

A store holds, for one node: its identity (node id, cluster id), the bootstrap membership,
the hard state, the latest snapshot and the log entries after it. The runtime calls it from
one worker thread at a time (never from the event loop), with one exception:
``prepare_snapshot`` may run while another thread runs ``save_ready``, so that writing a
large snapshot does not hold up the log; it must not touch what ``save_ready`` uses.

Durability contract: when ``save_ready`` returns with ``sync=True``, everything it was given
survives a SIGKILL or power loss of the process; with ``sync=False`` it survives a process
crash (the OS has it) but maybe not a power loss. An operator may choose to trade away
power-loss durability for every write (the SQLite store's ``sync="os"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Protocol, runtime_checkable

from framework.core import ConfState, Entry, HardState, Snapshot, SnapshotMeta

__all__ = [
    "MAX_STORABLE",
    "LogStore",
    "SnapshotFile",
    "StorageError",
    "StoredState",
    "check_compact_to",
    "check_storable",
    "save_ready",
]


class StorageError(Exception):
    """The store cannot be used as it is (corrupt, another node's, missing files)."""


MAX_STORABLE: Final = 2**63 - 1
"""The largest term, index or node id a store keeps (a signed 64-bit SQLite INTEGER)."""


def check_storable(
    hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
) -> None:
    """Refuse, before anything is written, a Ready holding a number no store can keep.

    The decode boundary keeps such numbers out (``transport.bounds``); this is the last
    line, so that a value that slipped through is named instead of half-written (SQLite
    raised ``OverflowError`` mid-transaction). Costs a few comparisons per Ready.
    """
    values: list[tuple[str, int]] = []
    if hard_state is not None:
        values += [
            ("hard state term", hard_state.term),
            ("hard state vote", hard_state.vote),
            ("hard state commit", hard_state.commit),
        ]
    if entries:
        values += [
            ("entry index", entries[-1].index),
            ("entry term", max(entry.term for entry in entries)),
        ]
    if snapshot is not None:
        values += [("snapshot index", snapshot.meta.index), ("snapshot term", snapshot.meta.term)]
    for what, value in values:
        if not 0 <= value <= MAX_STORABLE:
            raise StorageError(
                f"refusing to store {what} {value}: expected 0..{MAX_STORABLE} (nothing written)"
            )


def check_compact_to(index: int, compact_to: int | None) -> int:
    """The last entry a snapshot at ``index`` lets a store delete: ``compact_to`` (the
    kernel's ``log.offset`` after ``compact(trailing=...)``), or by default ``index``."""
    if compact_to is None:
        return index
    if not 0 <= compact_to <= index:
        raise StorageError(
            f"compact_to={compact_to}: expected 0..{index} (the snapshot's index); nothing written"
        )
    return compact_to


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotFile:
    """A snapshot's data in a file the runtime wrote (a stream from the leader, or a local
    snapshot) and checked, for a store to adopt instead of ``Snapshot.data``: the store
    moves it in (or reads it and deletes it); nobody else uses ``path`` afterwards. It must
    be on the data directory's file system for a move."""

    path: Path
    size: int
    sha256: str
    """Hex SHA-256 of the file's bytes, as computed while it was written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredState:
    """Everything a node needs to rebuild its kernel after a restart."""

    node_id: int
    cluster_id: str
    conf_state: ConfState
    """Bootstrap membership (used when there is no snapshot)."""
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: tuple[Entry, ...] = ()


@runtime_checkable
class LogStore(Protocol):
    def initialize(self, *, node_id: int, cluster_id: str, conf_state: ConfState) -> None:
        """Stamp a new, empty store with its identity and bootstrap membership.

        Raises ``StorageError`` if the store already belongs to a node; a store that is
        already stamped with the same identity is left untouched.
        """
        ...

    def load(self) -> StoredState | None:
        """Read everything back; None for a store never initialized. ``entries`` may begin
        before the snapshot's index (trailing entries kept by ``compact_to``).

        Raises ``StorageError`` naming the file and the problem when the store is corrupt
        or a snapshot file is missing or damaged.

        A store that keeps its snapshot in a file may also offer ``load_by_reference()``
        (not part of this protocol; the SQLite store has it): ``load`` with the snapshot
        without its data (``Snapshot.data`` empty, its file checked all the same), read
        with ``open_snapshot``. A node restarting then restores from the file, a record at
        a time, instead of holding the snapshot whole (``framework.runtime.restart``).
        """
        ...

    def save_ready(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
        snapshot_file: SnapshotFile | None = None,
    ) -> None:
        """Apply one ``Ready`` atomically: all of it is stored or none of it.

        ``snapshot`` (received from the leader) replaces the whole log; its data is
        ``snapshot_file`` when given (``snapshot.data`` is then empty; the store adopts the
        file even if it refuses the Ready); ``entries`` replace any stored entries from
        ``entries[0].index`` on. Raises ``StorageError`` and stores
        nothing if the result would not be a well-formed log (a gap, an overlap with the
        snapshot, terms going backwards, commit past the last entry).
        """
        ...

    def save_snapshot(self, snapshot: Snapshot, *, compact_to: int | None = None) -> None:
        """Store a locally taken snapshot, then drop the entries it covers (§7) up to
        ``compact_to`` (default: the snapshot's index; less keeps trailing entries, which
        ``load`` returns before the snapshot's index):
        ``commit_snapshot(prepare_snapshot(snapshot), compact_to=compact_to)``.

        The snapshot is durable before any entry is deleted, so a crash in between leaves
        both (harmless), never neither.
        """
        ...

    def prepare_snapshot(self, snapshot: Snapshot) -> object:
        """The slow half of ``save_snapshot``: make the snapshot's data durable where no
        committed state refers to it yet (a file written, fsynced and renamed), and return a
        token for ``commit_snapshot``. May run concurrently with ``save_ready``."""
        ...

    def prepare_snapshot_file(self, meta: SnapshotMeta, file: SnapshotFile) -> object:
        """``prepare_snapshot`` for a snapshot whose data is ``file`` (adopted: moved in,
        made durable), for ``commit_snapshot``. May run concurrently with ``save_ready``."""
        ...

    def open_snapshot(self, meta: SnapshotMeta) -> IO[bytes] | None:
        """The stored snapshot's data, opened for reading (the caller closes it), if the
        stored snapshot is the one at ``meta``'s index and term; None otherwise. May run
        concurrently with the other calls: an open file stays readable when a newer
        snapshot replaces it."""
        ...

    def commit_snapshot(self, prepared: object, *, compact_to: int | None = None) -> None:
        """The quick half: record the prepared snapshot and drop the entries it covers (up
        to ``compact_to``, as for ``save_snapshot``), in one transaction. If the store
        already holds a snapshot at or past its index (one received from the leader
        meanwhile), the prepared data is discarded instead.

        A store may also offer ``prune(upto, *, limit) -> bool`` (not part of this protocol;
        ``SQLiteLogStore`` does): delete at most ``limit`` of the oldest entries, none past
        ``upto`` or the snapshot's index, and say whether none at or below ``upto`` is left.
        A node then records its snapshots with ``compact_to=0`` and prunes a batch at a
        time between its stores (``framework/runtime/local_snapshots.py``, step 6), so that
        no store of a Ready waits for a long deletion."""
        ...

    def close(self) -> None:
        """Release the store (files, locks); it may be reopened afterwards."""
        ...


def save_ready(
    store: LogStore,
    *,
    hard_state: HardState | None,
    entries: Sequence[Entry],
    snapshot: Snapshot | None,
    sync: bool,
    snapshot_file: SnapshotFile | None = None,
) -> None:
    """``store.save_ready(...)``, passing ``snapshot_file`` only when there is one: a
    ``LogStore`` written before snapshot files takes no such keyword (called from a worker
    thread, as every ``LogStore`` call)."""
    if snapshot_file is None:
        store.save_ready(hard_state=hard_state, entries=entries, snapshot=snapshot, sync=sync)
        return
    store.save_ready(
        hard_state=hard_state,
        entries=entries,
        snapshot=snapshot,
        sync=sync,
        snapshot_file=snapshot_file,
    )
