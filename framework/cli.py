"""The ``raftmw`` command line (click). Plugins add subcommands to the ``main`` group."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from framework.auth import ClientCredentials
from framework.cli_options import credential_options
from framework.client import KVClient, parse_peers
from framework.config import Settings, SettingsError, load_settings, settings_to_toml
from framework.errors import RaftError
from framework.lock_cli import lock_commands
from framework.runtime.eventloop import run_async
from framework.runtime.fault_schedule import FAULTS as _COMPARE_FAULTS
from framework.tls_cli import tls_group
from framework.transport.tls import TlsError

__all__ = ["main", "run", "run_async"]

T = TypeVar("T")


def _parse_flag(text: str) -> tuple[str, Any]:
    from framework.flags import FlagError, parse_flag_assignment

    try:
        return parse_flag_assignment(text)
    except FlagError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_flags(option: str, flags: Sequence[str]) -> tuple[str, ...]:
    """``--flag``-style assignments checked before any node starts: the syntax, and that
    some installed plugin declares each name (a node would refuse it at start)."""
    from framework.flags import UnknownFlag
    from framework.plugins import PluginHost

    registry = PluginHost().declare_flags()
    for text in flags:
        name, _value = _parse_flag(text)
        try:
            registry.get(name)
        except UnknownFlag as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
    return tuple(flags)


def _settings(
    profile: str,
    files: Sequence[str],
    flags: Sequence[str],
    *,
    blocked: Sequence[str] = (),
    enabled: Sequence[str] = (),
    extra: dict[str, object] | None = None,
) -> Settings:
    from framework.config import Rollout

    overrides: dict[str, object] = dict(extra or {})
    if blocked:
        overrides["plugins.blocked"] = list(blocked)
    if enabled:
        overrides["plugins.enabled"] = list(enabled)
    for name, value in map(_parse_flag, flags):
        if isinstance(value, Rollout):
            value = {
                "enabled": value.enabled,
                "percent": value.percent,
                "include": list(value.include),
                "exclude": list(value.exclude),
            }
        overrides[f"flags.{name}"] = value
    try:
        return load_settings(profile=profile, files=files, overrides=overrides)
    except SettingsError as exc:
        raise click.UsageError(f"bad settings: {exc}") from None


def _peers(text: str) -> dict[int, str]:
    try:
        return parse_peers(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--peers") from None


def _fail(exc: BaseException) -> None:
    raise click.ClickException(str(exc))


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """raftmw: a Raft consensus framework with feature-flagged plugins."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


# -- node ----------------------------------------------------------------------------------


@main.command()
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True, help="This node's id.")
@click.option("--listen", required=True, help="HOST:PORT to serve peers and clients on.")
@click.option("--peers", required=True, help="ID=HOST:PORT,... for every member, this node too.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--profile", default="default", show_default=True, help="Settings profile.")
@click.option(
    "--settings",
    "settings_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Extra settings file (repeatable; later ones win).",
)
@click.option("--flag", "flags", multiple=True, help="Feature flag NAME=on|off (repeatable).")
@click.option(
    "--cluster-id",
    default="raftmw",
    show_default=True,
    help="Name stamped into the data directory; nodes of other clusters are refused.",
)
@click.option(
    "--join",
    is_flag=True,
    help="Join an existing cluster (wait to be added) instead of bootstrapping.",
)
@click.option(
    "--app",
    "app_spec",
    default="kv",
    show_default=True,
    help=(
        "The application the cluster runs: kv, an installed one (locks), or "
        "package.module:Class (a ReplicatedObject). Every node must run the same one."
    ),
)
@click.option(
    "--initial-cluster",
    type=click.Choice(["new", "existing"]),
    default="existing",
    show_default=True,
    help=(
        "With an empty data directory: 'new' bootstraps the cluster from --peers; 'existing' "
        "refuses to start (a wiped node must not rejoin as a voter; use --join). Ignored "
        "once the directory holds state."
    ),
)
@click.option(
    "--plugin",
    "plugin_args",
    multiple=True,
    help="no:NAME blocks plugin NAME; NAME enables an optional one (repeatable).",
)
@click.option("--tls-ca", default=None, help="Cluster CA certificate (PEM); sets tls.ca.")
@click.option(
    "--tls-cert", default=None, help="This node's certificate, naming it (PEM); sets tls.cert."
)
@click.option("--tls-key", default=None, help="This node's private key (PEM); sets tls.key.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow listening on a non-loopback address without TLS (unauthenticated).",
)
def node(
    node_id: int,
    listen: str,
    peers: str,
    data_dir: Path,
    profile: str,
    settings_files: tuple[str, ...],
    flags: tuple[str, ...],
    cluster_id: str,
    join: bool,
    app_spec: str,
    initial_cluster: str,
    plugin_args: tuple[str, ...],
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
) -> None:
    """Run one node until SIGTERM or SIGINT, then shut down cleanly (exit 0).

    With --tls-ca/--tls-cert/--tls-key (or the tls.* settings) every peer and client
    connection is mutual TLS. Without TLS a node listens only on a loopback address,
    unless --insecure says to listen elsewhere unauthenticated."""
    from framework.apps.loading import BadApplication, load_application
    from framework.metrics import configure_from_environment
    from framework.plugins import PluginError, PluginHost
    from framework.runtime.node import NodeConfig, RaftNode
    from framework.storage import StorageError
    from framework.storage.sqlite import SQLiteLogStore

    blocked = [p.removeprefix("no:") for p in plugin_args if p.startswith("no:")]
    enabled = [p for p in plugin_args if not p.startswith("no:")]
    tls = {"tls.ca": tls_ca, "tls.cert": tls_cert, "tls.key": tls_key}
    tls_overrides: dict[str, object] = {k: v for k, v in tls.items() if v is not None}
    if insecure:
        tls_overrides["tls.insecure"] = True
    settings = _settings(
        profile, settings_files, flags, blocked=blocked, enabled=enabled, extra=tls_overrides
    )
    members = _peers(peers)
    if members.get(node_id, listen) != listen:
        raise click.BadParameter(
            f"--peers gives node {node_id} the address {members[node_id]}, but --listen is "
            f"{listen}",
            param_hint="--peers",
        )
    members[node_id] = listen
    try:
        app = load_application(app_spec)
    except BadApplication as exc:
        raise click.BadParameter(str(exc), param_hint="--app") from None
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    configure_from_environment()  # an OpenTelemetry exporter, if OTEL_METRICS_EXPORTER asks
    try:
        host = PluginHost(blocked=settings.plugins.blocked, enabled=settings.plugins.enabled)
    except PluginError as exc:
        raise click.ClickException(f"node {node_id}: {exc}") from None
    config = NodeConfig(
        node_id=node_id,
        cluster_id=cluster_id,
        peers=members,
        settings=settings,
        join=join,
        plugin_host=host,
        data_dir=data_dir,
    )

    async def serve() -> None:
        # The transport first: its checks (TLS files, no plain TCP off loopback) are about
        # this node's own configuration and come before asking the peers anything.
        transport = _build_transport(config, listen)
        store = SQLiteLogStore(data_dir, sync=settings.storage.sync)  # type: ignore[arg-type]
        if not join:
            await _check_empty_directory(store, config, data_dir, initial_cluster)
        raft_node = RaftNode(config, store=store, transport=transport, state_machine=app)
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await tg.start(raft_node.run)
                async for signum in signals:
                    logging.getLogger("raftmw.node").info(
                        "node %d: %s, shutting down", node_id, signal.Signals(signum).name
                    )
                    tg.cancel_scope.cancel()
                    break

    try:
        run_async(serve)
    except BaseException as exc:
        problem = _start_failure(exc)
        if problem is None:
            raise
        if isinstance(problem, _EmptyDirectory):
            raise problem from None
        if isinstance(problem, OSError) and not isinstance(problem, StorageError):
            raise click.ClickException(
                f"node {node_id} cannot listen on {listen}: {problem}"
            ) from None
        raise click.ClickException(f"node {node_id}: {problem}") from None


class _EmptyDirectory(click.ClickException):
    """A node refuses to bootstrap an empty data directory without --initial-cluster new."""


async def _check_empty_directory(
    store: Any, config: Any, data_dir: Path, initial_cluster: str
) -> None:
    """An empty data directory bootstraps only with --initial-cluster new, and not even then
    if a peer knows this node once stored entries (framework/runtime/bootstrap.py)."""
    from framework.runtime.bootstrap import (
        empty_directory_refusal,
        probe_peers,
        wiped_directory_refusal,
    )

    state = await anyio.to_thread.run_sync(store.load)
    if state is not None:
        return
    peers = {nid: addr for nid, addr in config.peers.items() if nid != config.node_id}
    tls = config.settings.tls
    # The node asks as itself: with TLS, its own certificate (a node's identity may read
    # status); without, plain TCP whatever the RAFTMW_TLS_* variables say.
    credentials = ClientCredentials(ca=tls.ca, cert=tls.cert, key=tls.key)
    views = await probe_peers(peers, node_id=config.node_id, credentials=credentials)
    where = {"node_id": config.node_id, "cluster_id": config.cluster_id, "data_dir": str(data_dir)}
    if initial_cluster == "new":
        refusal = wiped_directory_refusal(**where, views=views)
    else:
        refusal = empty_directory_refusal(**where, views=views)
    if refusal is not None:
        await anyio.to_thread.run_sync(store.close)
        raise _EmptyDirectory(refusal)


def _build_transport(config: Any, listen: str) -> Any:
    """The transport ``transport.kind`` names, from whichever plugin provides it."""
    from framework.hooks import BuildContext
    from framework.plugins import PluginError

    host = config.plugin_host
    kind = config.settings.transport.kind
    # The transport is chosen by its kind, not by flags; the node evaluates flags itself
    # (declaring and validating them once, in RaftNode).
    ctx = BuildContext(node_id=config.node_id, settings=config.settings, flags={})
    try:
        transport, _plugin = host.build(
            "transport",
            ctx,
            kind=kind,
            listen=listen,
            peers=config.peers,
            cluster_id=config.cluster_id,
        )
    except PluginError as exc:
        if isinstance(exc.__cause__, TlsError):
            raise exc.__cause__ from None  # the user's files, not the plugin, are at fault
        if "no plugin provides" in str(exc):
            raise PluginError(
                f"transport.kind = {kind!r}: no installed plugin provides it; expected "
                '"tcp" (built in) or the kind of an installed transport plugin'
            ) from None
        raise
    return transport


def _start_failure(exc: BaseException) -> Exception | None:
    """The user-facing error inside ``exc`` (task groups wrap errors in groups), if any."""
    from framework.flags import FlagError
    from framework.plugins import PluginError
    from framework.storage import StorageError

    if isinstance(exc, _EmptyDirectory):
        return exc
    known = (StorageError, PluginError, FlagError, SettingsError, OSError, TlsError)
    if isinstance(exc, known):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _start_failure(inner)
            if found is not None:
                return found
    return None


# -- kv --------------------------------------------------------------------------------------


def _client(members: dict[int, str], timeout: float, credentials: ClientCredentials) -> KVClient:
    # [client] settings (attempt_timeout, retry_backoff) from ./settings.toml and RAFTMW_*.
    settings = _settings("default", (), ())
    try:
        return KVClient.from_settings(members, settings, timeout=timeout, credentials=credentials)
    except TlsError as exc:
        raise click.UsageError(str(exc)) from None


def _client_call(
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    fn: Callable[[KVClient], Awaitable[Any]],
) -> Any:
    client = _client(_peers(peers), timeout, credentials)

    async def go() -> Any:
        async with client:
            return await fn(client)

    try:
        return run_async(go)
    except RaftError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


_peers_option = click.option(
    "--peers",
    required=True,
    envvar="RAFTMW_PEERS",
    help="ID=HOST:PORT,... of the cluster (or $RAFTMW_PEERS).",
)
_timeout_option = click.option(
    "--timeout", type=float, default=5.0, show_default=True, help="Seconds before giving up."
)


@main.group()
def kv() -> None:
    """Read and write the replicated KV store."""


@kv.command("get")
@click.argument("key")
@_peers_option
@_timeout_option
@credential_options
def kv_get(key: str, peers: str, timeout: float, credentials: ClientCredentials) -> None:
    """Print KEY's value (linearizable read); exit 1 if absent."""
    value = _client_call(peers, timeout, credentials, lambda c: c.get(key))
    if value is None:
        click.echo(f"{key}: (absent)", err=True)
        sys.exit(1)
    click.echo(value)


@kv.command("put")
@click.argument("key")
@click.argument("value")
@_peers_option
@_timeout_option
@credential_options
def kv_put(
    key: str,
    value: str,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    _client_call(peers, timeout, credentials, lambda c: c.put(key, value))
    click.echo("ok")


@kv.command("delete")
@click.argument("key")
@_peers_option
@_timeout_option
@credential_options
def kv_delete(key: str, peers: str, timeout: float, credentials: ClientCredentials) -> None:
    _client_call(peers, timeout, credentials, lambda c: c.delete(key))
    click.echo("ok")


@kv.command("append")
@click.argument("key")
@click.argument("value")
@_peers_option
@_timeout_option
@credential_options
def kv_append(
    key: str,
    value: str,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    """Append VALUE to KEY; print the new value."""
    click.echo(_client_call(peers, timeout, credentials, lambda c: c.append(key, value)))


@kv.command("cas")
@click.argument("key")
@click.argument("expected")
@click.argument("new")
@click.option("--absent", is_flag=True, help="Expect KEY to be absent (EXPECTED is ignored).")
@_peers_option
@_timeout_option
@credential_options
def kv_cas(
    key: str,
    expected: str,
    new: str,
    absent: bool,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    """Set KEY to NEW if it holds EXPECTED; exit 1 if it did not."""
    ok = _client_call(
        peers, timeout, credentials, lambda c: c.cas(key, None if absent else expected, new)
    )
    click.echo("swapped" if ok else "not swapped")
    if not ok:
        sys.exit(1)


# -- status and membership ---------------------------------------------------------------------


@main.command()
@_peers_option
@_timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(peers: str, timeout: float, as_json: bool, credentials: ClientCredentials) -> None:
    """Role, term, leader, commit/applied index, log size and replication state per node."""
    members = _peers(peers)
    client = _client(members, timeout, credentials)

    async def go() -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        async with client:
            for node_id in members:
                try:
                    out[node_id] = await client.status(node_id)
                except RaftError as exc:
                    out[node_id] = {"node_id": node_id, "role": "unreachable", "error": str(exc)}
        return out

    result = run_async(go)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from rich.console import Console

    from framework.runtime.report import status_table

    Console().print(status_table(result))


@main.group()
def members() -> None:
    """Change the cluster's membership (through the leader)."""


@members.command("add")
@click.argument("node_id", type=click.IntRange(min=1))
@click.argument("address")
@click.option("--learner", is_flag=True, help="Add as a learner only (no promotion).")
@_peers_option
@_timeout_option
@credential_options
def members_add(
    node_id: int,
    address: str,
    learner: bool,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    """Add NODE_ID at ADDRESS: as a learner, then promoted to voter once caught up."""
    action = "add_learner" if learner else "add"
    _client_call(peers, timeout, credentials, lambda c: c.members(action, node_id, address))
    click.echo(f"node {node_id} added as {'learner' if learner else 'voter'}")


@members.command("promote")
@click.argument("node_id", type=click.IntRange(min=1))
@_peers_option
@_timeout_option
@credential_options
def members_promote(
    node_id: int,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    _client_call(peers, timeout, credentials, lambda c: c.members("promote", node_id))
    click.echo(f"node {node_id} promoted to voter")


@members.command("remove")
@click.argument("node_id", type=click.IntRange(min=1))
@_peers_option
@_timeout_option
@credential_options
def members_remove(
    node_id: int,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    _client_call(peers, timeout, credentials, lambda c: c.members("remove", node_id))
    click.echo(f"node {node_id} removed")


@main.command("transfer-leader")
@click.argument("node_id", type=click.IntRange(min=1))
@_peers_option
@_timeout_option
@credential_options
def transfer_leader(
    node_id: int,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    """Move leadership to NODE_ID."""
    _client_call(peers, timeout, credentials, lambda c: c.transfer_leader(node_id))
    click.echo(f"node {node_id} is the leader")


# -- local clusters, demo, bench -----------------------------------------------------------------


@main.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("raftmw-data"),
    show_default=True,
)
@click.option("--profile", default=None, help="Settings profile for every node.")
@click.option("--flag", "flags", multiple=True, help="Feature flag for every node.")
def cluster(nodes: int, data_dir: Path, profile: str | None, flags: tuple[str, ...]) -> None:
    """Run NODES local node processes on loopback, supervised; Ctrl-C stops them all."""
    from framework.runtime.localcluster import LocalCluster

    local = LocalCluster(data_dir, nodes=nodes, profile=profile, flags=flags)
    where = data_dir.resolve()

    async def supervise() -> None:
        local.start_all()
        await local.wait_serving()
        click.echo(f"cluster of {nodes} up (TLS on); to use it, in another shell:")
        for name, value in local.environment().items():
            click.echo(f"  export {name}={value}")
        click.echo(f"logs, data and certificates in {where}; Ctrl-C to stop")
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:

                async def restart_dead() -> None:
                    while True:
                        await anyio.sleep(1.0)
                        for node_id, proc in local.nodes.items():
                            if not proc.alive():
                                click.echo(f"node {node_id} exited; restarting")
                                local.start(node_id)

                tg.start_soon(restart_dead)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break

    try:
        run_async(supervise)
    finally:
        codes = local.stop_all()
        click.echo("stopped: " + ", ".join(f"node {k} exit {v}" for k, v in codes.items()))


@main.command()
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


@main.command()
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
    as_json: bool,
) -> None:
    """Load a local cluster of node processes; report ops/s, latency, RSS and failover."""
    from framework.runtime.bench import BenchOptions, run_bench

    flags = _check_flags("--flag", flags)
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
    )
    report = run_bench(options, progress=not as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))


@main.command()
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
            flags=_check_flags("--a-flag", a_flags),
            profile=a_profile or profile,
            settings=a_settings,
        ),
        b=Mode(
            name=b_name,
            flags=_check_flags("--b-flag", b_flags),
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
        _settings(mode.profile or "default", mode.settings, mode.flags)
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
                flags=dict(map(_parse_flag, _check_flags("--flag", flags))),
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


@main.command("plugins")
@click.option(
    "--peers",
    default=None,
    envvar="RAFTMW_PEERS",
    help="Also show which plugin runs each seam on every node.",
)
@click.option("--json", "as_json", is_flag=True)
@credential_options
def plugins_command(peers: str | None, as_json: bool, credentials: ClientCredentials) -> None:
    """Installed plugins: name, tier, version, flags, seams; and what runs on each node."""
    from rich.console import Console

    from framework.plugins import PluginError, PluginHost
    from framework.runtime.report import plugins_table

    try:
        host = PluginHost()
        host.declare_flags()
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None
    nodes: dict[int, dict[str, Any]] = {}
    if peers:
        members = _peers(peers)
        client = _client(members, 3.0, credentials)

        async def go() -> None:
            async with client:
                for node_id in members:
                    try:
                        nodes[node_id] = (await client.status(node_id)).get("components", {})
                    except RaftError as exc:
                        nodes[node_id] = {"error": str(exc)}

        run_async(go)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plugins": [
                        {
                            "name": p.name,
                            "tier": p.tier.value,
                            "version": p.version,
                            "loaded": p.loaded,
                            "flags": list(p.flags),
                            "seams": list(p.seams),
                        }
                        for p in host.plugins()
                    ],
                    "nodes": {str(k): v for k, v in nodes.items()},
                },
                indent=2,
            )
        )
        return
    Console().print(plugins_table(host.plugins(), nodes))


@main.group()
def flags() -> None:
    """Feature flags: per-node evaluations, cluster-wide changes, overrides, history."""


def _flag_scope(cluster: bool, node: int | None) -> tuple[str, int | None]:
    if node is not None and cluster:
        raise click.UsageError("give either --cluster or --node N, not both")
    return ("node", node) if node is not None else ("cluster", None)


def _show_flags(result: dict[int, dict[str, Any]], as_json: bool, only: Sequence[str] = ()) -> None:
    if as_json:
        click.echo(json.dumps({str(k): v for k, v in result.items()}, indent=2, sort_keys=True))
        return
    from rich.console import Console

    from framework.runtime.report import flags_table

    Console().print(flags_table(result, only))


def _per_node(
    peers: str, timeout: float, credentials: ClientCredentials, action: str
) -> dict[int, dict[str, Any]]:
    members = _peers(peers)
    client = _client(members, timeout, credentials)

    async def go() -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        async with client:
            for node_id in members:
                try:
                    out[node_id] = await client.flags(action, scope="node", node_id=node_id)
                except RaftError as exc:
                    out[node_id] = {"error": str(exc)}
        return out

    return run_async(go)


def _wait_options(func: Callable[..., T]) -> Callable[..., T]:
    func = click.option(
        "--wait-timeout",
        type=click.FloatRange(min=0),
        default=30.0,
        show_default=True,
        help="Seconds to wait for every node to apply the change and swap.",
    )(func)
    return click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Wait for each node's outcome (--no-wait: return once the change is committed).",
    )(func)


def _change_flags(
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    change: Callable[[KVClient], Awaitable[dict[str, Any]]],
    *,
    names: Sequence[str],
    wait: bool,
    wait_timeout: float,
) -> tuple[dict[str, Any], dict[int, Any]]:
    """Make ``change``; then, unless told not to, each node's outcome of it."""
    from framework.runtime.flag_outcomes import outcome_of, wait_for_outcomes

    members = _peers(peers)

    async def go(client: KVClient) -> tuple[dict[str, Any], dict[int, Any]]:
        result = await change(client)
        if not wait:
            return result, {}
        log_index = result.get("log_index")
        if log_index is None:  # a node-local change: that node answered after its swap
            node_id = int(result.get("node_id", 0))
            outcome = outcome_of(node_id, result, None, names)
            return result, {node_id: outcome}
        outcomes = await wait_for_outcomes(
            client, members, int(log_index), names, deadline=wait_timeout
        )
        return result, dict(outcomes)

    return _client_call(peers, timeout, credentials, go)  # type: ignore[no-any-return]


def _report_outcomes(outcomes: dict[int, Any]) -> None:
    for outcome in outcomes.values():
        click.echo(outcome.line(), err=not outcome.ok)
    failed = [o.node_id for o in outcomes.values() if not o.ok]
    if failed:
        click.echo(f"the change did not take effect on node(s) {failed}", err=True)
        sys.exit(1)


@flags.command("list")
@_peers_option
@_timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
def flags_list(peers: str, timeout: float, as_json: bool, credentials: ClientCredentials) -> None:
    """Every flag on every node: value, reason, source, and the log index that set it."""
    _show_flags(_per_node(peers, timeout, credentials, "list"), as_json)


@flags.command("get")
@click.argument("names", nargs=-1, required=True)
@_peers_option
@_timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
def flags_get(
    names: tuple[str, ...],
    peers: str,
    timeout: float,
    as_json: bool,
    credentials: ClientCredentials,
) -> None:
    """NAMES on every node."""
    result = _per_node(peers, timeout, credentials, "get")
    for table in result.values():
        unknown = [n for n in names if "flags" in table and n not in table["flags"]]
        if unknown:
            raise click.ClickException(
                f"unknown flag(s) {unknown}; known: {sorted(table['flags'])}"
            )
    if as_json:
        click.echo(
            json.dumps(
                {str(k): {n: v.get("flags", {}).get(n) for n in names} for k, v in result.items()},
                indent=2,
            )
        )
        return
    _show_flags(result, False, names)


@flags.command("set")
@click.argument("assignments", nargs=-1, required=True)
@click.option("--cluster", is_flag=True, help="One log entry for the whole cluster (default).")
@click.option(
    "--node",
    type=click.IntRange(min=1),
    default=None,
    help="Node-local override on node N (break-glass).",
)
@click.option("--reason", default="", help="Note kept in the flag history.")
@_peers_option
@_timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
@_wait_options
def flags_set(
    assignments: tuple[str, ...],
    cluster: bool,
    node: int | None,
    reason: str,
    peers: str,
    timeout: float,
    as_json: bool,
    credentials: ClientCredentials,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Set flags, e.g. `actors=on backpressure=25%`: all in one atomic change.

    Then waits until every node has applied the change and swapped its plugins, prints
    each node's outcome, and exits 1 if any node failed to swap, lacks the plugin of a flag
    set, or had not applied it in --wait-timeout (--no-wait: return once committed).
    """
    scope, node_id = _flag_scope(cluster, node)
    values = dict(map(_parse_flag, assignments))
    result, outcomes = _change_flags(
        peers,
        timeout,
        credentials,
        lambda c: c.flags("set", scope=scope, node_id=node_id, assignments=values, reason=reason),
        names=tuple(values),
        wait=wait,
        wait_timeout=wait_timeout,
    )
    where = f"node {node_id} (override)" if node_id else "the cluster"
    click.echo(f"set {', '.join(assignments)} on {where}")
    _show_flags({int(result.get("node_id", 0)): result}, as_json, tuple(values))
    _report_outcomes(outcomes)


@flags.command("unset")
@click.argument("names", nargs=-1, required=True)
@click.option("--cluster", is_flag=True, help="Remove the cluster-wide values (default).")
@click.option("--node", type=click.IntRange(min=1), default=None, help="Remove node N's overrides.")
@click.option("--reason", default="")
@_peers_option
@_timeout_option
@credential_options
@_wait_options
def flags_unset(
    names: tuple[str, ...],
    cluster: bool,
    node: int | None,
    reason: str,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Remove cluster-wide values (or a node's overrides) so lower layers decide again.

    Waits for every node's outcome like `flags set`.
    """
    scope, node_id = _flag_scope(cluster, node)
    _, outcomes = _change_flags(
        peers,
        timeout,
        credentials,
        lambda c: c.flags("unset", scope=scope, node_id=node_id, names=names, reason=reason),
        names=(),
        wait=wait,
        wait_timeout=wait_timeout,
    )
    click.echo(f"unset {', '.join(names)}")
    _report_outcomes(outcomes)


@flags.command("history")
@_peers_option
@_timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
def flags_history(
    peers: str,
    timeout: float,
    as_json: bool,
    credentials: ClientCredentials,
) -> None:
    """Cluster-wide flag changes, with the log index each took effect at."""
    result = _client_call(peers, timeout, credentials, lambda c: c.flags("history"))
    history = result.get("history", [])
    if as_json:
        click.echo(json.dumps(history, indent=2))
        return
    if not history:
        click.echo("no cluster-wide flag changes")
    for change in history:
        sets = ", ".join(f"{k}={v}" for k, v in change["set"].items())
        unsets = ", ".join(f"-{k}" for k in change["unset"])
        note = f"  ({change['reason']})" if change["reason"] else ""
        click.echo(
            f"index {change['log_index']}: {', '.join(x for x in (sets, unsets) if x)}{note}"
        )


# -- config ------------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Show, check and write settings."""


@config.command("show")
@click.option("--profile", default="default", show_default=True)
@click.option("--settings", "settings_files", multiple=True, type=click.Path(dir_okay=False))
def config_show(profile: str, settings_files: tuple[str, ...]) -> None:
    """The effective settings and where each value came from."""
    from rich.console import Console

    from framework.runtime.report import settings_table

    settings = _settings(profile, settings_files, ())
    Console().print(settings_table(settings))


@config.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--profile", default="default", show_default=True)
def config_check(file: str, profile: str) -> None:
    """Validate FILE layered over the defaults as `raftmw node` would: every bad key, then
    the plugins (blocked or unknown names, undeclared flags, each plugin's own table).
    Prints each problem and exits 1 if there is any."""
    from framework.config import check_settings
    from framework.plugins import PluginError, PluginHost
    from framework.runtime.node_flags import settings_problems

    settings, errors = check_settings(profile=profile, files=[file])
    problems = [str(e) for e in errors]
    if settings is not None:
        try:
            host = PluginHost(
                blocked=settings.plugins.blocked, enabled=settings.plugins.enabled
            )
        except PluginError as exc:
            problems.append(str(exc))
        else:
            problems += settings_problems(host, settings)
    for problem in problems:
        click.echo(f"{file}: {problem}", err=True)
    if problems:
        click.echo(f"{file}: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo(f"{file}: ok")


@config.command("write")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", default="default", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def config_write(file: Path, profile: str, force: bool) -> None:
    """Write the effective settings of PROFILE to FILE as TOML."""
    if file.exists() and not force:
        raise click.ClickException(f"{file} exists; pass --force to overwrite it")
    text = settings_to_toml(_settings(profile, (), ()))
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(file)
    click.echo(f"wrote {file}")


main.add_command(tls_group)
main.add_command(
    lock_commands(_peers_option, _timeout_option, credential_options, _client_call), "lock"
)


def run() -> None:
    """The console script: ``main`` plus the subcommands plugins add (``raftmw_add_cli``)."""
    from framework.plugins import PluginError, PluginHost

    try:
        PluginHost().add_cli(main)
    except PluginError as exc:
        click.echo(f"raftmw: plugin commands unavailable: {exc}", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        main()


if __name__ == "__main__":
    run()
