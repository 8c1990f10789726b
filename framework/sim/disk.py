"""``SimDisk``: a log store whose crashes lose what was not synced, and may tear a write.

``MemoryLogStore`` keeps every write, synced or not, so a simulated crash never lost
anything the kernel had not asked to sync, and the kernel's ``must_sync`` was never put to
the test. ``SimDisk`` keeps two layers: a ``MemoryLogStore`` holding what reached stable
storage, and the writes since the last sync, in order. A write with ``sync`` flushes the
pending ones and itself; a crash (``crash``) keeps a random prefix of the pending writes,
as a page cache flushed part-way would, and loses the rest.

A crash in the middle of a write is ``tear``: a random prefix of its entries reaches the
disk, with or without its hard state. The kernel may rely only on writes that completed
(it sends nothing that depends on a write before the write returns), so whatever a torn
write left must be safe to restart from.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from framework.core import ConfState, Entry, HardState, Snapshot
from framework.storage import MemoryLogStore
from framework.storage.base import StoredState

__all__ = ["SimDisk"]


@dataclass(frozen=True, slots=True)
class _Write:
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None


class SimDisk:
    def __init__(self) -> None:
        self._stable = MemoryLogStore()
        self._pending: list[_Write] = []
        self.lost_writes = 0
        """Unsynced writes lost to crashes (for the run's summary)."""

    def initialize(self, *, node_id: int, cluster_id: str, conf_state: ConfState) -> None:
        self._stable.initialize(node_id=node_id, cluster_id=cluster_id, conf_state=conf_state)

    def load(self) -> StoredState | None:
        self._flush()  # a running node reads what it wrote; only a crash loses writes
        return self._stable.load()

    def save_ready(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        self._pending.append(_Write(hard_state, tuple(entries), snapshot))
        if sync:
            self._flush()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        # A runtime writes a snapshot file, fsyncs and renames it: durable at once. What
        # it covers was applied, hence committed, hence in synced writes already.
        self._flush()
        self._stable.save_snapshot(snapshot)

    def _flush(self) -> None:
        for write in self._pending:
            self._write(write)
        self._pending.clear()

    def _write(self, write: _Write) -> None:
        self._stable.save_ready(
            hard_state=write.hard_state,
            entries=write.entries,
            snapshot=write.snapshot,
            sync=True,
        )

    def crash(self, rng: random.Random) -> None:
        """Power loss: a random prefix of the unsynced writes survives."""
        keep = rng.randint(0, len(self._pending))
        self.lost_writes += len(self._pending) - keep
        for write in self._pending[:keep]:
            self._write(write)
        self._pending.clear()

    def tear(
        self,
        rng: random.Random,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """Power loss during this write: the unsynced writes before it are lost or kept as
        by ``crash``, then a prefix of its entries lands, and its hard state maybe if they
        all did; a snapshot is written whole or not at all (temporary file, rename)."""
        self.crash(rng)
        if snapshot is not None:
            if rng.random() < 0.5:
                self._write(_Write(None, (), snapshot))
            return
        kept = tuple(entries[: rng.randint(0, len(entries))])
        if kept:
            self._write(_Write(None, kept, None))
        # Records land in order (a write-ahead log): the hard state, written last, only
        # if every entry before it did.
        if hard_state is not None and len(kept) == len(entries) and rng.random() < 0.5:
            self._write(_Write(hard_state, (), None))
