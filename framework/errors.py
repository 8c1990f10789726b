"""Errors a raftmw user sees. Every client-facing failure is a ``RaftError``.

- ``Overloaded``: the leader refused the request to protect itself; nothing was applied.
  Retry later (with backoff).
- ``Unavailable``: no leader with a quorum could be reached before the deadline; nothing
  is known to have been applied.
- ``Timeout``: the request was sent but no answer came before the deadline; it may or may
  not have been applied (outcome unknown). Retrying with the same session is safe.
- ``BadRequest``: the request can never succeed as sent (e.g. an unknown member).
- ``Unauthorized``: the connection is not authenticated (no client certificate or token)
  and the operation needs a role; ``Forbidden``: the client's role may not do it. Both
  name the operation and the role it needs; nothing was applied.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Forbidden",
    "Overloaded",
    "RaftError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
]


class RaftError(Exception):
    """Base of every error raised to raftmw clients."""


class Overloaded(RaftError):
    """The cluster is shedding load; retry later."""


class Unavailable(RaftError):
    """No quorum reachable before the deadline."""


class Timeout(RaftError):
    """No answer before the deadline; the outcome is unknown."""


class BadRequest(RaftError):
    """The request is invalid and retrying will not help."""


class Unauthorized(RaftError):
    """The operation needs a role and the connection is not authenticated."""


class Forbidden(RaftError):
    """The client's role may not perform the operation."""
