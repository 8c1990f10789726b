"""``raftmw lock``: the lock service from the command line (``framework.apps.locks``).

The cluster must run the lock application (``raftmw node --app locks``). ``acquire`` prints
the fencing token to hand to the resource the lock protects; a holder keeps its lease with
``renew`` and ends it with ``release`` (both need the holder name and the fencing token;
``--token`` is the client's bearer token, as for every command).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from framework.apps.locks import LockService
from framework.apps.objects import ReplicatedError
from framework.apps.remote import ObjectProxy
from framework.config import SettingsError, parse_duration

__all__ = ["lock_commands"]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _ttl(value: str) -> float:
    try:
        return parse_duration(value, key="--ttl")
    except SettingsError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None


def _default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lock_commands(
    peers_option: Decorator,
    timeout_option: Decorator,
    credential_options: Decorator,
    client_call: Callable[..., Any],
) -> click.Group:
    """The ``lock`` group, built with the ``raftmw`` client options it shares with ``kv``."""

    def call(peers: str, timeout: float, credentials: Any, method: str, *args: Any) -> Any:
        async def go(client: Any) -> Any:
            return await getattr(ObjectProxy(client, LockService), method)(*args)

        try:
            return client_call(peers, timeout, credentials, go)
        except ReplicatedError as exc:
            click.echo(f"{exc.error}: {exc.message}", err=True)
            sys.exit(1)

    @click.group()
    def lock() -> None:
        """Locks with leases and fencing tokens (a cluster started with --app locks)."""

    def common(f: Callable[..., Any]) -> Callable[..., Any]:
        return peers_option(timeout_option(credential_options(f)))

    @lock.command("acquire")
    @click.argument("name")
    @click.option("--ttl", default="10s", show_default=True, help="Lease length (10s, 1m).")
    @click.option("--holder", default=None, help="Who holds it (default HOST:PID).")
    @common
    def acquire(
        name: str, ttl: str, holder: str | None, peers: str, timeout: float, credentials: Any
    ) -> None:
        """Acquire NAME for --ttl; print the fencing token. Exit 1 if another holds it."""
        who = holder or _default_holder()
        grant = call(peers, timeout, credentials, "acquire", name, who, _ttl(ttl))
        click.echo(
            f"acquired {name} holder={who} token={grant['token']} "
            f"expires_in={grant['expires'] - time.time():.1f}s"
        )

    @lock.command("renew")
    @click.argument("name")
    @click.option("--holder", required=True)
    @click.option("--fencing-token", type=int, required=True, help="From acquire.")
    @click.option("--ttl", default="10s", show_default=True)
    @common
    def renew(
        name: str,
        holder: str,
        fencing_token: int,
        ttl: str,
        peers: str,
        timeout: float,
        credentials: Any,
    ) -> None:
        """Extend the lease on NAME held by --holder with --fencing-token."""
        grant = call(peers, timeout, credentials, "renew", name, holder, fencing_token, _ttl(ttl))
        click.echo(f"renewed {name} token={grant['token']}")

    @lock.command("release")
    @click.argument("name")
    @click.option("--holder", required=True)
    @click.option("--fencing-token", type=int, required=True, help="From acquire.")
    @common
    def release(
        name: str, holder: str, fencing_token: int, peers: str, timeout: float, credentials: Any
    ) -> None:
        """Release NAME (held by --holder with --fencing-token)."""
        call(peers, timeout, credentials, "release", name, holder, fencing_token)
        click.echo(f"released {name}")

    @lock.command("status")
    @click.argument("name")
    @common
    def status(name: str, peers: str, timeout: float, credentials: Any) -> None:
        """The last lease granted on NAME (linearizable read)."""
        lease = call(peers, timeout, credentials, "status", name)
        if lease is None:
            click.echo(f"{name}: never held")
            return
        left = lease["expires"] - time.time()
        state = f"expires_in={left:.1f}s" if left > 0 else f"expired {-left:.1f}s ago"
        click.echo(f"{name}: holder={lease['holder']} token={lease['token']} {state}")

    return lock
