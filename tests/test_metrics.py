"""OpenTelemetry instruments of a node (``framework.metrics``) and the status page's
``performance`` section (``PerformanceMetrics``).

Each test that reads instruments gives its nodes a meter provider of its own, with an
in-memory reader, so tests running side by side (pytest-xdist) never share global state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from opentelemetry import metrics
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from framework.metrics import (
    GaugeReadings,
    NodeInstruments,
    PerformanceMetrics,
    configure_from_environment,
    provider_from_environment,
)
from framework.seams import LockStats, PeerLinkStats, PoolStats, QueueStats
from framework.transport.base import answer_request
from framework.transport.wire import ClientRequest, KVOp
from tests.runtime.inprocess_cluster import Cluster
from tests.runtime.inprocess_cluster import cluster as memory_cluster

WRITES = 12

PERFORMANCE_KEYS = {"locks", "queues", "circuit_breakers", "timeouts", "metrics", "connection_pool"}
"""The ``performance`` section of the status page, as the README and ``raftmw status`` show."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- reading what the SDK collected ------------------------------------------------------------


def points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, data point) of every point of instrument ``name``, as collected now."""
    data = reader.get_metrics_data()
    found = []
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
    return found


def by_node(reader: InMemoryMetricReader, name: str, **attributes: Any) -> dict[int, Any]:
    """Node id -> the value of ``name`` (sum or gauge), for points carrying ``attributes``."""
    return {
        attrs["raftmw.node_id"]: point.value
        for attrs, point in points(reader, name)
        if all(attrs.get(k) == v for k, v in attributes.items())
    }


# -- a cluster on the in-memory network, its nodes reporting to one provider -----------------


@asynccontextmanager
async def cluster(
    provider: MeterProvider | None, n: int = 3, **settings: object
) -> AsyncIterator[Cluster]:
    async with memory_cluster(
        n, seed=11, cluster_id="metrics", meter_provider=provider, **settings
    ) as c:
        yield c


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


# -- the instruments on a live cluster ---------------------------------------------------------


@pytest.mark.anyio
async def test_counters_and_gauges_follow_a_cluster_through_writes(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    async with cluster(provider, **{"flags.circuit_breaker": True}) as c, c.client() as client:
        leader = await c.wait_leader()
        for i in range(WRITES):
            await client.put(f"k{i}", str(i))
        # Followers learn the commit index with the next heartbeat; gauges are refreshed
        # when a node publishes its status (every tick): poll until they caught up.
        with anyio.fail_after(10):
            while True:
                committed = by_node(reader, "raftmw.entries.committed")
                applied = by_node(reader, "raftmw.entries.applied")
                is_leader = by_node(reader, "raftmw.is_leader")
                if (
                    len(committed) == 3
                    and min(committed.values()) >= WRITES
                    and min(applied.values(), default=0) >= WRITES
                    and is_leader == {nid: int(nid == leader) for nid in c.nodes}
                ):
                    break
                await anyio.sleep(0.01)

        # Every point carries the node's identity.
        for attrs, _ in points(reader, "raftmw.entries.committed"):
            assert attrs["raftmw.cluster_id"] == "metrics"
        proposals = by_node(reader, "raftmw.proposals")
        assert proposals[leader] >= WRITES
        assert set(proposals) == {leader}  # followers propose nothing
        batches = {a["raftmw.node_id"]: p for a, p in points(reader, "raftmw.proposal.batch_size")}
        assert batches[leader].sum == proposals[leader]
        assert 1 <= batches[leader].count <= proposals[leader]
        readies = {a["raftmw.node_id"]: p for a, p in points(reader, "raftmw.ready.duration")}
        assert set(readies) == set(c.nodes) and all(p.count >= 1 for p in readies.values())
        assert by_node(reader, "raftmw.entries.persisted")[leader] >= WRITES

        assert by_node(reader, "raftmw.elections").get(leader, 0) >= 1
        assert all(v >= 1 for v in by_node(reader, "raftmw.leader.changes").values())
        terms = by_node(reader, "raftmw.term")
        assert set(terms) == set(c.nodes) and min(terms.values()) >= 1
        lag = by_node(reader, "raftmw.apply.lag")
        assert set(lag) == set(c.nodes) and min(lag.values()) >= 0
        depths = {
            (a["raftmw.node_id"], a["queue"]) for a, _ in points(reader, "raftmw.queue.depth")
        }
        assert depths == {(nid, q) for nid in c.nodes for q in ("inbox", "proposals")}
        timeouts = by_node(reader, "raftmw.timeouts", operation="client_request")
        assert set(timeouts) == set(c.nodes) and min(timeouts.values()) > 0
        # With the circuit breaker on, the leader keeps a breaker per peer; all are closed.
        breakers = [
            (a["raftmw.node_id"], a["peer"], p.value)
            for a, p in points(reader, "raftmw.circuit_breaker.state")
        ]
        assert {(nid, peer) for nid, peer, _ in breakers if nid == leader} == {
            (leader, peer) for peer in c.nodes if peer != leader
        }
        assert {value for _, _, value in breakers} == {0}


@pytest.mark.anyio
async def test_refused_requests_are_counted_by_reason(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    async with cluster(provider) as c:
        leader = await c.wait_leader()
        follower = next(nid for nid in c.nodes if nid != leader)
        for seq in (1, 2):
            response = await answer_request(
                c.nodes[follower],
                ClientRequest(
                    id=seq, body=KVOp(op="put", key="k", value="v", client_id=1, seq=seq)
                ),
            )
            assert response.error is not None and response.error.kind == "not_leader"
        # Reported by the follower's next Ready-loop iteration (its next tick at the latest).
        with anyio.fail_after(5):
            while by_node(reader, "raftmw.client.rejections", reason="not_leader") != {follower: 2}:
                await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_a_request_that_expires_is_counted_as_a_timeout(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # Without check-quorum an isolated leader stays leader and its write never commits:
    # the deadline sweep answers it, and the rejection's reason is "timeout".
    settings = {"raft.check_quorum": False, "client.request_timeout": "300ms"}
    async with cluster(provider, **settings) as c:
        leader = await c.wait_leader()
        c.network.isolate(leader)
        with anyio.fail_after(5):
            response = await answer_request(
                c.nodes[leader],
                ClientRequest(id=1, body=KVOp(op="put", key="k", value="v", client_id=2, seq=1)),
            )
        assert response.error is not None and response.error.kind == "retry"
        with anyio.fail_after(5):
            while by_node(reader, "raftmw.client.rejections", reason="timeout") != {leader: 1}:
                await anyio.sleep(0.01)
        assert by_node(reader, "raftmw.client.rejections", reason="retry") == {}


@pytest.mark.anyio
async def test_a_stopped_node_leaves_the_gauges(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    async with cluster(provider, n=1) as c:
        await c.wait_leader()
        assert by_node(reader, "raftmw.is_leader") == {1: 1}
    assert by_node(reader, "raftmw.is_leader") == {}


@pytest.mark.anyio
async def test_without_an_sdk_the_node_runs_unchanged() -> None:
    # The default global provider is the API's proxy: no-op until an SDK is installed.
    assert not type(metrics.get_meter_provider()).__module__.startswith("opentelemetry.sdk")
    async with cluster(None) as c, c.client() as client:
        await client.put("x", "1")
        assert await client.append("x", "2") == "12"
        assert await client.get("x") == "12"
        leader = await c.wait_leader()
        status = await c.nodes[leader].status()
    assert set(status["performance"]) == PERFORMANCE_KEYS
    assert status["performance"]["metrics"]["proposals"] >= 2


def test_nodes_sharing_a_provider_are_all_observed(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # An SDK meter returns the instrument already registered under a name, callbacks and
    # all: a gauge per node would report only the first node.
    nodes = [
        NodeInstruments(
            node_id=nid,
            cluster_id="c",
            readings=lambda nid=nid: GaugeReadings(term=nid, commit=10, applied=10 - nid),
            meter_provider=provider,
        )
        for nid in (1, 2)
    ]
    for node in nodes:
        node.start(commit_index=0)
    assert by_node(reader, "raftmw.term") == {1: 1, 2: 2}
    assert by_node(reader, "raftmw.apply.lag") == {1: 1, 2: 2}
    nodes[0].close()
    assert by_node(reader, "raftmw.term") == {2: 2}


def test_commits_are_counted_from_the_recovered_commit_index(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    node = NodeInstruments(
        node_id=1, cluster_id="c", readings=GaugeReadings, meter_provider=provider
    )
    node.start(commit_index=40)  # a restarted node: 40 entries committed before it stopped
    node.on_ready(entries_persisted=0, commit_index=40, applied=0, duration_s=0.001)
    node.on_ready(entries_persisted=3, commit_index=43, applied=3, duration_s=0.002)
    assert by_node(reader, "raftmw.entries.committed") == {1: 3}
    assert by_node(reader, "raftmw.entries.applied") == {1: 3}
    assert by_node(reader, "raftmw.entries.persisted") == {1: 3}
    ((_, ready),) = points(reader, "raftmw.ready.duration")
    assert ready.count == 2


def test_instruments_on_the_no_op_provider_accept_every_call() -> None:
    node = NodeInstruments(
        node_id=1, cluster_id="c", readings=GaugeReadings, meter_provider=NoOpMeterProvider()
    )
    node.start(commit_index=0)
    node.on_ready(entries_persisted=1, commit_index=1, applied=1, duration_s=0.0)
    node.on_proposals(1)
    node.on_election_won()
    node.on_leader_change()
    node.on_rejections({"overloaded": 2})
    node.close()


# -- PerformanceMetrics ------------------------------------------------------------------------


def test_performance_metrics_to_dict_is_the_status_page_section() -> None:
    queue = QueueStats(name="inbox", depth=1, capacity=None, max_depth=4, enqueued=9, rejected=0)
    perf = PerformanceMetrics(
        locks={"status_store": LockStats(5, 1, 0.12345678), "metrics": LockStats()},
        queues={"inbox": queue, "proposals": queue},
        circuit_breakers={2: "closed", 3: "open"},
        timeouts={"client_request": {"count": 3, "timeouts": 1, "timeout_seconds": 2.0}},
        metrics={"proposals": 7, "proposal_batch": {"count": 2, "sum": 7}},
        connection_pool=PoolStats(
            connections_open=1,
            queued=2,
            dial_attempts=3,
            dropped=4,
            peers={
                2: PeerLinkStats(
                    peer=2, address="h:2", state="connected", queued=2, dial_attempts=3, dropped=4
                )
            },
        ),
    )
    queue_dict = {
        "depth": 1,
        "capacity": None,
        "max_depth": 4,
        "enqueued": 9,
        "rejected": 0,
        "effective_capacity": None,
        "memory_pressure": None,
        "rejected_by_reason": {},
    }
    assert perf.to_dict() == {
        "locks": {
            "status_store": {"acquisitions": 5, "contended": 1, "wait_seconds": 0.123457},
            "metrics": {"acquisitions": 0, "contended": 0, "wait_seconds": 0.0},
        },
        "queues": {"inbox": queue_dict, "proposals": queue_dict},
        "circuit_breakers": {"2": "closed", "3": "open"},
        "timeouts": {"client_request": {"count": 3, "timeouts": 1, "timeout_seconds": 2.0}},
        "metrics": {"proposals": 7, "proposal_batch": {"count": 2, "sum": 7}},
        "connection_pool": {
            "connections_open": 1,
            "queued": 2,
            "dial_attempts": 3,
            "dropped": 4,
            "peers": {
                "2": {
                    "address": "h:2",
                    "state": "connected",
                    "queued": 2,
                    "dial_attempts": 3,
                    "dropped": 4,
                    "restarts": 0,
                }
            },
        },
    }
    assert set(perf.to_dict()) == PERFORMANCE_KEYS


def test_performance_metrics_without_a_connection_pool() -> None:
    perf = PerformanceMetrics(locks={}, queues={}, circuit_breakers={}, timeouts={}, metrics={})
    assert perf.to_dict()["connection_pool"] is None


# -- exporting from the environment ------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "none", "NONE"])
def test_no_exporter_asked_for_means_no_provider(value: str | None) -> None:
    env = {} if value is None else {"OTEL_METRICS_EXPORTER": value}
    assert provider_from_environment(env) is None
    assert configure_from_environment(env) is False


def test_an_unknown_exporter_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert provider_from_environment({"OTEL_METRICS_EXPORTER": "carrier-pigeon"}) is None
    assert "carrier-pigeon" in caplog.text and "expected console, otlp or none" in caplog.text


def test_the_console_exporter_builds_an_sdk_provider() -> None:
    provider = provider_from_environment({"OTEL_METRICS_EXPORTER": "console"})
    try:
        assert isinstance(provider, MeterProvider)
    finally:
        if provider is not None:
            provider.shutdown()
