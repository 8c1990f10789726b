"""``SQLiteLogStore``: the durable ``LogStore``, one SQLite file in WAL mode plus snapshot files.

Theory of operation
-------------------
A node's data directory holds::

    LOCK                            flock'ed while a store has the directory open
    raft.db  (-wal, -shm)           tables meta, hard_state, entries, snapshot
    snapshots/snap-<term>-<index>.bin   the data of the snapshot the ``snapshot`` row names

The rules this module keeps, and why:

1. **raft.db is born complete.** The schema is written to ``raft.db.new``, fsynced and
   renamed. A ``raft.db`` without the schema (a zero-length file, say) is therefore damage,
   never a fresh store: a node that has voted must not come back with an empty disk.
2. **One call, one transaction.** ``save_ready``, ``save_snapshot`` and ``initialize`` each
   run in a single ``BEGIN IMMEDIATE ... COMMIT``; SQLite's WAL makes it all-or-nothing
   across a SIGKILL or a power loss (a torn WAL frame fails its checksum and is ignored).
3. **A snapshot file is durable before any row names it.** It is written to a temp name,
   fsynced, renamed to its final name and the directory fsynced; only then does the row
   change (and, for a local snapshot, the covered entries go in the same transaction, so
   the snapshot is on disk before any entry it replaces is deleted, §7). The superseded
   file is deleted only after that commit is durable. A crash anywhere leaves the old row
   with the old file or the new row with the new file, plus at most an unreferenced file.
4. **Nothing load() would reject is ever committed.** Each write is checked first: the log
   stays contiguous after the snapshot, terms never decrease, the commit index never passes
   the last index. A caller's mistake raises ``StorageError`` and stores nothing.
5. **load() checks and reports; it never repairs.** It runs ``PRAGMA quick_check``,
   verifies the snapshot file's size and SHA-256 and the shape of the log, and raises
   ``StorageError`` naming the file and the problem. The only files it deletes are ones no
   committed row refers to: temp files and snapshot files a crash left behind (rule 3).

Durability (``sync``)
---------------------
``sync="always"``: a ``save_ready(sync=True)`` commits with ``PRAGMA synchronous=FULL``, so
the WAL is fsynced before it returns and the Ready survives a power loss. A call with
``sync=False`` (the protocol asks only that it survive a process crash) commits with
``NORMAL``; a later FULL commit makes it durable too, as WAL frames are replayed in order.

``sync="os"``: every ``save_ready`` commits with ``synchronous=NORMAL``: the commit is in
the OS page cache when it returns. That survives SIGKILL of the process, but a power loss
or kernel crash may lose the last Readys (never part of one: the database stays
consistent). This weakens the ``LogStore`` contract for ``sync=True``; use it where a
whole-machine crash is not in the fault model (benchmarks, a laptop cluster).

In both modes the transactions that change the snapshot, and ``initialize``, commit with
FULL and snapshot files are always fsynced: they are rare, and deleting the superseded
snapshot file after a commit the disk might still lose would leave a row naming a file
that no longer exists.

The store is not thread-safe; the runtime calls it from one worker thread at a time
(hence ``check_same_thread=False``). Transactions are explicit (``isolation_level=None``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Literal, NamedTuple

import msgspec

from framework.core import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from framework.storage.base import (
    SnapshotFile,
    StorageError,
    StoredState,
    check_compact_to,
    check_storable,
)
from framework.storage.durable import fsync_directory

if sys.platform != "win32":
    import fcntl

__all__ = ["SQLiteLogStore"]

DEFER_UNLINK_BYTES = 16 * 1024 * 1024
"""A superseded snapshot file this large or larger is deleted by the store's deleter
thread (``_switch_snapshot_file``); a smaller one (about 3 ms or less) at once."""
SCHEMA_VERSION = 1
DB_NAME = "raft.db"
SNAPSHOT_DIR = "snapshots"
LOCK_NAME = "LOCK"

_SCHEMA = (
    """CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        schema_version INTEGER NOT NULL,
        node_id INTEGER,
        cluster_id TEXT,
        conf_state BLOB
    )""",
    """CREATE TABLE hard_state (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        term INTEGER NOT NULL,
        vote INTEGER NOT NULL,
        commit_index INTEGER NOT NULL
    )""",
    """CREATE TABLE entries (
        idx INTEGER PRIMARY KEY,
        term INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        data BLOB NOT NULL
    )""",
    """CREATE TABLE snapshot (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        idx INTEGER NOT NULL,
        term INTEGER NOT NULL,
        conf_state BLOB NOT NULL,
        file TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    )""",
    f"INSERT INTO meta (id, schema_version) VALUES (0, {SCHEMA_VERSION})",
)
_TABLES = frozenset({"meta", "hard_state", "entries", "snapshot"})

_INSERT_ENTRY = "INSERT INTO entries (idx, term, kind, data) VALUES (?, ?, ?, ?)"
_UPSERT_HARD_STATE = (
    "INSERT INTO hard_state (id, term, vote, commit_index) VALUES (0, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET "
    "term = excluded.term, vote = excluded.vote, commit_index = excluded.commit_index"
)
_REPLACE_SNAPSHOT = (
    "INSERT OR REPLACE INTO snapshot (id, idx, term, conf_state, file, size, sha256) "
    "VALUES (0, ?, ?, ?, ?, ?, ?)"
)

_FULL = "FULL"
_UNIQUE = itertools.count(1)
"""Numbers the files of prepared snapshots (with the pid: unique on this data directory)."""
_NORMAL = "NORMAL"

_KINDS = {kind.value: kind for kind in EntryKind}
_conf_encoder = msgspec.msgpack.Encoder()
_conf_decoder = msgspec.msgpack.Decoder(ConfState)


class _Bounds(NamedTuple):
    """The shape of the stored log, kept in memory so a write can be checked without I/O.

    Replaced only after the transaction that produced it has committed.
    """

    snap_index: int
    snap_term: int
    last_index: int
    """Index of the last entry, or ``snap_index`` when there are no entries."""
    last_term: int
    commit: int


_Row = tuple[int, int, int, bytes]
"""An ``entries`` row: idx, term, kind, data."""


class _SnapshotFile(NamedTuple):
    """A snapshot whose data is durable on disk, ready for its row."""

    meta: SnapshotMeta
    name: str
    size: int
    sha256: str


class SQLiteLogStore:
    """A ``LogStore`` in the data directory ``path`` (created if missing).

    The constructor takes the directory's lock and opens (or atomically creates) the
    database; it raises ``StorageError`` if the directory is in use by another open store,
    or ``raft.db`` is not a readable raftmw store of this schema version. ``load()`` then
    checks everything in depth. Call ``close()`` to release the directory.
    """

    def __init__(self, path: Path | str, *, sync: Literal["always", "os"] = "always") -> None:
        if sync not in ("always", "os"):
            raise ValueError(f"sync must be 'always' or 'os', not {sync!r}")
        self._dir = Path(path)
        self._db_path = self._dir / DB_NAME
        self._snap_dir = self._dir / SNAPSHOT_DIR
        self._sync_mode = sync
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._synchronous = ""
        self._initialized = False
        self._bounds = _Bounds(0, 0, 0, 0, 0)
        self._snap_file: str | None = None
        self._deleter: ThreadPoolExecutor | None = None
        try:
            _make_directory_durably(self._dir)
            self._lock_fd = _lock_directory(self._dir)
            if not self._db_path.exists():
                self._create_database()
            _make_directory_durably(self._snap_dir)
            self._conn = self._open_database()
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError | sqlite3.Error):
                raise StorageError(f"cannot open data directory {self._dir}: {exc}") from exc
            raise

    def __repr__(self) -> str:
        return f"SQLiteLogStore({str(self._dir)!r}, sync={self._sync_mode!r})"

    # ----------------------------------------------------------------------------------------
    # LogStore
    # ----------------------------------------------------------------------------------------

    def initialize(self, *, node_id: int, cluster_id: str, conf_state: ConfState) -> None:
        conn = self._connection()
        with self._transaction(_FULL, "initialize"):
            row = conn.execute("SELECT node_id, cluster_id FROM meta WHERE id = 0").fetchone()
            if row[0] is None:
                conn.execute(
                    "UPDATE meta SET node_id = ?, cluster_id = ?, conf_state = ? WHERE id = 0",
                    (node_id, cluster_id, _conf_encoder.encode(conf_state)),
                )
            elif (row[0], row[1]) != (node_id, cluster_id):
                raise StorageError(
                    f"data directory {self._dir} belongs to node {row[0]} of cluster "
                    f"{row[1]!r}, not to node {node_id} of cluster {cluster_id!r}"
                )
        self._initialized = True

    def load(self) -> StoredState | None:
        return self._load(snapshot_data=True)

    def load_by_reference(self) -> StoredState | None:
        """``load``, with the snapshot without its data (``Snapshot.data`` empty; read it
        with ``open_snapshot``): its file is checked all the same (size and SHA-256), read
        a piece at a time, so a node restarting need not hold its snapshot whole."""
        return self._load(snapshot_data=False)

    def _load(self, *, snapshot_data: bool) -> StoredState | None:
        conn = self._connection()
        self._quick_check(conn)
        with self._transaction(None, "load"):
            meta = conn.execute(
                "SELECT node_id, cluster_id, conf_state FROM meta WHERE id = 0"
            ).fetchone()
            hard_row = conn.execute(
                "SELECT term, vote, commit_index FROM hard_state WHERE id = 0"
            ).fetchone()
            snap_row = conn.execute(
                "SELECT idx, term, conf_state, file, size, sha256 FROM snapshot WHERE id = 0"
            ).fetchone()
            entry_rows = conn.execute(
                "SELECT idx, term, kind, data FROM entries ORDER BY idx"
            ).fetchall()
        if meta is None:
            raise StorageError(f"{self._db_path} is damaged: the meta row is missing")
        if meta[0] is None:
            self._remove_unreferenced_files(keep=None)
            return None
        conf_state = self._decode_conf_state(meta[2], "meta.conf_state")
        hard_state = (
            HardState()
            if hard_row is None
            else HardState(term=hard_row[0], vote=hard_row[1], commit=hard_row[2])
        )
        snapshot = Snapshot() if snap_row is None else self._read_snapshot(snap_row, snapshot_data)
        entries = self._check_loaded_entries(snapshot.meta, entry_rows)
        last = entries[-1] if entries else None
        bounds = _Bounds(
            snapshot.meta.index,
            snapshot.meta.term,
            snapshot.meta.index if last is None else last.index,
            snapshot.meta.term if last is None else last.term,
            hard_state.commit,
        )
        if bounds.commit > bounds.last_index:
            raise StorageError(
                f"{self._db_path}: hard state commit index {bounds.commit} is beyond the "
                f"last log index {bounds.last_index}"
            )
        self._bounds = bounds
        self._snap_file = None if snap_row is None else snap_row[3]
        self._initialized = True
        self._remove_unreferenced_files(keep=self._snap_file)
        return StoredState(
            node_id=meta[0],
            cluster_id=meta[1],
            conf_state=conf_state,
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
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
        try:
            self._save_ready(hard_state, entries, snapshot, sync, snapshot_file)
        finally:
            if snapshot_file is not None:  # adopted, or refused: the store's to delete
                with contextlib.suppress(OSError):
                    snapshot_file.path.unlink(missing_ok=True)

    def _save_ready(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
        snapshot_file: SnapshotFile | None,
    ) -> None:
        conn = self._connection()
        self._require_initialized("save_ready")
        check_storable(hard_state, entries, snapshot)
        old = self._bounds
        new = old
        if snapshot is not None:
            meta = snapshot.meta
            new = _Bounds(meta.index, meta.term, meta.index, meta.term, old.commit)
        rows: list[_Row] = []
        if entries:
            new, rows = self._check_new_entries(new, entries)
        if hard_state is not None:
            new = new._replace(commit=hard_state.commit)
        if new.commit > new.last_index:
            raise StorageError(
                f"{self._db_path}: refusing a Ready whose commit index {new.commit} is beyond "
                f"the last log index {new.last_index} it would leave"
            )

        if snapshot is None and not rows and hard_state is None:
            return  # an empty Ready: nothing to store

        written = None
        if snapshot is not None:
            # From the leader; it replaces the whole log. The file goes first (rule 3).
            if snapshot_file is None:
                written = self._write_snapshot_file(snapshot)
            else:
                written = self._adopt_snapshot_file(snapshot.meta, snapshot_file)
            level = _FULL
        else:
            level = _FULL if sync and self._sync_mode == "always" else _NORMAL
        with self._transaction(level, "save_ready"):
            if written is not None:
                self._replace_snapshot_row(conn, written)
                conn.execute("DELETE FROM entries")
            elif rows and rows[0][0] <= old.last_index:
                conn.execute("DELETE FROM entries WHERE idx >= ?", (rows[0][0],))
            if rows:
                conn.executemany(_INSERT_ENTRY, rows)
            if hard_state is not None:
                conn.execute(
                    _UPSERT_HARD_STATE, (hard_state.term, hard_state.vote, hard_state.commit)
                )
        self._bounds = new
        if written is not None:
            self._switch_snapshot_file(written.name)

    def save_snapshot(self, snapshot: Snapshot, *, compact_to: int | None = None) -> None:
        self._require_initialized("save_snapshot")
        check_compact_to(snapshot.meta.index, compact_to)
        self.commit_snapshot(self._write_snapshot_file(snapshot), compact_to=compact_to)

    def prepare_snapshot(self, snapshot: Snapshot) -> _SnapshotFile:
        """Write the snapshot file (rule 3) under a name no row refers to. Touches neither
        the database nor the store's fields, so it may run beside ``save_ready``."""
        self._require_initialized("prepare_snapshot")
        return self._write_snapshot_file(snapshot, unique=True)

    def prepare_snapshot_file(self, meta: SnapshotMeta, file: SnapshotFile) -> _SnapshotFile:
        """``prepare_snapshot`` adopting ``file`` (moved into the snapshot directory under
        a name no row refers to, fsynced)."""
        self._require_initialized("prepare_snapshot_file")
        return self._adopt_snapshot_file(meta, file, unique=True)

    def open_snapshot(self, meta: SnapshotMeta) -> IO[bytes] | None:
        """The committed snapshot's file, if it is the one at ``meta`` (its name says so:
        the file of a newer snapshot is never taken for it)."""
        name = self._snap_file
        if name is None or not name.startswith(f"snap-{meta.term}-{meta.index}."):
            return None
        try:
            return open(self._snap_dir / name, "rb")  # the caller closes it
        except FileNotFoundError:
            return None  # replaced meanwhile
        except OSError as exc:
            raise StorageError(f"cannot open snapshot file {self._snap_dir / name}: {exc}") from exc

    def commit_snapshot(self, prepared: object, *, compact_to: int | None = None) -> None:
        assert isinstance(prepared, _SnapshotFile), "commit_snapshot takes prepare_snapshot's"
        conn = self._connection()
        self._require_initialized("commit_snapshot")
        old = self._bounds
        index, term = prepared.meta.index, prepared.meta.term
        try:
            drop_to = check_compact_to(index, compact_to)
        except StorageError:
            with contextlib.suppress(OSError):
                (self._snap_dir / prepared.name).unlink()
            raise
        if index <= old.snap_index:
            # Already covered (a snapshot from the leader was stored meanwhile): the file
            # was never referenced, so it simply goes.
            with contextlib.suppress(OSError):
                (self._snap_dir / prepared.name).unlink()
            return
        if index <= old.last_index:
            stored_term = self._term_at(index)
            if stored_term != term:
                with contextlib.suppress(OSError):
                    (self._snap_dir / prepared.name).unlink()
                raise StorageError(
                    f"{self._db_path}: snapshot at index {index} has term {term}, but the "
                    f"stored entry at that index has term {stored_term}"
                )
            new = old._replace(snap_index=index, snap_term=term)
        else:
            new = _Bounds(index, term, index, term, old.commit)
        with self._transaction(_FULL, "save_snapshot"):
            self._replace_snapshot_row(conn, prepared)
            conn.execute("DELETE FROM entries WHERE idx <= ?", (drop_to,))
        self._bounds = new
        self._switch_snapshot_file(prepared.name)

    def prune(self, upto: int, *, limit: int) -> bool:
        """Delete the oldest stored entries, at most ``limit`` of them and none past ``upto``
        or the snapshot's index, in a transaction of their own; True once no entry at or
        below ``upto`` is left.

        ``commit_snapshot(..., compact_to=0)`` then ``prune`` a batch at a time is
        ``commit_snapshot(..., compact_to=upto)`` without one long transaction: deleting
        100,000 entries and committing them took tens of milliseconds, and the Ready loop,
        which stores through the same thread, waited for all of it. A batch is not synced
        (the next synced store carries it, WAL frames being in order): a crash may bring
        the batch back, and ``load`` then returns it as trailing entries, which a later
        ``prune`` deletes. What is left is always a suffix of the log: no gap."""
        if limit <= 0:
            raise ValueError(f"prune(limit={limit}): expected a positive number of entries")
        conn = self._connection()
        self._require_initialized("prune")
        upto = min(upto, self._bounds.snap_index)
        with self._transaction(_NORMAL, "prune"):
            first: int | None = conn.execute("SELECT min(idx) FROM entries").fetchone()[0]
            if first is None or first > upto:
                return True
            end: int = min(upto, first + limit - 1)
            conn.execute("DELETE FROM entries WHERE idx <= ?", (end,))
        return end >= upto

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the directory lock, once
        the deleter thread (if one ran) deleted the superseded snapshot files."""
        if self._deleter is not None:
            deleter, self._deleter = self._deleter, None
            deleter.shutdown(wait=True)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # releases the flock

    # ----------------------------------------------------------------------------------------
    # Opening
    # ----------------------------------------------------------------------------------------

    def _create_database(self) -> None:
        """Create ``raft.db`` atomically (rule 1), refusing to start over the remains of one."""
        wal = self._dir / (DB_NAME + "-wal")
        leftovers = [wal] if wal.exists() else []
        if self._snap_dir.is_dir():
            leftovers += sorted(self._snap_dir.glob("snap-*.bin"))
        if leftovers:
            raise StorageError(
                f"{self._db_path} is missing but {', '.join(map(str, leftovers))} exist: "
                "refusing to start a fresh store over the remains of one"
            )
        tmp = self._dir / (DB_NAME + ".new")
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            conn.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self._db_path)
        fsync_directory(self._dir)

    def _open_database(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            missing = _TABLES - tables
            if missing:
                raise StorageError(
                    f"{self._db_path} is not a raftmw log store: it has no "
                    f"{', '.join(sorted(missing))} table"
                )
            row = conn.execute("SELECT schema_version, node_id FROM meta WHERE id = 0").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise StorageError(
                    f"{self._db_path} has schema version {None if row is None else row[0]}, "
                    f"this raftmw reads version {SCHEMA_VERSION}"
                )
            self._initialized = row[1] is not None
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"{self._db_path}: cannot switch to WAL mode (got {mode!r})")
            # Keep the WAL from staying at the size of its largest burst after a checkpoint.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            self._bounds = self._read_bounds(conn)
            snap = conn.execute("SELECT file FROM snapshot WHERE id = 0").fetchone()
            self._snap_file = None if snap is None else snap[0]
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot open {self._db_path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _read_bounds(conn: sqlite3.Connection) -> _Bounds:
        snap = conn.execute("SELECT idx, term FROM snapshot WHERE id = 0").fetchone()
        snap_index, snap_term = (0, 0) if snap is None else snap
        last = conn.execute("SELECT idx, term FROM entries ORDER BY idx DESC LIMIT 1").fetchone()
        last_index, last_term = (snap_index, snap_term) if last is None else last
        hard = conn.execute("SELECT commit_index FROM hard_state WHERE id = 0").fetchone()
        return _Bounds(snap_index, snap_term, last_index, last_term, 0 if hard is None else hard[0])

    # ----------------------------------------------------------------------------------------
    # Writing
    # ----------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"{self!r} is closed")
        return self._conn

    def _require_initialized(self, operation: str) -> None:
        if not self._initialized:
            raise StorageError(f"{operation}: data directory {self._dir} is not initialized")

    @contextlib.contextmanager
    def _transaction(self, synchronous: str | None, operation: str) -> Iterator[None]:
        """Run the body in one transaction; ``synchronous`` None means a read (BEGIN DEFERRED).

        SQLite errors become ``StorageError`` naming the database; the transaction is rolled
        back on any error, so a failed call leaves the database as it was.
        """
        conn = self._connection()
        try:
            if synchronous is None:
                conn.execute("BEGIN")
            else:
                if synchronous != self._synchronous:
                    # Not allowed inside a transaction; takes effect at the next COMMIT.
                    conn.execute(f"PRAGMA synchronous = {synchronous}")
                    self._synchronous = synchronous
                conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"{self._db_path}: {operation} failed: {exc}") from exc
            raise

    def _check_new_entries(
        self, bounds: _Bounds, entries: Sequence[Entry]
    ) -> tuple[_Bounds, list[_Row]]:
        """Check ``entries`` against the log (rule 4) and turn them into rows."""
        first = entries[0].index
        if first <= bounds.snap_index:
            raise StorageError(
                f"{self._db_path}: entries from index {first} overlap the snapshot at "
                f"{bounds.snap_index}"
            )
        if first > bounds.last_index + 1:
            raise StorageError(
                f"{self._db_path}: entries from index {first} leave a gap after stored index "
                f"{bounds.last_index}"
            )
        prev_index = first - 1
        if prev_index == bounds.last_index:
            prev_term = bounds.last_term
        elif prev_index == bounds.snap_index:
            prev_term = bounds.snap_term
        else:
            prev_term = self._term_at(prev_index)
        rows: list[_Row] = []
        for entry in entries:
            if entry.index != prev_index + 1:
                raise StorageError(
                    f"{self._db_path}: entries are not contiguous: index {entry.index} "
                    f"follows {prev_index}"
                )
            if entry.term < prev_term:
                raise StorageError(
                    f"{self._db_path}: entry {entry.index} has term {entry.term}, lower than "
                    f"term {prev_term} of the entry before it"
                )
            prev_index, prev_term = entry.index, entry.term
            rows.append((prev_index, prev_term, entry.kind, entry.data))
        return bounds._replace(last_index=prev_index, last_term=prev_term), rows

    def _term_at(self, index: int) -> int:
        try:
            row = (
                self._connection()
                .execute("SELECT term FROM entries WHERE idx = ?", (index,))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"{self._db_path}: cannot read entry {index}: {exc}") from exc
        if row is None:
            raise StorageError(f"{self._db_path}: entry {index} is missing")
        term: int = row[0]
        return term

    def _write_snapshot_file(self, snapshot: Snapshot, *, unique: bool = False) -> _SnapshotFile:
        """Make the snapshot's data durable under its final name (rule 3). ``unique``: a
        name no other writer can pick (``prepare_snapshot`` runs beside ``save_ready``,
        which may be writing a snapshot from the leader at the same index)."""
        meta = snapshot.meta
        name = self._snapshot_name(meta, unique=unique)
        data = snapshot.data
        final = self._snap_dir / name
        try:
            fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=self._snap_dir)
            try:
                with open(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            fsync_directory(self._snap_dir)
        except OSError as exc:
            raise StorageError(f"cannot write snapshot file {final}: {exc}") from exc
        return _SnapshotFile(meta, name, len(data), hashlib.sha256(data).hexdigest())

    def _adopt_snapshot_file(
        self, meta: SnapshotMeta, file: SnapshotFile, *, unique: bool = False
    ) -> _SnapshotFile:
        """``_write_snapshot_file`` for data already in ``file``: fsynced and moved (not
        copied) under its final name; copied only from another file system."""
        name = self._snapshot_name(meta, unique=unique)
        final = self._snap_dir / name
        try:
            size = file.path.stat().st_size
            if size != file.size:
                raise StorageError(
                    f"snapshot file {file.path} holds {size} bytes; expected {file.size}"
                )
            try:
                os.replace(file.path, final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(file.path, final)
            with open(final, "rb") as f:
                os.fsync(f.fileno())
            fsync_directory(self._snap_dir)
        except OSError as exc:
            raise StorageError(f"cannot move snapshot file {file.path} to {final}: {exc}") from exc
        return _SnapshotFile(meta, name, file.size, file.sha256)

    def _snapshot_name(self, meta: SnapshotMeta, *, unique: bool) -> str:
        name = f"snap-{meta.term}-{meta.index}.bin"
        if unique:
            return f"snap-{meta.term}-{meta.index}.{os.getpid()}-{next(_UNIQUE)}.bin"
        if name == self._snap_file:
            # The same snapshot again: never overwrite the file the committed row names.
            return f"snap-{meta.term}-{meta.index}.1.bin"
        return name

    @staticmethod
    def _replace_snapshot_row(conn: sqlite3.Connection, written: _SnapshotFile) -> None:
        meta = written.meta
        conn.execute(
            _REPLACE_SNAPSHOT,
            (
                meta.index,
                meta.term,
                _conf_encoder.encode(meta.conf_state),
                written.name,
                written.size,
                written.sha256,
            ),
        )

    def _switch_snapshot_file(self, name: str) -> None:
        """After the row naming ``name`` committed: forget and delete the superseded file.

        A large one is deleted by the store's deleter thread, not by the caller: freeing a
        file's blocks takes the file system about 0.2 ms a MiB here (a 1,000 MiB file took
        200 ms to unlink, a 100 MiB one 23 ms), and the caller is the node's store thread,
        whose next Ready would wait for it. ``close()`` waits for the deleter."""
        old, self._snap_file = self._snap_file, name
        if old is None or old == name:
            return
        path = self._snap_dir / old
        try:
            large = path.stat().st_size >= DEFER_UNLINK_BYTES
        except OSError:
            return  # gone already
        if not large:
            _unlink(path)
            return
        if self._deleter is None:
            self._deleter = ThreadPoolExecutor(1, thread_name_prefix="raftmw-snapshot-deleter")
        self._deleter.submit(_unlink, path)

    # ----------------------------------------------------------------------------------------
    # Loading
    # ----------------------------------------------------------------------------------------

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.Error as exc:
            raise StorageError(f"{self._db_path} is damaged: {exc}") from exc
        if problems != ["ok"]:
            shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
            raise StorageError(f"{self._db_path} is damaged: PRAGMA quick_check: {shown}")

    def _decode_conf_state(self, blob: bytes, column: str) -> ConfState:
        try:
            return _conf_decoder.decode(blob)
        except (msgspec.DecodeError, TypeError) as exc:
            raise StorageError(f"{self._db_path}: {column} cannot be decoded: {exc}") from exc

    def _read_snapshot(
        self, row: tuple[int, int, bytes, str, int, str], with_data: bool
    ) -> Snapshot:
        """The snapshot ``row`` names, its file checked (size, SHA-256); with its data, or
        (``with_data=False``) without, the file hashed a piece at a time."""
        index, term, conf_blob, name, size, sha256 = row
        path = self._snap_dir / name
        data = b""
        try:
            actual_size = path.stat().st_size
            if actual_size != size:
                raise StorageError(
                    f"snapshot file {path}: size mismatch: {actual_size} bytes on disk, "
                    f"{size} recorded in {self._db_path}"
                )
            if with_data:
                data = path.read_bytes()
                actual_sha = hashlib.sha256(data).hexdigest()
            else:
                with open(path, "rb") as file:
                    actual_sha = hashlib.file_digest(file, "sha256").hexdigest()
        except FileNotFoundError as exc:
            raise StorageError(
                f"snapshot file {path} is missing (named by {self._db_path} for the snapshot "
                f"at index {index}, term {term})"
            ) from exc
        except OSError as exc:
            raise StorageError(f"snapshot file {path} cannot be read: {exc}") from exc
        if actual_sha != sha256:
            raise StorageError(
                f"snapshot file {path}: checksum mismatch: sha256 {actual_sha} on disk, "
                f"{sha256} recorded in {self._db_path}"
            )
        conf_state = self._decode_conf_state(conf_blob, "snapshot.conf_state")
        return Snapshot(meta=SnapshotMeta(index=index, term=term, conf_state=conf_state), data=data)

    def _check_loaded_entries(self, snap: SnapshotMeta, rows: list[_Row]) -> tuple[Entry, ...]:
        prev_index, prev_term = snap.index, snap.term
        if rows and rows[0][0] <= snap.index:
            # Trailing entries kept before the snapshot (``compact_to``): they must run
            # through the snapshot's index with its term.
            at = snap.index - rows[0][0]
            if at >= len(rows) or rows[at][1] != snap.term or rows[at][0] != snap.index:
                raise StorageError(
                    f"{self._db_path}: entries from index {rows[0][0]} before the snapshot at "
                    f"{snap.index} (term {snap.term}) do not reach it with its term"
                )
            prev_index, prev_term = rows[0][0] - 1, rows[0][1]
        entries = []
        kinds = _KINDS
        for index, term, kind, data in rows:
            if index != prev_index + 1:
                after = "the snapshot index" if prev_index == snap.index else "index"
                raise StorageError(
                    f"{self._db_path}: the log is not contiguous at index {index}: expected "
                    f"{prev_index + 1} after {after} {prev_index}"
                )
            if term < prev_term:
                raise StorageError(
                    f"{self._db_path}: the term goes backwards at index {index}: term {term} "
                    f"after term {prev_term}"
                )
            entry_kind = kinds.get(kind)
            if entry_kind is None:
                raise StorageError(f"{self._db_path}: entry {index} has unknown kind {kind!r}")
            entries.append(Entry(term, index, entry_kind, data))
            prev_index, prev_term = index, term
        return tuple(entries)

    def _remove_unreferenced_files(self, keep: str | None) -> None:
        """Delete temp files and snapshot files no committed row names (rule 5)."""
        try:
            names = os.listdir(self._snap_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".tmp") or (
                name.startswith("snap-") and name.endswith(".bin") and name != keep
            ):
                with contextlib.suppress(FileNotFoundError):
                    (self._snap_dir / name).unlink()


def _unlink(path: Path) -> None:
    """Delete a superseded snapshot file; a failure only leaves an unreferenced file, which
    ``load()`` removes."""
    with contextlib.suppress(OSError):
        path.unlink()


def _lock_directory(directory: Path) -> int | None:
    """Hold an exclusive flock on ``directory/LOCK``: two nodes on one disk state is split brain.

    flock (not fcntl record locks) conflicts even within one process, and the kernel
    releases it when the process dies, SIGKILL included. No-op on Windows.
    """
    if sys.platform == "win32":
        return None
    lock_path = directory / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(
            f"data directory {directory} is in use by another open SQLiteLogStore "
            f"(lock {lock_path} is held)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_directory_durably(directory: Path) -> None:
    """``mkdir -p`` whose new entries survive a power loss: fsync each new one's parent."""
    missing = []
    parent = directory
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    directory.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_directory(created.parent)
