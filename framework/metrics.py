"""Observability: the node's OpenTelemetry instruments and the ``PerformanceMetrics`` snapshot.

Theory of operation
-------------------
Only the OpenTelemetry *API* is a dependency. Until an SDK ``MeterProvider`` is installed
every instrument is a no-op, so a node pays one method call per Ready and nothing per
request. The ``otel`` extra installs the SDK; ``raftmw node`` then exports when
``OTEL_METRICS_EXPORTER`` asks it to (``configure_from_environment``).

Three rules keep the instruments off the hot path:

- The node calls `NodeInstruments` at most once per Ready, per proposal batch, per role
  change, or per Ready-loop iteration (refused requests are tallied in a dict and handed
  over in one call). Never per log entry, never per request.
- Gauges are *observable*: the SDK calls them when it collects, possibly from its exporter
  thread. They read a frozen `GaugeReadings` that the node replaces, on the event loop,
  whenever it publishes its status (at most once per tick, and at once on a role change).
  So a collection takes no lock, touches no component, and never races the event loop
  (reading a breaker's state may move it from open to half-open: that must happen on the
  loop).
- Instruments belong to a meter, not to a node. An SDK meter hands back the instrument
  already registered under a name, callbacks and all, so a second node creating its own
  ``raftmw.term`` gauge would silently never be observed. One `_MeterInstruments` per
  provider therefore holds the instruments, and its gauge callbacks report every node
  registered with it, each under its own ``raftmw.node_id`` / ``raftmw.cluster_id``.
  Install a global provider before the first node starts (or pass ``meter_provider``).

`PerformanceMetrics` is the plan's struct (lock stats, backpressure snapshot, breaker
states, timeout stats) plus the counters of the ``metrics`` seam and the connection pool:
the ``performance`` section of the status page, which ``raftmw status`` and the admin API
return.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

import framework
from framework.seams import LockStats, PoolStats, QueueStats

if TYPE_CHECKING:
    from framework.runtime.components import Components

__all__ = [
    "BREAKER_STATE_VALUES",
    "GaugeReadings",
    "NodeInstruments",
    "PerformanceMetrics",
    "configure_from_environment",
    "provider_from_environment",
]

log = logging.getLogger("raftmw.metrics")

METER_NAME = "raftmw"

BREAKER_STATE_VALUES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}
"""``raftmw.circuit_breaker.state`` values: the higher, the less traffic gets through."""

QUEUES: tuple[str, ...] = ("inbox", "proposals")
"""The node's queues (``queue:<name>`` slots), as reported on gauges and status pages."""


# -- gauges: what the node last published ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GaugeReadings:
    """What the observable gauges report for one node, as of its last status publish."""

    term: int = 0
    is_leader: bool = False
    commit: int = 0
    applied: int = 0
    queue_depths: Mapping[str, int] = field(default_factory=dict)
    queue_stats: Mapping[str, QueueStats] = field(default_factory=dict)
    """Queue -> its stats, for the adaptive capacity and memory pressure gauges."""
    breaker_states: Mapping[int, str] = field(default_factory=dict)
    """Peer -> ``closed`` / ``half_open`` / ``open`` (empty without a circuit breaker)."""
    timeouts: Mapping[str, float] = field(default_factory=dict)
    """Operation -> the timeout in force, in seconds."""

    @classmethod
    def collect(
        cls, components: Components, *, term: int, is_leader: bool, commit: int, applied: int
    ) -> GaugeReadings:
        """Read the components; call on the event loop, never from a gauge callback."""
        return cls(
            term=term,
            is_leader=is_leader,
            commit=commit,
            applied=applied,
            queue_depths={name: len(components.get(f"queue:{name}")) for name in QUEUES},
            queue_stats={name: components.get(f"queue:{name}").stats() for name in QUEUES},
            breaker_states=dict(components.send_guard.states()),
            timeouts={
                operation: float(stats["timeout_seconds"])
                for operation, stats in components.timeouts.stats().items()
                if "timeout_seconds" in stats
            },
        )


# -- the instruments ---------------------------------------------------------------------------


class _MeterInstruments:
    """The instruments of one meter provider, shared by every node that reports to it."""

    def __init__(self, provider: MeterProvider | None) -> None:
        meter = metrics.get_meter(METER_NAME, framework.__version__, meter_provider=provider)
        self._lock = threading.Lock()
        """Guards ``_nodes`` between the event loop (register) and the exporter (collect)."""
        self._nodes: weakref.WeakSet[NodeInstruments] = weakref.WeakSet()

        self.proposals = meter.create_counter(
            "raftmw.proposals", unit="{entry}", description="Entries proposed by this node."
        )
        self.persisted = meter.create_counter(
            "raftmw.entries.persisted", unit="{entry}", description="Log entries written."
        )
        self.committed = meter.create_counter(
            "raftmw.entries.committed",
            unit="{entry}",
            description="Advance of the commit index (entries known committed).",
        )
        self.applied = meter.create_counter(
            "raftmw.entries.applied",
            unit="{entry}",
            description="Committed entries applied to the state machine.",
        )
        self.elections = meter.create_counter(
            "raftmw.elections",
            unit="{election}",
            description="Elections this node won (it became leader in a new term).",
        )
        self.leader_changes = meter.create_counter(
            "raftmw.leader.changes",
            unit="{change}",
            description="Changes of the leader this node knows of.",
        )
        self.rejections = meter.create_counter(
            "raftmw.client.rejections",
            unit="{request}",
            description=(
                "Client requests answered with an error, by reason: overloaded, not_leader, "
                "retry, timeout (no outcome before the deadline), unavailable, bad_request."
            ),
        )
        self.batch_size = meter.create_histogram(
            "raftmw.proposal.batch_size",
            unit="{entry}",
            description="Entries per proposal batch (one batch per Ready-loop iteration).",
        )
        self.ready_duration = meter.create_histogram(
            "raftmw.ready.duration",
            unit="s",
            description="Time to handle one Ready: send, persist, apply, answer.",
        )
        meter.create_observable_gauge(
            "raftmw.apply.lag",
            callbacks=[self._apply_lag],
            unit="{entry}",
            description="Commit index minus applied index.",
        )
        meter.create_observable_gauge(
            "raftmw.term", callbacks=[self._term], description="The node's current term."
        )
        meter.create_observable_gauge(
            "raftmw.is_leader",
            callbacks=[self._is_leader],
            description="1 while this node is the leader, else 0.",
        )
        meter.create_observable_gauge(
            "raftmw.queue.depth",
            callbacks=[self._queue_depth],
            unit="{item}",
            description="Items waiting in a node queue (attribute queue: inbox, proposals).",
        )
        meter.create_observable_gauge(
            "raftmw.queue.effective_capacity",
            callbacks=[self._queue_capacity],
            unit="{item}",
            description="A bounded queue's admission limit now (it adapts to how fast the "
            "queue drains; attribute queue). Absent for unbounded queues.",
        )
        meter.create_observable_gauge(
            "raftmw.queue.memory_pressure",
            callbacks=[self._memory_pressure],
            description="Memory use as a fraction of the budget, as a queue that sheds "
            "under memory pressure last read it (attribute queue).",
        )
        meter.create_observable_gauge(
            "raftmw.circuit_breaker.state",
            callbacks=[self._breaker_state],
            description="Per-peer breaker state: 0 closed, 1 half_open, 2 open.",
        )
        meter.create_observable_gauge(
            "raftmw.timeouts",
            callbacks=[self._timeouts],
            unit="s",
            description="The timeout in force per operation (attribute operation).",
        )

    # -- the nodes reporting here

    def register(self, node: NodeInstruments) -> None:
        with self._lock:
            self._nodes.add(node)

    def unregister(self, node: NodeInstruments) -> None:
        with self._lock:
            self._nodes.discard(node)

    def _readings(self) -> list[tuple[Mapping[str, Any], GaugeReadings]]:
        with self._lock:
            nodes = list(self._nodes)
        return [(node.attributes, node.readings()) for node in nodes]

    # -- gauge callbacks (any thread)

    def _apply_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.commit - r.applied, a) for a, r in self._readings()]

    def _term(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.term, a) for a, r in self._readings()]

    def _is_leader(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(r.is_leader), a) for a, r in self._readings()]

    def _queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(depth, {**a, "queue": name})
            for a, r in self._readings()
            for name, depth in r.queue_depths.items()
        ]

    def _queue_capacity(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.effective_capacity, {**a, "queue": name})
            for a, r in self._readings()
            for name, s in r.queue_stats.items()
            if s.effective_capacity is not None
        ]

    def _memory_pressure(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.memory_pressure, {**a, "queue": name})
            for a, r in self._readings()
            for name, s in r.queue_stats.items()
            if s.memory_pressure is not None
        ]

    def _breaker_state(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(BREAKER_STATE_VALUES[state], {**a, "peer": peer})
            for a, r in self._readings()
            for peer, state in r.breaker_states.items()
            if state in BREAKER_STATE_VALUES
        ]

    def _timeouts(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(seconds, {**a, "operation": operation})
            for a, r in self._readings()
            for operation, seconds in r.timeouts.items()
        ]


_SHARED: weakref.WeakKeyDictionary[object, _MeterInstruments] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def _instruments_for(provider: MeterProvider | None) -> _MeterInstruments:
    """The shared instruments of ``provider`` (None: the global one, proxied until set)."""
    key = metrics.get_meter_provider() if provider is None else provider
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = _MeterInstruments(provider)
        return shared


class NodeInstruments:
    """One node's view of the instruments: its attributes, its counters, its gauge readings.

    ``readings`` returns the node's latest `GaugeReadings`; it is called at collection time,
    maybe from another thread, so it must only return a value the node already built.
    Gauges report the node from ``start`` until ``close``.
    """

    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        readings: Callable[[], GaugeReadings],
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.attributes: Mapping[str, Any] = {
            "raftmw.node_id": node_id,
            "raftmw.cluster_id": cluster_id,
        }
        self.readings = readings
        self._shared = _instruments_for(meter_provider)
        self._commit = 0
        self._by_reason: dict[str, Mapping[str, Any]] = {}

    def start(self, *, commit_index: int) -> None:
        """The node serves from ``commit_index`` (what it recovered): count commits after it,
        and report this node on the gauges."""
        self._commit = commit_index
        self._shared.register(self)

    def set_mode(self, flags_on: Iterable[str]) -> None:
        """Label this node's measurements with the flags it has on (``raftmw.mode``, sorted
        and comma-joined), so a dashboard can split any measurement by mode: during a staged
        migration, the migrated cohort from the rest. Called at start and on flag changes."""
        mode = ",".join(sorted(flags_on)) or "-"
        self.attributes = {**self.attributes, "raftmw.mode": mode}
        self._by_reason = {}

    def close(self) -> None:
        """The node stopped: its gauges stop reporting. Idempotent."""
        self._shared.unregister(self)

    def on_ready(
        self, *, entries_persisted: int, commit_index: int, applied: int, duration_s: float
    ) -> None:
        """One Ready handled in ``duration_s`` seconds: ``entries_persisted`` entries written,
        the commit index now at ``commit_index``, ``applied`` entries applied."""
        shared, attributes = self._shared, self.attributes
        if entries_persisted:
            shared.persisted.add(entries_persisted, attributes)
        if commit_index > self._commit:
            shared.committed.add(commit_index - self._commit, attributes)
            self._commit = commit_index
        if applied:
            shared.applied.add(applied, attributes)
        shared.ready_duration.record(duration_s, attributes)

    def on_proposals(self, n: int) -> None:
        """One batch of ``n`` entries proposed (once per Ready-loop iteration at most)."""
        self._shared.proposals.add(n, self.attributes)
        self._shared.batch_size.record(n, self.attributes)

    def on_election_won(self) -> None:
        self._shared.elections.add(1, self.attributes)

    def on_leader_change(self) -> None:
        self._shared.leader_changes.add(1, self.attributes)

    def on_rejections(self, counts: Mapping[str, int]) -> None:
        """Client requests answered with an error since the last call, per reason."""
        for reason, n in counts.items():
            attributes = self._by_reason.get(reason)
            if attributes is None:
                attributes = self._by_reason[reason] = {**self.attributes, "reason": reason}
            self._shared.rejections.add(n, attributes)


# -- the status page's performance section -----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceMetrics:
    """The plan's ``PerformanceMetrics``: lock stats, backpressure (queue) snapshot, breaker
    states and timeout stats, plus the ``metrics`` seam's counters and the connection pool.

    ``to_dict()`` is the ``performance`` section of the status page; its keys are a public
    interface (``raftmw status --json``, the admin API)."""

    locks: Mapping[str, LockStats]
    """Per component slot; all zero for lock-free components (the plan's eliminated locks)."""
    queues: Mapping[str, QueueStats]
    circuit_breakers: Mapping[int, str]
    timeouts: Mapping[str, Mapping[str, float]]
    metrics: Mapping[str, Any]
    connection_pool: PoolStats | None = None
    """None when the transport keeps no connections (the in-memory network)."""

    @classmethod
    def collect(cls, components: Components) -> PerformanceMetrics:
        pool = components.connection_pool
        return cls(
            locks=components.lock_stats(),
            queues={name: components.get(f"queue:{name}").stats() for name in QUEUES},
            circuit_breakers=dict(components.send_guard.states()),
            timeouts={k: dict(v) for k, v in components.timeouts.stats().items()},
            metrics=dict(components.metrics.snapshot()),
            connection_pool=None if pool is None else pool.stats(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "locks": {
                slot: {
                    "acquisitions": s.acquisitions,
                    "contended": s.contended,
                    "wait_seconds": round(s.wait_seconds, 6),
                }
                for slot, s in self.locks.items()
            },
            "queues": {name: _queue_dict(stats) for name, stats in self.queues.items()},
            "circuit_breakers": {str(k): v for k, v in self.circuit_breakers.items()},
            "timeouts": {k: dict(v) for k, v in self.timeouts.items()},
            "metrics": dict(self.metrics),
            "connection_pool": _pool_dict(self.connection_pool),
        }


def _queue_dict(stats: QueueStats) -> dict[str, Any]:
    return {
        "depth": stats.depth,
        "capacity": stats.capacity,
        "max_depth": stats.max_depth,
        "enqueued": stats.enqueued,
        "rejected": stats.rejected,
        "effective_capacity": stats.effective_capacity,
        "memory_pressure": stats.memory_pressure,
        "rejected_by_reason": dict(stats.rejected_by_reason or {}),
    }


def _pool_dict(stats: PoolStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {
        "connections_open": stats.connections_open,
        "queued": stats.queued,
        "dial_attempts": stats.dial_attempts,
        "dropped": stats.dropped,
        "peers": {
            str(peer): {
                "address": p.address,
                "state": p.state,
                "queued": p.queued,
                "dial_attempts": p.dial_attempts,
                "dropped": p.dropped,
                "restarts": p.restarts,
            }
            for peer, p in stats.peers.items()
        },
    }


# -- exporting: an SDK provider from the environment ------------------------------------------

_OTLP_EXPORTERS = (
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
)


def provider_from_environment(environ: Mapping[str, str] | None = None) -> MeterProvider | None:
    """An SDK ``MeterProvider`` exporting as ``OTEL_METRICS_EXPORTER`` asks, or None.

    ``console`` prints to stdout; ``otlp`` needs an OTLP exporter package (grpc or http).
    Unset, ``none``, an unknown exporter, or no SDK installed (the ``otel`` extra): None,
    with a warning for the last two. The SDK itself reads the other standard variables
    (``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_EXPORTER_OTLP_*``).
    """
    env = os.environ if environ is None else environ
    wanted = env.get("OTEL_METRICS_EXPORTER", "").strip().lower()
    if wanted in ("", "none"):
        return None
    try:
        from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        log.warning(
            "OTEL_METRICS_EXPORTER=%s but the OpenTelemetry SDK is not installed; "
            "install raftmw[otel] to export metrics",
            wanted,
        )
        return None
    exporter: MetricExporter
    if wanted == "console":
        exporter = ConsoleMetricExporter()
    elif wanted == "otlp":
        for module_name in _OTLP_EXPORTERS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            exporter = module.OTLPMetricExporter()
            break
        else:
            log.warning(
                "OTEL_METRICS_EXPORTER=otlp but no OTLP exporter is installed; install "
                "opentelemetry-exporter-otlp to export metrics"
            )
            return None
    else:
        log.warning(
            "OTEL_METRICS_EXPORTER=%s is not an exporter raftmw sets up; expected console, "
            "otlp or none",
            wanted,
        )
        return None
    reader = PeriodicExportingMetricReader(exporter)
    return SDKMeterProvider(metric_readers=[reader], resource=Resource.create())


def configure_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Install `provider_from_environment` as the global provider, unless an SDK provider is
    already installed (by ``opentelemetry-instrument``, say). Call before any node starts.
    Returns whether it installed one."""
    current = metrics.get_meter_provider()
    if type(current).__module__.startswith("opentelemetry.sdk"):
        return False
    provider = provider_from_environment(environ)
    if provider is None:
        return False
    metrics.set_meter_provider(provider)
    return True
