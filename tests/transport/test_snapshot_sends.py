"""Which snapshot transfer goes on when the kernel sends another (``SnapshotSends`` in
framework/transport/snapshot_stream.py): a leader that snapshots more often than a large
snapshot takes to travel must not restart the transfer forever."""

from __future__ import annotations

import pytest

from framework.core import ConfState, InstallSnapshot, Snapshot, SnapshotMeta
from framework.transport.snapshot_stream import SnapshotSends

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _msg(index: int, term: int = 3) -> InstallSnapshot:
    meta = SnapshotMeta(index=index, term=term, conf_state=ConfState(voters=(1, 2)))
    return InstallSnapshot(src=1, dst=2, term=term, snapshot=Snapshot(meta=meta))


async def test_a_newer_snapshot_of_the_same_term_waits_for_the_transfer_under_way() -> None:
    sends = SnapshotSends()
    first = _msg(100)
    scope = sends.begin(first, now=0.0)
    assert scope is not None
    assert sends.begin(_msg(100), now=1.0) is None  # a resend
    assert sends.begin(_msg(200), now=2.0) is None  # newer, same leader: dropped for now
    assert not scope.cancel_called
    sends.end(first, scope)
    sends.delivered(first, until=10.0)
    assert sends.begin(_msg(100), now=3.0) is None  # installing: a resend is dropped
    assert sends.begin(_msg(200), now=4.0) is not None  # the newer one goes once it landed


async def test_a_snapshot_of_a_newer_term_replaces_the_transfer() -> None:
    sends = SnapshotSends()
    scope = sends.begin(_msg(100), now=0.0)
    assert scope is not None
    replacing = sends.begin(_msg(100, term=4), now=1.0)
    assert replacing is not None and scope.cancel_called


async def test_a_failed_transfer_lets_the_next_one_go() -> None:
    sends = SnapshotSends()
    first = _msg(100)
    scope = sends.begin(first, now=0.0)
    assert scope is not None
    sends.end(first, scope)  # failed: never delivered
    assert sends.begin(_msg(200), now=1.0) is not None
