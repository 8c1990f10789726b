"""``raft.broadcast_commit``: off by default, read, checked, and handed to the kernel."""

from __future__ import annotations

import pytest

from framework.config import SettingsError, load_settings
from framework.core import ConfState
from framework.runtime.restart import build_kernel
from framework.storage import StoredState


def _kernel_setting(**overrides: object) -> bool:
    raft = load_settings(overrides=overrides).raft
    state = StoredState(node_id=1, cluster_id="c", conf_state=ConfState(voters=(1, 2, 3)))
    return build_kernel(1, raft, state).config.broadcast_commit


def test_a_node_leaves_commits_to_the_next_append_or_heartbeat_by_default() -> None:
    assert load_settings().raft.broadcast_commit is False
    assert _kernel_setting() is False


def test_broadcast_commit_on_reaches_the_kernel() -> None:
    assert _kernel_setting(**{"raft.broadcast_commit": True}) is True


def test_a_broadcast_commit_that_is_not_a_boolean_is_refused_with_its_key() -> None:
    with pytest.raises(SettingsError, match=r"raft\.broadcast_commit") as info:
        load_settings(overrides={"raft.broadcast_commit": "sometimes"})
    assert "sometimes" in str(info.value)
