"""The ``LogStore`` contract: every implementation passes every test here.

Each test is one sentence of a docstring in ``framework/storage/base.py``, quoted in the
test's docstring. ``reopen()`` closes and reopens a durable store (for the memory store the
object itself is the "disk", so it is a no-op), and most tests look at the state both
before and after it, so a store that keeps something only in memory fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.core import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from framework.storage import (
    LogStore,
    MemoryLogStore,
    SnapshotFile,
    StorageError,
    StoredState,
)
from framework.storage.sqlite import SQLiteLogStore

VOTERS = ConfState(voters=(1, 2, 3))


class StoreUnderTest:
    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._dir = tmp_path / "node"
        self.store: LogStore = self._open()

    def _open(self) -> LogStore:
        if self.kind == "memory":
            return MemoryLogStore()
        return SQLiteLogStore(self._dir)

    def reopen(self) -> None:
        if self.kind != "memory":
            self.store.close()
            self.store = self._open()

    def load(self) -> StoredState:
        state = self.store.load()
        assert state is not None
        return state

    def load_after_reopen(self) -> StoredState:
        """Load, reopen, load again: both must agree (the state is durable)."""
        before = self.load()
        self.reopen()
        after = self.load()
        assert after == before
        return after


@pytest.fixture(params=["memory", "sqlite"])
def sut(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    under_test = StoreUnderTest(request.param, tmp_path)
    yield under_test
    under_test.store.close()


@pytest.fixture
def initialized(sut: StoreUnderTest) -> StoreUnderTest:
    sut.store.initialize(node_id=1, cluster_id="c1", conf_state=VOTERS)
    return sut


def entries(first: int, last: int, term: int = 1, tag: str = "") -> list[Entry]:
    return [
        Entry(term=term, index=i, kind=EntryKind.NORMAL, data=f"{tag}{term}/{i}".encode())
        for i in range(first, last + 1)
    ]


def snapshot(
    index: int, term: int, data: bytes = b"state", voters: tuple[int, ...] = (1, 2, 3)
) -> Snapshot:
    return Snapshot(
        meta=SnapshotMeta(index=index, term=term, conf_state=ConfState(voters=voters)), data=data
    )


def append(store: LogStore, new: list[Entry], commit: int | None = None) -> None:
    hard_state = None if commit is None else HardState(term=new[-1].term, vote=1, commit=commit)
    store.save_ready(hard_state=hard_state, entries=new, snapshot=None, sync=True)


# --------------------------------------------------------------------------------------------
# initialize / load
# --------------------------------------------------------------------------------------------


def test_load_returns_none_for_a_store_never_initialized(sut: StoreUnderTest) -> None:
    """load: "None for a store never initialized"."""
    assert sut.store.load() is None
    sut.reopen()
    assert sut.store.load() is None


def test_initialize_stamps_identity_and_bootstrap_membership(sut: StoreUnderTest) -> None:
    """initialize: "Stamp a new, empty store with its identity and bootstrap membership"."""
    sut.store.initialize(node_id=7, cluster_id="prod", conf_state=VOTERS)
    assert sut.load_after_reopen() == StoredState(node_id=7, cluster_id="prod", conf_state=VOTERS)


def test_initialize_with_the_same_identity_leaves_the_store_untouched(
    initialized: StoreUnderTest,
) -> None:
    """initialize: "a store that is already stamped with the same identity is left untouched"."""
    append(initialized.store, entries(1, 3), commit=2)
    before = initialized.load()
    initialized.reopen()
    initialized.store.initialize(
        node_id=1, cluster_id="c1", conf_state=ConfState(voters=(1, 2, 3, 4, 5))
    )
    assert initialized.load_after_reopen() == before


@pytest.mark.parametrize(
    ("node_id", "cluster_id"), [(2, "c1"), (1, "c2"), (2, "c2")], ids=["node", "cluster", "both"]
)
def test_initialize_with_another_identity_raises(
    initialized: StoreUnderTest, node_id: int, cluster_id: str
) -> None:
    """initialize: "Raises StorageError if the store already belongs to a node"."""
    append(initialized.store, entries(1, 2))
    before = initialized.load()
    with pytest.raises(StorageError):
        initialized.store.initialize(node_id=node_id, cluster_id=cluster_id, conf_state=VOTERS)
    assert initialized.load_after_reopen() == before


# --------------------------------------------------------------------------------------------
# save_ready
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [True, False])
def test_save_ready_stores_entries_and_hard_state(initialized: StoreUnderTest, sync: bool) -> None:
    """save_ready: "Apply one Ready" (with or without sync, both outlive the process)."""
    hard_state = HardState(term=2, vote=3, commit=1)
    initialized.store.save_ready(
        hard_state=hard_state, entries=entries(1, 3, term=2), snapshot=None, sync=sync
    )
    state = initialized.load_after_reopen()
    assert state.hard_state == hard_state
    assert state.entries == tuple(entries(1, 3, term=2))
    assert state.snapshot == Snapshot()


def test_save_ready_without_hard_state_keeps_the_stored_one(initialized: StoreUnderTest) -> None:
    append(initialized.store, entries(1, 2), commit=1)
    append(initialized.store, entries(3, 4))
    state = initialized.load_after_reopen()
    assert state.hard_state == HardState(term=1, vote=1, commit=1)
    assert state.entries == tuple(entries(1, 4))


def test_save_ready_with_only_a_hard_state_keeps_the_entries(initialized: StoreUnderTest) -> None:
    append(initialized.store, entries(1, 3))
    initialized.store.save_ready(
        hard_state=HardState(term=5, vote=2, commit=3), entries=[], snapshot=None, sync=True
    )
    state = initialized.load_after_reopen()
    assert state.hard_state == HardState(term=5, vote=2, commit=3)
    assert state.entries == tuple(entries(1, 3))


def test_an_empty_ready_changes_nothing(initialized: StoreUnderTest) -> None:
    append(initialized.store, entries(1, 3), commit=1)
    before = initialized.load()
    initialized.store.save_ready(hard_state=None, entries=[], snapshot=None, sync=True)
    assert initialized.load_after_reopen() == before


@pytest.mark.parametrize("first", [1, 2, 4, 5], ids=lambda f: f"from-{f}")
def test_entries_replace_stored_entries_from_their_first_index_on(
    initialized: StoreUnderTest, first: int
) -> None:
    """save_ready: "entries replace any stored entries from entries[0].index on".

    Stored entries after the new ones are dropped too (they conflicted, §5.3).
    """
    append(initialized.store, entries(1, 5, term=1))
    append(initialized.store, entries(first, first, term=2, tag="new"))
    state = initialized.load_after_reopen()
    assert state.entries == tuple(entries(1, first - 1) + entries(first, first, 2, "new"))


def test_entries_may_start_right_after_the_last_stored_entry(initialized: StoreUnderTest) -> None:
    append(initialized.store, entries(1, 2))
    append(initialized.store, entries(3, 3, term=2))
    assert initialized.load_after_reopen().entries == tuple(entries(1, 2) + entries(3, 3, 2))


def test_entries_leaving_a_gap_are_refused_and_nothing_is_stored(
    initialized: StoreUnderTest,
) -> None:
    """save_ready: "all of it is stored or none of it"."""
    append(initialized.store, entries(1, 3), commit=1)
    before = initialized.load()
    with pytest.raises(StorageError):
        initialized.store.save_ready(
            hard_state=HardState(term=9, vote=9, commit=2),
            entries=entries(5, 6),
            snapshot=None,
            sync=True,
        )
    assert initialized.load_after_reopen() == before


def test_entries_overlapping_the_snapshot_are_refused_and_nothing_is_stored(
    initialized: StoreUnderTest,
) -> None:
    append(initialized.store, entries(1, 6), commit=5)
    initialized.store.save_snapshot(snapshot(4, 1))
    before = initialized.load()
    with pytest.raises(StorageError):
        initialized.store.save_ready(
            hard_state=HardState(term=9, vote=9, commit=5),
            entries=entries(4, 7, term=2),
            snapshot=None,
            sync=True,
        )
    assert initialized.load_after_reopen() == before


def test_a_received_snapshot_replaces_the_whole_log(initialized: StoreUnderTest) -> None:
    """save_ready: "snapshot (received from the leader) replaces the whole log"."""
    append(initialized.store, entries(1, 10), commit=3)
    received = snapshot(7, 3, data=b"leader state", voters=(1, 2, 3, 4))
    initialized.store.save_ready(
        hard_state=HardState(term=3, vote=0, commit=7), entries=[], snapshot=received, sync=True
    )
    state = initialized.load_after_reopen()
    assert state.snapshot == received
    assert state.entries == ()
    assert state.hard_state == HardState(term=3, vote=0, commit=7)


def test_a_received_snapshot_may_come_with_the_entries_after_it(
    initialized: StoreUnderTest,
) -> None:
    append(initialized.store, entries(1, 4))
    initialized.store.save_ready(
        hard_state=HardState(term=3, vote=0, commit=9),
        entries=entries(9, 12, term=3),
        snapshot=snapshot(8, 3),
        sync=True,
    )
    state = initialized.load_after_reopen()
    assert state.snapshot == snapshot(8, 3)
    assert state.entries == tuple(entries(9, 12, term=3))


def test_a_ready_with_a_snapshot_and_refused_entries_stores_nothing(
    initialized: StoreUnderTest,
) -> None:
    """save_ready: "all of it is stored or none of it", snapshot included."""
    append(initialized.store, entries(1, 4), commit=2)
    before = initialized.load()
    with pytest.raises(StorageError):
        initialized.store.save_ready(
            hard_state=None, entries=entries(12, 13, term=3), snapshot=snapshot(8, 3), sync=True
        )
    assert initialized.load_after_reopen() == before


def test_the_caller_cannot_alter_stored_entries_afterwards(initialized: StoreUnderTest) -> None:
    batch = entries(1, 3)
    append(initialized.store, batch)
    batch.clear()
    batch.extend(entries(1, 1, term=9))
    assert initialized.load_after_reopen().entries == tuple(entries(1, 3))


def test_entry_kinds_and_binary_data_round_trip(initialized: StoreUnderTest) -> None:
    batch = [
        Entry(term=1, index=1, kind=EntryKind.NOOP, data=b""),
        Entry(term=1, index=2, kind=EntryKind.CONF_CHANGE, data=bytes(range(256))),
        Entry(term=1, index=3, kind=EntryKind.FLAGS, data=b"\x00" * 10),
        Entry(term=2, index=4, kind=EntryKind.NORMAL, data=b"x" * 100_000),
    ]
    append(initialized.store, batch)
    assert initialized.load_after_reopen().entries == tuple(batch)


# --------------------------------------------------------------------------------------------
# save_snapshot
# --------------------------------------------------------------------------------------------


def test_save_snapshot_drops_the_entries_it_covers(initialized: StoreUnderTest) -> None:
    """save_snapshot: "Store a locally taken snapshot, then drop the entries it covers"."""
    append(initialized.store, entries(1, 5) + entries(6, 10, term=2), commit=8)
    taken = snapshot(6, 2, data=b"applied up to 6")
    initialized.store.save_snapshot(taken)
    state = initialized.load_after_reopen()
    assert state.snapshot == taken
    assert state.entries == tuple(entries(7, 10, term=2))
    assert state.hard_state == HardState(term=2, vote=1, commit=8)


def test_save_snapshot_of_the_whole_log_leaves_no_entries(initialized: StoreUnderTest) -> None:
    append(initialized.store, entries(1, 5), commit=5)
    initialized.store.save_snapshot(snapshot(5, 1))
    assert initialized.load().entries == ()
    append(initialized.store, entries(6, 7, term=2))
    state = initialized.load_after_reopen()
    assert state.snapshot == snapshot(5, 1)
    assert state.entries == tuple(entries(6, 7, term=2))


@pytest.mark.parametrize("index", [3, 4])
def test_save_snapshot_not_newer_than_the_stored_one_changes_nothing(
    initialized: StoreUnderTest, index: int
) -> None:
    append(initialized.store, entries(1, 8), commit=6)
    initialized.store.save_snapshot(snapshot(4, 1, data=b"first"))
    before = initialized.load()
    initialized.store.save_snapshot(snapshot(index, 1, data=b"stale"))
    assert initialized.load_after_reopen() == before


def test_successive_snapshots_keep_only_the_latest(initialized: StoreUnderTest) -> None:
    append(initialized.store, entries(1, 20), commit=20)
    for index in (5, 10, 15):
        initialized.store.save_snapshot(snapshot(index, 1, data=f"at {index}".encode()))
    state = initialized.load_after_reopen()
    assert state.snapshot == snapshot(15, 1, data=b"at 15")
    assert state.entries == tuple(entries(16, 20))


def test_a_received_snapshot_then_a_local_one(initialized: StoreUnderTest) -> None:
    initialized.store.save_ready(
        hard_state=HardState(term=2, vote=0, commit=10),
        entries=entries(11, 15, term=2),
        snapshot=snapshot(10, 2, data=b"received"),
        sync=True,
    )
    initialized.store.save_snapshot(snapshot(13, 2, data=b"local"))
    state = initialized.load_after_reopen()
    assert state.snapshot == snapshot(13, 2, data=b"local")
    assert state.entries == tuple(entries(14, 15, term=2))


# --------------------------------------------------------------------------------------------
# numbers no store can keep
# --------------------------------------------------------------------------------------------

TOO_LARGE = 2**63
"""One past a signed 64-bit SQLite INTEGER (the term that used to raise OverflowError
inside ``save_ready``'s transaction)."""


@pytest.mark.parametrize(
    ("ready", "named"),
    [
        ({"hard_state": HardState(term=TOO_LARGE, vote=1, commit=3)}, "hard state term"),
        ({"hard_state": HardState(term=2, vote=TOO_LARGE, commit=3)}, "hard state vote"),
        ({"entries": [Entry(term=TOO_LARGE, index=4)]}, "entry term"),
        ({"snapshot": snapshot(TOO_LARGE, 1)}, "snapshot index"),
    ],
)
def test_a_number_no_store_can_keep_is_refused_before_anything_is_written(
    initialized: StoreUnderTest, ready: dict[str, object], named: str
) -> None:
    append(initialized.store, entries(1, 3), commit=3)
    before = initialized.load()
    arguments: dict[str, object] = {"hard_state": None, "entries": [], "snapshot": None}
    arguments.update(ready)
    with pytest.raises(StorageError, match=f"refusing to store {named} {TOO_LARGE}"):
        initialized.store.save_ready(sync=True, **arguments)  # type: ignore[arg-type]
    assert initialized.load_after_reopen() == before


# --------------------------------------------------------------------------------------------
# trailing entries (compact_to, issue #13)
# --------------------------------------------------------------------------------------------


def test_a_snapshot_may_keep_trailing_entries_before_its_index(initialized: StoreUnderTest) -> None:
    """save_snapshot/commit_snapshot: entries are dropped only up to ``compact_to``; ``load``
    returns the rest, from before the snapshot's index on."""
    append(initialized.store, entries(1, 5) + entries(6, 12, term=2), commit=12)
    taken = snapshot(10, 2)
    initialized.store.commit_snapshot(initialized.store.prepare_snapshot(taken), compact_to=7)
    state = initialized.load_after_reopen()
    assert state.snapshot == taken
    assert state.entries == tuple(entries(8, 12, term=2))
    append(initialized.store, entries(13, 14, term=3))
    initialized.store.save_snapshot(snapshot(13, 3), compact_to=11)
    state = initialized.load_after_reopen()
    assert state.entries == tuple(entries(12, 12, term=2) + entries(13, 14, term=3))


@pytest.mark.parametrize("compact_to", [-1, 11])
def test_compact_to_outside_the_snapshot_is_refused_and_nothing_changes(
    initialized: StoreUnderTest, compact_to: int
) -> None:
    append(initialized.store, entries(1, 12), commit=12)
    before = initialized.load()
    with pytest.raises(StorageError, match=f"compact_to={compact_to}: expected 0..10"):
        initialized.store.save_snapshot(snapshot(10, 1), compact_to=compact_to)
    assert initialized.load_after_reopen() == before


# --------------------------------------------------------------------------------------------
# snapshot files (SnapshotFile, open_snapshot)
# --------------------------------------------------------------------------------------------


def spooled(tmp_path: Path, data: bytes, name: str = "in.snapshot-partial") -> SnapshotFile:
    """A snapshot's data written by the runtime, on the data directory's file system."""
    path = tmp_path / name
    path.write_bytes(data)
    return SnapshotFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def read_stored(store: LogStore, meta: SnapshotMeta) -> bytes | None:
    file = store.open_snapshot(meta)
    if file is None:
        return None
    with file:
        return file.read()


def test_a_received_snapshot_file_is_adopted_and_replaces_the_whole_log(
    initialized: StoreUnderTest, tmp_path: Path
) -> None:
    """save_ready: "its data is snapshot_file when given (snapshot.data is then empty; the
    store adopts the file ...)"."""
    append(initialized.store, entries(1, 5), commit=3)
    data = bytes(range(256)) * 100
    file = spooled(tmp_path, data)
    snap = snapshot(10, 2, data=b"")
    initialized.store.save_ready(
        hard_state=HardState(term=2, vote=0, commit=10),
        entries=[],
        snapshot=snap,
        sync=True,
        snapshot_file=file,
    )
    assert not file.path.exists()  # moved in (or read and deleted), never left behind
    state = initialized.load_after_reopen()
    assert state.snapshot == Snapshot(meta=snap.meta, data=data)
    assert state.entries == ()
    assert read_stored(initialized.store, snap.meta) == data


def test_a_snapshot_file_of_the_wrong_size_is_refused_and_nothing_is_stored(
    initialized: StoreUnderTest, tmp_path: Path
) -> None:
    """save_ready: "all of it is stored or none of it" (the file's size is checked)."""
    append(initialized.store, entries(1, 5), commit=3)
    before = initialized.load()
    good = spooled(tmp_path, b"x" * 100)
    short = SnapshotFile(path=good.path, size=101, sha256=good.sha256)
    with pytest.raises(StorageError, match="101"):
        initialized.store.save_ready(
            hard_state=None,
            entries=[],
            snapshot=snapshot(10, 2, data=b""),
            sync=True,
            snapshot_file=short,
        )
    assert not good.path.exists()
    assert initialized.load_after_reopen() == before


def test_a_local_snapshot_file_is_prepared_then_committed(
    initialized: StoreUnderTest, tmp_path: Path
) -> None:
    """prepare_snapshot_file: "prepare_snapshot for a snapshot whose data is file"."""
    append(initialized.store, entries(1, 8), commit=8)
    data = b"local state" * 1000
    meta = snapshot(6, 1).meta
    token = initialized.store.prepare_snapshot_file(meta, spooled(tmp_path, data))
    initialized.store.commit_snapshot(token, compact_to=4)
    state = initialized.load_after_reopen()
    assert state.snapshot == Snapshot(meta=meta, data=data)
    assert [e.index for e in state.entries] == [5, 6, 7, 8]
    assert read_stored(initialized.store, meta) == data


def test_open_snapshot_opens_only_the_stored_snapshot(
    initialized: StoreUnderTest, tmp_path: Path
) -> None:
    """open_snapshot: "if the stored snapshot is the one at meta's index and term; None
    otherwise"; an open file stays readable when a newer snapshot replaces it."""
    append(initialized.store, entries(1, 9), commit=9)
    assert read_stored(initialized.store, snapshot(3, 1).meta) is None  # none stored yet
    initialized.store.save_snapshot(snapshot(3, 1, data=b"three"))
    assert read_stored(initialized.store, snapshot(3, 1).meta) == b"three"
    assert read_stored(initialized.store, snapshot(3, 2).meta) is None  # another term
    assert read_stored(initialized.store, snapshot(4, 1).meta) is None
    file = initialized.store.open_snapshot(snapshot(3, 1).meta)
    assert file is not None
    with file:
        initialized.store.save_snapshot(snapshot(7, 1, data=b"seven"))
        assert file.read() == b"three"
    assert read_stored(initialized.store, snapshot(3, 1).meta) is None
    assert read_stored(initialized.store, snapshot(7, 1).meta) == b"seven"
