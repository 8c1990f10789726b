"""Which peers this node has seen store entries, remembered in its data directory.

Theory of operation
-------------------
A node restarted on a wiped data directory must not bootstrap again as a voter (it could
vote for a stale candidate and lose committed writes). With ``--initial-cluster new`` the
starting node asks its peers whether it ever stored entries (``bootstrap``). The evidence is
a leader's replication progress: ``match > 0`` for a peer means the peer acknowledged
storing entries. That progress lives only in the current leader's memory, so each node keeps
the set of peers it has ever seen with ``match > 0`` here, in ``stored-peers.json``, and
reports it on its status page. Any node that ever led while the wiped node was alive keeps
the evidence, whoever leads now and across its own restarts.

The set only grows, by at most one entry per peer over the node's life: the file is
rewritten (durably, in a worker thread, by the task ``run`` owns) when a peer is first
seen. A node without a data directory keeps the set in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import anyio
import msgspec

from framework.storage.base import StorageError
from framework.storage.durable import replace_durably

__all__ = ["STORED_PEERS_FILE", "StoredPeers"]

log = logging.getLogger("raftmw.runtime")

STORED_PEERS_FILE: Final = "stored-peers.json"
_MAX_PEERS: Final = 1 << 16


class _File(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    peers: list[int]


class StoredPeers:
    """The peers seen to have stored entries (a leader's progress showed ``match > 0``)."""

    def __init__(self, data_dir: Path | None, *, node_id: int) -> None:
        self._path = None if data_dir is None else Path(data_dir) / STORED_PEERS_FILE
        self._node_id = node_id
        self._peers: set[int] = set()
        self._unsaved = False
        self._wake: anyio.Event | None = None

    @property
    def peers(self) -> list[int]:
        return sorted(self._peers)

    def load(self) -> None:
        """Read the file if there is one (blocking: call from a worker thread)."""
        if self._path is None or not self._path.exists():
            return
        raw = self._path.read_bytes()
        try:
            stored = msgspec.json.decode(raw, type=_File)
        except msgspec.ValidationError as exc:
            raise StorageError(
                f"{self._path}: not a stored-peers file ({exc}); expected "
                f'{{"version": 1, "peers": [node ids]}}. Delete it to start over: it only '
                f"holds evidence for refusing wiped peers"
            ) from exc
        if stored.version != 1 or len(stored.peers) > _MAX_PEERS:
            raise StorageError(
                f"{self._path}: version={stored.version} with {len(stored.peers)} peers; "
                f"expected version 1 with at most {_MAX_PEERS}"
            )
        self._peers = {p for p in stored.peers if p > 0}

    def observe(self, progress: Mapping[int, tuple[str, int, int]]) -> None:
        """Note every peer whose ``(state, match, next)`` progress shows stored entries."""
        for nid, (_, match, _) in progress.items():
            if match > 0 and nid != self._node_id and nid not in self._peers:
                self._peers.add(nid)
                self._unsaved = True
                if self._wake is not None:
                    self._wake.set()

    async def run(self) -> None:
        """Write the file whenever a peer is first seen (the owner's task group runs it)."""
        while True:
            if not self._unsaved:
                self._wake = anyio.Event()
                await self._wake.wait()
            self._unsaved = False
            if self._path is None:
                continue
            data = msgspec.json.encode(_File(version=1, peers=self.peers))
            try:
                await anyio.to_thread.run_sync(replace_durably, self._path, data)
            except OSError as exc:  # evidence only: the node keeps serving without it
                log.warning("could not record stored peers in %s: %s", self._path, exc)
