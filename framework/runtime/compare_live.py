"""``raftmw compare --live``: two cohorts of one running cluster, over the same window.

The cohort is switched by one node-targeted flag change (one log entry: every flag of the
mode at once, ``{enabled = true, percent = 0, include = [cohort]}`` for a flag turned on,
``percent = 100, exclude = [cohort]`` for one turned off), so the cohort and the rest of
the cluster run side by side from the same log index, under the same traffic. Once every
node reports the mode it should have, the window is cut into ``slices``: each slice is two
status pages per node, subtracted into that node's figures (`health_window`, the metrics
the staged migration's analysis uses). A cohort's samples are its nodes' figures over the
slices; the two cohorts are compared with the same statistics as ``raftmw compare``
(medians, spread, a bootstrap interval, a verdict). Afterwards the flags go back to the
cluster values they had before (the last change of each in the cluster's flag history,
or unset), also when the comparison fails or is interrupted, unless ``keep``.

The leader answers the clients and sends the appends, so its cohort looks busier: the
report says which cohort holds the leader. A staged migration in progress owns the flags:
a live comparison refuses to start during one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
from rich.console import Console
from rich.table import Table

from framework.auth import ClientCredentials
from framework.client import KVClient, parse_peers
from framework.config import Rollout
from framework.errors import RaftError
from framework.runtime.comparison_stats import MetricSpec, compare_samples, describe_change
from framework.runtime.eventloop import run_async
from framework.runtime.health_window import BUILTIN_METRICS, node_values

__all__ = [
    "LIVE_METRICS",
    "LiveError",
    "LiveOptions",
    "cohort_change",
    "parse_cohort",
    "restore_values",
    "run_live",
]

_MAX_NODES: Final = 64
_MIN_WINDOW: Final = 1.0
_MAX_WINDOW: Final = 24 * 3600.0
_SETTLE: Final = 30.0
"""Seconds to wait for every node to report the cohort's mode."""


def _lower(key: str, label: str, words: tuple[str, str] = ("lower", "higher")) -> MetricSpec:
    return MetricSpec(key=key, label=label, better="lower", words=words, fmt=".2f")


LIVE_METRICS: Final[tuple[MetricSpec, ...]] = (
    _lower("client_latency_p50", "client latency p50 (ms)"),
    _lower("client_latency_p99", "client latency p99 (ms)"),
    _lower("commit_latency_p50", "commit latency p50 (ms)"),
    _lower("commit_latency_p99", "commit latency p99 (ms)"),
    _lower("ready_pause_p99", "Ready loop pause p99 (ms)"),
    _lower("lock_wait_ms", "lock wait (ms per slice)"),
    _lower("timeouts", "timeouts (per slice)", ("fewer", "more")),
    _lower("queue_rejections", "queue rejections (per slice)", ("fewer", "more")),
    _lower("rss_mb", "RSS (MB)", ("smaller", "larger")),
)


class LiveError(Exception):
    """A live comparison that cannot start (or restore), with what to do about it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveOptions:
    flags: Mapping[str, bool]
    """The cohort's mode: each flag on or off."""
    cohort: tuple[int, ...]
    window: float
    keep: bool = False
    slices: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.flags or not all(isinstance(v, bool) for v in self.flags.values()):
            raise ValueError(
                f"flags={dict(self.flags)!r}: expected NAME=on or NAME=off assignments "
                "(a cohort is a set of nodes, so no rollout values)"
            )
        if not _MIN_WINDOW <= self.window <= _MAX_WINDOW:
            raise ValueError(
                f"window={self.window:g}s: expected {_MIN_WINDOW:g}s to {_MAX_WINDOW:g}s"
            )
        if not 1 <= self.slices <= 1000:
            raise ValueError(f"slices={self.slices}: expected 1..1000")


def parse_cohort(text: str) -> tuple[int, ...]:
    """``2,3`` -> (2, 3); node ids are whole numbers >= 1, each once."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(parts) > _MAX_NODES:
        raise ValueError(f"cohort {text!r}: expected 1 to {_MAX_NODES} node ids, like 2,3")
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"cohort {text!r}: expected node ids, like 2,3") from None
    if any(n < 1 for n in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"cohort {text!r}: expected distinct node ids >= 1, like 2,3")
    return tuple(sorted(ids))


def cohort_change(flags: Mapping[str, bool], cohort: Sequence[int]) -> dict[str, bool | Rollout]:
    """The flag values that put exactly ``cohort`` on the mode (one log entry)."""
    return {
        name: Rollout(enabled=True, percent=0.0, include=tuple(cohort))
        if on
        else Rollout(enabled=True, percent=100.0, exclude=tuple(cohort))
        for name, on in sorted(flags.items())
    }


def restore_values(
    names: Sequence[str], page: Mapping[str, Any]
) -> tuple[dict[str, bool | Rollout], list[str]]:
    """From a node's flags page: what to set and what to unset to put ``names`` back as
    the cluster has them now. `LiveError` when a cluster value is older than the kept
    history (it cannot be restored exactly)."""
    history = page.get("history", [])
    table = page.get("flags", {})
    to_set: dict[str, bool | Rollout] = {}
    to_unset: list[str] = []
    for name in names:
        touched = (h for h in reversed(history) if name in h["set"] or name in h["unset"])
        last = next(touched, None)
        if last is not None and name in last.get("set", {}):
            value = last["set"][name]
            to_set[name] = value if isinstance(value, bool) else _rollout(value)
        elif last is not None or table.get(name, {}).get("source") != "CLUSTER":
            to_unset.append(name)
        else:
            raise LiveError(
                f"the cluster's value of flag {name} predates the kept flag history, so it "
                "could not be restored exactly; pass --keep to switch the cohort and restore "
                "it yourself, or set the flag explicitly first"
            )
    return to_set, to_unset


def _rollout(value: Mapping[str, Any]) -> Rollout:
    return Rollout(
        enabled=bool(value.get("enabled", True)),
        percent=float(value.get("percent", 100.0)),
        include=tuple(value.get("include", ())),
        exclude=tuple(value.get("exclude", ())),
    )


def run_live(
    peers: str, options: LiveOptions, *, credentials: ClientCredentials, progress: bool = True
) -> dict[str, Any]:
    report = run_async(_live, parse_peers(peers), options, credentials, progress)
    if progress:
        print_live(Console(), report)
    return report


_LEADER_WAIT = 10.0
"""Seconds a live comparison waits for the cluster to have a leader before refusing."""


async def _live(
    peers: dict[int, str], options: LiveOptions, credentials: ClientCredentials, progress: bool
) -> dict[str, Any]:
    console = Console(stderr=True)
    async with KVClient(peers, credentials=credentials, timeout=10.0) as client:
        # An election may be under way: wait out a few election timeouts for a leader.
        leader_page = None
        with anyio.move_on_after(_LEADER_WAIT):
            while leader_page is None:
                pages = await _pages(client, sorted(peers))
                leader_page = next((p for p in pages.values() if p.get("role") == "leader"), None)
                if leader_page is None:
                    await anyio.sleep(0.1)
        if leader_page is None:
            raise LiveError(
                f"no node of --peers reported itself leader within {_LEADER_WAIT:g}s; "
                "try again in a moment"
            )
        voters = sorted(int(v) for v in leader_page["voters"])
        missing = sorted(set(options.cohort) - set(voters))
        if missing:
            raise LiveError(f"cohort nodes {missing} are not voters of the cluster {voters}")
        control = [n for n in voters if n not in options.cohort]
        if not control:
            raise LiveError(
                f"cohort {list(options.cohort)} is the whole cluster: nothing to compare it with"
            )
        if leader_page.get("migration"):
            raise LiveError("a staged migration is in progress and owns the flags; wait for it")
        unknown = sorted(set(options.flags) - set(leader_page.get("flags", {})))
        if unknown:
            raise LiveError(f"flags {unknown} are not declared on the cluster's nodes")
        flag_page = await client.flags("list")
        to_set, to_unset = restore_values(sorted(options.flags), flag_page)
        initial = _flag_states(await _pages(client, voters), options)
        await client.flags(
            "set",
            assignments=cohort_change(options.flags, options.cohort),
            reason=f"compare --live: cohort {list(options.cohort)}",
        )
        restored = False
        not_back: list[int] = []
        try:
            await _settled(client, voters, options)
            if progress:
                console.print(
                    f"cohort {list(options.cohort)} on {_describe(options.flags)}, "
                    f"rest {control}; measuring {options.window:g}s in {options.slices} slices"
                )
            samples = await _measure(client, voters, options)
            final = await _pages(client, voters)
        finally:
            if not options.keep:
                with anyio.CancelScope(shield=True), anyio.fail_after(30):
                    # one entry, like the switch: set and unset apply at the same index
                    await client.flags(
                        "set", assignments=to_set, names=to_unset, reason="compare --live: restore"
                    )
                    restored = True
                    not_back = await _back(client, voters, options, initial)
    leader = next((n for n, p in final.items() if p.get("role") == "leader"), None)
    return {
        "flags": dict(options.flags),
        "cohort": list(options.cohort),
        "control": control,
        "leader": leader,
        "window_seconds": options.window,
        "slices": options.slices,
        "restored": restored,
        "not_back": not_back,
        "kept": options.keep,
        "samples": {str(n): s for n, s in samples.items()},
        "metrics": _statistics(samples, options.cohort, control, options.seed),
    }


def _describe(flags: Mapping[str, bool]) -> str:
    return ", ".join(f"{k}={'on' if v else 'off'}" for k, v in sorted(flags.items()))


async def _pages(client: KVClient, nodes: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each node's status page (a node that does not answer has none)."""
    pages: dict[int, dict[str, Any]] = {}

    async def one(node: int) -> None:
        with contextlib.suppress(RaftError):  # a node that does not answer has no page
            pages[node] = await client.status(node)

    async with anyio.create_task_group() as tg:
        for node in nodes:
            tg.start_soon(one, node)
    return pages


async def _settled(client: KVClient, voters: Sequence[int], options: LiveOptions) -> None:
    """Until every voter evaluates every flag as its cohort should."""
    lagging: list[int] = list(voters)
    with anyio.move_on_after(_SETTLE):
        while lagging:
            pages = await _pages(client, voters)
            lagging = [n for n in voters if n not in pages or not _in_mode(pages[n], n, options)]
            if lagging:
                await anyio.sleep(0.2)
    if lagging:
        raise LiveError(
            f"nodes {lagging} did not report the cohort's mode within {_SETTLE:g}s "
            "(the flags are being put back)"
        )


def _flag_states(
    pages: Mapping[int, Mapping[str, Any]], options: LiveOptions
) -> dict[int, dict[str, tuple[Any, Any]]]:
    """Each node's compared flags as its page shows them: (value, source)."""
    states: dict[int, dict[str, tuple[Any, Any]]] = {}
    for node, page in pages.items():
        flags = page.get("flags", {})
        states[node] = {
            name: (flags.get(name, {}).get("value"), flags.get(name, {}).get("source"))
            for name in options.flags
        }
    return states


async def _back(
    client: KVClient,
    voters: Sequence[int],
    options: LiveOptions,
    initial: Mapping[int, Mapping[str, tuple[Any, Any]]],
) -> list[int]:
    """Once the restore is committed, until every voter shows its flags as before the
    switch (a follower applies the restore when it next hears from the leader); the voters
    that did not within ``_SETTLE`` seconds, for the report to name."""
    lagging: list[int] = list(voters)
    with anyio.move_on_after(_SETTLE):
        while lagging:
            now = _flag_states(await _pages(client, voters), options)
            lagging = [n for n in voters if n not in now or now[n] != initial.get(n)]
            if lagging:
                await anyio.sleep(0.05)
    return lagging


def _in_mode(page: Mapping[str, Any], node: int, options: LiveOptions) -> bool:
    flags = page.get("flags", {})
    return all(
        flags.get(name, {}).get("value") == (on if node in options.cohort else not on)
        for name, on in options.flags.items()
    )


async def _measure(
    client: KVClient, voters: Sequence[int], options: LiveOptions
) -> dict[int, dict[str, list[float | None]]]:
    names = [m.key for m in LIVE_METRICS]
    samples: dict[int, dict[str, list[float | None]]] = {n: {k: [] for k in names} for n in voters}
    before = await _pages(client, voters)
    for _ in range(options.slices):
        await anyio.sleep(options.window / options.slices)
        after = await _pages(client, voters)
        for n in voters:
            if n in before and n in after:
                values = node_values(BUILTIN_METRICS, names, before[n], after[n])
                for k in names:
                    samples[n][k].append(values[k])
        before = after
    return samples


def _statistics(
    samples: Mapping[int, Mapping[str, list[float | None]]],
    cohort: Sequence[int],
    control: Sequence[int],
    seed: int,
) -> dict[str, Any]:
    out = {}
    for spec in LIVE_METRICS:
        a = [v for n in control for v in samples.get(n, {}).get(spec.key, [])]
        b = [v for n in cohort for v in samples.get(n, {}).get(spec.key, [])]
        if all(v is None for v in a + b):
            continue
        result = compare_samples(a, b, spec, name_b="cohort", seed=seed)
        out[spec.key] = {"label": spec.label, **result.to_dict()}
    return out


def print_live(console: Console, report: Mapping[str, Any]) -> None:
    leader = report["leader"]
    where = "cohort" if leader in report["cohort"] else "rest"
    table = Table(
        title=f"raftmw compare --live: cohort {report['cohort']} on "
        f"{_describe(report['flags'])} vs the rest {report['control']}, "
        f"{report['window_seconds']:g}s in {report['slices']} slices (leader {leader}: {where})"
    )
    table.add_column("measure (per node, per slice)")
    table.add_column("rest: median (min-max)", justify="right")
    table.add_column("cohort: median (min-max)", justify="right")
    table.add_column("cohort vs rest (95 % CI)", justify="right")
    table.add_column("verdict")

    def cell(median: float | None, spread: list[float] | None) -> str:
        if median is None:
            return "-"
        return f"{median:.2f}" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")

    for stats in report["metrics"].values():
        change = describe_change(stats["difference"], stats["ci95"])
        table.add_row(
            stats["label"],
            cell(stats["median_a"], stats["spread_a"]),
            cell(stats["median_b"], stats["spread_b"]),
            change,
            stats["verdict"],
        )
    console.print(table)
    console.print(
        "flags restored to their previous cluster values"
        if report["restored"]
        else "flags kept: the cohort stays on its mode (--keep)"
    )
    if report.get("not_back"):
        console.print(
            f"nodes {report['not_back']} did not show their flags as before the switch within "
            f"{_SETTLE:g}s of the restore (check `raftmw flags list` on them)"
        )
