"""The import paths users and plugins rely on stay where they are when a module is split:
``framework.config``, ``framework.flags`` and ``framework.sim.simulator`` keep every public
name, each the very object its new home defines."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "framework.config": {
        "ATTEMPT_TIMEOUT_FLOOR": "framework.settings_schema",
        "BackpressureSettings": "framework.settings_schema",
        "CircuitBreakerSettings": "framework.settings_schema",
        "ClientSettings": "framework.settings_schema",
        "ENV_PREFIX": "framework.config",
        "FlagValue": "framework.settings_schema",
        "NON_SETTING_ENV_VARS": "framework.config",
        "PerformanceSettings": "framework.settings_schema",
        "PluginSettings": "framework.settings_schema",
        "RaftSettings": "framework.settings_schema",
        "Rollout": "framework.settings_schema",
        "SecuritySettings": "framework.settings_schema",
        "Settings": "framework.settings_schema",
        "SettingsError": "framework.settings_kinds",
        "StorageSettings": "framework.settings_schema",
        "TimeoutSettings": "framework.settings_schema",
        "TlsSettings": "framework.settings_schema",
        "TokenSettings": "framework.settings_schema",
        "TransportSettings": "framework.settings_schema",
        "check_settings": "framework.config",
        "format_duration": "framework.settings_kinds",
        "format_size": "framework.settings_kinds",
        "load_settings": "framework.config",
        "parse_duration": "framework.settings_kinds",
        "parse_size": "framework.settings_kinds",
        "settings_from_mapping": "framework.settings_schema",
        "settings_to_mapping": "framework.settings_schema",
        "settings_to_toml": "framework.settings_schema",
    },
    "framework.flags": {
        "ClusterFlagState": "framework.flag_changes",
        "Evaluation": "framework.flag_evaluation",
        "FlagChange": "framework.flag_changes",
        "FlagError": "framework.flag_registry",
        "FlagLayer": "framework.flag_evaluation",
        "FlagRegistry": "framework.flag_registry",
        "FlagSpec": "framework.flag_registry",
        "HISTORY_LIMIT": "framework.flag_changes",
        "LOCK_FREE_FLAG": "framework.flag_evaluation",
        "Reason": "framework.flag_evaluation",
        "RolloutWire": "framework.flag_changes",
        "Source": "framework.flag_evaluation",
        "UnknownFlag": "framework.flag_registry",
        "bucket": "framework.flag_evaluation",
        "decode_flag_change": "framework.flag_changes",
        "dependency_problems": "framework.flag_changes",
        "encode_flag_change": "framework.flag_changes",
        "evaluate": "framework.flag_evaluation",
        "evaluate_all": "framework.flag_evaluation",
        "layers_from_settings": "framework.flag_evaluation",
        "parse_flag_assignment": "framework.flag_assignment",
        "validate_change": "framework.flag_changes",
        "validate_layers": "framework.flag_evaluation",
    },
    "framework.sim.simulator": {
        "SimOptions": "framework.sim.options",
        "SimResult": "framework.sim.simulator",
        "Simulation": "framework.sim.simulator",
        "SimulationFailure": "framework.sim.simulator",
        "main": "framework.sim.simulator",
        "run_seed": "framework.sim.simulator",
    },
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_a_split_module_keeps_its_public_names(module: str) -> None:
    public = importlib.import_module(module)
    assert sorted(public.__all__) == sorted(PUBLIC[module])
    for name, home in PUBLIC[module].items():
        assert getattr(public, name) is getattr(importlib.import_module(home), name), name
