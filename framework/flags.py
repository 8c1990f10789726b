"""Feature flags: declared by plugins, set by layered sources, evaluated per node.

Theory of operation
-------------------
A flag is declared once, by the plugin that owns it (`FlagSpec`: name, default, owner), in a
`FlagRegistry`. Values come from layers (`FlagLayer`), one per `Source`; from lowest to
highest precedence:

====================  ==================================================================
``PLUGIN_DEFAULT``    the declaring plugin's default (``FlagSpec.default``; implicit)
``SETTINGS_DEFAULT``  settings files: settings.toml ``[default]``, ``--settings FILE``
``PROFILE``           the active profile's table (``[high_throughput.flags]``)
``ENVIRONMENT``       ``RAFTMW_FLAGS__NAME=...``
``COMMAND_LINE``      ``--flag name=value`` (the CLI hands them to settings as overrides)
``CLUSTER``           the replicated flag state: ``flags`` entries of the Raft log
``OVERRIDE``          a node-local break-glass override (never replicated)
====================  ==================================================================

The highest layer that sets a flag decides it, whole: a rollout from the cluster replaces a
rollout from settings, it is not merged with it (settings merge their own layers key by key
before this module sees them; `layers_from_settings` says how their provenance maps to a
`Source`).

Every evaluation (`Evaluation`) says why, in OpenFeature's vocabulary (`Reason`): DEFAULT
(nobody set it: the plugin's default), STATIC (a plain true/false, or a disabled rollout),
OVERRIDE (a plain value from the break-glass layer), TARGETING_MATCH (the node is named in
the rollout's ``include`` or ``exclude``; ``exclude`` wins), SPLIT (the percentage decided)
and ERROR (the value was malformed; the plugin's default is used and ``detail`` says what
was wrong). Evaluation never raises for a bad value: a node must keep running on defaults
rather than crash on one bad layer. It does raise `UnknownFlag` for a name nobody declared,
which is a programming error at the call site.

The rollout hash. A node is in a ``percent`` rollout when ``bucket(flag, node) < percent``,
where the bucket is the first 8 bytes of ``sha256(f"{flag}:{node}")`` read as a big-endian
integer and scaled to [0, 100). The bucket depends only on (flag, node), never on the
percent, the cluster size or the process (no ``hash()`` and its per-process seed), so:

- every node computes the same answer for every other node (``raftmw flags`` can show the
  whole cluster from one place);
- raising the percent only adds nodes and lowering it only removes them (a node's bucket is
  fixed and the test is a threshold), so a rollout from 10% to 25% never flips a node that
  was already on back off;
- salting with the flag name makes different flags pick different nodes first, so the
  same unlucky node is not the canary of every rollout.

The formula is pinned by a golden test: changing it would silently move nodes in and out
of every running rollout on upgrade.

Cluster changes. A `FlagChange` (some flags set, some unset, an operator's note) is one Raft
log entry of kind ``flags``, so a change is atomic however many flags it touches, and every
node switches at the same log index. `ClusterFlagState` applies committed changes in log
order and remembers, for each flag, the index that set it (shown as
``Evaluation.log_index``). Validation against the registry (`validate_change`) happens
before proposing, never while applying: a node missing a plugin must apply the same entries
to the same state as its peers, so `ClusterFlagState.apply` stores names it does not know
and evaluation simply never asks for them. Rollback is just another change.

This module is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import itertools
import math
import re
import reprlib
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Annotated, Final

import msgspec

from framework.canonical_msgpack import encode_canonical
from framework.config import FlagValue, Rollout, Settings
from framework.migration_journal import (
    JournalSnapshot,
    MigrationEvent,
    MigrationJournal,
    MigrationRecord,
)

__all__ = [
    "HISTORY_LIMIT",
    "ClusterFlagState",
    "Evaluation",
    "FlagChange",
    "FlagError",
    "FlagLayer",
    "FlagRegistry",
    "FlagSpec",
    "Reason",
    "RolloutWire",
    "Source",
    "UnknownFlag",
    "bucket",
    "decode_flag_change",
    "dependency_problems",
    "encode_flag_change",
    "evaluate",
    "evaluate_all",
    "layers_from_settings",
    "parse_flag_assignment",
    "validate_change",
    "validate_layers",
]

# How many applied changes `ClusterFlagState` remembers (for `raftmw flags history`).
HISTORY_LIMIT: Final = 1000

_NAME_RE: Final = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*", re.ASCII)
_VALUE_EXPECTED: Final = (
    "true, false or a rollout { enabled = true, percent = 25, include = [1], exclude = [3] }"
)
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


# --------------------------------------------------------------------------- errors


class FlagError(ValueError):
    """A flag declaration, value, change or snapshot is wrong; the message says which."""


class UnknownFlag(FlagError):
    """No plugin declared a flag of this name. The message suggests the closest one."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        self.suggestion = _closest(name, self.known)
        super().__init__(_unknown(name, self.known, what="unknown flag"))


def _closest(name: str, known: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(name, known, n=1)
    return matches[0] if matches else None


def _unknown(name: str, known: Sequence[str], *, what: str, where: str = "") -> str:
    """One wording for an unknown name, wherever it is found (registry, layer, change)."""
    text = f"{what} {name!r}{where}"
    suggestion = _closest(name, known)
    if suggestion is not None:
        text += f"; did you mean {suggestion!r}?"
    if known:
        return f"{text} (declared flags: {', '.join(known)})"
    return f"{text} (no flags are declared)"


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagSpec:
    """A flag as its plugin declares it.

    ``requires``: flags that must be on wherever this one may be on (the plugin builds on
    what they build); ``conflicts``: flags that must not be on together with this one. Both
    are checked before a cluster change is proposed (`validate_change`), never on apply.
    """

    name: str
    default: bool
    description: str
    owner: str
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise FlagError(
                f"flag name {self.name!r} (declared by {self.owner!r}) is not lower_snake_case; "
                "expected a name like 'adaptive_timeout'"
            )
        if not isinstance(self.default, bool):
            raise FlagError(
                f"flag {self.name!r} (declared by {self.owner!r}) has default "
                f"{_short.repr(self.default)}; expected true or false"
            )
        if not isinstance(self.owner, str) or not self.owner.strip():
            raise FlagError(f"flag {self.name!r} has no owner; expected the declaring plugin")
        if not isinstance(self.description, str):
            raise FlagError(f"flag {self.name!r} has a description that is not a string")
        for what in ("requires", "conflicts"):
            names = getattr(self, what)
            if not isinstance(names, tuple) or not all(
                isinstance(n, str) and _NAME_RE.fullmatch(n) and n != self.name for n in names
            ):
                raise FlagError(
                    f"flag {self.name!r} (declared by {self.owner!r}) has {what}="
                    f"{_short.repr(names)}; expected a tuple of other flags' names"
                )


def _declaration(spec: FlagSpec) -> str:
    return f"{spec.owner!r} (default {_bool(spec.default)}, {_short.repr(spec.description)})"


class FlagRegistry:
    """Every declared flag, by name. Built when plugins load; read-only afterwards by use."""

    __slots__ = ("_specs",)

    def __init__(self, specs: Iterable[FlagSpec] = ()) -> None:
        self._specs: dict[str, FlagSpec] = {}
        for spec in specs:
            self.declare(spec)

    def declare(self, spec: FlagSpec) -> None:
        """Add ``spec``; the same declaration twice is a no-op, a different one an error.

        Two plugins that disagree about a flag cannot both be right, and picking one would
        make the outcome depend on load order.
        """
        known = self._specs.get(spec.name)
        if known is None:
            self._specs[spec.name] = spec
        elif known != spec:
            raise FlagError(
                f"flag {spec.name!r} is declared twice, differently: by {_declaration(known)} "
                f"and by {_declaration(spec)}; expected one declaration per flag"
            )

    def get(self, name: str) -> FlagSpec:
        """The spec of ``name``; `UnknownFlag` (with a suggestion) if nobody declared it."""
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownFlag(name, self._specs) from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))

    def specs(self) -> tuple[FlagSpec, ...]:
        return tuple(self._specs[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"FlagRegistry({list(self.specs())!r})"


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


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _is_node_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _value_problem(value: object) -> str | None:
    """Why ``value`` cannot be evaluated, or None. (An include/exclude overlap can: see
    `_overlap`.)"""
    if isinstance(value, bool):
        return None
    if not isinstance(value, Rollout):
        return f"{_short.repr(value)} is not a flag value; expected {_VALUE_EXPECTED}"
    if not isinstance(value.enabled, bool):
        return f"rollout enabled {_short.repr(value.enabled)} is not true or false"
    percent = value.percent
    if (
        not isinstance(percent, int | float)
        or isinstance(percent, bool)
        or not 0 <= percent <= 100  # also refuses NaN
    ):
        return f"rollout percent {_short.repr(percent)} is not a percentage from 0 to 100"
    for name in ("include", "exclude"):
        ids = getattr(value, name)
        if not isinstance(ids, tuple | list) or not all(_is_node_id(i) for i in ids):
            return f"rollout {name} {_short.repr(ids)} is not a list of node ids (integers >= 0)"
    return None


def _overlap(value: object) -> list[int]:
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
            f"({_bool(spec.default)})",
            log_index=log_index,
        )
    if isinstance(value, bool):
        result, what = value, _bool(value)
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


def _value_problems(subject: str, value: object) -> list[str]:
    problem = _value_problem(value)
    if problem is not None:
        return [f"{subject}: {problem}"]
    both = _overlap(value)
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
                problems.append(_unknown(name, known, what="undeclared flag", where=where))
            else:
                problems += _value_problems(f"flag {name!r}{where}", value)
    return problems


# --------------------------------------------------------------------------- cluster changes

_NodeId = Annotated[int, msgspec.Meta(ge=0)]


class RolloutWire(msgspec.Struct, frozen=True):
    """`framework.config.Rollout` as it travels in the log and in snapshots."""

    enabled: bool = True
    percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 100.0
    include: tuple[_NodeId, ...] = ()
    exclude: tuple[_NodeId, ...] = ()

    @classmethod
    def from_rollout(cls, rollout: Rollout) -> RolloutWire:
        return cls(
            enabled=rollout.enabled,
            percent=_same_number(rollout.percent),
            include=_same_ids(rollout.include),
            exclude=_same_ids(rollout.exclude),
        )

    def to_rollout(self) -> Rollout:
        return Rollout(
            enabled=self.enabled,
            percent=_same_number(self.percent),
            include=_same_ids(self.include),
            exclude=_same_ids(self.exclude),
        )


# Converting only what is sure to convert: a hand-made, unvalidated wire value (25 where a
# float belongs, a list for a tuple) must apply to the same state, and encode to the same
# bytes, as the decoded entry every other node applies; anything stranger passes through
# untouched, to be applied without raising and evaluated as ERROR.
def _same_number(value: float) -> float:
    return float(value) if type(value) is int else value


def _same_ids(ids: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(ids) if isinstance(ids, list) else ids


# Unknown struct fields are ignored when decoding (msgspec's default), not refused: during
# a rolling upgrade an older node must still apply what a newer leader proposed.


class FlagChange(msgspec.Struct, frozen=True):
    """One ``flags`` log entry: applied atomically at its log index (unset, then set).

    ``migration`` records a staged-migration event in the same entry (see
    ``framework.migration_journal``): a step's cohort change and its record commit together,
    and a refused record refuses the whole change."""

    set: dict[str, bool | RolloutWire] = msgspec.field(default_factory=dict)
    unset: list[str] = msgspec.field(default_factory=list)
    reason: str = ""  # the operator's note, kept in the history
    migration: MigrationRecord | None = None


_CHANGE_DECODER: Final = msgspec.msgpack.Decoder(FlagChange)


def encode_flag_change(change: FlagChange) -> bytes:
    return encode_canonical(change)


def decode_flag_change(data: bytes) -> FlagChange:
    """The change in a ``flags`` entry; `FlagError` naming the problem if it is not one."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FlagError(f"flag change entry is {type(data).__name__}, not bytes")
    try:
        return _CHANGE_DECODER.decode(data)
    except msgspec.DecodeError as error:  # ValidationError is a DecodeError
        raise FlagError(f"flag change entry ({len(data)} bytes) is not valid: {error}") from None


# Anything but a rollout passes through both ways: a bool as it is, and a hand-made bad
# value too, so that `ClusterFlagState.apply` stores it instead of raising (see above).
def _to_value(wire: bool | RolloutWire) -> FlagValue:
    return wire.to_rollout() if isinstance(wire, RolloutWire) else wire


def _to_wire(value: FlagValue) -> bool | RolloutWire:
    return RolloutWire.from_rollout(value) if isinstance(value, Rollout) else value


def validate_change(
    registry: FlagRegistry, change: FlagChange, *, state: ClusterFlagState | None = None
) -> list[str]:
    """Problems to refuse proposing ``change`` with (apply itself never refuses).

    Unsetting an undeclared name is allowed when ``state`` holds it: that is how a flag
    left behind by a removed plugin is cleaned up.
    """
    known = registry.names()
    problems: list[str] = []
    if not change.set and not change.unset and change.migration is None:
        problems.append("the change sets and unsets nothing")
    if change.migration is not None:
        journal = state.migrations if state is not None else MigrationJournal()
        problem = journal.problem(change.migration)
        if problem is not None:
            problems.append(problem)
        for name in change.migration.targets:
            if name not in registry:
                problems.append(_unknown(name, known, what="cannot migrate"))
    for name, wire in change.set.items():
        if name not in registry:
            problems.append(_unknown(name, known, what="cannot set"))
            continue
        problems += _value_problems(f"flag {name!r}", _to_value(wire))
    for name in change.unset:
        if name in change.set:
            problems.append(f"flag {name!r} is both set and unset; expected one or the other")
        elif name not in registry and not (state is not None and name in state.values()):
            problems.append(_unknown(name, known, what="cannot unset"))
    if not problems and (change.set or change.unset):
        after: dict[str, FlagValue] = dict(state.values()) if state is not None else {}
        for name in change.unset:
            after.pop(name, None)
        after.update((name, _to_value(wire)) for name, wire in change.set.items())
        touched = {*change.set, *change.unset}
        problems += [
            problem for names, problem in dependency_problems(registry, after) if touched & names
        ]
    return problems


def _may_be_on(value: FlagValue | None) -> bool:
    if isinstance(value, Rollout):
        return value.enabled and (value.percent > 0 or bool(value.include))
    return value is True


def _surely_on(value: FlagValue | None) -> bool:
    if isinstance(value, Rollout):
        return value.enabled and value.percent >= 100 and not value.exclude
    return value is True


def dependency_problems(
    registry: FlagRegistry, values: Mapping[str, FlagValue]
) -> list[tuple[frozenset[str], str]]:
    """Declared ``requires`` and ``conflicts`` that ``values`` (the cluster's flags, unset
    ones at their plugin default) break, each with the flags it involves.

    A rollout is judged for every node it may reach: a flag that may be on somewhere needs
    each flag it requires on everywhere, and must not meet a conflicting flag that may be on
    somewhere (the nodes a percentage picks differ per flag).
    """

    def value(name: str) -> FlagValue | None:
        if name in values:
            return values[name]
        return registry.get(name).default if name in registry else None

    problems: list[tuple[frozenset[str], str]] = []
    conflicting: set[frozenset[str]] = set()
    for spec in registry.specs():
        if not _may_be_on(value(spec.name)):
            continue
        for needed in spec.requires:
            if needed not in registry:
                problems.append(
                    (
                        frozenset({spec.name, needed}),
                        f"flag {spec.name!r} requires flag {needed!r}, which no installed "
                        f"plugin declares; expected plugin {spec.owner!r}'s dependency installed",
                    )
                )
            elif not _surely_on(value(needed)):
                problems.append(
                    (
                        frozenset({spec.name, needed}),
                        f"flag {spec.name!r} requires flag {needed!r} on wherever it is on, "
                        f"but {needed!r} is {_short.repr(value(needed))}; expected "
                        f"{needed}=on in the same change or before it",
                    )
                )
        for other in spec.conflicts:
            pair = frozenset({spec.name, other})
            if _may_be_on(value(other)) and pair not in conflicting:
                conflicting.add(pair)  # declared on both sides: reported once
                problems.append(
                    (
                        pair,
                        f"flags {spec.name!r} and {other!r} conflict (declared by "
                        f"{spec.owner!r}) and both may be on; expected at most one of them on",
                    )
                )
    return problems


class _StoredFlag(msgspec.Struct, frozen=True):
    value: bool | RolloutWire
    log_index: int


class _Snapshot(msgspec.Struct, frozen=True):
    version: int
    applied_index: int
    flags: dict[str, _StoredFlag]
    history: list[tuple[int, FlagChange]]
    migrations: JournalSnapshot | None = None


_SNAPSHOT_VERSION: Final = 1
_SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(_Snapshot)


class ClusterFlagState:
    """The replicated flag state: committed `FlagChange` entries applied in log order."""

    __slots__ = ("_applied_index", "_flags", "_history", "migrations")

    def __init__(self) -> None:
        self._applied_index = 0
        self._flags: dict[str, tuple[FlagValue, int]] = {}
        self._history: deque[tuple[int, FlagChange]] = deque(maxlen=HISTORY_LIMIT)
        self.migrations = MigrationJournal()
        """The staged-migration journal, fed by changes that carry a record."""

    @property
    def applied_index(self) -> int:
        """The log index of the last change applied (0: none)."""
        return self._applied_index

    def apply(self, change: FlagChange, log_index: int) -> None:
        """Apply a committed change at ``log_index``: unset its names, then set its values.

        Names no plugin here declares are stored like any other (see the module doc). A
        ``log_index`` not after the last one applied raises `FlagError`: applying out of
        order would make this node's state differ from its peers'.
        """
        if not _is_node_id(log_index) or log_index <= self._applied_index:
            raise FlagError(
                f"flag change at log index {log_index!r} applied after log index "
                f"{self._applied_index}; expected changes in increasing log order"
            )
        if change.migration is not None:
            change = self._apply_migration(change, log_index)
        values = {name: _to_value(wire) for name, wire in change.set.items()}
        for name in change.unset:
            self._flags.pop(name, None)
        for name, value in values.items():
            self._flags[name] = (value, log_index)
        self._applied_index = log_index
        # The history keeps the change as decoded from the log would be, so that a state
        # fed hand-made changes snapshots to the same bytes as its peers' states.
        normal = FlagChange(
            set={name: _to_wire(value) for name, value in values.items()},
            unset=list(change.unset),
            reason=change.reason,
        )
        self._history.append((log_index, normal))

    def _apply_migration(self, change: FlagChange, log_index: int) -> FlagChange:
        """Feed the change's record to the journal; returns the flag change to apply.

        A refused record applies nothing (the history says why). A start captures, at its
        own index, the change that restores its target flags; a rollback applies exactly
        that change, whatever its entry's own set/unset say, so every node restores the
        same state."""
        record = change.migration
        assert record is not None
        restore = b""
        if record.event == MigrationEvent.START:
            restore = encode_flag_change(self.restore_change(record.targets))
        rollback = self.migrations.active if record.event == MigrationEvent.ROLLBACK else None
        refused = self.migrations.apply(record, log_index, restore=restore)
        note = f"migration {record.migration!r} {record.event}"
        if record.step >= 0:
            note += f" step {record.step + 1}"
        if refused is not None:
            return FlagChange(reason=f"{note} refused: {refused}")
        if rollback is not None:
            try:
                back = decode_flag_change(rollback.restore)
            except FlagError as error:  # same bytes everywhere: every node does the same
                return FlagChange(reason=f"{note}: cannot restore the flags: {error}")
            return FlagChange(set=back.set, unset=back.unset, reason=f"{note}: {record.detail}")
        return FlagChange(set=change.set, unset=change.unset, reason=change.reason or note)

    def restore_change(self, names: Iterable[str]) -> FlagChange:
        """The change that puts ``names`` back to their current cluster values."""
        set_: dict[str, bool | RolloutWire] = {}
        unset: list[str] = []
        for name in sorted(set(names)):
            if name in self._flags:
                set_[name] = _to_wire(self._flags[name][0])
            else:
                unset.append(name)
        return FlagChange(set=set_, unset=unset, reason="restore")

    def values(self) -> dict[str, FlagValue]:
        return {name: value for name, (value, _) in sorted(self._flags.items())}

    def history(self) -> list[tuple[int, FlagChange]]:
        """The last `HISTORY_LIMIT` changes applied, oldest first."""
        return list(self._history)

    def layer(self) -> FlagLayer:
        flags = sorted(self._flags.items())
        return FlagLayer(
            source=Source.CLUSTER,
            values={name: value for name, (value, _) in flags},
            origins={name: f"cluster log index {index}" for name, (_, index) in flags},
            log_indexes={name: index for name, (_, index) in flags},
        )

    def to_bytes(self) -> bytes:
        """The state as msgpack, for the state machine's snapshot (same state, same bytes)."""
        return encode_canonical(
            _Snapshot(
                version=_SNAPSHOT_VERSION,
                applied_index=self._applied_index,
                flags={
                    name: _StoredFlag(value=_to_wire(value), log_index=index)
                    for name, (value, index) in self._flags.items()
                },
                history=list(self._history),
                migrations=self.migrations.to_wire(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ClusterFlagState:
        """A state from `to_bytes` output; `FlagError` naming the problem otherwise."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FlagError(f"flag state snapshot is {type(data).__name__}, not bytes")
        try:
            snapshot = _SNAPSHOT_DECODER.decode(data)
        except msgspec.DecodeError as error:
            raise FlagError(
                f"flag state snapshot ({len(data)} bytes) is not valid: {error}"
            ) from None
        problem = _snapshot_problem(snapshot)
        if problem is not None:
            raise FlagError(f"flag state snapshot is not consistent: {problem}")
        state = cls()
        state._applied_index = snapshot.applied_index
        state._flags = {
            name: (_to_value(stored.value), stored.log_index)
            for name, stored in snapshot.flags.items()
        }
        state._history.extend(snapshot.history)
        if snapshot.migrations is not None:
            try:
                state.migrations = MigrationJournal.from_wire(
                    snapshot.migrations, snapshot.applied_index
                )
            except ValueError as error:
                raise FlagError(f"flag state snapshot is not consistent: {error}") from None
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterFlagState):
            return NotImplemented
        return (self._applied_index, self._flags, list(self._history), self.migrations) == (
            other._applied_index,
            other._flags,
            list(other._history),
            other.migrations,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: equal now, maybe not later

    def __repr__(self) -> str:
        return f"ClusterFlagState(applied_index={self._applied_index}, flags={self.values()!r})"


def _snapshot_problem(snapshot: _Snapshot) -> str | None:
    if snapshot.version != _SNAPSHOT_VERSION:
        return f"version {snapshot.version} is not {_SNAPSHOT_VERSION}"
    applied = snapshot.applied_index
    if applied < 0:
        return f"applied index {applied} is negative"
    for name, stored in snapshot.flags.items():
        if not 1 <= stored.log_index <= applied:
            return f"flag {name!r} set at log index {stored.log_index}, outside 1..{applied}"
    if len(snapshot.history) > HISTORY_LIMIT:
        return f"{len(snapshot.history)} history entries, more than {HISTORY_LIMIT}"
    indexes = [index for index, _ in snapshot.history]
    if any(a >= b for a, b in itertools.pairwise(indexes)):
        return f"history log indexes {indexes[:10]}... are not increasing"
    if indexes and (indexes[0] < 1 or indexes[-1] > applied):
        return f"history log indexes run outside 1..{applied}"
    return None


# --------------------------------------------------------------------------- the command line

_ASSIGNMENT_EXPECTED: Final = (
    "NAME=VALUE with VALUE on, off, true, false, a percentage like 25% or an inline table "
    "like {enabled=true,percent=25,include=[1],exclude=[3]}"
)
_PERCENT_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%", re.ASCII)
_WORDS: Final = {"on": True, "true": True, "off": False, "false": False}
_ROLLOUT_FIELDS: Final = tuple(f.name for f in fields(Rollout))


def parse_flag_assignment(text: str) -> tuple[str, FlagValue]:
    """``--flag`` text -> (name, value); `FlagError` naming the text and the forms.

    ``actors=on``/``off``/``true``/``false`` (any case), ``backpressure=25%`` (a rollout
    of 25%), ``actors={enabled=true,percent=25,include=[1],exclude=[3]}`` (TOML).
    """

    def fail(problem: str) -> FlagError:
        return FlagError(f"--flag {text!r}: {problem}; expected {_ASSIGNMENT_EXPECTED}")

    name, equals, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not equals:
        raise fail("has no '='")
    if not _NAME_RE.fullmatch(name):
        raise fail(f"{name!r} is not a flag name (lower_snake_case, like adaptive_timeout)")
    if raw.lower() in _WORDS:
        return name, _WORDS[raw.lower()]
    percent = _PERCENT_RE.fullmatch(raw)
    if percent is not None:
        value = float(percent[1])
        if value > 100:
            raise fail(f"{raw} is more than 100%")
        return name, Rollout(percent=value)
    if raw.startswith("{"):
        return name, _parse_rollout_table(raw, fail)
    raise fail(f"{raw!r} is not a flag value" if raw else "the value is empty")


def _parse_rollout_table(raw: str, fail: Callable[[str], FlagError]) -> Rollout:
    try:
        table = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError as error:
        raise fail(f"{raw} is not a TOML inline table ({error})") from None
    if not isinstance(table, dict):
        raise fail(f"{raw} is not a TOML inline table")
    for key in table:
        if key not in _ROLLOUT_FIELDS:
            raise fail(f"{key!r} is not a rollout field ({', '.join(_ROLLOUT_FIELDS)})")
    try:
        rollout = msgspec.convert(table, RolloutWire).to_rollout()
    except msgspec.ValidationError as error:
        raise fail(f"the rollout is not valid: {error}") from None
    both = _overlap(rollout)
    if both:
        raise fail(f"node ids {both} are both included and excluded")
    return rollout
