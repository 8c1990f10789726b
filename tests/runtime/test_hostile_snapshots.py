"""What an inbound snapshot must be before the kernel may install it
(framework/runtime/snapshots.py: check_node_snapshot), as a table; and member addresses
(framework/runtime/members.py)."""

from __future__ import annotations

import pytest

from framework.core import Entry, EntryKind
from framework.flags import ClusterFlagState, FlagChange
from framework.runtime.members import generic_address_problem, host_port_problem
from framework.runtime.snapshots import (
    BadNodeSnapshot,
    NodeSnapshot,
    check_node_snapshot,
    encode_node_snapshot,
)
from framework.statemachine import KVStateMachine, Put, Request, encode_request


def _state_machine_at(index: int) -> bytes:
    sm = KVStateMachine()
    for i in range(1, index + 1):
        request = Request(client_id=1, seq=i, op=Put(key=f"k{i}", value="v"))
        sm.apply(Entry(1, i, EntryKind.NORMAL, encode_request(request)))
    return sm.snapshot()


def _flags() -> bytes:
    state = ClusterFlagState()
    state.apply(FlagChange(set={"backpressure": True}), 2)
    return state.to_bytes()


GOOD = NodeSnapshot(
    version=1,
    members={1: "127.0.0.1:7001", 2: "db-2.example:7002", 3: "[::1]:7003"},
    state_machine=_state_machine_at(3),
    flags=_flags(),
)


def _with(**changes: object) -> bytes:
    fields = {f: getattr(GOOD, f) for f in GOOD.__struct_fields__}
    fields.update(changes)
    return encode_node_snapshot(NodeSnapshot(**fields))  # type: ignore[arg-type]


def test_a_sound_snapshot_passes() -> None:
    data = encode_node_snapshot(GOOD)
    snap = check_node_snapshot(
        data, index=3, state_machine=KVStateMachine(), address_problem=host_port_problem
    )
    assert snap == GOOD


@pytest.mark.parametrize(
    ("data", "index", "match"),
    [
        (b"junk", 3, "is not a raftmw snapshot"),
        (b"", 3, "is not a raftmw snapshot"),
        (_with(version=2), 3, "format version 2 is not supported"),
        (_with(members={1: "no-port-here"}), 3, "snapshot member 1: address 'no-port-here'"),
        (_with(members={0: "127.0.0.1:1"}), 3, "member id 0"),
        (_with(flags=b"\x01\x02"), 3, "snapshot flag state"),
        (_with(state_machine=b"junk"), 3, "snapshot state machine"),
        (_with(state_machine=b""), 3, "snapshot state machine: empty snapshot"),
        (_with(), 9, "restores to index 3, but the snapshot claims index 9"),
    ],
)
def test_an_unsound_snapshot_is_refused_naming_what_is_wrong(
    data: bytes, index: int, match: str
) -> None:
    with pytest.raises(BadNodeSnapshot, match=match):
        check_node_snapshot(
            data, index=index, state_machine=KVStateMachine(), address_problem=host_port_problem
        )


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:7001", None),
        ("localhost:1", None),
        ("db-2.example.com.:65535", None),
        ("[::1]:7001", None),
        ("no-port-here", "expected HOST:PORT"),
        (":7001", "expected HOST:PORT"),
        ("host:0", "port 0 is out of range"),
        ("host:65536", "expected HOST:PORT"),
        ("bad_host:1", "is not a valid host name"),
        ("-bad.example:1", "is not a valid host name"),
        ("a b:1", "is not a valid host name"),
        ("[nope]:1", "not an IPv6 address"),
        ("::1:7001", "is not a valid host name"),
        ("h" * 64 + ".example:1", "is not a valid host name"),
        ("x" * 301, "301 characters"),
        ("", "0 characters"),
    ],
)
def test_tcp_member_addresses(address: str, problem: str | None) -> None:
    found = host_port_problem(address)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and repr(address[:300]) in found


@pytest.mark.parametrize(
    ("address", "ok"),
    [("mem://4", True), ("iroh:abcdef", True), ("", False), ("a b", False), ("x\n", False)],
)
def test_other_transports_addresses_keep_the_generic_rules(address: str, ok: bool) -> None:
    assert (generic_address_problem(address) is None) is ok
