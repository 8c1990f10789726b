"""The plugin host: tiers, blocking, misspelled hooks, seam resolution and its errors."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from framework.config import load_settings
from framework.hooks import BuildContext, hookimpl
from framework.plugins import PluginError, PluginHost, Tier


def ctx(**flags: bool) -> BuildContext:
    evaluations = {name: SimpleNamespace(value=value) for name, value in flags.items()}
    return BuildContext(node_id=1, settings=load_settings(), flags=evaluations)  # type: ignore[arg-type]


class Provider:
    """A plugin providing the timeouts seam with a marker object."""

    def __init__(self, marker: str, *, when: str | None = None) -> None:
        self.marker = marker
        self.when = when

    @hookimpl
    def raftmw_make_timeouts(self, ctx: BuildContext) -> Any:
        if self.when is not None and not ctx.flag(self.when):
            return None
        return self.marker


class Fallback:
    RAFTMW_TIER = "essential"

    @hookimpl(trylast=True)
    def raftmw_make_timeouts(self, ctx: BuildContext) -> Any:
        return "fallback"


def host(*plugins: tuple[str, object], **kwargs: Any) -> PluginHost:
    return PluginHost(entry_points=False, plugins=plugins, **kwargs)


def test_the_first_answer_by_priority_wins_and_names_its_plugin() -> None:
    h = host(("legacy", Fallback()), ("fast", Provider("fast", when="adaptive_timeout")))
    assert h.build("timeouts", ctx(adaptive_timeout=True)) == ("fast", "fast")
    assert h.build("timeouts", ctx(adaptive_timeout=False)) == ("fallback", "legacy")


def test_two_plugins_at_the_same_priority_is_an_error_naming_both() -> None:
    h = host(("one", Provider("a")), ("two", Provider("b")))
    with pytest.raises(PluginError, match=r"'two' and 'one'|'one' and 'two'"):
        h.build("timeouts", ctx())


def test_a_factory_that_raises_is_reported_with_the_plugin_name() -> None:
    class Broken:
        @hookimpl
        def raftmw_make_timeouts(self, ctx: BuildContext) -> Any:
            raise RuntimeError("disk on fire")

    h = host(("broken", Broken()), ("legacy", Fallback()))
    with pytest.raises(PluginError, match=r"'broken'.*disk on fire"):
        h.build("timeouts", ctx())


def test_no_provider_is_an_error() -> None:
    with pytest.raises(PluginError, match="no plugin provides the timeouts"):
        host(("off", Provider("x", when="never"))).build("timeouts", ctx())


def test_a_misspelled_hook_fails_at_start_naming_it() -> None:
    class Typo:
        @hookimpl
        def raftmw_make_timeout(self, ctx: BuildContext) -> Any:  # missing "s"
            return None

    with pytest.raises(PluginError, match="raftmw_make_timeout"):
        host(("typo", Typo()))


def test_essential_plugins_cannot_be_blocked() -> None:
    with pytest.raises(PluginError, match="essential"):
        host(("legacy", Fallback()), blocked=["legacy"])


def test_blocking_a_default_plugin_takes_it_out() -> None:
    h = host(("legacy", Fallback()), ("fast", Provider("fast")), blocked=["fast"])
    assert h.build("timeouts", ctx()) == ("fallback", "legacy")
    assert not h.names["fast"].loaded


def test_blocking_an_unknown_plugin_is_an_error() -> None:
    with pytest.raises(PluginError, match="unknown plugin"):
        host(("legacy", Fallback()), blocked=["nope"])


def test_optional_plugins_load_only_when_enabled() -> None:
    class Optional(Provider):
        RAFTMW_TIER = "optional"

    off = host(("legacy", Fallback()), ("extra", Optional("extra")))
    assert off.build("timeouts", ctx()) == ("fallback", "legacy")
    on = host(("legacy", Fallback()), ("extra", Optional("extra")), enabled=["extra"])
    assert on.build("timeouts", ctx()) == ("extra", "extra")
    assert on.names["extra"].tier is Tier.OPTIONAL


def test_a_bad_tier_is_named() -> None:
    class Weird(Provider):
        RAFTMW_TIER = "sometimes"

    with pytest.raises(PluginError, match="sometimes"):
        host(("weird", Weird("w")))


def test_observer_exceptions_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    seen = []

    class Loud:
        @hookimpl
        def raftmw_on_leader_change(self, node_id: int, leader: int, term: int) -> None:
            raise RuntimeError("observer bug")

    class Quiet:
        @hookimpl
        def raftmw_on_leader_change(self, node_id: int, leader: int, term: int) -> None:
            seen.append((node_id, leader, term))

    h = host(("loud", Loud()), ("quiet", Quiet()))
    with caplog.at_level(logging.ERROR, logger="raftmw.plugins"):
        h.notify("raftmw_on_leader_change", node_id=1, leader=2, term=3)
    assert seen == [(1, 2, 3)]
    assert "loud" in caplog.text


def test_installed_plugins_are_found_by_entry_point() -> None:
    h = PluginHost()
    names = {p.name: p for p in h.plugins()}
    assert names["legacy"].tier is Tier.ESSENTIAL
    assert "backpressure" in names
    assert names["tcp"].tier is Tier.ESSENTIAL and names["tcp"].seams == ("transport",)
    registry = h.declare_flags()
    assert "backpressure" in registry
    assert set(names["legacy"].seams) == {
        "status_store",
        "queue",
        "timeouts",
        "send_guard",
        "metrics",
        "connection_pool",
    }


def test_each_distribution_s_metadata_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A version parses the whole METADATA (raftmw's holds its README): it was read once per
    # entry point, 12 times at every node start.
    import importlib.metadata

    reads: list[str] = []
    original = importlib.metadata.PathDistribution.read_text

    def counting(self: importlib.metadata.PathDistribution, filename: str) -> str | None:
        text = original(self, filename)
        if filename in ("METADATA", "PKG-INFO") and text is not None:  # egg-info: PKG-INFO
            reads.append(str(self._path))  # type: ignore[attr-defined]
        return text

    monkeypatch.setattr(importlib.metadata.PathDistribution, "read_text", counting)
    host = PluginHost()
    assert "legacy" in host._infos
    assert len(reads) == len(set(reads)), reads
