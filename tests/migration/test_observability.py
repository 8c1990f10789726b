"""What a migration shows outside the log: the node's OTel measurements carry its mode
(so dashboards split by cohort), and ``raftmw migrate check`` / ``status`` render plans
and the live view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from rich.console import Console

from framework.metrics import GaugeReadings, NodeInstruments
from migration.cli import migrate, render_status


def test_measurements_carry_the_node_s_mode() -> None:
    reader = InMemoryMetricReader()
    instruments = NodeInstruments(
        node_id=4,
        cluster_id="c",
        readings=GaugeReadings,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    instruments.start(commit_index=0)
    instruments.on_proposals(1)
    instruments.set_mode(["backpressure", "actors"])
    instruments.on_proposals(2)
    data = reader.get_metrics_data()
    modes: dict[str, int] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "raftmw.proposals":
                    for point in metric.data.data_points:
                        attrs = dict(point.attributes or {})
                        modes[str(attrs.get("raftmw.mode"))] = point.value
    instruments.close()
    assert modes == {"None": 1, "actors,backpressure": 2}


PLAN = """
[migration]
id = "x"
[migration.target]
actors = true
[[steps]]
cohort = { count = 1 }
gate = { pause = "30s" }
"""


def test_migrate_check_prints_the_stages_or_names_the_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(PLAN)
    result = CliRunner().invoke(migrate, ["check", str(good)])
    assert result.exit_code == 0, result.output
    assert "step 1: 1 node; gate: pause 30s" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text(PLAN.replace('"30s"', '"30 parsecs"').replace("actors", "actorz"))
    result = CliRunner().invoke(migrate, ["check", str(bad)])
    assert result.exit_code == 1
    assert "migration.target.actorz" in result.output and '"30 parsecs"' in result.output


def test_the_status_view_shows_steps_analysis_and_nodes() -> None:
    page: dict[str, Any] = {
        "leader": 2,
        "now": 100.0,
        "last_outcome": None,
        "active": {
            "id": "x",
            "steps": ["  step 1: 1 node; gate: analysis 'canary'"],
            "step": 1,
            "of": 2,
            "gate_passed": False,
            "paused": False,
            "target": {"actors": True},
            "migrated": [1],
            "members": [1, 2, 3],
            "live": {
                "phase": "analysis",
                "analysis": "canary",
                "measurement": 2,
                "of": 3,
                "failure_limit": 0,
                "measurements": [
                    {
                        "ok": False,
                        "checks": [
                            {
                                "check": "ready_pause_p99 <= 3 x old cohort",
                                "metric": "ready_pause_p99",
                                "migrated": 409.6,
                                "old": 12.8,
                                "baseline": None,
                                "ok": False,
                                "reason": "409.6 is 16.00 x the old cohort's 12.8",
                            }
                        ],
                    }
                ],
            },
        },
        "nodes": {"1": {"role": "follower", "mode": ["actors"]}, "2": {"error": "away"}},
    }
    console = Console(width=160, record=True)
    console.print(render_status(page))
    text = console.export_text()
    assert "step 1 of 2, at its gate" in text and "measurement 2 of 3" in text
    assert "FAIL: 409.6 is 16.00 x" in text and "actors" in text and "away" in text
