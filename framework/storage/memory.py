"""``MemoryLogStore``: a ``LogStore`` that keeps everything in process memory.

Used by the simulator and tests, where "durable" means "survives a simulated crash": the
simulator throws away the kernel and keeps the store. It copies what it is given so a
caller cannot alter stored state afterwards.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import IO

from framework.core import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from framework.storage.base import (
    SnapshotFile,
    StorageError,
    StoredState,
    check_compact_to,
    check_storable,
)

__all__ = ["MemoryLogStore"]


class MemoryLogStore:
    def __init__(self) -> None:
        self._identity: tuple[int, str, ConfState] | None = None
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = []
        self.syncs = 0
        """How many ``save_ready`` calls asked for a sync (for tests)."""

    def initialize(self, *, node_id: int, cluster_id: str, conf_state: ConfState) -> None:
        if self._identity is not None:
            if self._identity[:2] != (node_id, cluster_id):
                raise StorageError(
                    f"memory store belongs to node {self._identity[0]} of cluster "
                    f"{self._identity[1]!r}, not node {node_id} of {cluster_id!r}"
                )
            return
        self._identity = (node_id, cluster_id, conf_state)

    def load(self) -> StoredState | None:
        if self._identity is None:
            return None
        node_id, cluster_id, conf_state = self._identity
        return StoredState(
            node_id=node_id,
            cluster_id=cluster_id,
            conf_state=conf_state,
            hard_state=self._hard_state,
            snapshot=self._snapshot,
            entries=tuple(self._entries),
        )

    def save_ready(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
        snapshot_file: SnapshotFile | None = None,
    ) -> None:
        if snapshot is not None and snapshot_file is not None:
            snapshot = Snapshot(meta=snapshot.meta, data=_take(snapshot_file))
        # Check everything before changing anything: a refused Ready stores nothing.
        check_storable(hard_state, entries, snapshot)
        snap = snapshot if snapshot is not None else self._snapshot
        stored = [] if snapshot is not None else self._entries
        offset = snap.meta.index
        if entries:
            first = entries[0].index
            if first <= offset:
                raise StorageError(f"entries from index {first} overlap the snapshot at {offset}")
            last_stored = stored[-1].index if stored else offset
            if first > last_stored + 1:
                raise StorageError(
                    f"entries from index {first} leave a gap after stored index {last_stored}"
                )
        if snapshot is not None:
            self._snapshot = snapshot
            self._entries = []
        if entries:
            if self._entries:
                del self._entries[entries[0].index - self._entries[0].index :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        if sync:
            self.syncs += 1

    def prepare_snapshot(self, snapshot: Snapshot) -> Snapshot:
        return snapshot  # nothing to write: memory holds it already

    def prepare_snapshot_file(self, meta: SnapshotMeta, file: SnapshotFile) -> Snapshot:
        return Snapshot(meta=meta, data=_take(file))

    def open_snapshot(self, meta: SnapshotMeta) -> IO[bytes] | None:
        stored = self._snapshot.meta
        if (stored.index, stored.term) != (meta.index, meta.term):
            return None
        return io.BytesIO(self._snapshot.data)

    def commit_snapshot(self, prepared: object, *, compact_to: int | None = None) -> None:
        assert isinstance(prepared, Snapshot)
        self.save_snapshot(prepared, compact_to=compact_to)

    def save_snapshot(self, snapshot: Snapshot, *, compact_to: int | None = None) -> None:
        index = snapshot.meta.index
        if index <= self._snapshot.meta.index:
            return
        drop_to = check_compact_to(index, compact_to)
        self._entries = [e for e in self._entries if e.index > drop_to]
        self._snapshot = snapshot

    def close(self) -> None:
        pass


def _take(file: SnapshotFile) -> bytes:
    """The bytes of ``file``, which is deleted (memory holds them now)."""
    try:
        data = file.path.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read snapshot file {file.path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            file.path.unlink(missing_ok=True)
    if len(data) != file.size:
        raise StorageError(
            f"snapshot file {file.path} holds {len(data)} bytes; expected {file.size}"
        )
    return data
