"""Options shared by every ``raftmw`` command that talks to a cluster as a client.

Public so that plugin commands (``raftmw_add_cli``, e.g. ``raftmw migrate``) take the same
credentials the same way as the built-in ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from framework.auth import ClientCredentials

__all__ = ["credential_options"]

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
