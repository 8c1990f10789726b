"""The ``raftmw`` command line (click). Plugins add subcommands to the ``main`` group."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click

from framework.auth import ClientCredentials
from framework.cli_lazy import LazyGroup
from framework.cli_options import (
    ask_each_node,
    client_call,
    client_for,
    credential_options,
    peers_from,
    peers_option,
    settings_for,
    timeout_option,
)
from framework.config import SettingsError, settings_to_toml
from framework.errors import RaftError
from framework.runtime.eventloop import run_async
from framework.transport.tls import TlsError

if TYPE_CHECKING:
    from framework.client import KVClient

__all__ = ["main", "run", "run_async"]

T = TypeVar("T")


@click.group(cls=LazyGroup)
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
    from framework.apps.loading import APP_GROUP, BadApplication, load_application
    from framework.entry_points import installed_apart
    from framework.metrics import configure_from_environment
    from framework.plugins import ENTRY_POINT_GROUP, PluginError, PluginHost
    from framework.runtime.heap_trim import trim_free_heap
    from framework.runtime.node import NodeConfig, RaftNode
    from framework.storage import StorageError
    from framework.storage.sqlite import SQLiteLogStore

    blocked = [p.removeprefix("no:") for p in plugin_args if p.startswith("no:")]
    enabled = [p for p in plugin_args if not p.startswith("no:")]
    tls = {"tls.ca": tls_ca, "tls.cert": tls_cert, "tls.key": tls_key}
    tls_overrides: dict[str, object] = {k: v for k, v in tls.items() if v is not None}
    if insecure:
        tls_overrides["tls.insecure"] = True
    # Loaded in a forked child: dynaconf stays out of this long-running process (issue #15).
    settings = settings_for(
        profile,
        settings_files,
        flags,
        blocked=blocked,
        enabled=enabled,
        extra=tls_overrides,
        apart=True,
    )
    # Found in a forked child too: importlib.metadata stays out of this process (issue #15).
    installed = installed_apart([ENTRY_POINT_GROUP, APP_GROUP])
    members = peers_from(peers)
    if members.get(node_id, listen) != listen:
        raise click.BadParameter(
            f"--peers gives node {node_id} the address {members[node_id]}, but --listen is "
            f"{listen}",
            param_hint="--peers",
        )
    members[node_id] = listen
    try:
        app = load_application(app_spec, installed_apps=installed[APP_GROUP])
    except BadApplication as exc:
        raise click.BadParameter(str(exc), param_hint="--app") from None
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    configure_from_environment()  # an OpenTelemetry exporter, if OTEL_METRICS_EXPORTER asks
    try:
        host = PluginHost(
            blocked=settings.plugins.blocked,
            enabled=settings.plugins.enabled,
            installed_plugins=installed[ENTRY_POINT_GROUP],
        )
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
                # Start-up's garbage is freed by now; give its pages back (issue #15).
                await anyio.to_thread.run_sync(trim_free_heap)
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


@main.group()
def kv() -> None:
    """Read and write the replicated KV store."""


@kv.command("get")
@click.argument("key")
@peers_option
@timeout_option
@credential_options
def kv_get(key: str, peers: str, timeout: float, credentials: ClientCredentials) -> None:
    """Print KEY's value (linearizable read); exit 1 if absent."""
    value = client_call(peers, timeout, credentials, lambda c: c.get(key))
    if value is None:
        click.echo(f"{key}: (absent)", err=True)
        sys.exit(1)
    click.echo(value)


@kv.command("put")
@click.argument("key")
@click.argument("value")
@peers_option
@timeout_option
@credential_options
def kv_put(
    key: str,
    value: str,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    client_call(peers, timeout, credentials, lambda c: c.put(key, value))
    click.echo("ok")


@kv.command("delete")
@click.argument("key")
@peers_option
@timeout_option
@credential_options
def kv_delete(key: str, peers: str, timeout: float, credentials: ClientCredentials) -> None:
    client_call(peers, timeout, credentials, lambda c: c.delete(key))
    click.echo("ok")


@kv.command("append")
@click.argument("key")
@click.argument("value")
@peers_option
@timeout_option
@credential_options
def kv_append(
    key: str,
    value: str,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    """Append VALUE to KEY; print the new value."""
    click.echo(client_call(peers, timeout, credentials, lambda c: c.append(key, value)))


@kv.command("cas")
@click.argument("key")
@click.argument("expected")
@click.argument("new")
@click.option("--absent", is_flag=True, help="Expect KEY to be absent (EXPECTED is ignored).")
@peers_option
@timeout_option
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
    ok = client_call(
        peers, timeout, credentials, lambda c: c.cas(key, None if absent else expected, new)
    )
    click.echo("swapped" if ok else "not swapped")
    if not ok:
        sys.exit(1)


# -- status and membership ---------------------------------------------------------------------


@main.command()
@peers_option
@timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(peers: str, timeout: float, as_json: bool, credentials: ClientCredentials) -> None:
    """Role, term, leader, commit/applied index, log size and replication state per node."""
    result = ask_each_node(
        peers,
        timeout,
        credentials,
        lambda client, node_id: client.status(node_id),
        lambda node_id, exc: {"node_id": node_id, "role": "unreachable", "error": str(exc)},
    )
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
@peers_option
@timeout_option
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
    client_call(peers, timeout, credentials, lambda c: c.members(action, node_id, address))
    click.echo(f"node {node_id} added as {'learner' if learner else 'voter'}")


@members.command("promote")
@click.argument("node_id", type=click.IntRange(min=1))
@peers_option
@timeout_option
@credential_options
def members_promote(
    node_id: int,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    client_call(peers, timeout, credentials, lambda c: c.members("promote", node_id))
    click.echo(f"node {node_id} promoted to voter")


@members.command("remove")
@click.argument("node_id", type=click.IntRange(min=1))
@peers_option
@timeout_option
@credential_options
def members_remove(
    node_id: int,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    """Remove NODE_ID; returns once the voters left have applied it (safe to stop it)."""
    from framework.member_removal import wait_removal_applied

    async def remove(client: KVClient) -> tuple[list[int], list[int]]:
        status = await client.members("remove", node_id)
        voters = [v for v in status.get("voters", ()) if v != node_id]
        return voters, await wait_removal_applied(client, node_id, voters, timeout=timeout)

    voters, waiting = client_call(peers, timeout, credentials, remove)
    if waiting:
        raise click.ClickException(
            f"node {node_id} was removed (the change committed), but voters {waiting} of "
            f"{voters} had not applied it within {timeout} s: do not stop node {node_id} "
            f"until `raftmw status` shows it gone from their voters (with one voter left, "
            f"stopping it now could leave no electable node)"
        )
    click.echo(f"node {node_id} removed; voters {voters} applied it: it may be stopped")


@main.command("transfer-leader")
@click.argument("node_id", type=click.IntRange(min=1))
@peers_option
@timeout_option
@credential_options
def transfer_leader(
    node_id: int,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
) -> None:
    """Move leadership to NODE_ID."""
    client_call(peers, timeout, credentials, lambda c: c.transfer_leader(node_id))
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
        members = peers_from(peers)
        client = client_for(members, 3.0, credentials)

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

    settings = settings_for(profile, settings_files, ())
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
            host = PluginHost(blocked=settings.plugins.blocked, enabled=settings.plugins.enabled)
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
    text = settings_to_toml(settings_for(profile, (), ()))
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(file)
    click.echo(f"wrote {file}")


def _command_from(module: str, attribute: str) -> Callable[[], click.Command]:
    def build() -> click.Command:
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}.{attribute} is {command!r}, not a click command")
        return command

    return build


def _lock_command() -> click.Command:
    from framework.lock_cli import lock_commands

    return lock_commands(peers_option, timeout_option, credential_options, client_call)


# Imported when first used, not by every node process (framework/cli_lazy.py).
main.add_lazy_command("tls", _command_from("framework.tls_cli", "tls_group"))
main.add_lazy_command("flags", _command_from("framework.flags_cli", "flags"))
for _name in ("demo", "bench", "compare"):
    main.add_lazy_command(_name, _command_from("framework.bench_cli", _name))
main.add_lazy_command("lock", _lock_command)


def run() -> None:
    """The console script: ``main`` plus the subcommands plugins add (``raftmw_add_cli``)."""
    from framework.plugins import PluginError, PluginHost

    # `raftmw node` is built in: a node process skips the plugins' commands and what they
    # import (the migration commands' rich, about 2 MiB a node).
    if sys.argv[1:2] != ["node"]:
        try:
            PluginHost().add_cli(main)
        except PluginError as exc:
            click.echo(f"raftmw: plugin commands unavailable: {exc}", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        main()


if __name__ == "__main__":
    run()
