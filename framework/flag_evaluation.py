"""Flag evaluation: layers of values by `Source`, the rollout hash, and `Evaluation`s that say
value, reason and source.

`layers_from_settings` maps the settings' provenance to sources; `evaluate` and
`evaluate_all` pick, per flag, the highest layer that sets it and resolve a rollout with
`bucket` (see `framework.flags` for the theory and why the hash is what it is);
`validate_layers` lists what a node refuses to start with.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from framework.config import FlagValue, Rollout, Settings
from framework.flag_registry import FlagRegistry, FlagSpec, on_off, short_repr, unknown_name

__all__ = [
    "LOCK_FREE_FLAG",
    "Evaluation",
    "FlagLayer",
    "Reason",
    "Source",
    "bucket",
    "evaluate",
    "evaluate_all",
    "included_and_excluded",
    "is_node_id",
    "layers_from_settings",
    "validate_layers",
    "value_problems",
]

_VALUE_EXPECTED: Final = (
    "true, false or a rollout { enabled = true, percent = 25, include = [1], exclude = [3] }"
)


# --------------------------------------------------------------------------- sources, layers


class Source(enum.IntEnum):
    """Where a value came from; a higher value beats a lower one."""

    PLUGIN_DEFAULT = 0
    SETTINGS_DEFAULT = 1
    PROFILE = 2
    ENVIRONMENT = 3
    COMMAND_LINE = 4
    CLUSTER = 5
    OVERRIDE = 6


class Reason(enum.StrEnum):
    """Why an evaluation has its value (OpenFeature's resolution reasons)."""

    STATIC = "STATIC"
    DEFAULT = "DEFAULT"
    SPLIT = "SPLIT"
    TARGETING_MATCH = "TARGETING_MATCH"
    OVERRIDE = "OVERRIDE"
    ERROR = "ERROR"


def _frozen(mapping: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagLayer:
    """One source's values.

    ``origins`` says, per flag, where exactly inside the source the value was set (a file,
    a variable, a log index), for the evaluation's ``detail``; ``log_indexes`` is filled by
    the cluster layer only. The mappings are copied, so the layer cannot change after it
    is made.
    """

    source: Source
    values: Mapping[str, FlagValue]
    origins: Mapping[str, str] = field(default_factory=dict)
    log_indexes: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("values", "origins", "log_indexes"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


# Settings provenance (`Settings.sources` values, see framework/config.py) -> Source. The
# rank is the order settings load their layers in, used when the keys of one rollout table
# come from several layers: the last one to touch it names it.
_FILE_TABLE_RE: Final = re.compile(r"(?P<path>.+) \[(?P<table>[^\]]+)\]")
_ALWAYS_APPLIED_TABLES: Final = frozenset({"default", "global"})


def _settings_source(description: str) -> tuple[int, Source]:
    """(load rank, Source) of one `Settings.sources` description.

    - ``"default"`` (packaged settings.toml ``[default]``) -> SETTINGS_DEFAULT
    - ``"profile NAME"`` -> PROFILE
    - ``"PATH [default]"`` (./settings.toml's own ``[default]`` or ``[global]``) ->
      SETTINGS_DEFAULT; ``"PATH [NAME]"`` (its profile table) -> PROFILE
    - ``"PATH"`` (a ``--settings`` file) -> SETTINGS_DEFAULT
    - ``"RAFTMW_..."`` -> ENVIRONMENT
    - ``"override"`` (the CLI's ``--flag``) -> COMMAND_LINE
    """
    if description == "default":
        return 0, Source.SETTINGS_DEFAULT
    if description.startswith("profile "):
        return 1, Source.PROFILE
    if description == "override":
        return 6, Source.COMMAND_LINE
    if description.startswith("RAFTMW_"):
        return 5, Source.ENVIRONMENT
    table = _FILE_TABLE_RE.fullmatch(description)
    if table is not None:
        if table["table"].lower() in _ALWAYS_APPLIED_TABLES:
            return 2, Source.SETTINGS_DEFAULT
        return 3, Source.PROFILE
    return 4, Source.SETTINGS_DEFAULT


def _settings_origin(description: str) -> str:
    if description == "default":
        return "settings.toml [default]"
    if description == "override":
        return "--flag"
    if description.startswith("RAFTMW_"):
        return f"environment {description}"
    return description


LOCK_FREE_FLAG: Final = "lock_free"
"""The flag that the plan's ``performance.enable_lock_free`` setting stands for."""


def _lock_free_default(settings: Settings) -> tuple[bool, str] | None:
    """``performance.enable_lock_free`` as a value of flag ``lock_free``, with its source;
    None while it keeps the packaged default (then the plugin's own default stands).

    The plan's TOML names the switch in ``[performance]``; it means what it says by setting
    the flag at the layer that set the key, so ``[flags] lock_free`` in a higher layer (or
    the cluster's replicated state) still decides over it.
    """
    description = settings.sources.get("performance.enable_lock_free", "default")
    if description == "default":
        return None
    return settings.performance.enable_lock_free, description


def layers_from_settings(settings: Settings) -> list[FlagLayer]:
    """``settings.flags`` as layers, one per `Source` present, lowest precedence first.

    Each flag goes to the source of the last settings layer that set it (see
    `_settings_source` for the mapping); a rollout whose keys came from several layers
    (settings merge tables key by key) goes to the last of them and its origin names them
    all. A flag with no recorded provenance (settings built from a mapping) counts as
    SETTINGS_DEFAULT. ``performance.enable_lock_free``, once a layer above the packaged
    defaults sets it, is flag ``lock_free`` at that layer's source; ``flags.lock_free`` set
    at the same source wins over it.
    """
    by_source: dict[Source, tuple[dict[str, FlagValue], dict[str, str]]] = {}
    lock_free = _lock_free_default(settings)
    if lock_free is not None:
        lock_free_value, description = lock_free
        by_source[_settings_source(description)[1]] = (
            {LOCK_FREE_FLAG: lock_free_value},
            {LOCK_FREE_FLAG: f"performance.enable_lock_free ({_settings_origin(description)})"},
        )
    for name, value in settings.flags.items():
        key = f"flags.{name}".lower()
        descriptions = [
            description
            for leaf, description in settings.sources.items()
            if leaf == key or leaf.startswith(key + ".")
        ]
        if descriptions:
            ranked = sorted(set(descriptions), key=lambda d: _settings_source(d)[0])
            source = _settings_source(ranked[-1])[1]
            origin = ", ".join(_settings_origin(d) for d in ranked)
        else:
            source, origin = Source.SETTINGS_DEFAULT, "settings"
        values, origins = by_source.setdefault(source, ({}, {}))
        values[name], origins[name] = value, origin
    return [
        FlagLayer(source=source, values=values, origins=origins)
        for source, (values, origins) in sorted(by_source.items())
    ]


# --------------------------------------------------------------------------- the hash


# A float division of a 64-bit integer can round up to exactly 1.0 (for the top ~2**10
# integers); clamping keeps the bucket inside [0, 100) without moving any other node.
_TOP_BUCKET: Final = math.nextafter(100.0, 0.0)


def bucket(flag: str, node_id: int) -> float:
    """The node's stable place in [0, 100) for ``flag``'s rollouts (see the module doc)."""
    digest = hashlib.sha256(f"{flag}:{node_id}".encode()).digest()
    return min(int.from_bytes(digest[:8], "big") / 2**64 * 100, _TOP_BUCKET)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """A flag's value on one node, and why."""

    flag: str
    value: bool
    reason: Reason
    source: Source
    detail: str
    log_index: int | None = None  # the cluster change that set it (CLUSTER only)


def is_node_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _value_problem(value: object) -> str | None:
    """Why ``value`` cannot be evaluated, or None. (An include/exclude overlap can: see
    `included_and_excluded`.)"""
    if isinstance(value, bool):
        return None
    if not isinstance(value, Rollout):
        return f"{short_repr.repr(value)} is not a flag value; expected {_VALUE_EXPECTED}"
    if not isinstance(value.enabled, bool):
        return f"rollout enabled {short_repr.repr(value.enabled)} is not true or false"
    percent = value.percent
    if (
        not isinstance(percent, int | float)
        or isinstance(percent, bool)
        or not 0 <= percent <= 100  # also refuses NaN
    ):
        return f"rollout percent {short_repr.repr(percent)} is not a percentage from 0 to 100"
    for name in ("include", "exclude"):
        ids = getattr(value, name)
        if not isinstance(ids, tuple | list) or not all(is_node_id(i) for i in ids):
            return (
                f"rollout {name} {short_repr.repr(ids)} is not a list of node ids (integers >= 0)"
            )
    return None


def included_and_excluded(value: object) -> list[int]:
    """Node ids both included and excluded (exclude wins, but it is surely a mistake)."""
    if not isinstance(value, Rollout) or _value_problem(value) is not None:
        return []
    return sorted(set(value.include) & set(value.exclude))


def _percent(percent: float) -> str:
    return f"{percent:g}%"


def _bucket_text(b: float) -> str:
    # Truncated, not rounded: 24.996 shown as "25.00" next to "25% rollout: in" would read
    # as a bug; truncation keeps the shown bucket on the same side of any 2-decimal percent.
    return f"{math.floor(b * 100) / 100:.2f}"


def _rollout(name: str, node_id: int, rollout: Rollout) -> tuple[bool, Reason, str]:
    if not rollout.enabled:
        return False, Reason.STATIC, "rollout disabled"
    if node_id in rollout.exclude:
        return False, Reason.TARGETING_MATCH, f"node {node_id} excluded"
    if node_id in rollout.include:
        return True, Reason.TARGETING_MATCH, f"node {node_id} included"
    b = bucket(name, node_id)
    inside = b < rollout.percent
    verdict = "in" if inside else "not in"
    return (
        inside,
        Reason.SPLIT,
        f"node {node_id} {verdict} {_percent(rollout.percent)} rollout (bucket {_bucket_text(b)})",
    )


def _origin(layer: FlagLayer, name: str) -> str:
    return layer.origins.get(name) or f"the {layer.source.name} layer"


def _by_precedence(layers: Iterable[FlagLayer]) -> list[FlagLayer]:
    """Highest precedence first; of two layers of one source, the later one given wins."""
    return sorted(reversed(list(layers)), key=lambda layer: layer.source, reverse=True)


def _evaluate(spec: FlagSpec, node_id: int, ordered: Sequence[FlagLayer]) -> Evaluation:
    name = spec.name
    layer = next((layer for layer in ordered if name in layer.values), None)
    if layer is None:
        return Evaluation(
            flag=name,
            value=spec.default,
            reason=Reason.DEFAULT,
            source=Source.PLUGIN_DEFAULT,
            detail=f"default of plugin {spec.owner}",
        )
    value: object = layer.values[name]
    where = f"; set by {_origin(layer, name)}"
    log_index = layer.log_indexes.get(name)
    problem = _value_problem(value)
    if problem is not None:
        return Evaluation(
            flag=name,
            value=spec.default,
            reason=Reason.ERROR,
            source=layer.source,
            detail=f"{problem}{where}; using the default of plugin {spec.owner} "
            f"({on_off(spec.default)})",
            log_index=log_index,
        )
    if isinstance(value, bool):
        result, what = value, on_off(value)
        if layer.source is Source.PLUGIN_DEFAULT:
            reason = Reason.DEFAULT
        elif layer.source is Source.OVERRIDE:
            reason = Reason.OVERRIDE
        else:
            reason = Reason.STATIC
    else:
        assert isinstance(value, Rollout)  # _value_problem let nothing else through
        result, reason, what = _rollout(name, node_id, value)
    return Evaluation(
        flag=name,
        value=result,
        reason=reason,
        source=layer.source,
        detail=what + where,
        log_index=log_index,
    )


def evaluate(
    registry: FlagRegistry, name: str, node_id: int, layers: Iterable[FlagLayer]
) -> Evaluation:
    """``name``'s value on node ``node_id``: the highest layer that sets it decides.

    Raises `UnknownFlag` for an undeclared ``name``; never raises for a bad value (the
    plugin's default, reason ERROR, the problem in ``detail``). Names in the layers that no
    plugin declared are ignored here (`validate_layers` reports them).
    """
    return _evaluate(registry.get(name), node_id, _by_precedence(layers))


def evaluate_all(
    registry: FlagRegistry, node_id: int, layers: Iterable[FlagLayer]
) -> dict[str, Evaluation]:
    """Every declared flag on node ``node_id``, by name (sorted)."""
    ordered = _by_precedence(layers)
    return {spec.name: _evaluate(spec, node_id, ordered) for spec in registry.specs()}


def value_problems(subject: str, value: object) -> list[str]:
    problem = _value_problem(value)
    if problem is not None:
        return [f"{subject}: {problem}"]
    both = included_and_excluded(value)
    if both:
        return [
            f"{subject}: node ids {both} are both included and excluded; "
            "expected each node id in at most one of include and exclude"
        ]
    return []


def validate_layers(registry: FlagRegistry, layers: Iterable[FlagLayer]) -> list[str]:
    """Problems to refuse a node start with: undeclared names, bad values, overlaps."""
    known = registry.names()
    problems: list[str] = []
    for layer in layers:
        for name, value in layer.values.items():
            where = f" (set by {_origin(layer, name)})"
            if name not in registry:
                problems.append(unknown_name(name, known, what="undeclared flag", where=where))
            else:
                problems += value_problems(f"flag {name!r}{where}", value)
    return problems
