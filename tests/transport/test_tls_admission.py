"""``Admission`` (framework/transport/admission.py): the connection caps applied at accept,
before anything is read (issue #9: "connections capped per listener and per remote
address")."""

from __future__ import annotations

import pytest

from framework.transport.admission import Admission


def test_one_address_cannot_take_more_than_its_share() -> None:
    gate = Admission(max_connections=5, max_connections_per_address=2)
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is None
    refusal = gate.admit("10.0.0.1")
    assert refusal == "2 connections open from 10.0.0.1 (max_connections_per_address)"
    assert gate.admit("10.0.0.2") is None  # another address still gets in
    assert (gate.total, gate.refused) == (3, 1)
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.1") is None  # a released slot is free again


def test_many_addresses_cannot_take_more_than_the_total() -> None:
    gate = Admission(max_connections=3, max_connections_per_address=3)
    for n in range(3):
        assert gate.admit(f"10.0.0.{n}") is None
    assert gate.admit("10.0.0.9") == "3 connections open (max_connections)"
    for n in range(3):
        gate.release(f"10.0.0.{n}")
    assert gate.total == 0 and gate.admit("10.0.0.9") is None


def test_refusals_are_logged_once_per_interval() -> None:
    gate = Admission(max_connections=1, max_connections_per_address=1, log_interval=5.0)
    assert [gate.should_log(t) for t in (100.0, 101.0, 104.9, 105.0, 105.1)] == [
        True,
        False,
        False,
        True,
        False,
    ]


@pytest.mark.parametrize(("total", "per_address"), [(4, 5), (4, 0), (0, 0)])
def test_inconsistent_caps_are_refused(total: int, per_address: int) -> None:
    with pytest.raises(ValueError, match=f"max_connections_per_address={per_address}"):
        Admission(max_connections=total, max_connections_per_address=per_address)
