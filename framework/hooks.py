"""Every raftmw hook specification: the seams plugins implement.

raftmw uses pluggy (project name ``raftmw``). Plugins are modules or objects with functions
marked ``@hookimpl``; they are found through the ``raftmw`` entry point group (built-in
plugins too) and registered by ``framework.plugins.PluginHost``.

Hooks are synchronous and never called per log entry or per message: a factory hook builds
a component when a node starts or a flag changes, a declaration hook is called once at
start, and an observer hook is called on a rare event (a role change, a swap).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from framework.config import Settings
    from framework.flags import Evaluation, FlagSpec
    from framework.seams import (
        ConnectionPool,
        MessageQueue,
        MetricsPrimitives,
        PeerDialer,
        SendGuard,
        StatusStore,
        TimeoutPolicy,
    )
    from framework.services import Service, ServiceContext
    from framework.transport.base import Transport

__all__ = ["BuildContext", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("raftmw")
hookimpl = pluggy.HookimplMarker("raftmw")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildContext:
    """What a factory hook knows when it builds a component."""

    node_id: int
    settings: Settings
    flags: Mapping[str, Evaluation]
    """This node's flag evaluations at build time."""

    def flag(self, name: str) -> bool:
        """The evaluated value of flag ``name`` (False if no plugin declares it)."""
        evaluation = self.flags.get(name)
        return bool(evaluation and evaluation.value)


# ===========================================================================================
# Declarations: called once when the plugin host starts
# ===========================================================================================


@hookspec
def raftmw_declare_flags() -> Sequence[FlagSpec]:  # type: ignore[empty-body]
    """Flags this plugin reads, with their defaults.

    Called once at start, on every registered plugin; the results are merged. Declaring the
    same flag twice with different defaults is an error naming both plugins.
    """


@hookspec
def raftmw_validate_settings(settings: Settings) -> Sequence[str]:  # type: ignore[empty-body]
    """Problems with the settings this plugin uses, as messages naming key, value and what
    was expected. Called once at start, after settings load; any problem stops the node."""


@hookspec
def raftmw_add_cli(group: click.Group) -> None:
    """Add subcommands to the ``raftmw`` command group. Called once when the CLI starts."""


# ===========================================================================================
# Seams: one component per node each. ``firstresult``: the host asks the implementations in
# pluggy's order (tryfirst, normal, trylast; later-registered first within a class) and
# takes the first non-None answer. Two plugins answering at the same priority class is an
# error naming both. A factory answers None when its flag condition does not hold.
# The component takes effect at node start, or at the next swap after a flag change.
# ===========================================================================================


@hookspec(firstresult=True)
def raftmw_make_status_store(ctx: BuildContext) -> StatusStore | None:
    """Build the node status store (flag ``actors``: RwLock-guarded vs actor)."""


@hookspec(firstresult=True)
def raftmw_make_queue(
    ctx: BuildContext, name: str, on_shed: Callable[[Any], None]
) -> MessageQueue[Any] | None:
    """Build the queue ``name`` between two tasks: ``inbox`` (peer messages to the Ready loop)
    or ``proposals`` (client writes to the Ready loop). Flag ``backpressure``: unbounded vs
    bounded with priorities and shedding.

    A queue that drops an item it had accepted (evicted for a higher priority one, or not
    fitting when taking over a predecessor's items) passes it to ``on_shed`` so its owner
    learns of it (a client gets ``Overloaded``)."""


@hookspec(firstresult=True)
def raftmw_make_timeouts(ctx: BuildContext) -> TimeoutPolicy | None:
    """Build the per-operation timeout policy (flag ``adaptive_timeout``: fixed vs adaptive)."""


@hookspec(firstresult=True)
def raftmw_make_send_guard(ctx: BuildContext) -> SendGuard | None:
    """Build the guard around peer sends (flag ``circuit_breaker``: none vs breakers)."""


@hookspec(firstresult=True)
def raftmw_make_metrics(ctx: BuildContext) -> MetricsPrimitives | None:
    """Build the metrics primitives (flag ``lock_free``: lock-guarded vs lock-free)."""


@hookspec(firstresult=True)
def raftmw_make_connection_pool(ctx: BuildContext, dialer: PeerDialer) -> ConnectionPool | None:
    """Build the pool of connections this node dials to its higher-id peers (flag
    ``actors``: one lock around every connection vs one task per peer).

    ``dialer`` is the transport's: the pool dials and encodes through it and reports lost
    messages to it. Only built for a transport that keeps connections (TCP); a node on the
    in-memory network has no pool. The factory must only construct: the pool starts dialling
    when its ``run`` has started and the transport has given it the address book."""


@hookspec(firstresult=True)
def raftmw_make_transport(
    ctx: BuildContext, kind: str, listen: str, peers: Mapping[int, str], cluster_id: str
) -> Transport | None:
    """Build the node's transport for ``transport.kind`` (``kind``), listening on ``listen``
    and reaching ``peers`` (node id -> address, this node included). Answer None for a
    kind this plugin does not provide. Called once when ``raftmw node`` starts, before
    flags are evaluated (``ctx.flags`` is empty: the kind selects the transport); a
    transport is not swapped while the node runs."""


# ===========================================================================================
# Wrappers: called once when a node is built, each answer wrapping the previous one
# ===========================================================================================


@hookspec
def raftmw_wrap_log_store(node_id: int, settings: Settings, inner: Any) -> Any:
    """A log store wrapping ``inner`` (same ``LogStore`` protocol), or None to leave it.

    Called once when a ``RaftNode`` is built; every non-None answer wraps the one before
    (pluggy's call order), so fault injection (``chaos``) or accounting can sit around the
    store without the node knowing. A wrapper must keep the protocol's durability promise
    (``save_ready`` returns only once the data is stored as ``sync`` says)."""


@hookspec
def raftmw_wrap_transport(node_id: int, settings: Settings, inner: Any) -> Any:
    """A transport wrapping ``inner`` (same ``Transport`` protocol), or None to leave it.

    Called once when a ``RaftNode`` is built, like ``raftmw_wrap_log_store``. The wrapper's
    ``serve`` must run the inner ``serve`` and may start tasks of its own beside it."""


# ===========================================================================================
# Services: long-running tasks beside the Ready loop (framework/services.py)
# ===========================================================================================


@hookspec
def raftmw_node_service(ctx: ServiceContext) -> Service | None:
    """A service to run on this node for as long as it runs, or None.

    Called once per node start on every plugin; every non-None answer is started in the
    node's task group after the node serves, and cancelled when it stops. ``AdminService``
    requests naming ``Service.name`` go to its ``handle``; its ``status()`` appears in the
    node's status page under ``services``. Two services with one name are an error at start.
    """


AnalysisMetric = Callable[[Mapping[str, Any], Mapping[str, Any]], "float | None"]
"""(a node's status page at a window's start, at its end) -> its value, or None."""


@hookspec
def raftmw_analysis_metrics() -> Mapping[str, AnalysisMetric]:  # type: ignore[empty-body]
    """Metrics a staged migration's analysis can check, by name (merged over plugins; a
    name already taken is an error at start).

    Each metric is a function of two status pages of one node, taken at the start and the
    end of a measurement window (``raftmw status --json``: ``health``, ``performance``, ...),
    returning the node's value over the window, or None when the node has no data. Called
    once when the migration service starts and by ``raftmw migrate check``."""


# ===========================================================================================
# Observers: called after the event, on the event loop; return values are ignored; an
# exception is logged and does not affect the node.
# ===========================================================================================


@hookspec
def raftmw_on_role_change(node_id: int, role: str, term: int, leader: int) -> None:
    """This node's role or known leader changed."""


@hookspec
def raftmw_on_leader_change(node_id: int, leader: int, term: int) -> None:
    """This node learned of a new leader (0: none known)."""


@hookspec
def raftmw_on_commit(node_id: int, commit_index: int) -> None:
    """The commit index advanced (called at most once per Ready, not per entry)."""


@hookspec
def raftmw_on_apply(node_id: int, applied_index: int, entries: int) -> None:
    """A batch of ``entries`` was applied, up to ``applied_index`` (once per Ready)."""


@hookspec
def raftmw_on_peer_up(node_id: int, peer: int) -> None:
    """A peer became reachable."""


@hookspec
def raftmw_on_peer_down(node_id: int, peer: int) -> None:
    """Messages to a peer could not be delivered."""


@hookspec
def raftmw_on_flag_change(
    node_id: int, flag: str, value: bool, reason: str, source: str, log_index: int | None
) -> None:
    """This node's evaluation of ``flag`` changed (cluster entry, override, or start)."""


@hookspec
def raftmw_on_plugin_swap(
    node_id: int, seam: str, old: str, new: str, ok: bool, error: str | None
) -> None:
    """A component swap finished (``ok``) or was aborted (the old one keeps running)."""


@hookspec
def raftmw_on_migration_event(
    node_id: int, migration: str, event: str, step: int, log_index: int, detail: str
) -> None:
    """A staged-migration record was applied on this node at ``log_index``: ``event`` is
    start, step, verdict, pause, resume, promote, rollback or complete; ``step`` counts from
    1 (0: none); ``detail`` is the reason or the measurements. Called on every node, once per
    record, in log order (not for records replayed at start)."""
