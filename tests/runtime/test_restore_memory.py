"""Installing a snapshot over a large state gives the replaced state's memory back.

The state replaced is freed when the new one is installed, but glibc's ``malloc`` keeps the
pages of freed large objects in its heap: a follower that installed a 1 GiB snapshot over a
1 GiB state stayed at 2.3 GiB once caught up (``benchmarks/bench_snapshot_transfer.py``,
two installs in one catch-up). ``restore_snapshot`` gives them back (``heap_trim``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from framework.core import ConfState, Snapshot, SnapshotMeta
from framework.runtime.app_identity import AppIdentity
from framework.runtime.heap_trim import trim_free_heap
from framework.runtime.snapshots import node_snapshot_head, restore_snapshot
from framework.statemachine import KVStateMachine
from framework.storage import MemoryLogStore

KEYS = 100_000
VALUE = 1024
STATE_MIB = KEYS * VALUE / 2**20


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _machine(tag: str) -> KVStateMachine:
    sm = KVStateMachine()
    sm._data.update((f"k{i}", (tag + str(i)).ljust(VALUE, "x")) for i in range(KEYS))
    return sm


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not trim_free_heap(),
    reason="needs Linux's /proc and glibc's malloc_trim",
)
def test_installing_a_snapshot_over_a_large_state_gives_the_old_states_memory_back() -> None:
    data = node_snapshot_head(members={1: "127.0.0.1:7001"}, flags=b"") + b"".join(
        _machine("new").snapshot_chunks()
    )
    snapshot = Snapshot(
        meta=SnapshotMeta(index=0, term=1, conf_state=ConfState(voters=(1,))), data=data
    )
    sm = _machine("old")
    node = SimpleNamespace(id=1, sm=sm, identity=AppIdentity(1, sm))
    trim_free_heap()
    before = _rss_mib()  # the old state and the snapshot's bytes
    restore_snapshot(snapshot, MemoryLogStore(), node=node)
    assert sm.read("k7") == "new7".ljust(VALUE, "x")
    # Without giving the pages back: about one state more than before.
    assert _rss_mib() - before < STATE_MIB / 2
