"""``raftmw bench`` on real node processes: what its report counts, not how fast it is."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import pytest

from framework.runtime.bench import BenchOptions, run_bench
from framework.runtime.localcluster import LocalCluster


def test_bench_reports_cpu_per_node_and_for_the_load_generator() -> None:
    report = run_bench(
        BenchOptions(clients=4, connections=1, seconds=1.5, tls=False), progress=False
    )
    assert report["acknowledged_writes"] > 0
    cpu = report["cpu_seconds"]
    assert set(cpu["nodes"]) == {"1", "2", "3"}
    assert all(seconds >= 0 for seconds in cpu["nodes"].values())
    # The writers ran in this process: it spent CPU on them.
    assert cpu["load_generator"] > 0
    writes = report["acknowledged_writes"]
    whole = sum(cpu["nodes"].values()) + cpu["load_generator"]
    # The report's seconds are rounded to 1 ms each (4 of them), its result to 0.1 ms.
    slack = 0.1 + 4 * 0.0005 / writes * 1e6
    assert abs(report["cluster_cpu_ms_per_1000_writes"] - whole / writes * 1e6) <= slack
    assert set(report["idle_rss_mib"]) == {"1", "2", "3"}
    assert all(mib is not None and mib > 0 for mib in report["idle_rss_mib"].values())
    load = report["machine_load"]
    assert load["other_share"] is None or load["other_share"] >= 0


def test_a_cluster_that_does_not_serve_in_time_is_named_with_its_log(tmp_path: Path) -> None:
    # Nodes that were never started: the wait ends at its timeout, naming the first node
    # not serving and its log (a starved machine: raftmw bench --start-timeout).
    cluster = LocalCluster(tmp_path, nodes=2, cluster_id="slow", tls=False)
    with pytest.raises(TimeoutError, match=r"node 1 was not serving within 0\.5s") as err:
        anyio.run(partial(cluster.wait_serving, timeout=0.5))
    assert str(cluster.nodes[1].log_path) in str(err.value)
