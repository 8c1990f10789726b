"""``raftmw demo``, ``bench`` and ``compare``: the commands that start local clusters of
their own, run a workload on them and report what happened."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from framework.auth import ClientCredentials
from framework.cli_options import (
    check_flags,
    credential_options,
    parse_flag,
    settings_for,
)
from framework.errors import RaftError
from framework.runtime.fault_schedule import FAULTS as _COMPARE_FAULTS

T = TypeVar("T")

__all__ = ["bench", "compare", "demo"]


@click.command()
@click.option(
    "--seconds", type=float, default=6.0, show_default=True, help="Length of the write workload."
)
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the nodes keep their data (default: a new temporary directory).",
)
@click.option(
    "--migrate",
    is_flag=True,
    help="Instead: two staged migrations under load, one completed, one rolled back.",
)
def demo(seconds: float, clients: int, data_dir: Path | None, migrate: bool) -> None:
    """Start a local 3-node cluster, run a KV workload, kill the leader, show what happened."""
    if migrate:
        from framework.runtime.demo_migration import run_migration_demo

        run_migration_demo(seconds=max(seconds, 12.0), clients=clients, data_dir=data_dir)
        return
    from framework.runtime.demo import run_demo

    run_demo(seconds=seconds, clients=clients, data_dir=data_dir)


@click.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--clients",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Concurrent writers, each waiting for its write before the next.",
)
@click.option(
    "--connections",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="KVClient instances the writers share (each holds one connection per node).",
)
@click.option(
    "--payload", type=click.IntRange(min=0), default=100, show_default=True, help="Bytes per value."
)
@click.option("--seconds", type=float, default=10.0, show_default=True)
@click.option("--kill-leader", is_flag=True, help="SIGKILL the leader half-way through.")
@click.option("--profile", default=None)
@click.option("--flag", "flags", multiple=True)
@click.option("--sync", type=click.Choice(["always", "os"]), default="always", show_default=True)
@click.option(
    "--tls/--no-tls",
    default=True,
    show_default=True,
    help="Mutual TLS (--no-tls: plain TCP on loopback, to measure what TLS costs).",
)
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds the nodes may take to serve and elect a leader (more on a starved machine).",
)
@click.option("--json", "as_json", is_flag=True)
def bench(
    nodes: int,
    clients: int,
    connections: int,
    payload: int,
    seconds: float,
    kill_leader: bool,
    profile: str | None,
    flags: tuple[str, ...],
    sync: str,
    tls: bool,
    start_timeout: float,
    as_json: bool,
) -> None:
    """Load a local cluster of node processes; report ops/s, latency, RSS and failover."""
    from framework.runtime.bench import BenchOptions, run_bench

    flags = check_flags("--flag", flags)
    options = BenchOptions(
        nodes=nodes,
        clients=clients,
        connections=connections,
        payload=payload,
        seconds=seconds,
        kill_leader=kill_leader,
        profile=profile,
        flags=tuple(flags),
        sync=sync,
        tls=tls,
        start_timeout=start_timeout,
    )
    report = run_bench(options, progress=not as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))


@click.command()
@click.option("--a-flag", "a_flags", multiple=True, help="A flag of mode A (NAME=VALUE; repeat).")
@click.option("--b-flag", "b_flags", multiple=True, help="A flag of mode B (NAME=VALUE; repeat).")
@click.option("--a-profile", default=None, help="Mode A's settings profile.")
@click.option("--b-profile", default=None, help="Mode B's settings profile.")
@click.option(
    "--a-settings",
    "a_settings",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A settings file of mode A (repeat).",
)
@click.option(
    "--b-settings",
    "b_settings",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A settings file of mode B (repeat).",
)
@click.option("--a-name", default="A", show_default=True, help="A label for mode A.")
@click.option("--b-name", default="B", show_default=True, help="A label for mode B.")
@click.option(
    "--fault",
    type=click.Choice(list(_COMPARE_FAULTS)),
    default="stop-follower",
    show_default=True,
    help="What happens during each run, the same schedule on both sides (see README).",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Runs of each mode, interleaved ABBA; 3 or more give confidence intervals.",
)
@click.option(
    "--overload-rate",
    type=click.FloatRange(min=1.0, max=1_000_000.0),
    default=20_000.0,
    show_default=True,
    help="Open-loop writes/s during --fault overload.",
)
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--clients", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--connections", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--payload", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True)
@click.option("--sync", type=click.Choice(["always", "os"]), default="always", show_default=True)
@click.option("--profile", default=None, help="A profile for both modes (unless --a/b-profile).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--live", is_flag=True, help="Compare cohorts of a running cluster (--peers) instead."
)
@click.option("--peers", default=None, envvar="RAFTMW_PEERS", help="With --live or --shadow.")
@click.option("--flag", "live_flags", multiple=True, help="With --live: the cohort's flags.")
@click.option("--cohort", default=None, help="With --live: node ids, like 2,3.")
@click.option("--window", default="60s", show_default=True, help="With --live: how long.")
@click.option("--keep", is_flag=True, help="With --live: leave the cohort switched.")
@click.option(
    "--shadow", "shadow", is_flag=True, help="Show each node's shadow decisions (--peers)."
)
@click.option("--json", "as_json", is_flag=True)
@credential_options
def compare(
    a_flags: tuple[str, ...],
    b_flags: tuple[str, ...],
    a_profile: str | None,
    b_profile: str | None,
    a_settings: tuple[str, ...],
    b_settings: tuple[str, ...],
    a_name: str,
    b_name: str,
    fault: str,
    repeat: int,
    overload_rate: float,
    nodes: int,
    clients: int,
    connections: int,
    payload: int,
    seconds: float,
    sync: str,
    profile: str | None,
    seed: int,
    live: bool,
    peers: str | None,
    live_flags: tuple[str, ...],
    cohort: str | None,
    window: str,
    keep: bool,
    shadow: bool,
    as_json: bool,
    credentials: ClientCredentials,
) -> None:
    """A/B: the same workload and faults against two whole configurations (flags, profile,
    settings files), each run on a fresh local cluster, repeated and interleaved (ABBA);
    prints medians, spread, the difference with a 95 % confidence interval and a verdict.

    \b
    Examples:
      raftmw compare --a-name legacy --b-name actors --b-flag actors=on --repeat 5
      raftmw compare --a-profile low_latency --b-profile high_throughput --fault overload
      raftmw compare --live --flag actors=on --cohort 2,3 --window 60s --peers ...
      raftmw compare --shadow --peers ...
    """
    if live or shadow:
        _compare_cluster(
            live=live,
            shadow=shadow,
            peers=peers,
            flags=live_flags,
            cohort=cohort,
            window=window,
            keep=keep,
            seed=seed,
            as_json=as_json,
            credentials=credentials,
        )
        return
    from framework.runtime.compare import CompareOptions, Mode, run_compare

    options = CompareOptions(
        a=Mode(
            name=a_name,
            flags=check_flags("--a-flag", a_flags),
            profile=a_profile or profile,
            settings=a_settings,
        ),
        b=Mode(
            name=b_name,
            flags=check_flags("--b-flag", b_flags),
            profile=b_profile or profile,
            settings=b_settings,
        ),
        fault=fault,  # type: ignore[arg-type]  # click.Choice checked it
        nodes=nodes,
        clients=clients,
        connections=connections,
        payload=payload,
        seconds=seconds,
        sync=sync,
        repeat=repeat,
        overload_rate=overload_rate,
        seed=seed,
    )
    _check_mode("mode A (--a-profile, --a-settings, --a-flag)", options.a)
    _check_mode("mode B (--b-profile, --b-settings, --b-flag)", options.b)
    try:
        report = run_compare(options, progress=not as_json)
    except ValueError as exc:  # a fault the cluster size cannot take
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))


def _check_mode(option: str, mode: Any) -> None:
    """A mode's whole configuration loads as its nodes will load it: a bad profile, file or
    value is refused now, naming it, not by three node processes later."""
    try:
        settings_for(mode.profile or "default", mode.settings, mode.flags)
    except click.UsageError as exc:
        raise click.UsageError(f"{option}: {exc.message}") from None


def _compare_cluster(
    *,
    live: bool,
    shadow: bool,
    peers: str | None,
    flags: Sequence[str],
    cohort: str | None,
    window: str,
    keep: bool,
    seed: int,
    as_json: bool,
    credentials: ClientCredentials,
) -> None:
    """``compare --live`` / ``--shadow``: against a running cluster."""
    from framework.config import SettingsError, parse_duration
    from framework.runtime.compare_live import LiveError, LiveOptions, parse_cohort, run_live

    if not peers:
        raise click.UsageError("--live and --shadow need the cluster: --peers 1=HOST:PORT,...")
    if shadow:
        from framework.runtime.shadow_report import run_shadow

        report = run_shadow(peers, credentials=credentials, progress=not as_json)
    else:
        if not flags or not cohort:
            raise click.UsageError(
                "--live needs the cohort's flags and nodes: --flag NAME=VALUE --cohort 2,3"
            )
        try:
            seconds = parse_duration(window, key="--window")
        except SettingsError as exc:
            raise click.BadParameter(str(exc), param_hint="--window") from None
        try:
            options = LiveOptions(
                flags=dict(map(parse_flag, check_flags("--flag", flags))),
                cohort=parse_cohort(cohort),
                window=seconds,
                keep=keep,
                seed=seed,
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--flag/--cohort/--window") from None
        try:
            report = run_live(peers, options, credentials=credentials, progress=not as_json)
        except (LiveError, RaftError) as exc:
            raise click.ClickException(f"compare --live: {exc}") from None
    if as_json:
        click.echo(json.dumps(report, indent=2))


# -- plugins and flags ----------------------------------------------------------------------------
