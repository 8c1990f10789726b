"""Member addresses: checked when a membership change is proposed, tolerated when applied.

Theory of operation
-------------------
A membership change carries the new member's address in ``ConfChange.context`` (opaque to
the kernel). Once committed, every node applies it, and applying it again after every
restart (the log is replayed). So an address that a node cannot use must never crash the
apply path: ``address_of`` returns None for it and the caller logs and skips it (the kernel
still records the membership; this node just cannot reach that member until a later change
gives it a usable address).

To keep such entries out of the log in the first place, ``check_member_address`` runs
before the leader proposes (``raftmw members add``) and answers with the value and what was
expected. The same check guards addresses arriving in a snapshot's address book.

What an address looks like is the transport's business: TCP dials ``HOST:PORT``
(``host_port_problem``); the in-memory network names nodes ``mem://<id>``, and a plugin
transport has its own form, for which only the generic rules hold (bounded, printable, no
whitespace). ``address_check_for(transport)`` picks the rule.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Final

from framework.core import ConfChange, ConfChangeType
from framework.transport.base import Transport
from framework.transport.bounds import MAX_NODE_ID
from framework.transport.streams import parse_address
from framework.transport.tcp import TcpTransport
from framework.transport.wire import MAX_ADDRESS_CHARS

__all__ = [
    "AddressCheck",
    "BadMemberAddress",
    "address_check_for",
    "address_of",
    "check_member_address",
    "generic_address_problem",
    "host_port_problem",
]

log = logging.getLogger("raftmw.members")

_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class BadMemberAddress(ValueError):
    """An address a node could not dial; the message names it and what was expected."""


AddressCheck = Callable[[str], "str | None"]
"""Why an address cannot be used (naming it and what was expected), or None if it can."""


def generic_address_problem(address: str) -> str | None:
    """The rules every transport's addresses keep: 1..300 printable characters, no spaces."""
    if not address or len(address) > MAX_ADDRESS_CHARS:
        return (
            f"address {address[:MAX_ADDRESS_CHARS]!r} ({len(address)} characters): expected "
            f"1..{MAX_ADDRESS_CHARS} characters"
        )
    if not address.isprintable() or any(c.isspace() for c in address):
        return f"address {address!r}: expected printable characters and no whitespace"
    return None


def address_check_for(transport: Transport) -> AddressCheck:
    """The address rule of the transport a node dials its members with."""
    return host_port_problem if isinstance(transport, TcpTransport) else generic_address_problem


def host_port_problem(address: str) -> str | None:
    """Why ``address`` cannot be a TCP member's address, or None if it can.

    Expected: ``HOST:PORT`` with a port in 1..65535 and a host that is an IPv4 address, a
    bracketed IPv6 address (``[::1]:7001``) or a DNS name (letters, digits, hyphens; labels
    of at most 63 characters, at most 253 in all).
    """
    expected = (
        "expected HOST:PORT with a port in 1..65535 and a host that is an IPv4 address, "
        "a bracketed IPv6 address or a DNS name"
    )
    if not address or len(address) > MAX_ADDRESS_CHARS:
        return f"address {address[:MAX_ADDRESS_CHARS]!r} ({len(address)} characters): {expected}"
    try:
        host, port = parse_address(address)
    except ValueError:
        return f"address {address!r}: {expected}"
    if not 1 <= port <= 65535:
        return f"address {address!r}: port {port} is out of range; {expected}"
    if address.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"address {address!r}: {host!r} in brackets is not an IPv6 address"
        return None
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        pass
    name = host.removesuffix(".")
    if len(name) > 253 or not name or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        return f"address {address!r}: host {host!r} is not a valid host name; {expected}"
    return None


def check_member_address(node_id: int, address: str, problem_of: AddressCheck) -> str:
    """``address`` if node ``node_id`` may be given it, else ``BadMemberAddress``."""
    if not 1 <= node_id <= MAX_NODE_ID:
        raise BadMemberAddress(f"node id {node_id}: expected a node id in 1..{MAX_NODE_ID}")
    if not address:
        raise BadMemberAddress(f"adding node {node_id} needs its address (host:port)")
    problem = problem_of(address)
    if problem is not None:
        raise BadMemberAddress(f"node {node_id}: {problem}")
    return address


def address_of(
    change: ConfChange, *, node_id: int, index: int, problem_of: AddressCheck
) -> str | None:
    """The usable address a committed ``change`` gives its member, or None (logged) if it
    gives none or one this node cannot use. Never raises: this runs on every replay."""
    if change.type is ConfChangeType.REMOVE or not change.context:
        return None
    try:
        address = change.context.decode()
    except UnicodeDecodeError:
        problem: str | None = f"address bytes {change.context[:64]!r} are not UTF-8"
    else:
        problem = problem_of(address)
    if problem is None:
        return address
    log.error(
        "node %d: the committed membership change at index %d (%s node %d) carries an "
        "unusable address, skipped on this node: %s",
        node_id,
        index,
        change.type.value,
        change.node_id,
        problem,
    )
    return None
