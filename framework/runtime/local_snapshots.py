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

Until step 5, the store keeps every entry: a crash loses nothing; only the Ready loop ever
writes to the log. One snapshot at a time.

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

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from framework.core import RawNode, Snapshot, SnapshotMeta
from framework.runtime.snapshots import node_snapshot_parts
from framework.storage import LogStore

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
        self.taken = 0
        """Snapshots recorded in the store."""

    def start(self, tg: TaskGroup) -> None:
        self._tg = tg

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
            self._tg.start_soon(self._join, point, members, flags, [state])
        else:
            self._tg.start_soon(self._encode_chunks, point, members, flags, chunks())

    @property
    def pending(self) -> bool:
        """Whether the Ready loop has a step to take (``step``) between two Readies."""
        return self._encoded is not None or self._written is not None

    async def step(self, kernel: RawNode) -> None:
        """Steps 3 and 5, between two Readies."""
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
            await anyio.to_thread.run_sync(
                partial(self._store.commit_snapshot, written.token, compact_to=written.compact_to)
            )
            self._busy = False
            self.taken += 1
            log.info("node %d took a snapshot", self.node_id)

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
