"""Staged migrations on real ``raftmw node`` processes under write load: a healthy plan
reaches every node; a chaos-degraded mode rolls back by itself at the canary step in one
entry; a SIGKILLed leader's step is continued by the next leader (none twice, none
skipped) and a restarted node comes back with the right flags; operators pause, resume,
promote and abort; bad plans and a second migration are refused by name."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from framework.errors import BadRequest
from framework.runtime.localcluster import LocalCluster
from migration.cli import migrate
from tests.migration.harness import (
    flags_on,
    make_cluster,
    migration_of,
    node_status,
    service,
    wait_until,
    writing,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    local = make_cluster(tmp_path / "cluster")
    local.start_all()
    yield local
    codes = local.stop_all()
    assert all(code in (0, None, -9) for code in codes.values()), codes


def plan(target: str, steps: str, analysis: str = "", head: str = "") -> str:
    return f"[migration]\n{head}\n[migration.target]\n{target}\n{analysis}\n{steps}"


def all_pages(predicate: Any) -> Any:
    return lambda pages: all(predicate(p) for p in pages.values())


def step_records(history: dict[str, Any], migration: str) -> Counter[tuple[str, int]]:
    return Counter(
        (r["event"], r["step"]) for r in history["records"] if r["migration"] == migration
    )


async def cli(cluster: LocalCluster, *args: str) -> Any:
    # As an operator would: the cluster's peers and admin certificate from RAFTMW_*.
    runner = CliRunner(env=cluster.environment())
    result = await anyio.to_thread.run_sync(runner.invoke, migrate, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def test_a_healthy_plan_moves_every_node_and_writes_the_final_settings(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    await cluster.wait_serving()
    settings = tmp_path / "final-node{node}.toml"
    text = plan(
        "actors = true\nbackpressure = true",
        '[[steps]]\ncohort = { count = 1 }\ngate = { analysis = "canary" }\n'
        '[[steps]]\ncohort = { role = "all" }\n',
        '[analysis.canary]\ninterval = "700ms"\nmeasurements = 2\nfailure_limit = 1\n'
        'checks = [{ metric = "commit_latency_p99", max = 10000 },'
        ' { metric = "ready_pause_p99", max_ratio = 10, min_reference = 20 },'
        ' { metric = "commit_latency_p99", max_baseline_ratio = 100, min_reference = 50 }]\n',
        f'id = "healthy"\nwrite_settings = "{settings}"',
    )
    async with writing(cluster) as writer:
        await anyio.sleep(0.3)
        started = await service(cluster, "start", plan=text)
        assert started["migration"] == "healthy"
        pages = await wait_until(
            cluster,
            all_pages(lambda p: migration_of(p) is None and flags_on(p, "actors", "backpressure")),
        )
    await writer.check()
    assert len(writer.acked) > 20 and writer.errors == 0
    for page in pages.values():
        for name in ("actors", "backpressure"):
            assert page["flags"][name]["source"] == "CLUSTER"
        assert page["components"]["status_store"] != "legacy"  # the actor store now
        assert "actors" in page["health"]["mode"]
    history = await service(cluster, "history")
    counts = step_records(history, "healthy")
    assert counts[("step", 0)] == counts[("step", 1)] == counts[("verdict", 0)] == 1
    assert history["outcomes"][-1]["outcome"] == "complete"
    verdict = next(r for r in history["records"] if r["event"] == "verdict" and r["step"] == 0)
    checks = json.loads(verdict["detail"])["measurements"][-1]["checks"]
    assert checks[2]["baseline"] is not None  # measured before step 1, kept in its record
    first = next(r for r in history["records"] if r["event"] == "step" and r["step"] == 0)
    assert "commit_latency_p99" in json.loads(first["detail"])["baseline"]
    with anyio.fail_after(20):
        for n in (1, 2, 3):
            while not await anyio.Path(str(settings).format(node=n)).exists():
                await anyio.sleep(0.1)
    written = await anyio.Path(str(settings).format(node=2)).read_text()
    assert "[flags]" in written and "actors = true" in written
    shown = await cli(cluster, "history")
    assert "healthy  complete" in shown


async def test_a_chaos_degraded_mode_rolls_back_at_the_canary_in_one_entry(
    cluster: LocalCluster,
) -> None:
    await cluster.wait_serving()
    text = plan(
        "actors = true\nchaos = true",  # chaos on: every log write of the node is 300ms slower
        '[[steps]]\ncohort = { count = 1 }\ngate = { analysis = "canary" }\n'
        '[[steps]]\ncohort = { role = "all" }\n',
        '[analysis.canary]\ninterval = "700ms"\nmeasurements = 2\nfailure_limit = 0\n'
        # Both limits fail on the degraded node (its Readies wait >= 300 ms for the disk);
        # the absolute one even when the machine is so loaded that healthy nodes pause too.
        'checks = [{ metric = "ready_pause_p99", max_ratio = 3, min_reference = 25, max = 150 }]\n',
        'id = "degraded"',
    )
    async with writing(cluster) as writer:
        await anyio.sleep(0.3)
        await service(cluster, "start", plan=text)
        pages = await wait_until(
            cluster,
            all_pages(
                lambda p: migration_of(p) is None and p["flags"]["chaos"]["log_index"] is None
            ),
        )
        await anyio.sleep(0.3)  # writes go on after the rollback
    await writer.check()
    assert writer.errors == 0  # no client saw an error from the canary or the rollback
    for page in pages.values():
        assert not page["flags"]["actors"]["value"] and not page["flags"]["chaos"]["value"]
    history = await service(cluster, "history")
    counts = step_records(history, "degraded")
    assert counts[("step", 0)] == 1 and counts[("step", 1)] == 0  # stopped at the canary
    (outcome,) = history["outcomes"]
    assert outcome["outcome"] == "rollback"
    reason = json.loads(outcome["detail"])["reason"]
    assert "ready_pause_p99" in reason and "step 1" in reason
    # The rollback is one flags entry: it unset both target flags at its own index.
    async with cluster.client() as client:
        flag_history = (await client.flags("history"))["history"]
    rollback = [h for h in flag_history if h["log_index"] == outcome["log_index"]]
    assert len(rollback) == 1 and sorted(rollback[0]["unset"]) == ["actors", "chaos"]


async def test_a_killed_leader_s_step_is_continued_and_a_restarted_node_has_the_right_flags(
    cluster: LocalCluster,
) -> None:
    await cluster.wait_serving()
    text = plan(
        "actors = true",
        '[[steps]]\ncohort = { count = 1 }\ngate = { analysis = "canary" }\n'
        "[[steps]]\ncohort = { count = 2 }\ngate = { approval = true }\n"
        '[[steps]]\ncohort = { role = "all" }\n',
        '[analysis.canary]\ninterval = "700ms"\nmeasurements = 2\n'
        'checks = [{ metric = "commit_latency_p99", max = 60000 }]\n',
        'id = "failover"',
    )
    async with writing(cluster) as writer:
        await service(cluster, "start", plan=text)
        await wait_until(cluster, all_pages(lambda p: (migration_of(p) or {}).get("step") == 1))
        leader = await cluster.leader()
        await anyio.sleep(0.5)  # in the middle of the canary's analysis
        cluster.kill(leader)
        live = tuple(n for n in (1, 2, 3) if n != leader)
        await wait_until(
            cluster,
            all_pages(lambda p: (migration_of(p) or {}).get("step") == 2),
            nodes=live,
        )
        status = await service(cluster, "status")
        migrated = status["active"]["migrated"]
        assert len(migrated) == 2 and status["active"]["live"]["phase"] == "approval"
        cluster.start(leader)  # restarted mid-migration, from its own data directory
        await cluster.wait_serving([leader])
        (page,) = (
            await wait_until(
                cluster,
                all_pages(lambda p: (migration_of(p) or {}).get("step") == 2),
                nodes=(leader,),
            )
        ).values()
        assert page["flags"]["actors"]["value"] is (leader in migrated)
        assert page["flags"]["actors"]["source"] == "CLUSTER"
        await service(cluster, "promote", reason="looks good")
        await wait_until(
            cluster, all_pages(lambda p: migration_of(p) is None and flags_on(p, "actors"))
        )
    await writer.check()
    history = await service(cluster, "history")
    counts = step_records(history, "failover")
    for step in (0, 1, 2):
        assert counts[("step", step)] == 1, counts  # no step twice, none skipped
    assert counts[("verdict", 0)] == 1 and counts[("promote", 1)] == 1
    # The killed leader started the canary's analysis; the next leader ran it again, whole.
    records = [r for r in history["records"] if r["migration"] == "failover"]
    (first_step,) = [r for r in records if r["event"] == "step" and r["step"] == 0]
    (verdict,) = [r for r in records if r["event"] == "verdict" and r["step"] == 0]
    assert first_step["by"] == f"controller@{leader}"
    assert verdict["by"] != f"controller@{leader}"
    assert history["outcomes"][-1]["outcome"] == "complete"


async def test_operators_pause_resume_promote_and_abort_and_bad_plans_are_refused(
    cluster: LocalCluster,
) -> None:
    await cluster.wait_serving()
    steps = (
        "[[steps]]\ncohort = { count = 1 }\ngate = { approval = true }\n"
        '[[steps]]\ncohort = { role = "followers" }\ngate = { approval = true }\n'
    )
    with pytest.raises(BadRequest, match=r"migration.target.actorz.*did you mean 'actors'"):
        await service(cluster, "start", plan=plan("actorz = true", steps))
    bad_metric = plan(
        "actors = true",
        steps.replace("approval = true", 'analysis = "a"', 1),
        '[analysis.a]\nchecks = [{ metric = "p99", max = 1 }]\n',
    )
    with pytest.raises(BadRequest, match=r"checks\[0\].metric: \"p99\" is an unknown metric"):
        await service(cluster, "start", plan=bad_metric)
    with pytest.raises(BadRequest, match=r"steps\[0\].gate.pause: \"soon\" is not a duration"):
        await service(
            cluster,
            "start",
            plan=plan("actors = true", steps.replace("approval = true", 'pause = "soon"', 1)),
        )
    async with writing(cluster) as writer:
        await service(cluster, "start", plan=plan("actors = true", steps, head='id = "ops"'))
        with pytest.raises(BadRequest, match="'ops' is running"):
            await service(cluster, "start", plan=plan("actors = true", steps, head='id = "two"'))
        await wait_until(cluster, all_pages(lambda p: (migration_of(p) or {}).get("step") == 1))
        await cli(cluster, "pause", "--reason", "lunch")
        await wait_until(cluster, all_pages(lambda p: (migration_of(p) or {}).get("paused")))
        await service(cluster, "promote")  # passes the gate, but paused: no next step
        await anyio.sleep(1.0)
        page = migration_of(await node_status(cluster, 1))
        assert page is not None and page["step"] == 1 and page["gate_passed"]
        status = json.loads(await cli(cluster, "status", "--json"))
        assert status["active"]["paused"] and status["active"]["step"] == 1
        await service(cluster, "resume")
        await wait_until(cluster, all_pages(lambda p: (migration_of(p) or {}).get("step") == 2))
        await cli(cluster, "abort", "--reason", "changed my mind")
        pages = await wait_until(
            cluster, all_pages(lambda p: migration_of(p) is None and not flags_on(p, "actors"))
        )
    await writer.check()
    assert all(p["flags"]["actors"]["source"] == "PLUGIN_DEFAULT" for p in pages.values())
    history = await service(cluster, "history")
    outcome = history["outcomes"][-1]
    assert outcome["outcome"] == "rollback" and "changed my mind" in outcome["detail"]
    events = [r["event"] for r in history["records"] if r["migration"] == "ops"]
    assert events == ["start", "step", "pause", "promote", "resume", "step", "rollback"]
