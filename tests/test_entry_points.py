"""Installed entry points as plain data (framework/entry_points.py): the same plugins and
applications as ``importlib.metadata`` reports, found in a forked child for a node, so the
node never imports ``importlib.metadata`` (issue #15)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from test_settings_apart import _run as run_program  # a fresh interpreter, forks counted

from framework.apps.loading import APP_GROUP, BadApplication, load_application
from framework.entry_points import InstalledEntryPoint, installed
from framework.plugins import ENTRY_POINT_GROUP, PluginHost
from framework.statemachine import KVStateMachine

# For the plugin host below: a plugin object this module names by ``module:attribute``.
SOME_PLUGIN = object()


def test_installed_entry_points_are_what_importlib_metadata_reports() -> None:
    found = installed([ENTRY_POINT_GROUP, APP_GROUP])
    for group in (ENTRY_POINT_GROUP, APP_GROUP):
        expected = sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name)
        assert [(e.name, e.value) for e in found[group]] == [(e.name, e.value) for e in expected]
        assert [e.version for e in found[group]] == [
            e.dist.version if e.dist is not None else "?" for e in expected
        ]
        for record, entry_point in zip(found[group], expected, strict=True):
            assert record.load() is entry_point.load()
    assert found[ENTRY_POINT_GROUP], "raftmw's own plugins are entry points of its distribution"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("framework.statemachine:KVStateMachine", KVStateMachine),
        ("framework.statemachine : KVStateMachine [extra]", KVStateMachine),
        (f"{__name__}:SOME_PLUGIN", SOME_PLUGIN),  # the name pytest imported this module by
        ("framework.entry_points:InstalledEntryPoint.load", InstalledEntryPoint.load),
    ],
)
def test_a_record_loads_what_its_value_names(value: str, expected: object) -> None:
    assert InstalledEntryPoint(name="x", value=value, version="1").load() is expected


def test_a_record_naming_nothing_raises_as_an_entry_point_would() -> None:
    with pytest.raises(AttributeError):
        InstalledEntryPoint(name="x", value="framework.statemachine:Nothing", version="1").load()
    with pytest.raises(ImportError):
        InstalledEntryPoint(name="x", value="framework.no_such_module:X", version="1").load()


def test_a_plugin_host_given_the_entry_points_loads_those_and_reads_none() -> None:
    given = [InstalledEntryPoint(name="mine", value=f"{__name__}:SOME_PLUGIN", version="7")]
    host = PluginHost(installed_plugins=given)
    assert [(i.name, i.version, i.loaded) for i in host.plugins()] == [("mine", "7", True)]


def test_an_application_is_found_among_the_entry_points_given() -> None:
    given = [
        InstalledEntryPoint(
            name="counter", value="framework.statemachine:KVStateMachine", version="1"
        )
    ]
    assert isinstance(load_application("counter", installed_apps=given), KVStateMachine)
    with pytest.raises(BadApplication, match="counter"):
        load_application("nothing-such", installed_apps=given)


def test_found_apart_in_a_fresh_process_without_importing_importlib_metadata(
    tmp_path: Path,
) -> None:
    result = run_program(
        """
        from framework.entry_points import installed_apart
        found = installed_apart(["raftmw", "raftmw.apps"])
        report(found=found, forks=len(forks), imported="importlib.metadata" in sys.modules)
        """,
        tmp_path,
    )
    assert (result["forks"], result["imported"]) == (1, False)
    assert result["found"] == installed([ENTRY_POINT_GROUP, APP_GROUP])
