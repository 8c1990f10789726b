"""Starting on an empty data directory: bootstrap a new cluster only when asked to.

Theory of operation
-------------------
A node that starts with no state and bootstraps its membership from ``--peers`` becomes a
voter with no vote and no log. If its data directory was wiped (a replaced disk, an operator
cleaning up) while the cluster kept running, it can then vote for a stale candidate and
help lose committed writes (a voter's log and vote must survive it, Raft §5.2/§5.4). So, as
etcd does with ``--initial-cluster-state``, bootstrapping is an explicit choice:

- ``--initial-cluster new``: an empty directory bootstraps the membership from ``--peers``
  (what ``raftmw cluster``, ``demo``, ``bench``, ``compare`` and the test harnesses pass for
  a cluster they create). The node still asks its peers first, and refuses if any of them
  has seen it store entries: a leader's replication progress showed ``match > 0`` for it,
  now or at any time before (every node remembers such peers in its data directory,
  ``stored_peers``). Then its directory was wiped, whatever the option says. A fresh node
  of a new cluster, however slow to start, has acknowledged nothing, so this never refuses
  one. A wiped node is not caught only if every node that ever led while it was a member is
  unreachable or lost its own directory too, which is why ``existing`` is the default.
- ``--initial-cluster existing`` (the default): an empty directory is refused. Before
  refusing, the node asks each peer for its status over the client protocol (a few
  seconds at most, all peers at once) so that the error says what it found: peers that
  already hold this cluster (then: ``raftmw members remove`` the node, restart it with
  ``--join``, ``raftmw members add`` it back), peers of another cluster, or no answer (then:
  pass ``--initial-cluster new`` to create the cluster, or ``--join``).
- ``--join``: start with no membership and wait to be added (no probe).

A directory that holds state ignores the option: the state says which cluster it belongs
to (``RaftNode`` refuses a directory of another node or cluster).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import anyio

from framework.client import KVClient
from framework.errors import RaftError

__all__ = [
    "DEFAULT_PROBE_TIMEOUT",
    "InitialCluster",
    "PeerView",
    "empty_directory_refusal",
    "probe_peers",
    "wiped_directory_refusal",
]

InitialCluster = Literal["new", "existing"]

DEFAULT_PROBE_TIMEOUT: Final = 5.0
"""Seconds a starting node waits for its peers' status before refusing to start."""


class PeerView:
    """What one peer said about itself (or why it said nothing)."""

    __slots__ = ("cluster_id", "commit", "match_of_me", "node_id", "problem", "stored_me", "term")

    def __init__(
        self,
        node_id: int,
        *,
        cluster_id: str = "",
        term: int = 0,
        commit: int = 0,
        match_of_me: int = 0,
        stored_me: bool = False,
        problem: str = "",
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.term = term
        self.commit = commit
        self.match_of_me = match_of_me
        """As a leader: the index up to which it knows the probing node's log matched its
        own (replication progress); above 0, the probing node once stored entries."""
        self.stored_me = stored_me
        """The peer has seen the probing node store entries, as leader now or before."""
        self.problem = problem

    @property
    def running(self) -> bool:
        """The peer answered and has taken part in an election (term > 0)."""
        return not self.problem and self.term > 0


async def probe_peers(
    peers: Mapping[int, str],
    *,
    node_id: int,
    timeout: float = DEFAULT_PROBE_TIMEOUT,
    **client: Any,
) -> list[PeerView]:
    """Ask every peer for its status at once (on behalf of node ``node_id``); each answer
    or problem, by node id."""
    me = str(node_id)
    views: dict[int, PeerView] = {}
    async with KVClient(dict(peers), timeout=timeout, connect_timeout=timeout, **client) as kv:

        async def ask(peer: int) -> None:
            try:
                with anyio.fail_after(timeout):
                    status = await kv.status(peer)
                progress = status.get("progress") or {}
                view = PeerView(
                    peer,
                    cluster_id=str(status.get("cluster_id", "")),
                    term=int(status.get("term", 0)),
                    commit=int(status.get("commit", 0)),
                    match_of_me=int((progress.get(me) or {}).get("match", 0)),
                    stored_me=node_id in (status.get("stored_peers") or ()),
                )
            except (RaftError, OSError, TimeoutError) as exc:
                view = PeerView(peer, problem=str(exc) or type(exc).__name__)
            except (TypeError, ValueError, AttributeError) as exc:  # a status of another shape
                view = PeerView(peer, problem=f"unexpected status: {exc}")
            views[peer] = view

        async with anyio.create_task_group() as tg:
            for peer in peers:
                tg.start_soon(ask, peer)
    return [views[nid] for nid in sorted(views)]


def wiped_directory_refusal(
    *, node_id: int, cluster_id: str, data_dir: str, views: list[PeerView]
) -> str | None:
    """With ``--initial-cluster new``: why node ``node_id`` must not bootstrap its empty
    ``data_dir`` after all (a peer saw it store entries), or None."""
    if any(v.cluster_id == cluster_id and (v.match_of_me > 0 or v.stored_me) for v in views):
        return empty_directory_refusal(
            node_id=node_id, cluster_id=cluster_id, data_dir=data_dir, views=views
        )
    return None


def empty_directory_refusal(
    *, node_id: int, cluster_id: str, data_dir: str, views: list[PeerView]
) -> str:
    """Why node ``node_id`` refuses to start on an empty ``data_dir``, and what to do."""
    members = [v for v in views if v.cluster_id == cluster_id and v.running]
    if members:
        seen = ", ".join(f"node {v.node_id} (term {v.term}, commit {v.commit})" for v in members)
        return (
            f"node {node_id}: the data directory {data_dir} is empty, but its peers already hold "
            f"cluster {cluster_id!r}: {seen}. A node whose data was lost must not rejoin as a "
            f"voter (it could vote for a stale candidate and lose committed writes). Remove "
            f"it with `raftmw members remove {node_id}`, start it with --join, then add it "
            f"back with `raftmw members add {node_id} HOST:PORT`."
        )
    others = [v for v in views if not v.problem and v.cluster_id != cluster_id]
    unanswered = [v for v in views if v.problem]
    found = "; ".join(
        [f"node {v.node_id} belongs to cluster {v.cluster_id!r}" for v in others]
        + [f"node {v.node_id} did not answer ({v.problem})" for v in unanswered]
        + [
            f"node {v.node_id} has no state yet"
            for v in views
            if not v.problem and v.cluster_id == cluster_id and not v.running
        ]
    )
    return (
        f"node {node_id}: the data directory {data_dir} is empty and no peer answered as a "
        f"running member of cluster {cluster_id!r} ({found or 'no peers'}). To create the "
        f"cluster, start every node with --initial-cluster new; to add this node to a "
        f"running cluster, start it with --join and `raftmw members add {node_id} HOST:PORT`."
    )
