"""``raft.lease_drift_ticks``: read, defaulted and checked with the lease it bounds."""

from __future__ import annotations

import pytest

from framework.config import SettingsError, load_settings
from framework.core import RaftConfig


def test_the_default_drift_bound_leaves_a_lease_longer_than_a_heartbeat_interval() -> None:
    raft = load_settings().raft
    assert raft.lease_drift_ticks == 4
    assert raft.election_tick - raft.lease_drift_ticks > raft.heartbeat_tick


@pytest.mark.parametrize("drift", [0, 1, 20, 25])
def test_with_lease_reads_a_drift_bound_out_of_range_is_refused(drift: int) -> None:
    with pytest.raises(SettingsError, match=r"raft\.lease_drift_ticks"):
        load_settings(overrides={"raft.lease_reads": True, "raft.lease_drift_ticks": drift})


def test_without_lease_reads_the_drift_bound_is_not_used() -> None:
    raft = load_settings(overrides={"raft.lease_drift_ticks": 0}).raft
    assert raft.lease_drift_ticks == 0 and not raft.lease_reads


def test_the_kernel_refuses_a_lease_shorter_than_tick_granularity_allows() -> None:
    with pytest.raises(ValueError, match="lease_drift_ticks=1"):
        RaftConfig(id=1, lease_reads=True, lease_drift_ticks=1)
    with pytest.raises(ValueError, match="lease_drift_ticks=10"):
        RaftConfig(id=1, lease_reads=True, election_tick=10, lease_drift_ticks=10)
