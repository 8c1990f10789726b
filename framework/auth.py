"""Who may do what: client roles, tokens, and the decision for each request.

Theory of operation
-------------------
1. **Two roles.** ``read-write`` may use the KV store, read status and read flags;
   ``admin`` may also change membership, move leadership and change flags (cluster-wide
   and node overrides), which is what migrations do. ``admin`` includes ``read-write``.
2. **A connection has one principal, fixed at its handshake.** It comes from the client's
   certificate (``raftmw://client/<role>``), else from a token in its ``Hello``, else it is
   unauthenticated. A node's own certificate used as a client is ``admin``: a node can
   already write anything into the log as a peer.
3. **Authentication off means trusted.** A node with no TLS and no tokens (loopback, or an
   explicit ``--insecure``) treats every client as ``admin``, as before TLS existed; that is
   what ``--insecure`` gives up.
4. **Decided where the request arrives.** The transport asks ``authorize`` before handing
   a request to the node; a refusal is an ``ErrorReply`` (``unauthorized`` or ``forbidden``)
   naming the operation and the role it needs, and the node never sees the request.
5. **Tokens are kept hashed** (SHA-256 of a random 256-bit token: a slow hash adds nothing
   against guessing a random 256-bit value) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from framework.transport.tls import CertificateIdentity, TlsError, client_context
from framework.transport.wire import (
    AdminFlags,
    AdminMembers,
    AdminService,
    AdminTransfer,
    AppCall,
    ErrorReply,
    KVOp,
    RequestBody,
    StatusRequest,
)

__all__ = [
    "ANYONE",
    "UNAUTHENTICATED",
    "ClientCredentials",
    "Principal",
    "Role",
    "TokenBook",
    "authorize",
    "hash_token",
    "new_token",
    "operation",
    "principal_for",
    "required_role",
]


class Role(StrEnum):
    READ_WRITE = "read-write"
    ADMIN = "admin"


_RANK: Final = {Role.READ_WRITE: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a client connection acts as; ``role`` None means unauthenticated."""

    name: str
    role: Role | None

    def may(self, needed: Role) -> bool:
        return self.role is not None and _RANK[self.role] >= _RANK[needed]


ANYONE: Final = Principal("anyone (authentication is off)", Role.ADMIN)
UNAUTHENTICATED: Final = Principal("unauthenticated", None)

_FLAG_READS: Final = frozenset({"list", "get", "history"})
_SERVICE_READS: Final = frozenset({"check", "status", "history"})
"""Node-service actions that only read (``raftmw migrate check|status|history``)."""


def operation(body: RequestBody) -> str:
    """The request as an operator would name it (the ``raftmw`` subcommand)."""
    match body:
        case KVOp():
            return f"kv {body.op}"
        case AppCall():
            return f"{body.app} {'read' if body.read else 'call'}"
        case StatusRequest():
            return "status"
        case AdminMembers():
            return f"members {body.action.replace('_', '-')}"
        case AdminTransfer():
            return "transfer-leader"
        case AdminFlags():
            return f"flags {body.action}" + (" --node" if body.scope == "node" else "")
        case AdminService():
            return f"{body.service} {body.action}"
    raise TypeError(f"unknown request body {type(body).__name__}")


def required_role(body: RequestBody) -> Role:
    """The least role that may make this request (rule 1)."""
    if isinstance(body, KVOp | AppCall | StatusRequest):
        return Role.READ_WRITE
    if isinstance(body, AdminFlags) and body.action in _FLAG_READS:
        return Role.READ_WRITE
    if isinstance(body, AdminService) and body.action in _SERVICE_READS:
        return Role.READ_WRITE
    return Role.ADMIN  # membership, leadership, flag and migration changes


def authorize(principal: Principal, body: RequestBody) -> ErrorReply | None:
    """None if ``principal`` may make this request, else the refusal to answer with."""
    needed = required_role(body)
    if principal.may(needed):
        return None
    if principal.role is None:
        return ErrorReply(
            kind="unauthorized",
            message=(
                f"{operation(body)} needs role {needed}; this connection is not "
                "authenticated (give a client certificate with --tls-cert/--tls-key or "
                "$RAFTMW_TLS_CERT/$RAFTMW_TLS_KEY, or a token with --token or $RAFTMW_TOKEN)"
            ),
        )
    return ErrorReply(
        kind="forbidden",
        message=(
            f"{operation(body)} needs role {needed}; {principal.name} has role {principal.role}"
        ),
    )


# -- tokens -------------------------------------------------------------------------------------


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What settings keep instead of the token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBook:
    """The node's tokens: name -> (role, SHA-256). Never holds a token itself."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, tuple[str, str]] | None = None) -> None:
        self._entries: list[tuple[str, Role, bytes]] = []
        for name, (role, digest) in (entries or {}).items():
            try:
                raw = bytes.fromhex(digest)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    f"security.tokens.{name}.sha256 = {digest!r}: expected 64 hex digits "
                    "(raftmw tls token prints them)"
                )
            self._entries.append((name, Role(role), raw))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None. Every entry is compared, each in
        constant time, so the time taken says nothing about which one (nearly) matched."""
        if not token or len(token) > 1024:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for name, role, expected in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = Principal(f"token {name}", role)
        return found


def principal_for(
    identity: CertificateIdentity | None,
    token: str,
    tokens: TokenBook,
    *,
    authentication: bool,
) -> Principal:
    """The principal of a client connection (rule 2); ``authentication`` False means the
    node has neither TLS nor tokens (rule 3)."""
    if not authentication:
        return ANYONE
    if identity is not None:
        if identity.node_id is not None:
            return Principal(f"node {identity.node_id}", Role.ADMIN)
        if identity.role is not None:
            return Principal(f"client {identity.name or '?'}", Role(identity.role))
    found = tokens.authenticate(token) if token else None
    return found if found is not None else UNAUTHENTICATED


# -- what a client presents -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCredentials:
    """A client's side of authentication: the cluster CA to trust (TLS on when given), an
    optional client certificate and key, and an optional token.

    ``from_environment`` reads ``RAFTMW_TLS_CA``, ``RAFTMW_TLS_CERT``, ``RAFTMW_TLS_KEY`` and
    ``RAFTMW_TOKEN``; ``KVClient`` does so when given no credentials.
    """

    ca: str = ""
    cert: str = ""
    key: str = ""
    token: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ClientCredentials:
        env = os.environ if environ is None else environ
        return cls(
            ca=env.get("RAFTMW_TLS_CA", ""),
            cert=env.get("RAFTMW_TLS_CERT", ""),
            key=env.get("RAFTMW_TLS_KEY", ""),
            token=env.get("RAFTMW_TOKEN", ""),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with, or None for plain TCP (no CA given). Raises
        ``TlsError`` naming the option and file at fault."""
        if not self.ca:
            if self.cert or self.key:
                raise TlsError(
                    f"--tls-cert = {self.cert!r} / --tls-key = {self.key!r} without --tls-ca; "
                    "expected the cluster CA too (RAFTMW_TLS_CA)"
                )
            return None
        return client_context(ca=self.ca, cert=self.cert, key=self.key)
