"""Write to a ``SQLiteLogStore`` until killed; the crash tests in test_sqlite_store.py run it.

    python sqlite_crash_writer.py DATA_DIR entries|snapshots SEED

After each call returns it prints one line and flushes: what that line names is
acknowledged, so it must survive the SIGKILL that the test sends at a random moment.

- ``entries``: Readys of 1-5 entries plus a hard state; prints ``e <last index>``.
- ``snapshots``: 5 entries (``e <last index>``), then a local snapshot of up to 512 KiB
  at ``last - 2`` (``s <index>``), so kills also land while a snapshot file is written.
- ``pruned``: 5 entries (``e <last index>``); every 40 entries a snapshot at ``last - 2``
  recorded alone (``commit_snapshot(..., compact_to=0)``, ``s <index>``), then its entries
  but the last 5 before it deleted 7 at a time (``prune``), as a node does, so kills land
  between and inside the batches.

Everything written is a pure function of the index (below), so the test can tell what the
store must hold without being told.
"""

from __future__ import annotations

import random
import sys

from framework.core import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from framework.storage.sqlite import SQLiteLogStore

NODE_ID = 1
CLUSTER_ID = "crash-test"
CONF_STATE = ConfState(voters=(1, 2, 3))


def term_of(index: int) -> int:
    return 1 + index // 40


def entry_at(index: int) -> Entry:
    data = (f"entry {index} ".encode() * 10)[:100]
    return Entry(term=term_of(index), index=index, kind=EntryKind.NORMAL, data=data)


def hard_state_for(last_index: int) -> HardState:
    """The hard state saved with the Ready whose last entry is ``last_index``."""
    return HardState(term=term_of(last_index), vote=NODE_ID, commit=max(0, last_index - 3))


def snapshot_at(index: int) -> Snapshot:
    size = (index * 7919) % (512 * 1024)
    data = (f"snapshot {index} ".encode() * (size // 10 + 1))[:size]
    return Snapshot(
        meta=SnapshotMeta(index=index, term=term_of(index), conf_state=CONF_STATE), data=data
    )


def main(data_dir: str, mode: str, seed: int) -> None:
    rng = random.Random(seed)
    store = SQLiteLogStore(data_dir, sync="always")
    store.initialize(node_id=NODE_ID, cluster_id=CLUSTER_ID, conf_state=CONF_STATE)
    last = 0
    while True:
        count = 5 if mode == "snapshots" else rng.randint(1, 5)
        entries = [entry_at(index) for index in range(last + 1, last + count + 1)]
        last += count
        store.save_ready(hard_state=hard_state_for(last), entries=entries, snapshot=None, sync=True)
        print(f"e {last}", flush=True)
        if mode == "snapshots":
            store.save_snapshot(snapshot_at(last - 2))
            print(f"s {last - 2}", flush=True)
        elif mode == "pruned" and last % 40 == 0:
            index = last - 2
            store.commit_snapshot(store.prepare_snapshot(snapshot_at(index)), compact_to=0)
            print(f"s {index}", flush=True)
            while not store.prune(index - 5, limit=7):
                pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
