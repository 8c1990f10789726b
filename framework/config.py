"""Settings: dynaconf layers in, frozen and validated objects out.

Theory of operation
-------------------
Settings are read once, when a node or a command starts, into frozen dataclasses
(`framework.settings_schema`, their fields read and written by the kinds of
`framework.settings_kinds`); nothing on a hot path touches dynaconf. This module loads
them and re-exports the public names of both, so ``framework.config`` is the one import.

`load_settings` builds a private dynaconf instance and hands it the layers, lowest
precedence first:

1. the packaged defaults, ``framework/settings.toml`` (found with importlib.resources, so an
   installed wheel or even a zip import works): its ``[default]`` table, then the table of
   the chosen profile (dynaconf environments);
2. ``./settings.toml`` when it exists and is not the packaged file itself (the repository's
   root settings.toml is a symlink to it): same layout, ``[default]`` then the profile;
3. each ``--settings FILE``, in order: flat files (``[raft]``, ``[performance.backpressure]``,
   ...), which is how the plan's TOML examples are written;
4. ``RAFTMW_*`` environment variables, ``__`` nesting (``RAFTMW_RAFT__ELECTION_TICK=30``),
   values parsed as TOML the way dynaconf parses them (``30`` is an int, ``"30s"`` a string);
5. ``overrides`` (dotted keys to Python values; the command line's ``--flag``).

dynaconf merges the layers: tables key by key, lists appended (its ``merge_enabled``). The
instance is built with its loaders switched off and fed explicitly, because dynaconf's own
loaders read ``os.environ`` (the ``RAFTMW_`` prefix, but also ``DYNACONF_*`` and its
``*_FOR_DYNACONF`` switches), search parent directories for files and run hook modules: a
load must depend only on its arguments and must not change the process. Every input is
read and checked before dynaconf sees it, so a broken file is reported by name.

dynaconf is imported inside the functions that use it, not at the top of this module:
``framework.config`` is imported by every command, and dynaconf with what it imports (all
its loaders, a vendored ruamel.yaml, box, dotenv, toml) adds 119 modules and 3.3 MiB of RSS
to a process that has already imported ``framework.cli`` (Linux, CPython 3.11; issue #15).
A node loads its settings in a forked child (`framework.settings_apart`), so a node process
never imports dynaconf; a command that calls `load_settings` imports it on the first call.

dynaconf's loading history (`get_history`) says which layers, and which profile tables in
them, were applied in which order; each layer's own keys then say which leaves it set. The
last layer to set a leaf is its source (``Settings.sources``, shown by ``raftmw config
show``) and is named in the error when that leaf's value is bad.

The merged tree is validated strictly: an unknown key anywhere is an error (a misspelt key
would otherwise be silently ignored), and so is a missing one. Every error is a
`SettingsError` naming the dotted key, the value and what was expected. Durations become
float seconds and sizes int bytes; `settings_to_toml` writes them back as "200ms", "64MiB".
"""

from __future__ import annotations

import copy
import os
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

import tomli_w

from framework.settings_kinds import (
    FrozenMap,
    SettingsError,
    format_duration,
    format_size,
    join_key,
    parse_duration,
    parse_size,
)
from framework.settings_schema import (
    ATTEMPT_TIMEOUT_FLOOR,
    BackpressureSettings,
    CircuitBreakerSettings,
    ClientSettings,
    FlagValue,
    PerformanceSettings,
    PluginSettings,
    RaftSettings,
    Rollout,
    SecuritySettings,
    Settings,
    StorageSettings,
    TimeoutSettings,
    TlsSettings,
    TokenSettings,
    TransportSettings,
    settings_from_mapping,
    settings_to_mapping,
    settings_to_toml,
)

__all__ = [
    "ATTEMPT_TIMEOUT_FLOOR",
    "ENV_PREFIX",
    "NON_SETTING_ENV_VARS",
    "BackpressureSettings",
    "CircuitBreakerSettings",
    "ClientSettings",
    "FlagValue",
    "PerformanceSettings",
    "PluginSettings",
    "RaftSettings",
    "Rollout",
    "SecuritySettings",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "TimeoutSettings",
    "TlsSettings",
    "TokenSettings",
    "TransportSettings",
    "check_settings",
    "format_duration",
    "format_size",
    "load_settings",
    "parse_duration",
    "parse_size",
    "settings_from_mapping",
    "settings_to_mapping",
    "settings_to_toml",
]

ENV_PREFIX: Final = "RAFTMW_"
# Names under the prefix that the command line reads for its own options; never settings.
NON_SETTING_ENV_VARS: Final = frozenset(
    {
        "RAFTMW_PROFILE",
        "RAFTMW_SETTINGS",
        "RAFTMW_PEERS",
        # A client's credentials (the node's are tls.* settings: RAFTMW_TLS__CA, ...).
        "RAFTMW_TLS_CA",
        "RAFTMW_TLS_CERT",
        "RAFTMW_TLS_KEY",
        "RAFTMW_TOKEN",
    }
)

_PACKAGE: Final = __name__.rpartition(".")[0]
_SETTINGS_FILE: Final = "settings.toml"
_DEFAULT_PROFILE: Final = "default"
# Tables dynaconf applies in every profile; they are not profiles themselves.
_ALWAYS_APPLIED_TABLES: Final = frozenset({"global", "dynaconf"})
# dynaconf's marker for "this file has no profile tables" (what `load_file(env=False)` uses).
_FLAT: Final = "_envless"


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class _Layer:
    """What one dynaconf source (a file's profile table, a variable, an override) set."""

    description: str
    data: Mapping[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Inputs:
    """Everything one load reads, read and checked before dynaconf merges it."""

    profile: str
    packaged: Path
    profiled: Mapping[Path, Mapping[str, Mapping[str, object]]]  # path -> profile -> table
    flat: Mapping[Path, Mapping[str, object]]
    variables: Mapping[str, tuple[str, object]]  # RAFTMW_A__B -> ("A__B", parsed value)
    overrides: Mapping[str, object]


def _packaged_defaults() -> Traversable:
    return resources.files(_PACKAGE).joinpath(_SETTINGS_FILE)


def load_settings(
    *,
    profile: str = _DEFAULT_PROFILE,
    files: Sequence[str | Path] = (),
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Read defaults, profile, ./settings.toml, ``files``, ``RAFTMW_*`` and ``overrides``.

    ``env`` defaults to ``os.environ``; only ``RAFTMW_*`` names in it are read (not
    dynaconf's own switches). ``overrides`` maps dotted keys (``"flags.actors"``) to values.
    Keys are case-insensitive. Raises `SettingsError` for any bad input.
    """
    with resources.as_file(_packaged_defaults()) as packaged:
        inputs = _read_inputs(
            packaged=Path(packaged),
            profile=profile,
            files=files,
            environ=os.environ if env is None else env,
            overrides=overrides or {},
        )
        data, sources = _merge(inputs)
    try:
        settings = settings_from_mapping(data)
    except SettingsError as error:
        raise error.with_source(_source_of(error.key, sources)) from None
    kept = set(_leaves(settings_to_mapping(settings)))
    return replace(settings, sources=FrozenMap((k, v) for k, v in sources.items() if k in kept))


def check_settings(
    *,
    profile: str = _DEFAULT_PROFILE,
    files: Sequence[str | Path] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[Settings | None, list[SettingsError]]:
    """Every problem of ``files`` (layered like `load_settings`), not just the first.

    Each bad key found in one of ``files`` is reported and set aside (the layers below it
    decide that key), and the rest is checked again, until nothing more is wrong or a
    problem is not in a file's keys (a file that is not TOML, a bad profile or variable):
    that one ends the check. Returns the settings that load once the bad keys are set aside
    (None if none do) and the problems, in the order found, each naming its file.
    """
    originals = [Path(f).absolute() for f in files]
    current = list(originals)
    tables: dict[int, dict[str, Any]] = {}
    problems: list[SettingsError] = []
    with tempfile.TemporaryDirectory(prefix="raftmw-check-") as scratch:
        for _ in range(_MAX_CHECKED_PROBLEMS):
            try:
                return load_settings(profile=profile, files=current, env=env), problems
            except SettingsError as error:
                at = next((n for n, p in enumerate(current) if str(p) == error.source), None)
                if at is None:
                    problems.append(error)
                    return None, problems
                problems.append(error.with_source(str(originals[at])))
                if at not in tables:
                    tables[at] = _read_toml(originals[at])
                if not _set_aside(tables[at], error.key):
                    return None, problems
                current[at] = Path(scratch) / f"{at}-{originals[at].name}"
                current[at].write_text(tomli_w.dumps(tables[at]))
    problems.append(
        SettingsError(
            "settings",
            f"have more than {_MAX_CHECKED_PROBLEMS} problems; the check stopped there",
            "fewer problems",
        )
    )
    return None, problems


_MAX_CHECKED_PROBLEMS: Final = 200


def _set_aside(data: dict[str, Any], key: str) -> bool:
    """Remove dotted ``key`` from ``data`` (keys compared case-blind), or the value on its
    path that is not a table; False if ``data`` holds nothing on that path."""
    parts = key.lower().split(".")
    table = data
    for depth, part in enumerate(parts):
        name = next((k for k in table if k.lower() == part), None)
        if name is None:
            return False
        if depth == len(parts) - 1 or not isinstance(table[name], dict):
            del table[name]
            return True
        table = table[name]
    return False


def _read_inputs(
    *,
    packaged: Path,
    profile: str,
    files: Sequence[str | Path],
    environ: Mapping[str, str],
    overrides: Mapping[str, object],
) -> _Inputs:
    profiled_paths = [packaged]
    local = Path.cwd() / _SETTINGS_FILE
    if local.is_file() and not _same_file(local, packaged):
        profiled_paths.append(local.absolute())
    profiled = {path: _read_profiled_file(path) for path in profiled_paths}
    flat = {path: _read_toml(path) for path in (Path(f).absolute() for f in files)}
    for path, data in flat.items():
        _check_flat_file(path, data, profiled)
    return _Inputs(
        profile=_check_profile(profile, profiled),
        packaged=packaged,
        profiled=profiled,
        flat=flat,
        variables=_read_environment(environ),
        overrides=overrides,
    )


def _merge(inputs: _Inputs) -> tuple[dict[str, Any], dict[str, str]]:
    """dynaconf layers the inputs; returns the merged tree and each leaf's source."""
    from dynaconf.loaders import toml_loader  # type: ignore[import-untyped]  # no types
    from dynaconf.loaders.base import SourceMetadata  # type: ignore[import-untyped]  # no types

    dyn = _new_dynaconf(inputs.profile)
    for path in inputs.profiled:
        toml_loader.load(
            dyn, env=inputs.profile, silent=True, filename=str(path), identifier="toml"
        )
    for path in inputs.flat:
        toml_loader.load(dyn, env=_FLAT, silent=True, filename=str(path), identifier="toml")
    for name, (key, value) in inputs.variables.items():
        dyn.set(key, value, loader_identifier=SourceMetadata("env", name, "global"))
    for key, value in inputs.overrides.items():
        # A deep copy: dynaconf merges into the value it is given, and this one is the caller's.
        dyn.set(
            key,
            copy.deepcopy(value),
            loader_identifier=SourceMetadata("override", key, "global"),
        )
    merged = {k: v for k, v in dyn.as_dict().items() if k.upper() not in _DYNACONF_KEYS}
    return _plain_table(merged), _sources(dyn, _layers(inputs))


def _layers(inputs: _Inputs) -> dict[tuple[str, str, str], _Layer]:
    """Each source as dynaconf's history names it: (loader, identifier, environment)."""
    layers: dict[tuple[str, str, str], _Layer] = {}
    for path, tables in inputs.profiled.items():
        for table, data in tables.items():
            if path != inputs.packaged:
                label = f"{path} [{table}]"
            elif table == _DEFAULT_PROFILE:
                label = "default"
            else:
                label = f"profile {table}"
            layers["toml", str(path), table] = _Layer(label, data)
    for path, data in inputs.flat.items():
        # dynaconf records a flat file under its default environment's name.
        layers["toml", str(path), _DEFAULT_PROFILE] = _Layer(str(path), data)
    for name, (key, value) in inputs.variables.items():
        layers["env", name, "global"] = _Layer(name, _nest(key, value))
    for key, value in inputs.overrides.items():
        layers["override", key, "global"] = _Layer("override", _nest(key, value))
    return layers


_DYNACONF_OPTIONS: Final = {
    "dynaconf_skip_loaders": True,  # dynaconf looks these two up in lower case
    "dynaconf_skip_validators": True,
    "ENVIRONMENTS_FOR_DYNACONF": True,
    "DEFAULT_ENV_FOR_DYNACONF": _DEFAULT_PROFILE.upper(),
    "FORCE_ENV_FOR_DYNACONF": None,
    "ENVVAR_PREFIX_FOR_DYNACONF": None,  # None: its env loader reads nothing, should it run
    "MERGE_ENABLED_FOR_DYNACONF": True,
    "DOTTED_LOOKUP_FOR_DYNACONF": True,
    "NESTED_SEPARATOR_FOR_DYNACONF": "__",
    "INDEX_SEPARATOR_FOR_DYNACONF": None,
    "AUTO_CAST_FOR_DYNACONF": True,
    "VALIDATE_ON_UPDATE_FOR_DYNACONF": False,
}
_DYNACONF_KEYS: Final = frozenset(key.upper() for key in _DYNACONF_OPTIONS)


def _new_dynaconf(profile: str) -> Any:
    from dynaconf.base import Settings as _Dynaconf  # type: ignore[import-untyped]  # no types

    # Every option dynaconf consults is given here, so none falls back to os.environ; the
    # loaders are skipped (see the module docstring) and fed by _merge instead.
    return _Dynaconf(**_DYNACONF_OPTIONS, ENV_FOR_DYNACONF=profile.upper())


def _sources(dyn: Any, layers: Mapping[tuple[str, str, str], _Layer]) -> dict[str, str]:
    """Dotted leaf key -> the last layer (in dynaconf's loading order) that set it."""
    from dynaconf import get_history  # type: ignore[import-untyped]  # dynaconf ships no types

    sources: dict[str, str] = {}
    for entry in get_history(dyn):
        layer = layers.get((entry["loader"], entry["identifier"], entry["env"]))
        if layer is not None:
            for leaf in _leaves(layer.data):
                sources[leaf] = layer.description
    return sources


def _source_of(key: str, sources: Mapping[str, str]) -> str | None:
    """The source of ``key``, else of a key in the nearest table around it."""
    parts = key.lower().split(".")
    for end in range(len(parts), 0, -1):
        table = ".".join(parts[:end])
        if table in sources:
            return sources[table]
        inside = [source for k, source in sources.items() if k.startswith(table + ".")]
        if inside:
            return inside[-1]
    return None


def _leaves(data: Mapping[str, object], prefix: str = "") -> Iterator[str]:
    for name, value in data.items():
        key = join_key(prefix, str(name).lower())
        if isinstance(value, Mapping):
            yield from _leaves(value, key)
        else:
            yield key


def _plain(value: object) -> object:
    """dynaconf's boxes as plain dicts and lists, keys lower-cased (keys are case-blind)."""
    if isinstance(value, Mapping):
        return _plain_table(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _plain_table(table: Mapping[Any, object]) -> dict[str, Any]:
    return {str(k).lower(): _plain(v) for k, v in table.items()}


def _nest(dotted: str, value: object) -> dict[str, object]:
    *parents, last = dotted.replace("__", ".").lower().split(".")
    nested: dict[str, object] = {last: _plain(value)}
    for name in reversed(parents):
        nested = {name: nested}
    return nested


def _read_environment(environ: Mapping[str, str]) -> dict[str, tuple[str, object]]:
    """``RAFTMW_A__B=v`` -> {name: (``"A__B"``, v parsed as dynaconf parses variables)}."""
    from dynaconf.utils.parse_conf import (  # type: ignore[import-untyped]  # no types
        boolean_fix,
        parse_conf_data,
    )

    variables: dict[str, tuple[str, object]] = {}
    for name in sorted(environ):  # sorted: a whole table before the keys inside it
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_ENV_VARS:
            continue
        key = name[len(ENV_PREFIX) :]
        if not key.strip("_") or key != key.strip("_"):
            raise SettingsError(
                name,
                "names no setting",
                f"a name like {ENV_PREFIX}RAFT__ELECTION_TICK",
                value=environ[name],
            )
        value = parse_conf_data(boolean_fix(environ[name]), tomlfy=True, box_settings={})
        variables[name] = (key, value)
    return variables


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error})"
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        problem = f"is not valid TOML ({error})"
    raise SettingsError(str(path), problem, "a readable TOML settings file")


def _read_profiled_file(path: Path) -> dict[str, Mapping[str, object]]:
    """A settings.toml whose top-level tables are profiles; profile -> its table."""
    tables: dict[str, Mapping[str, object]] = {}
    sections = {f.name for f in fields(Settings) if "kind" in f.metadata}
    for name, table in _read_toml(path).items():
        if name.lower() in sections:
            raise SettingsError(
                name,
                f"is a settings section at the top of {path}, where tables are profiles",
                f"[default.{name}] or [<profile>.{name}] (or pass the file with --settings)",
                value=table,
            )
        if not isinstance(table, Mapping):
            raise SettingsError(
                name,
                f"is not a profile table (in {path})",
                "only profile tables at the top, like [default.raft]",
                value=table,
            )
        tables[name.lower()] = _plain_table(table)
    return tables


def _check_profile(profile: str, profiled: Mapping[Path, Mapping[str, object]]) -> str:
    known = {_DEFAULT_PROFILE}
    for tables in profiled.values():
        known.update(name for name in tables if name not in _ALWAYS_APPLIED_TABLES)
    if profile.lower() not in known:
        raise SettingsError(
            "profile",
            "is not a known profile",
            "one of " + ", ".join(sorted(known)),
            value=profile,
        )
    return profile.lower()


def _check_flat_file(
    path: Path, data: Mapping[str, object], profiled: Mapping[Path, Mapping[str, object]]
) -> None:
    profiles = {name for tables in profiled.values() for name in tables}
    for name, table in data.items():
        if name.lower() in profiles:
            raise SettingsError(
                name,
                f"is a profile table in {path}, a --settings file (which has no profiles)",
                f"sections at the top, like [raft] rather than [{name}.raft]",
                value=table,
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
