"""``SQLiteLogStore`` beyond the shared contract: files on disk, checks on write, damage on
load, the directory lock, a model test against ``MemoryLogStore``, and real SIGKILLs.

Damage is made by hand with the ``sqlite3`` module or by rewriting bytes, with the store
closed; every load test asserts the error names the file and the problem.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlite_crash_writer import entry_at, hard_state_for, snapshot_at

from framework.core import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from framework.storage import MemoryLogStore, StorageError, StoredState
from framework.storage.sqlite import SQLiteLogStore

VOTERS = ConfState(voters=(1, 2, 3))
WRITER = Path(__file__).with_name("sqlite_crash_writer.py")


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=f"{term}/{i}".encode()) for i in range(first, last + 1)]


def snapshot(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(meta=SnapshotMeta(index=index, term=term, conf_state=VOTERS), data=data)


def load_dir(path: Path, sync: str = "always", *, by_reference: bool = False) -> StoredState | None:
    """Open, load and close: what a restarting node does. Damage may raise at either step."""
    store = SQLiteLogStore(path, sync=sync)  # type: ignore[arg-type]
    try:
        return store.load_by_reference() if by_reference else store.load()
    finally:
        store.close()


def query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run SQL on a closed store's database behind its back."""
    conn = sqlite3.connect(path / "raft.db", isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "node-1"


@pytest.fixture
def store(data_dir: Path) -> Iterator[SQLiteLogStore]:
    opened = SQLiteLogStore(data_dir)
    opened.initialize(node_id=1, cluster_id="c1", conf_state=VOTERS)
    yield opened
    opened.close()


def fill(store: SQLiteLogStore, last: int = 10, commit: int = 5) -> None:
    store.save_ready(
        hard_state=HardState(term=1, vote=1, commit=commit),
        entries=entries(1, last),
        snapshot=None,
        sync=True,
    )


# --------------------------------------------------------------------------------------------
# Layout and settings
# --------------------------------------------------------------------------------------------


def test_a_fresh_directory_is_created_with_a_wal_database_and_a_snapshot_dir(
    data_dir: Path,
) -> None:
    store = SQLiteLogStore(str(data_dir))
    assert store.load() is None
    store.close()
    assert (data_dir / "raft.db").is_file()
    assert (data_dir / "snapshots").is_dir()
    assert query(data_dir, "PRAGMA journal_mode") == [("wal",)]
    tables = {row[0] for row in query(data_dir, "SELECT name FROM sqlite_master")}
    assert {"meta", "hard_state", "entries", "snapshot"} <= tables
    assert not (data_dir / "raft.db.new").exists()


# The synchronous level is not observable from outside short of pulling the power, so
# these read the connection's setting after the call.
@pytest.mark.parametrize(
    ("mode", "sync", "expected"),
    [("always", True, 2), ("always", False, 1), ("os", True, 1), ("os", False, 1)],
)
def test_sync_mode_and_call_pick_the_synchronous_level(
    data_dir: Path, mode: str, sync: bool, expected: int
) -> None:
    """2 = FULL (WAL fsynced at each commit), 1 = NORMAL (left to the OS)."""
    store = SQLiteLogStore(data_dir, sync=mode)  # type: ignore[arg-type]
    try:
        store.initialize(node_id=1, cluster_id="c1", conf_state=VOTERS)
        store.save_ready(hard_state=None, entries=entries(1, 1), snapshot=None, sync=sync)
        assert store._conn is not None
        assert store._conn.execute("PRAGMA synchronous").fetchone() == (expected,)
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["always", "os"])
def test_snapshot_transactions_are_fsynced_in_every_mode(data_dir: Path, mode: str) -> None:
    store = SQLiteLogStore(data_dir, sync=mode)  # type: ignore[arg-type]
    try:
        store.initialize(node_id=1, cluster_id="c1", conf_state=VOTERS)
        store.save_ready(hard_state=None, entries=entries(1, 3), snapshot=None, sync=False)
        store.save_snapshot(snapshot(2, 1))
        assert store._conn is not None
        assert store._conn.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        store.close()


def test_an_unknown_sync_mode_is_refused(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="'sometimes'"):
        SQLiteLogStore(data_dir, sync="sometimes")  # type: ignore[arg-type]
    assert not data_dir.exists()


def test_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "node"
    not_a_dir.write_text("x")
    with pytest.raises(StorageError, match="cannot open data directory"):
        SQLiteLogStore(not_a_dir)


# --------------------------------------------------------------------------------------------
# Identity and lifecycle
# --------------------------------------------------------------------------------------------


def test_another_identity_is_refused_naming_the_directory_and_both_ids(data_dir: Path) -> None:
    first = SQLiteLogStore(data_dir)
    first.initialize(node_id=1, cluster_id="alpha", conf_state=VOTERS)
    first.close()
    store = SQLiteLogStore(data_dir)
    try:
        with pytest.raises(StorageError) as raised:
            store.initialize(node_id=2, cluster_id="beta", conf_state=VOTERS)
    finally:
        store.close()
    message = str(raised.value)
    assert str(data_dir) in message
    assert "node 1 of cluster 'alpha'" in message
    assert "node 2 of cluster 'beta'" in message


def test_writes_before_initialize_are_refused(data_dir: Path) -> None:
    store = SQLiteLogStore(data_dir)
    try:
        with pytest.raises(StorageError, match="not initialized"):
            store.save_ready(
                hard_state=HardState(), entries=entries(1, 1), snapshot=None, sync=True
            )
        with pytest.raises(StorageError, match="not initialized"):
            store.save_snapshot(snapshot(1, 1))
        assert store.load() is None
    finally:
        store.close()


def test_a_second_store_on_the_same_directory_is_refused_until_the_first_closes(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    with pytest.raises(StorageError, match="in use"):
        SQLiteLogStore(data_dir)
    store.close()
    again = SQLiteLogStore(data_dir)
    again.close()


def test_close_is_idempotent_and_a_closed_store_refuses_calls(store: SQLiteLogStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.load()
    with pytest.raises(StorageError, match="closed"):
        store.save_ready(hard_state=HardState(), entries=[], snapshot=None, sync=True)


# --------------------------------------------------------------------------------------------
# Writes are checked: nothing load() would refuse is ever committed
# --------------------------------------------------------------------------------------------


BAD_READYS: dict[str, tuple[HardState | None, list[Entry], str]] = {
    "batch-not-contiguous": (None, [*entries(11, 12), *entries(14, 14)], "not contiguous"),
    "batch-repeats-an-index": (None, [*entries(11, 12), *entries(12, 12)], "not contiguous"),
    "term-goes-back-in-batch": (None, [*entries(11, 11, 3), *entries(12, 12, 2)], "term 2"),
    "term-below-previous-entry": (None, entries(6, 6, term=0), "term 0"),
    "commit-beyond-last": (HardState(term=1, vote=1, commit=11), [], "commit index 11"),
    "commit-beyond-new-entries": (HardState(term=1, commit=13), entries(11, 12), "index 13"),
    "truncation-below-commit": (None, entries(4, 4, term=2), "commit index 5"),
}


@pytest.mark.parametrize("case", BAD_READYS)
def test_a_ready_load_would_refuse_is_refused_and_nothing_is_stored(
    store: SQLiteLogStore, data_dir: Path, case: str
) -> None:
    hard_state, bad_entries, fragment = BAD_READYS[case]
    fill(store, last=10, commit=5)
    before = store.load()
    with pytest.raises(StorageError, match=fragment):
        store.save_ready(hard_state=hard_state, entries=bad_entries, snapshot=None, sync=True)
    assert store.load() == before
    store.close()
    assert load_dir(data_dir) == before


def test_a_local_snapshot_whose_term_differs_from_the_entry_is_refused(
    store: SQLiteLogStore,
) -> None:
    fill(store)
    before = store.load()
    with pytest.raises(StorageError, match="term 2, but the stored entry at that index has term 1"):
        store.save_snapshot(snapshot(5, 2))
    assert store.load() == before


def test_a_refused_ready_with_a_snapshot_writes_no_snapshot_file(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    fill(store)
    store.save_snapshot(snapshot(4, 1))
    with pytest.raises(StorageError, match="gap"):
        store.save_ready(
            hard_state=None, entries=entries(12, 12, 2), snapshot=snapshot(10, 2), sync=True
        )
    assert sorted(os.listdir(data_dir / "snapshots")) == ["snap-1-4.bin"]


# --------------------------------------------------------------------------------------------
# Snapshots written beside the log (prepare_snapshot, then commit_snapshot)
# --------------------------------------------------------------------------------------------


def test_a_snapshot_prepared_beside_a_ready_commits_like_save_snapshot(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    fill(store, last=10, commit=8)
    snap = snapshot(6, 1, b"six")
    prepared: list[object] = []
    writing = threading.Thread(target=lambda: prepared.append(store.prepare_snapshot(snap)))
    writing.start()  # the file is written while the log grows (as the node does it)
    store.save_ready(hard_state=None, entries=entries(11, 12), snapshot=None, sync=True)
    writing.join()
    store.commit_snapshot(prepared[0])
    state = store.load()
    assert state is not None and state.snapshot == snap
    assert [e.index for e in state.entries] == list(range(7, 13))
    assert len(os.listdir(data_dir / "snapshots")) == 1


def test_a_prepared_snapshot_overtaken_by_the_leaders_is_discarded(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    fill(store, last=10, commit=8)
    prepared = store.prepare_snapshot(snapshot(6, 1, b"mine"))
    leaders = snapshot(20, 2, b"leader's")
    store.save_ready(
        hard_state=HardState(term=2, commit=20), entries=[], snapshot=leaders, sync=True
    )
    store.commit_snapshot(prepared)
    state = store.load()
    assert state is not None and state.snapshot == leaders and state.entries == ()
    assert os.listdir(data_dir / "snapshots") == ["snap-2-20.bin"]


def test_a_crash_between_prepare_and_commit_keeps_every_entry(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    fill(store, last=10, commit=8)
    before = store.load()
    store.prepare_snapshot(snapshot(6, 1))
    store.close()  # the process dies before commit_snapshot
    assert load_dir(data_dir) == before
    assert os.listdir(data_dir / "snapshots") == []  # load() removed the unreferenced file


# --------------------------------------------------------------------------------------------
# Snapshot files
# --------------------------------------------------------------------------------------------


def test_snapshot_files_are_named_by_term_and_index_and_the_old_one_goes(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    snapshots = data_dir / "snapshots"
    fill(store, last=10, commit=8)
    store.save_snapshot(snapshot(4, 1, b"four"))
    assert os.listdir(snapshots) == ["snap-1-4.bin"]
    assert (snapshots / "snap-1-4.bin").read_bytes() == b"four"
    store.save_snapshot(snapshot(8, 1, b"eight"))
    assert os.listdir(snapshots) == ["snap-1-8.bin"]
    store.save_ready(
        hard_state=HardState(term=3, commit=20), entries=[], snapshot=snapshot(20, 3), sync=True
    )
    assert os.listdir(snapshots) == ["snap-3-20.bin"]
    store.close()
    row = query(data_dir, "SELECT idx, term, file, size, length(sha256) FROM snapshot")
    assert row == [(20, 3, "snap-3-20.bin", len(b"state"), 64)]


def test_the_same_snapshot_received_twice_never_overwrites_the_committed_file(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    for data in (b"first copy", b"second copy", b"third copy"):
        store.save_ready(hard_state=None, entries=[], snapshot=snapshot(7, 2, data), sync=True)
        assert len(os.listdir(data_dir / "snapshots")) == 1
    store.close()
    state = load_dir(data_dir)
    assert state is not None
    assert state.snapshot == snapshot(7, 2, b"third copy")


def test_load_by_reference_is_load_without_the_snapshot_data(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    """What a restarting node loads: everything ``load`` gives but the snapshot's bytes,
    which ``open_snapshot`` reads from the file."""
    data = b"snapshot data " * 100_000  # larger than a piece of the hash
    fill(store, last=10, commit=10)
    store.save_snapshot(snapshot(8, 1, data), compact_to=6)
    store.close()
    whole = load_dir(data_dir)
    store = SQLiteLogStore(data_dir)
    try:
        by_reference = store.load_by_reference()
        assert whole is not None and by_reference is not None
        assert by_reference.snapshot == Snapshot(meta=whole.snapshot.meta)
        assert whole.snapshot.data == data
        assert by_reference.entries == whole.entries and by_reference.entries[0].index == 7
        assert by_reference.hard_state == whole.hard_state
        opened = store.open_snapshot(by_reference.snapshot.meta)
        assert opened is not None
        with opened:
            assert opened.read() == data
    finally:
        store.close()


def test_an_empty_snapshot_file_round_trips(store: SQLiteLogStore, data_dir: Path) -> None:
    store.save_ready(hard_state=None, entries=[], snapshot=snapshot(3, 1, b""), sync=True)
    store.close()
    state = load_dir(data_dir)
    assert state is not None
    assert state.snapshot == snapshot(3, 1, b"")


def test_load_removes_temp_files_and_unreferenced_snapshot_files_only(
    store: SQLiteLogStore, data_dir: Path
) -> None:
    snapshots = data_dir / "snapshots"
    fill(store)
    store.save_snapshot(snapshot(4, 1))
    store.close()
    (snapshots / "snap-1-9.bin.x1y2.tmp").write_bytes(b"half a snapshot")
    (snapshots / "snap-1-2.bin").write_bytes(b"superseded")
    (snapshots / "snap-1-6.bin").write_bytes(b"never committed")
    (snapshots / "README").write_text("not ours")
    assert load_dir(data_dir) is not None
    assert sorted(os.listdir(snapshots)) == ["README", "snap-1-4.bin"]


# --------------------------------------------------------------------------------------------
# load(): damage is reported, never repaired
# --------------------------------------------------------------------------------------------


@pytest.fixture
def filled_dir(store: SQLiteLogStore, data_dir: Path) -> Path:
    """A closed store: snapshot at 4, entries 5..2000 of 100 bytes (a few dozen pages)."""
    store.save_ready(
        hard_state=HardState(term=1, vote=1, commit=1500),
        entries=[Entry(term=1, index=i, data=bytes([i % 251]) * 100) for i in range(1, 2001)],
        snapshot=None,
        sync=True,
    )
    store.save_snapshot(snapshot(4, 1, b"snapshot data " * 100))
    store.close()
    assert load_dir(data_dir) is not None
    return data_dir


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def truncate_half(db: Path) -> None:
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2 // 4096 * 4096)


def corrupt_a_middle_page(db: Path) -> None:
    # Page 1 and the tables read at open stay intact; quick_check finds the damage.
    overwrite(db, db.stat().st_size // 2 // 4096 * 4096 + 100, b"\xa5" * 500)


def replace_with_another_apps_db(db: Path) -> None:
    db.unlink()
    query(db.parent, "CREATE TABLE users (name TEXT)")


DB_DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated": (truncate_half, "malformed"),
    "garbage-bytes": (
        lambda db: db.write_bytes(random.Random(1).randbytes(16384)),
        "not a database",
    ),
    "text-file": (lambda db: db.write_text("name,term\nnode-1,3\n" * 200), "not a database"),
    "zero-length": (lambda db: db.write_bytes(b""), "not a raftmw log store"),
    "middle-page": (corrupt_a_middle_page, "quick_check"),
    "other-app-db": (
        replace_with_another_apps_db,
        "not a raftmw log store: it has no entries, hard_state, meta, snapshot table",
    ),
    "schema-version": (
        lambda db: query(db.parent, "UPDATE meta SET schema_version = 99"),
        "schema version 99",
    ),
}


@pytest.mark.parametrize("case", DB_DAMAGE)
def test_a_damaged_database_is_reported_naming_the_file(filled_dir: Path, case: str) -> None:
    damage, fragment = DB_DAMAGE[case]
    db = filled_dir / "raft.db"
    damage(db)
    damaged = db.read_bytes()
    with pytest.raises(StorageError, match=fragment) as raised:
        load_dir(filled_dir)
    assert str(db) in str(raised.value)
    assert db.read_bytes() == damaged
    assert (filled_dir / "snapshots" / "snap-1-4.bin").exists()


def test_a_missing_database_beside_a_wal_or_snapshots_is_not_a_fresh_store(
    filled_dir: Path,
) -> None:
    os.remove(filled_dir / "raft.db")
    with pytest.raises(StorageError, match="refusing to start a fresh store"):
        load_dir(filled_dir)
    assert not (filled_dir / "raft.db").exists()


SNAPSHOT_DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (lambda f: f.unlink(), "is missing"),
    "shorter": (lambda f: f.write_bytes(f.read_bytes()[:-1]), "size mismatch"),
    "longer": (lambda f: f.write_bytes(f.read_bytes() + b"\0"), "size mismatch"),
    "bit-flip": (lambda f: overwrite(f, 10, bytes([f.read_bytes()[10] ^ 1])), "checksum mismatch"),
}


@pytest.mark.parametrize("by_reference", [False, True], ids=["load", "load_by_reference"])
@pytest.mark.parametrize("case", SNAPSHOT_DAMAGE)
def test_a_damaged_snapshot_file_is_reported_naming_it(
    filled_dir: Path, case: str, by_reference: bool
) -> None:
    damage, fragment = SNAPSHOT_DAMAGE[case]
    snap_file = filled_dir / "snapshots" / "snap-1-4.bin"
    leftover = filled_dir / "snapshots" / "snap-1-9.bin.abc.tmp"
    leftover.write_bytes(b"x")
    damage(snap_file)
    with pytest.raises(StorageError, match=fragment) as raised:
        load_dir(filled_dir, by_reference=by_reference)
    assert str(snap_file) in str(raised.value)
    assert leftover.exists(), "a store that fails to load must not have been cleaned up"


LOG_DAMAGE: dict[str, tuple[str, str]] = {
    "gap": ("DELETE FROM entries WHERE idx = 700", "not contiguous at index 701"),
    "first-entry-missing": ("DELETE FROM entries WHERE idx = 5", "not contiguous at index 6"),
    # Trailing entries before the snapshot (compact_to) must reach it with its term.
    "trailing-entry-of-another-term": (
        "INSERT INTO entries VALUES (4, 7, 0, x'00')",
        "entries from index 4 before the snapshot at 4 .term 1. do not reach it with its term",
    ),
    "trailing-entries-with-a-gap": (
        "INSERT INTO entries VALUES (2, 1, 0, x'00')",
        "entries from index 2 before the snapshot at 4 .term 1. do not reach it",
    ),
    "term-backwards": ("UPDATE entries SET term = 0 WHERE idx = 900", "backwards at index 900"),
    "term-below-snapshot": ("UPDATE snapshot SET term = 2", "backwards at index 5"),
    "unknown-kind": ("UPDATE entries SET kind = 42 WHERE idx = 33", "entry 33 has unknown kind"),
    "commit-beyond-last": (
        "UPDATE hard_state SET commit_index = 2001",
        "commit index 2001 is beyond the last log index 2000",
    ),
    "bad-conf-state": ("UPDATE meta SET conf_state = x'c1'", "meta.conf_state"),
}


@pytest.mark.parametrize("case", LOG_DAMAGE)
def test_a_log_of_the_wrong_shape_is_reported_and_left_as_it_is(
    filled_dir: Path, case: str
) -> None:
    sql, fragment = LOG_DAMAGE[case]
    query(filled_dir, sql)
    rows_before = query(filled_dir, "SELECT * FROM entries")
    with pytest.raises(StorageError, match=fragment) as raised:
        load_dir(filled_dir)
    assert str(filled_dir / "raft.db") in str(raised.value)
    assert query(filled_dir, "SELECT * FROM entries") == rows_before


# --------------------------------------------------------------------------------------------
# Model test: any valid sequence of calls leaves SQLite and MemoryLogStore equal
# --------------------------------------------------------------------------------------------


class SQLiteMatchesMemory(RuleBasedStateMachine):
    """Drives both stores with Raft-shaped calls (only valid ones) and reopens SQLite."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "node"
        self.sqlite = SQLiteLogStore(self.path, sync="os")
        self.memory = MemoryLogStore()
        for store in (self.sqlite, self.memory):
            store.initialize(node_id=1, cluster_id="model", conf_state=VOTERS)

    def _state(self) -> StoredState:
        state = self.memory.load()
        assert state is not None
        return state

    def _last(self) -> tuple[int, int]:
        state = self._state()
        if state.entries:
            return state.entries[-1].index, state.entries[-1].term
        return state.snapshot.meta.index, state.snapshot.meta.term

    def _save(self, **ready: object) -> None:
        for store in (self.sqlite, self.memory):
            store.save_ready(**ready)  # type: ignore[arg-type]

    def _hard_state(self, commit: int) -> HardState:
        return HardState(term=self._last()[1], vote=1, commit=commit)

    @rule(count=st.integers(1, 8), new_term=st.booleans(), advance=st.integers(0, 8))
    def append(self, count: int, new_term: bool, advance: int) -> None:
        last, term = self._last()
        batch = entries(last + 1, last + count, term + new_term)
        commit = min(last + count, self._state().hard_state.commit + advance)
        hard_state = HardState(term=term + new_term, vote=1, commit=commit)
        self._save(hard_state=hard_state, entries=batch, snapshot=None, sync=False)

    @rule(back=st.integers(0, 6), count=st.integers(1, 4))
    def overwrite_tail(self, back: int, count: int) -> None:
        state = self._state()
        last, term = self._last()
        first = max(state.hard_state.commit + 1, state.snapshot.meta.index + 1, last + 1 - back)
        batch = entries(first, first + count - 1, term + 1)
        self._save(hard_state=None, entries=batch, snapshot=None, sync=True)

    @rule(ahead=st.integers(-3, 6), data=st.binary(max_size=64), with_entries=st.booleans())
    def receive_snapshot(self, ahead: int, data: bytes, with_entries: bool) -> None:
        last, term = self._last()
        index = max(self._state().hard_state.commit, last + ahead)
        received = snapshot(index, term + 1, data)
        batch = entries(index + 1, index + 2, term + 1) if with_entries else []
        self._save(
            hard_state=HardState(term=term + 1, vote=0, commit=index),
            entries=batch,
            snapshot=received,
            sync=True,
        )

    @rule(back=st.integers(0, 5), data=st.binary(max_size=64))
    def take_snapshot(self, back: int, data: bytes) -> None:
        state = self._state()
        index = state.hard_state.commit - back
        terms = {e.index: e.term for e in state.entries}
        term = terms.get(index, state.snapshot.meta.term)
        for store in (self.sqlite, self.memory):
            store.save_snapshot(snapshot(index, term, data))

    @precondition(lambda self: self._state().hard_state.commit < self._last()[0])
    @rule()
    def commit_only(self) -> None:
        self._save(
            hard_state=self._hard_state(self._last()[0]), entries=[], snapshot=None, sync=False
        )

    @rule()
    def reopen(self) -> None:
        self.sqlite.close()
        self.sqlite = SQLiteLogStore(self.path, sync="os")

    @invariant()
    def same_state(self) -> None:
        assert self.sqlite.load() == self.memory.load()

    def teardown(self) -> None:
        self.sqlite.close()
        self.tmp.cleanup()


TestSQLiteMatchesMemory = SQLiteMatchesMemory.TestCase
TestSQLiteMatchesMemory.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)


# --------------------------------------------------------------------------------------------
# Crash tests: a real process, a real SIGKILL, no close()
# --------------------------------------------------------------------------------------------


def run_until_killed(data_dir: Path, mode: str, seed: int) -> list[str]:
    """Start the writer, let it run a random while, SIGKILL it; return its complete lines."""
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), mode, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stderr is not None
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert writer.stdout is not None
        for line in writer.stdout:
            lines.append(line)
            started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(timeout=30):
        writer.kill()
        pytest.fail(f"the writer printed nothing: {writer.stderr.read()}")
    time.sleep(random.Random(seed).uniform(0.005, 0.4))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    reader.join(timeout=10)
    stderr = writer.stderr.read()
    writer.stdout.close()
    writer.stderr.close()
    assert writer.returncode == -signal.SIGKILL, f"the writer died on its own: {stderr}"
    # A line cut short by the kill was never acknowledged.
    return [line for line in lines if line.endswith("\n")]


def acknowledged(lines: list[str], tag: str) -> int:
    return max((int(line.split()[1]) for line in lines if line.startswith(tag + " ")), default=0)


def check_entries_run(data_dir: Path, lines: list[str]) -> None:
    acked = acknowledged(lines, "e")
    assert acked > 0
    state = load_dir(data_dir)
    assert state is not None
    last = state.entries[-1].index if state.entries else 0
    assert last >= acked, f"acknowledged up to {acked}, but only {last} survived"
    # The store holds exactly what some whole Ready at or after the last acknowledged one left.
    assert state.entries == tuple(entry_at(i) for i in range(1, last + 1))
    assert state.hard_state == hard_state_for(last)
    assert state.snapshot == Snapshot()


@pytest.mark.parametrize("seed", range(10))
def test_sigkill_during_save_ready_loses_no_acknowledged_entry(tmp_path: Path, seed: int) -> None:
    data_dir = tmp_path / "node"
    check_entries_run(data_dir, run_until_killed(data_dir, "entries", seed))


def test_the_crash_check_catches_a_lost_acknowledged_entry(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    lines = run_until_killed(data_dir, "entries", seed=0)
    # Lose the last acknowledged entry (and all after it) the way a store that lied would.
    query(data_dir, "DELETE FROM entries WHERE idx >= ?", (acknowledged(lines, "e"),))
    query(data_dir, "UPDATE hard_state SET commit_index = 0")
    with pytest.raises(AssertionError, match="survived"):
        check_entries_run(data_dir, lines)


def check_snapshot_run(data_dir: Path, lines: list[str]) -> tuple[StoredState, int]:
    """What a run that takes snapshots left: a snapshot at or past the last acknowledged
    one, and one run of entries from its first (before the snapshot if trailing entries
    are left, never with a gap after it) to at least the last acknowledged entry, with the
    hard state stored with that entry. The state and the index of its first entry."""
    acked_entry, acked_snapshot = acknowledged(lines, "e"), acknowledged(lines, "s")
    state = load_dir(data_dir)
    assert state is not None
    snap_index = state.snapshot.meta.index
    assert snap_index >= acked_snapshot
    if snap_index:
        assert state.snapshot == snapshot_at(snap_index)
    last = state.entries[-1].index if state.entries else snap_index
    assert last >= acked_entry
    first = state.entries[0].index if state.entries else snap_index + 1
    assert first <= snap_index + 1  # no gap after the snapshot
    assert state.entries == tuple(entry_at(i) for i in range(first, last + 1))
    assert state.hard_state == hard_state_for(last)
    return state, first


@pytest.mark.parametrize("seed", range(100, 105))
def test_sigkill_during_save_snapshot_loads_the_old_or_the_new_snapshot(
    tmp_path: Path, seed: int
) -> None:
    data_dir = tmp_path / "node"
    state, first = check_snapshot_run(data_dir, run_until_killed(data_dir, "snapshots", seed))
    snap_index = state.snapshot.meta.index
    assert first == snap_index + 1  # save_snapshot keeps no trailing entries
    expected_files = [f"snap-{state.snapshot.meta.term}-{snap_index}.bin"] if snap_index else []
    assert os.listdir(data_dir / "snapshots") == expected_files


@pytest.mark.parametrize("seed", range(200, 206))
def test_sigkill_while_pruning_leaves_a_whole_log_after_the_snapshot(
    tmp_path: Path, seed: int
) -> None:
    """``prune`` batches are not synced: a kill may bring some back, but what is stored is
    always the snapshot and one run of entries from before it to the last acknowledged."""
    data_dir = tmp_path / "node"
    check_snapshot_run(data_dir, run_until_killed(data_dir, "pruned", seed))


def test_prune_deletes_the_oldest_entries_a_batch_at_a_time_up_to_the_snapshot(
    data_dir: Path,
) -> None:
    store = SQLiteLogStore(data_dir)
    store.initialize(node_id=1, cluster_id="c", conf_state=VOTERS)
    store.save_ready(
        hard_state=HardState(term=1, vote=1, commit=30),
        entries=entries(1, 30),
        snapshot=None,
        sync=True,
    )
    store.commit_snapshot(store.prepare_snapshot(snapshot(20, 1)), compact_to=0)
    firsts = []
    while True:
        done = store.prune(25, limit=8)  # past the snapshot: stops at its index
        firsts.append(query_open(store, "SELECT min(idx) FROM entries"))
        if done:
            break
    assert firsts == [9, 17, 21]
    assert store.prune(25, limit=8) is True  # nothing left to do
    store.close()
    state = load_dir(data_dir)
    assert state is not None
    assert (state.snapshot.meta.index, state.entries) == (20, tuple(entries(21, 30)))


def test_prune_refuses_a_batch_of_no_entries(data_dir: Path) -> None:
    store = SQLiteLogStore(data_dir)
    store.initialize(node_id=1, cluster_id="c", conf_state=VOTERS)
    with pytest.raises(ValueError, match=r"prune\(limit=0\)"):
        store.prune(10, limit=0)
    store.close()


def query_open(store: SQLiteLogStore, sql: str) -> object:
    return store._connection().execute(sql).fetchone()[0]


def test_a_large_superseded_snapshot_file_is_deleted_by_the_deleter_thread(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlinking a large file takes the file system long (200 ms at 1,000 MiB here); the
    node's store thread, which calls ``commit_snapshot`` and ``save_ready``, must not wait
    for it. ``close()`` waits for the deleter."""
    from framework.storage import sqlite as sqlite_module

    threads: list[str] = []
    unlink = sqlite_module._unlink

    def recording(path: Path) -> None:
        threads.append(threading.current_thread().name)
        unlink(path)

    monkeypatch.setattr(sqlite_module, "DEFER_UNLINK_BYTES", 8)
    monkeypatch.setattr(sqlite_module, "_unlink", recording)
    store = SQLiteLogStore(data_dir)
    store.initialize(node_id=1, cluster_id="c1", conf_state=VOTERS)
    fill(store, last=10, commit=8)
    store.save_snapshot(snapshot(4, 1, b"tiny"))  # nothing superseded yet
    store.save_snapshot(snapshot(6, 1, b"large enough"))  # supersedes 4 bytes: at once
    store.save_snapshot(snapshot(8, 1, b"eight"))  # supersedes 12 bytes: the deleter
    store.close()
    assert os.listdir(data_dir / "snapshots") == ["snap-1-8.bin"]
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("raftmw-snapshot-deleter")
    assert len(threads) == 2
