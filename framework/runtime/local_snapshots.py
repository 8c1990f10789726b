"""``LocalSnapshots``: this node's own snapshots, taken without holding the Ready loop.

Theory of operation
-------------------
A snapshot used to serialise the whole state machine in one call (a worker thread, but the
encoder holds the GIL, so the event loop stopped with it: ~80 ms at 200,000 keys, seconds
at 1,000,000) and then copy the result twice more on the loop. Any pause longer than an
election timeout cost a leader its leadership (issue #13). Now a snapshot goes in steps:

1. **Capture** (on the loop, between two Readies): the kernel's ``snapshot_point()`` (the
   applied index, its term, the membership), the member addresses and flag state, and the
   state machine's ``snapshot_chunks()`` iterator, if the application offers one (the KV
   application does: it freezes its state by copy-on-write of keys, O(sessions), not
   O(keys)); an application without it is encoded whole by ``snapshot()``.
2. **Encode** (a task of the node): one chunk of keys at a time, yielding to the loop after
   each, while the node keeps applying (its writes go to the state machine's overlay). The
   pieces are joined once in a worker thread (``bytes.join`` releases the GIL).
3. **Compact** (on the loop, between two Readies): ``kernel.compact(data, at=point,
   trailing=...)``, unless a snapshot from the leader covered the point meanwhile.
4. **Write** (a worker thread, beside the Ready loop): ``store.prepare_snapshot``.
5. **Record** (on the loop, between two Readies): ``store.commit_snapshot`` with
   ``compact_to`` (trailing entries stay in the store, as in the kernel).
6. **Prune** (a task of the node): a store that offers ``prune`` (SQLite does) records the
   snapshot alone in step 5 (``compact_to=0``), and the entries up to ``compact_to`` are
   deleted a batch of ``PRUNE_BATCH`` at a time, each batch a call in the store's thread,
   between the Ready loop's stores. Deleting 100,000 entries in the recording's transaction
   took 45 ms on a quiet machine and over 100 ms under load, and the Ready loop waited for
   all of it (its stores, its heartbeats' answers, every client's write); a batch takes a
   millisecond or two. A crash before the last batch leaves more trailing entries than
   asked for, which the next snapshot's pruning deletes.

Until step 5, the store keeps every entry: a crash loses nothing; only the Ready loop ever
writes to the log. One snapshot at a time. Every call to the store here (recording and
pruning) goes through the store's thread when the node has one (``start``), so none runs
beside a Ready's store on the same connection.

**To a file** (over a transport that streams snapshots from the store: ``use_snapshot_source``,
with a data directory): the pieces are not joined. Steps 2 and 4 become one: the pieces are
written to a file in ``snapshots-incoming`` as they are encoded (a worker thread, a few MiB
at a time; format version 2, ``node_snapshot_head``), hashed as they go, and the store
adopts the file (``prepare_snapshot_file``); then, between two Readies, the kernel compacts
with the snapshot *without its data* (``compact(b"", ...)``: the transport streams it from
the store's file) and the store records it. So neither the encoding nor the kernel holds
the snapshot whole.

Why not fork (Redis BGSAVE, PySyncObj)? Measured on this VM: ``fork()`` of a process holding
100,000 keys took 54 ms and 1,000,000 keys 172 ms (copying page tables; the parent is
stopped for all of it), above the 10 ms target and growing with the state, and a child of a
process with threads (SQLite workers) may only call async-signal-safe code in principle;
chunked encoding's pause is one chunk, whatever the state size. A state machine without
``snapshot_chunks`` is serialised by ``snapshot()`` in a worker thread as before.

What is left of the pause (issue #13, measured at 1,000,000 keys on a shared 2-core VM with
``benchmarks/bench_snapshot_pause.py``, which splits each late wake-up of the loop): the
loop's long waits during a snapshot are spent runnable, waiting for a CPU, as they are
without a snapshot; the part held by the process itself is a few ms. Not the garbage
collector: the KV map of ``str`` to ``str`` is not tracked by it (about 46,000 tracked
objects at 1,000,000 keys) and generation-2 collections were rare, so ``gc.freeze()`` or
higher thresholds would address nothing measured. Why not join and write in a thread of
lower CPU priority (a raised nice value), so the loop gets a CPU first? Tried and measured
worse (the part held by the process went from a median of 3.4 ms to 29.7 ms at 1,000,000
keys): that thread also takes the GIL (to start and end each call), and when the scheduler
leaves it waiting while it holds the GIL, the loop waits for both (priority inversion).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from framework.core import RawNode, Snapshot, SnapshotMeta
from framework.runtime.snapshots import SPOOL_DIR, node_snapshot_head, node_snapshot_parts
from framework.runtime.store_thread import StoreThread
from framework.storage import LogStore, SnapshotFile

__all__ = ["LocalSnapshots"]

log = logging.getLogger("raftmw.snapshots")


@dataclass(frozen=True, slots=True)
class _Encoded:
    point: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class _Written:
    token: object
    compact_to: int


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A snapshot written to a file the store adopted, to compact and record."""

    point: SnapshotMeta
    token: object


PRUNE_BATCH: Final = 2000
"""Entries one ``prune`` call deletes (step 6): about 0.5 ms of SQLite on the development
machine, so a Ready's store waits at most that long behind one."""
LOCAL_SUFFIX: Final = ".snapshot-local"
WRITE_BATCH: Final = 4 * 1024 * 1024
"""Bytes of encoded pieces handed to the writing thread at a time."""


class _LocalFile:
    """A local snapshot's file while it is written (each call in a worker thread)."""

    def __init__(self, directory: Path, *, sweep: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if sweep:  # the first in this process: files a crash left half-written go
            for stale in directory.glob(f"*{LOCAL_SUFFIX}"):
                stale.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(suffix=LOCAL_SUFFIX, dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.path = Path(name)
        self.size = 0

    def write(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._digest.update(piece)
            self._file.write(piece)
            self.size += len(piece)

    def finish(self) -> SnapshotFile:
        self._file.close()
        return SnapshotFile(path=self.path, size=self.size, sha256=self._digest.hexdigest())

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


class LocalSnapshots:
    def __init__(
        self,
        *,
        node_id: int,
        store: LogStore,
        state_machine: object,
        threshold: int,
        trailing: int,
        wake: Callable[[], None],
    ) -> None:
        self.node_id = node_id
        self._store = store
        self._sm = state_machine
        self._threshold = threshold
        self._trailing = trailing
        self._wake = wake
        self._tg: TaskGroup | None = None
        self._busy = False
        """A snapshot is being encoded, written or waits to be compacted or recorded."""
        self._encoded: _Encoded | None = None
        self._written: _Written | None = None
        self._prepared: _Prepared | None = None
        self._directory: Path | None = None
        """Where snapshots are written as they are encoded (None: joined in memory)."""
        self._swept = False
        self._thread: StoreThread | None = None
        self._prune_to = 0
        """The newest ``compact_to`` whose entries are still to delete (step 6)."""
        self._pruning = False
        self.taken = 0
        """Snapshots recorded in the store."""

    def start(
        self,
        tg: TaskGroup,
        transport: object = None,
        data_dir: Path | None = None,
        store_thread: StoreThread | None = None,
    ) -> None:
        """Take snapshots in tasks of ``tg``; to files in ``data_dir`` when ``transport``
        streams snapshots from the store's file (``use_snapshot_source``); record and prune
        through ``store_thread``, the thread the node's Readies are stored in."""
        self._tg = tg
        self._thread = store_thread
        use_source = getattr(transport, "use_snapshot_source", None)
        open_snapshot = getattr(self._store, "open_snapshot", None)
        if data_dir is None or use_source is None or open_snapshot is None:
            return
        if use_source(open_snapshot):
            self._directory = data_dir / SPOOL_DIR

    def due(self, kernel: RawNode) -> bool:
        """Whether to start one now (enough applied entries past the last, none under way)."""
        threshold = self._threshold
        if self._busy or threshold <= 0:
            return False
        return kernel.log.applied - kernel.snapshot.meta.index >= threshold

    async def begin(self, kernel: RawNode, *, members: dict[int, str], flags: bytes) -> None:
        """Step 1, between two Readies (after ``advance``, so the state machine and the
        kernel agree on the applied index). A state machine without ``snapshot_chunks`` is
        serialised here, in a worker thread, while the Ready loop waits (nothing may apply
        meanwhile)."""
        assert self._tg is not None, "LocalSnapshots.start() first"
        point = kernel.snapshot_point()
        chunks = getattr(self._sm, "snapshot_chunks", None)
        self._busy = True
        if chunks is None:
            state = await anyio.to_thread.run_sync(self._sm.snapshot)  # type: ignore[attr-defined]
            pieces: Iterator[bytes] = iter([state])
        else:
            pieces = chunks()
        if self._directory is not None:
            head = node_snapshot_head(members=members, flags=flags)
            self._tg.start_soon(self._write_file, self._directory, point, head, pieces)
        else:
            self._tg.start_soon(self._encode_chunks, point, members, flags, pieces)

    @property
    def idle(self) -> bool:
        """No snapshot under way and no entries left to delete."""
        return not self._busy and not self._pruning

    @property
    def pending(self) -> bool:
        """Whether the Ready loop has a step to take (``step``) between two Readies."""
        return self._encoded is not None or self._written is not None or self._prepared is not None

    async def step(self, kernel: RawNode) -> None:
        """Steps 3 and 5, between two Readies."""
        if self._prepared is not None:
            prepared, self._prepared = self._prepared, None
            compact_to = None
            if prepared.point.index > kernel.snapshot.meta.index:
                kernel.compact(b"", at=prepared.point, trailing=self._trailing)
                compact_to = kernel.log.offset
            # Covered by a snapshot from the leader meanwhile: the store discards it (or
            # records it until the leader's, stored next, replaces it).
            await self._record(prepared.token, compact_to)
            self._busy = False
            if compact_to is not None:
                self.taken += 1
                log.info("node %d took a snapshot", self.node_id)
        if self._encoded is not None:
            encoded, self._encoded = self._encoded, None
            if encoded.point.index <= kernel.snapshot.meta.index:
                # A snapshot from the leader covered it meanwhile: nothing left to do.
                self._busy = False
                return
            snapshot = kernel.compact(encoded.data, at=encoded.point, trailing=self._trailing)
            assert self._tg is not None
            self._tg.start_soon(self._write, snapshot, kernel.log.offset)
        if self._written is not None:
            written, self._written = self._written, None
            await self._record(written.token, written.compact_to)
            self._busy = False
            self.taken += 1
            log.info("node %d took a snapshot", self.node_id)

    async def _record(self, token: object, compact_to: int | None) -> None:
        """Step 5, and step 6 started: with a store that prunes, the entries up to
        ``compact_to`` go later, a batch at a time, in a task of the node."""
        thread = self._thread
        prune = None if thread is None else getattr(self._store, "prune", None)
        later = prune is not None and bool(compact_to)
        record = partial(self._store.commit_snapshot, token, compact_to=0 if later else compact_to)
        await (anyio.to_thread.run_sync(record) if thread is None else thread.call(record))
        if prune is None or not later:
            return
        assert compact_to is not None
        self._prune_to = max(self._prune_to, compact_to)
        if not self._pruning:
            assert self._tg is not None
            self._pruning = True
            self._tg.start_soon(self._prune, prune)

    async def _prune(self, prune: Callable[..., bool]) -> None:
        """Step 6: delete the entries up to ``_prune_to``, one batch per store call, until
        none is left (a snapshot recorded meanwhile raises ``_prune_to``)."""
        assert self._thread is not None
        try:
            while True:
                upto = self._prune_to
                done = await self._thread.call(partial(prune, upto, limit=PRUNE_BATCH))
                if done and upto == self._prune_to:
                    return
        finally:
            self._pruning = False

    async def _encode_chunks(
        self, point: SnapshotMeta, members: dict[int, str], flags: bytes, chunks: Iterator[bytes]
    ) -> None:
        parts: list[bytes] = []
        try:
            for part in chunks:  # one chunk of keys per turn of the event loop
                parts.append(part)
                await anyio.lowlevel.checkpoint()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # folds the overlay back in, also when cancelled
        await self._join(point, members, flags, parts)

    async def _write_file(
        self, directory: Path, point: SnapshotMeta, head: bytes, chunks: Iterator[bytes]
    ) -> None:
        """Steps 2 and 4 to a file: write the pieces as they are encoded, a batch at a time
        (a worker thread), then have the store adopt the file."""
        file = await anyio.to_thread.run_sync(partial(_LocalFile, directory, sweep=not self._swept))
        self._swept = True
        try:
            batch, size = [head], len(head)
            try:
                for part in chunks:  # one chunk of keys per turn of the event loop
                    batch.append(part)
                    size += len(part)
                    if size >= WRITE_BATCH:
                        await anyio.to_thread.run_sync(file.write, batch)
                        batch, size = [], 0
                    else:
                        await anyio.lowlevel.checkpoint()
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # folds the overlay back in, also when cancelled
            await anyio.to_thread.run_sync(file.write, batch)
            written = await anyio.to_thread.run_sync(file.finish)
            token = await anyio.to_thread.run_sync(
                self._store.prepare_snapshot_file, point, written
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(file.discard)
            raise
        self._prepared = _Prepared(point, token)
        self._wake()

    async def _join(
        self, point: SnapshotMeta, members: dict[int, str], flags: bytes, parts: list[bytes]
    ) -> None:
        pieces = node_snapshot_parts(members=members, flags=flags, state_machine=parts)
        data = await anyio.to_thread.run_sync(b"".join, pieces)
        self._encoded = _Encoded(point, data)
        self._wake()

    async def _write(self, snapshot: Snapshot, compact_to: int) -> None:
        token = await anyio.to_thread.run_sync(self._store.prepare_snapshot, snapshot)
        self._written = _Written(token, compact_to)
        self._wake()
