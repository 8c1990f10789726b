"""Node services: long-running plugin tasks that live beside the Ready loop.

A plugin answers ``raftmw_node_service`` with a `Service` when a node starts; the node runs
it in its own task group for as long as it runs (structured concurrency: the node owns
it), hands it a `ServiceContext`, and routes ``AdminService`` requests named for it to
its ``handle``. A service acts only through the context: it reads the replicated flag
state (and the migration journal in it), proposes flag changes as log entries, moves
leadership, and asks other nodes for their status through the ordinary admin API. It
never touches the kernel, so it cannot block or reorder the Ready loop.

The staged-migration controller (``migration/``) is such a service: it runs on every node
and acts only while its node leads, from the state it reads in the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from framework.auth import ClientCredentials
    from framework.config import Settings
    from framework.flags import ClusterFlagState, Evaluation, FlagChange, FlagRegistry

__all__ = ["Service", "ServiceContext", "ServiceError"]


class ServiceError(Exception):
    """A service refuses a request; the message (naming the input, the value and what was
    expected) goes back to the client as a ``bad_request``."""


class ServiceContext(Protocol):
    """What a node offers its services. Every method is safe to call from a service task."""

    @property
    def node_id(self) -> int: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> FlagRegistry:
        """Every flag the node's plugins declare."""
        ...

    @property
    def cluster_flags(self) -> ClusterFlagState:
        """The replicated flag state as applied on this node (read-only by use)."""
        ...

    @property
    def flags(self) -> Mapping[str, Evaluation]:
        """This node's current flag evaluations."""
        ...

    @property
    def members(self) -> Mapping[int, str]:
        """The cluster's voters and learners with their addresses (this node included)."""
        ...

    @property
    def credentials(self) -> ClientCredentials:
        """What a service connects to other nodes with, as a client: this node's own
        certificate when the cluster runs TLS (a node's identity may read status)."""
        ...

    def is_leader(self) -> bool: ...

    def leader(self) -> int:
        """The leader this node knows of (0: none)."""
        ...

    def require_leader(self) -> None:
        """Raise the node's not-leader refusal (the client follows it to the leader)."""
        ...

    async def propose_flags(self, change: FlagChange) -> int:
        """Validate ``change`` (`ServiceError` naming every problem), propose it as one
        ``flags`` entry, wait until this node applied it and return its log index. Raises
        `ServiceError` if the entry was refused when applied (a migration record out of
        turn), and the node's not-leader or retry refusals otherwise."""
        ...

    async def transfer_leader(self, to: int) -> None:
        """Move leadership to node ``to`` and wait until it leads (or the request times out)."""
        ...

    async def wait_changed(self) -> None:
        """Return after the node's next Ready-loop iteration (state may have changed)."""
        ...

    async def status(self) -> dict[str, Any]:
        """This node's status page (``raftmw status --json``)."""
        ...

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin (errors are logged, never raised)."""
        ...

    def plugin_answers(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """(plugin name, answer) of every plugin implementing ``hook`` (a declaration hook
        such as ``raftmw_analysis_metrics``), in pluggy's call order; None answers left out."""
        ...


@runtime_checkable
class Service(Protocol):
    name: str
    """The name ``AdminService`` requests use to reach it (``raftmw migrate`` -> migration)."""

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Run until cancelled (the node stops); report started when ready."""
        ...

    async def handle(self, action: str, payload: bytes) -> dict[str, Any]:
        """Answer an admin request; raise `ServiceError` for a bad one."""
        ...

    def status(self) -> dict[str, Any]:
        """This service's section of the node's status page (cheap: no awaits)."""
        ...
