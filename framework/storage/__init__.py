"""Durable storage for the Raft log: the ``LogStore`` protocol and its implementations."""

from framework.storage.base import LogStore, SnapshotFile, StorageError, StoredState
from framework.storage.memory import MemoryLogStore
from framework.storage.sqlite import SQLiteLogStore

__all__ = [
    "LogStore",
    "MemoryLogStore",
    "SQLiteLogStore",
    "SnapshotFile",
    "StorageError",
    "StoredState",
]
