"""``raftmw compare --live`` on a real process cluster under writes: the cohort switches by
one node-targeted flag entry, both cohorts are measured over the same window from the
nodes' own metrics, and the flags go back to what the cluster had (or stay, with --keep).
The pure parts (cohort syntax, the change, what restoring means) are table tests. On the
same cluster: shadow mode switched on cluster-wide under writes is counted on every node
and shown by ``compare --shadow``, and no client sees an error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.config import Rollout
from framework.errors import RaftError
from framework.runtime import compare_live
from framework.runtime.compare_live import (
    LiveError,
    LiveOptions,
    cohort_change,
    parse_cohort,
    restore_values,
)
from framework.runtime.localcluster import LocalCluster


@pytest.mark.parametrize(
    ("text", "ok"),
    [("2,3", (2, 3)), (" 3 , 1", (1, 3)), ("2", (2,)), ("", None), ("0", None), ("2,2", None),
     ("a,b", None), (",".join(str(n) for n in range(1, 70)), None)],
)  # fmt: skip
def test_cohort_syntax(text: str, ok: tuple[int, ...] | None) -> None:
    if ok is None:
        with pytest.raises(ValueError, match="cohort"):
            parse_cohort(text)
    else:
        assert parse_cohort(text) == ok


def test_options_refuse_rollout_values_and_silly_windows() -> None:
    with pytest.raises(ValueError, match="NAME=on"):
        LiveOptions(flags={"actors": Rollout(percent=50)}, cohort=(2,), window=5)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"window=0\.1s"):
        LiveOptions(flags={"actors": True}, cohort=(2,), window=0.1)


def test_the_change_targets_exactly_the_cohort_whichever_way_the_flag_goes() -> None:
    assert cohort_change({"actors": True, "backpressure": False}, (2, 3)) == {
        "actors": Rollout(enabled=True, percent=0.0, include=(2, 3)),
        "backpressure": Rollout(enabled=True, percent=100.0, exclude=(2, 3)),
    }


def test_restoring_puts_back_the_last_cluster_value_or_unsets() -> None:
    page = {
        "flags": {"actors": {"source": "CLUSTER"}, "lock_free": {"source": "PLUGIN_DEFAULT"},
                  "backpressure": {"source": "CLUSTER"}, "circuit_breaker": {"source": "CLUSTER"}},
        "history": [
            {"set": {"actors": True}, "unset": []},
            {"set": {"backpressure": {"enabled": True, "percent": 50.0, "include": [1],
                                      "exclude": []}}, "unset": []},
            {"set": {}, "unset": ["actors"]},
        ],
    }  # fmt: skip
    to_set, to_unset = restore_values(["actors", "backpressure", "lock_free"], page)
    assert to_set == {"backpressure": Rollout(percent=50.0, include=(1,))}
    assert to_unset == ["actors", "lock_free"]
    with pytest.raises(LiveError, match="circuit_breaker predates the kept flag history"):
        restore_values(["circuit_breaker"], page)


class _Pages:
    """A client whose nodes show the flag pages of a script, one poll after another."""

    def __init__(self, script: dict[int, list[tuple[bool, str]]]) -> None:
        self.script = script
        self.polls: dict[int, int] = dict.fromkeys(script, 0)

    async def status(self, node: int) -> dict[str, Any]:
        states = self.script[node]
        value, source = states[min(self.polls[node], len(states) - 1)]
        self.polls[node] += 1
        return {"flags": {"actors": {"value": value, "source": source}}}


@pytest.mark.anyio
async def test_the_restore_waits_for_every_voter_to_show_its_flags_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A follower applies the restore when it next hears from its leader: the comparison
    reports the flags put back only once every voter shows them so (or names the ones that
    did not), not as soon as the leader committed the restore."""
    options = LiveOptions(flags={"actors": True}, cohort=(2,), window=1.0, slices=1)
    before = (False, "PLUGIN_DEFAULT")
    lagging = _Pages({1: [before], 2: [(True, "CLUSTER")] * 3 + [before], 3: [before]})
    initial = {n: {"actors": before} for n in (1, 2, 3)}
    not_back = await compare_live._back(lagging, [1, 2, 3], options, initial)  # type: ignore[arg-type]
    assert not_back == [] and lagging.polls[2] == 4  # polled until node 2 showed it

    stuck = _Pages({1: [before], 2: [(True, "CLUSTER")], 3: [before]})
    monkeypatch.setattr(compare_live, "_SETTLE", 0.3)  # how long it waits before naming one
    with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
        assert await compare_live._back(stuck, [1, 2, 3], options, initial) == [2]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the module's tests (each leaves the others' flags alone)."""
    local = LocalCluster(tmp_path_factory.mktemp("live"), nodes=3, cluster_id="live")
    local.start_all()
    try:
        anyio.run(local.wait_serving)
        yield local
    finally:
        local.stop_all()


async def _writes(cluster: LocalCluster, stop: anyio.Event) -> None:
    async with cluster.client(timeout=10.0) as client:
        n = 0
        while not stop.is_set():
            try:
                await client.put(f"k{n % 50}", "v")
            except RaftError:
                await anyio.sleep(0.05)
            n += 1


async def _live_under_writes(cluster: LocalCluster, options: LiveOptions) -> dict[str, Any]:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_writes, cluster, stop)
        with anyio.fail_after(120):
            report = await compare_live._live(cluster.peers, options, cluster.credentials, False)
        stop.set()
    return report


async def _modes(cluster: LocalCluster) -> dict[int, tuple[bool, str]]:
    async with cluster.client(timeout=10.0) as client:
        pages = {n: await client.status(n) for n in cluster.nodes}
    return {
        n: (p["flags"]["actors"]["value"], p["flags"]["actors"]["source"]) for n, p in pages.items()
    }


def test_a_cohort_switches_is_measured_beside_the_rest_and_is_put_back(
    cluster: LocalCluster,
) -> None:
    async def scenario() -> None:
        before = await _modes(cluster)
        assert {value for value, _ in before.values()} == {False}
        options = LiveOptions(flags={"actors": True}, cohort=(2, 3), window=2.0, slices=2)
        report = await _live_under_writes(cluster, options)
        assert (report["cohort"], report["control"]) == ([2, 3], [1])
        assert report["restored"] and not report["kept"] and report["not_back"] == []
        # both cohorts measured over the same slices, from each node's own pages
        assert set(report["samples"]) == {"1", "2", "3"}
        for node in ("1", "2", "3"):
            assert len(report["samples"][node]["commit_latency_p50"]) == 2
        stats = report["metrics"]["commit_latency_p50"]
        assert stats["median_a"] is not None and stats["median_b"] is not None
        assert await _modes(cluster) == before  # back as it was, on every node
        async with cluster.client(timeout=10.0) as client:
            history = (await client.flags("list"))["history"]
        switch, restore = history[-2:]
        assert switch["set"] == {
            "actors": {"enabled": True, "percent": 0.0, "include": [2, 3], "exclude": []}
        }
        assert restore == {"set": {}, "unset": ["actors"], "reason": "compare --live: restore",
                           "log_index": restore["log_index"]}  # fmt: skip

        kept = await _live_under_writes(
            cluster,
            LiveOptions(flags={"actors": True}, cohort=(3,), window=1.0, slices=1, keep=True),
        )
        assert kept["kept"] and not kept["restored"]
        modes = await _modes(cluster)
        assert (modes[1][0], modes[2][0], modes[3][0]) == (False, False, True)

    anyio.run(scenario)


def test_a_cohort_that_is_the_whole_cluster_or_not_in_it_is_refused(
    cluster: LocalCluster,
) -> None:
    runner = CliRunner(env=cluster.environment())
    whole = runner.invoke(main, ["compare", "--live", "--flag", "actors=on", "--cohort", "1,2,3"])
    assert whole.exit_code == 1 and "whole cluster" in whole.output
    stranger = runner.invoke(main, ["compare", "--live", "--flag", "actors=on", "--cohort", "7"])
    assert stranger.exit_code == 1 and "[7] are not voters" in stranger.output
    bare = runner.invoke(main, ["compare", "--live", "--cohort", "2"])
    assert bare.exit_code == 2 and "--flag NAME=VALUE" in bare.output


def test_shadow_mode_on_a_running_cluster_is_counted_and_changes_nothing_clients_see(
    cluster: LocalCluster,
) -> None:
    async def scenario() -> tuple[int, dict[str, int]]:
        async with cluster.client(timeout=10.0) as client:
            await client.flags("set", assignments={"shadow": True}, reason="test: shadow")
            errors: dict[str, int] = {}
            done = 0
            with anyio.fail_after(60):
                for n in range(200):
                    try:
                        await client.put(f"s{n}", "v")
                        done += 1
                    except RaftError as exc:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                for n in range(0, 200, 37):
                    assert await client.get(f"s{n}") == "v"
            return done, errors

    done, errors = anyio.run(scenario)
    assert (done, errors) == (200, {})
    result = CliRunner(env=cluster.environment()).invoke(main, ["compare", "--shadow", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["nodes"]) == {"1", "2", "3"}
    for node in report["nodes"].values():
        shadow = node["shadow"]
        assert {"timeouts", "send_guard", "queue:inbox", "queue:proposals"} <= set(shadow)
        inbox = shadow["queue:inbox"]["decisions"]["admit:inbox"]
        assert inbox["agree"] > 0  # every peer message was offered to both queues
    text = CliRunner(env=cluster.environment()).invoke(main, ["compare", "--shadow"])
    assert text.exit_code == 0 and "admit:inbox" in text.output
    anyio.run(_unset_shadow, cluster)


async def _unset_shadow(cluster: LocalCluster) -> None:
    async with cluster.client(timeout=10.0) as client:
        await client.flags("unset", names=["shadow"], reason="test: shadow off")
