"""Load the settings in a forked child, so a node never imports dynaconf
(`load_settings_apart`).

`load_settings` needs dynaconf, which brings 119 modules and 3.3 MiB of RSS into a process
that has already imported ``framework.cli`` (Linux, CPython 3.11), and nothing in a node
uses it after start-up. `load_settings_apart` takes what `load_settings` takes and returns
the same `Settings` (plain frozen dataclasses, about 3 KB pickled), loaded in a forked
child by `framework.load_apart` (which says when it forks, what it costs, and how errors
come back): a `SettingsError` arrives unchanged, so a typo in a setting is reported by a
node exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from framework.config import Settings, load_settings
from framework.load_apart import LoadApartError, load_apart

__all__ = ["LoadApartError", "load_settings_apart"]

_DEFAULT_PROFILE: Final = "default"


def load_settings_apart(
    *,
    profile: str = _DEFAULT_PROFILE,
    files: Sequence[str | Path] = (),
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """`load_settings` with the same arguments and result, run in a forked child when this
    process can fork safely and has not imported dynaconf (`framework.load_apart`).

    Raises what `load_settings` raises (`SettingsError` for any bad input, unchanged), or
    `LoadApartError` when the child ended without a result.
    """

    def load() -> Settings:
        # `load_settings` looked up when called: tests replace it to make the child fail.
        return load_settings(profile=profile, files=files, env=env, overrides=overrides)

    return load_apart(load, what="the settings", keeps_out=("dynaconf",))
