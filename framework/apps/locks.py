"""``LockService``: distributed locks with leases and fencing tokens, as a replicated object.

Theory of operation (after Chubby, Burrows 2006, §2.4 "sequencers")
-------------------------------------------------------------------
A lock is a *lease*: ``acquire(name, holder, ttl)`` grants it until ``now + ttl``, where
``now`` is the leader's clock carried in the log entry (``ReplicatedObject.now``), so every
replica agrees on when a lease ends and no replica reads its own clock. A holder keeps the
lock by calling ``renew`` before the lease ends; a holder that vanishes loses it once
``ttl`` has passed by the clock of the leader that proposes the next acquisition.

Each grant carries a **fencing token**: the log index of the acquisition. Indexes only grow,
so the tokens of successive holders of one lock strictly increase; a resource that remembers
the highest token it has seen refuses a write from a holder whose lease has ended since (it
carries an older token). Renewing keeps the token: it is the same grant.

Rules (every replica applies them to the same entries, so they hold everywhere):

* one lease per lock: ``acquire`` by another holder while the lease is live raises
  ``LockHeld`` (a result, raised to the caller); by the same holder it renews;
* ``release`` and ``renew`` need the holder's token and a live lease, else ``NotHolder``;
* names and holders are 1..256 characters, ``ttl`` is in (0, 86400] seconds, and at most
  ``MAX_LOCKS`` leases are kept (expired ones are forgotten first).

Leader clocks: a new leader's clock may be behind the old one's; a lease then lasts longer
than ``ttl`` (never shorter than the holder may assume, as long as the holder times its
lease from before it sent ``acquire``). Clocks that jump forward shorten leases; fencing
tokens are what keeps a resource safe from a holder whose lease ended unnoticed.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from framework.apps.objects import ReplicatedObject, query, replicated

__all__ = ["MAX_LOCKS", "Lease", "LockHeld", "LockService", "NotHolder"]

MAX_LOCKS: Final = 100_000
MAX_NAME: Final = 256
MAX_TTL: Final = 86_400.0


class LockHeld(Exception):
    """The lock has a live lease of another holder."""


class NotHolder(Exception):
    """The caller does not hold this lock (any more), or gave another grant's token."""


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    holder: str
    token: int
    """The log index of the acquisition: the fencing token."""
    expires: float
    """The leader's clock at which the lease ends."""


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME:
        raise ValueError(f"{what} {value!r}: expected a string of 1 to {MAX_NAME} characters")
    return value


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl {ttl!r}: expected seconds in (0, {MAX_TTL:g}]")
    return float(ttl)


class LockService(ReplicatedObject):
    """Locks with leases and fencing tokens; see the module docstring."""

    app_name = "raftmw.locks"
    app_version = "1"

    locks: dict[str, Lease]

    def __init__(self) -> None:
        self.locks = {}

    def _live(self, name: str) -> Lease | None:
        lease = self.locks.get(name)
        return lease if lease is not None and lease.expires > self.now else None

    @replicated
    def acquire(self, name: str, holder: str, ttl: float) -> dict[str, Any]:
        """Grant ``name`` to ``holder`` for ``ttl`` seconds: ``{"token", "expires"}``."""
        _check_name("lock name", name)
        _check_name("holder", holder)
        ttl = _check_ttl(ttl)
        lease = self._live(name)
        if lease is not None and lease.holder != holder:
            raise LockHeld(
                f"lock {name!r} is held by {lease.holder!r} (token {lease.token}) for "
                f"{lease.expires - self.now:.3f}s more"
            )
        if name not in self.locks and len(self.locks) >= MAX_LOCKS:
            self.locks = {n: le for n, le in self.locks.items() if le.expires > self.now}
            if len(self.locks) >= MAX_LOCKS:
                raise ValueError(f"{MAX_LOCKS} locks are held; release some first")
        token = lease.token if lease is not None else self.index
        self.locks[name] = Lease(holder=holder, token=token, expires=self.now + ttl)
        return {"token": token, "expires": self.now + ttl}

    @replicated
    def renew(self, name: str, holder: str, token: int, ttl: float) -> dict[str, Any]:
        """Extend a live lease held by ``holder`` with ``token``."""
        ttl = _check_ttl(ttl)
        lease = self._held(name, holder, token)
        self.locks[name] = Lease(holder=holder, token=lease.token, expires=self.now + ttl)
        return {"token": lease.token, "expires": self.now + ttl}

    @replicated
    def release(self, name: str, holder: str, token: int) -> float:
        """End a live lease held by ``holder`` with ``token``; returns the leader's time of
        the release (when the lock became free)."""
        self._held(name, holder, token)
        del self.locks[name]
        return self.now

    def _held(self, name: str, holder: str, token: int) -> Lease:
        lease = self._live(name)
        if lease is None or lease.holder != holder or lease.token != token:
            now_held = f"held by {lease.holder!r} with token {lease.token}" if lease else "not held"
            raise NotHolder(
                f"lock {name!r} is {now_held}; {holder!r} with token {token} does not hold it"
            )
        return lease

    @query
    def status(self, name: str) -> dict[str, Any] | None:
        """The last lease granted for ``name`` (it may have expired: compare ``expires``
        with the cluster's clock), or None."""
        lease = self.locks.get(name)
        if lease is None:
            return None
        return {"holder": lease.holder, "token": lease.token, "expires": lease.expires}
