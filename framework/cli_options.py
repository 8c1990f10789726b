"""Options shared by every ``raftmw`` command that talks to a cluster as a client.

Also the helpers the command modules share (``cli``, ``flags_cli``, ``bench_cli``,
``lock_cli``): settings from options, peers, a client, a call that turns errors into a
click error. Public so that plugin commands (``raftmw_add_cli``, e.g. ``raftmw migrate``)
take the same credentials the same way as the built-in ones.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click

from framework.auth import ClientCredentials
from framework.client import KVClient, parse_peers
from framework.config import Settings, SettingsError, load_settings
from framework.errors import RaftError
from framework.runtime.eventloop import run_async
from framework.transport.tls import TlsError

__all__ = [
    "ask_each_node",
    "check_flags",
    "client_call",
    "client_for",
    "credential_options",
    "fail",
    "parse_flag",
    "peers_from",
    "peers_option",
    "settings_for",
    "timeout_option",
]

T = TypeVar("T")


def credential_options(func: Callable[..., T]) -> Callable[..., T]:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--token`` (or their ``RAFTMW_``
    variables), handed to the command as one ``credentials`` argument."""

    @click.option(
        "--tls-ca",
        envvar="RAFTMW_TLS_CA",
        default="",
        help="Cluster CA (PEM): connect with TLS (or $RAFTMW_TLS_CA).",
    )
    @click.option(
        "--tls-cert",
        envvar="RAFTMW_TLS_CERT",
        default="",
        help="Client certificate carrying a role (or $RAFTMW_TLS_CERT).",
    )
    @click.option(
        "--tls-key", envvar="RAFTMW_TLS_KEY", default="", help="Its key (or $RAFTMW_TLS_KEY)."
    )
    @click.option(
        "--token",
        envvar="RAFTMW_TOKEN",
        default="",
        help="Client token, instead of a certificate (better: $RAFTMW_TOKEN).",
    )
    @functools.wraps(func)
    def with_credentials(
        *args: Any, tls_ca: str, tls_cert: str, tls_key: str, token: str, **kwargs: Any
    ) -> T:
        credentials = ClientCredentials(ca=tls_ca, cert=tls_cert, key=tls_key, token=token)
        return func(*args, credentials=credentials, **kwargs)

    return with_credentials


def parse_flag(text: str) -> tuple[str, Any]:
    from framework.flags import FlagError, parse_flag_assignment

    try:
        return parse_flag_assignment(text)
    except FlagError as exc:
        raise click.BadParameter(str(exc)) from None


def check_flags(option: str, flags: Sequence[str]) -> tuple[str, ...]:
    """``--flag``-style assignments checked before any node starts: the syntax, and that
    some installed plugin declares each name (a node would refuse it at start)."""
    from framework.flags import UnknownFlag
    from framework.plugins import PluginHost

    registry = PluginHost().declare_flags()
    for text in flags:
        name, _value = parse_flag(text)
        try:
            registry.get(name)
        except UnknownFlag as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
    return tuple(flags)


def settings_for(
    profile: str,
    files: Sequence[str],
    flags: Sequence[str],
    *,
    blocked: Sequence[str] = (),
    enabled: Sequence[str] = (),
    extra: dict[str, object] | None = None,
    apart: bool = False,
) -> Settings:
    """The settings a command's options select, or a usage error naming the bad one.

    ``apart``: load them in a forked child (`framework.settings_apart`), so this process
    never imports dynaconf; for a long-running node, whose every module stays resident.
    """
    from framework.config import Rollout
    from framework.settings_apart import LoadApartError, load_settings_apart

    overrides: dict[str, object] = dict(extra or {})
    if blocked:
        overrides["plugins.blocked"] = list(blocked)
    if enabled:
        overrides["plugins.enabled"] = list(enabled)
    for name, value in map(parse_flag, flags):
        if isinstance(value, Rollout):
            value = {
                "enabled": value.enabled,
                "percent": value.percent,
                "include": list(value.include),
                "exclude": list(value.exclude),
            }
        overrides[f"flags.{name}"] = value
    load = load_settings_apart if apart else load_settings
    try:
        return load(profile=profile, files=files, overrides=overrides)
    except SettingsError as exc:
        raise click.UsageError(f"bad settings: {exc}") from None
    except LoadApartError as exc:
        raise click.ClickException(f"cannot load the settings: {exc}") from None


def peers_from(text: str) -> dict[int, str]:
    try:
        return parse_peers(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--peers") from None


def fail(exc: BaseException) -> None:
    raise click.ClickException(str(exc))


def client_for(members: dict[int, str], timeout: float, credentials: ClientCredentials) -> KVClient:
    # [client] settings (attempt_timeout, retry_backoff) from ./settings.toml and RAFTMW_*.
    settings = settings_for("default", (), ())
    try:
        return KVClient.from_settings(members, settings, timeout=timeout, credentials=credentials)
    except TlsError as exc:
        raise click.UsageError(str(exc)) from None


def client_call(
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    fn: Callable[[KVClient], Awaitable[Any]],
) -> Any:
    client = client_for(peers_from(peers), timeout, credentials)

    async def go() -> Any:
        async with client:
            return await fn(client)

    try:
        return run_async(go)
    except RaftError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


peers_option = click.option(
    "--peers",
    required=True,
    envvar="RAFTMW_PEERS",
    help="ID=HOST:PORT,... of the cluster (or $RAFTMW_PEERS).",
)
timeout_option = click.option(
    "--timeout", type=float, default=5.0, show_default=True, help="Seconds before giving up."
)


def ask_each_node(
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    ask: Callable[[KVClient, int], Awaitable[dict[str, Any]]],
    unreachable: Callable[[int, RaftError], dict[str, Any]],
) -> dict[int, dict[str, Any]]:
    """``ask(client, node_id)`` of every member in turn, over one client; a node that
    fails is answered by ``unreachable(node_id, error)`` instead."""
    members = peers_from(peers)
    client = client_for(members, timeout, credentials)

    async def go() -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        async with client:
            for node_id in members:
                try:
                    out[node_id] = await ask(client, node_id)
                except RaftError as exc:
                    out[node_id] = unreachable(node_id, exc)
        return out

    return run_async(go)
