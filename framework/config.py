"""Settings: dynaconf layers in, frozen and validated objects out.

Theory of operation
-------------------
Settings are read once, when a node or a command starts, into the frozen dataclasses below;
nothing on a hot path touches dynaconf. `load_settings` builds a private dynaconf instance
and hands it the layers, lowest precedence first:

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

import abc
import copy
import datetime
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from decimal import Decimal
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar, cast

import tomli_w
from dynaconf import get_history  # type: ignore[import-untyped]  # dynaconf ships no types
from dynaconf.base import Settings as _Dynaconf  # type: ignore[import-untyped]  # no types
from dynaconf.loaders import toml_loader  # type: ignore[import-untyped]  # no types
from dynaconf.loaders.base import SourceMetadata  # type: ignore[import-untyped]  # no types
from dynaconf.utils.parse_conf import (  # type: ignore[import-untyped]  # no types
    boolean_fix,
    parse_conf_data,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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


# --------------------------------------------------------------------------- errors


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE: Final = _NoValue()


class SettingsError(ValueError):
    """A setting, a settings file or the profile is wrong; the message says which and why.

    Rendered as ``key: value problem; expected what`` plus ``(from source)`` when the
    layer that set it is known, e.g. ``performance.circuit_breaker.timeout: "30 parsecs" is
    not a duration; expected a number followed by ms, s, m or h, like "200ms" or "30s"``.
    """

    def __init__(
        self,
        key: str,
        problem: str,
        expected: str,
        *,
        value: object = _NO_VALUE,
        source: str | None = None,
    ) -> None:
        self.key = key
        self.problem = problem
        self.expected = expected
        self.value = value
        self.source = source
        shown = "" if value is _NO_VALUE else f" {_show(value)}"
        where = "" if source is None else f" (from {source})"
        super().__init__(f"{key}:{shown} {problem}; expected {expected}{where}")

    def with_source(self, source: str | None) -> SettingsError:
        """The same error, naming the layer the bad value came from."""
        return SettingsError(self.key, self.problem, self.expected, value=self.value, source=source)


def _show(value: object) -> str:
    """A value as TOML would spell it, short enough for one line of an error."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- durations, sizes

_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", re.ASCII)
_DURATION_EXPECTED: Final = 'a number followed by ms, s, m or h, like "200ms" or "30s"'
_SECONDS_PER_UNIT: Final = {"h": 3600, "m": 60, "s": 1}

_SIZE_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)\s*", re.ASCII | re.IGNORECASE)
_SIZE_EXPECTED: Final = 'a byte count, or a number followed by B, KiB, MiB or GiB, like "64KiB"'
_BYTES_PER_UNIT: Final = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "B": 1}


def parse_duration(value: object, *, key: str = "duration") -> float:
    """``"200ms"``, ``"1.5s"``, ``"5m"`` or ``"1h"`` in seconds; `SettingsError` otherwise.

    Bare numbers are refused: whether ``30`` means seconds or milliseconds is a guess.
    """
    match = _DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise SettingsError(key, "is not a duration", _DURATION_EXPECTED, value=value)
    number, unit = float(match[1]), match[2]
    # Dividing (not multiplying by 0.001) keeps "200ms" == 0.2 exactly.
    return number / 1000 if unit == "ms" else number * _SECONDS_PER_UNIT[unit]


def format_duration(seconds: float) -> str:
    """The shortest of ``"2h"``, ``"5m"``, ``"30s"``, ``"200ms"`` that parses back exactly."""
    exact = Decimal(repr(float(seconds)))
    candidates = [
        f"{(exact / per).normalize():f}{unit}"
        for unit, per in _SECONDS_PER_UNIT.items()
        if exact and exact % per == 0
    ]
    candidates += [f"{(exact * 1000).normalize():f}ms", f"{exact.normalize():f}s"]
    for text in candidates:
        if _DURATION_RE.fullmatch(text) and parse_duration(text) == seconds:
            return text
    raise ValueError(f"{seconds!r} seconds cannot be written as a duration")


def parse_size(value: object, *, key: str = "size") -> int:
    """A byte count: an int, or ``"512B"``, ``"64KiB"``, ``"4MiB"``, ``"1GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise SettingsError(key, "is negative", _SIZE_EXPECTED, value=value)
        return value
    match = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise SettingsError(key, "is not a size", _SIZE_EXPECTED, value=value)
    unit = next(u for u in _BYTES_PER_UNIT if u.lower() == match[2].lower())
    size = Decimal(match[1]) * _BYTES_PER_UNIT[unit]
    if size != size.to_integral_value():
        raise SettingsError(key, "is not a whole number of bytes", _SIZE_EXPECTED, value=value)
    return int(size)


def format_size(size: int) -> int | str:
    """``"64MiB"`` when the size is a whole number of KiB, MiB or GiB, else the int."""
    for unit, per in _BYTES_PER_UNIT.items():
        if per > 1 and size and size % per == 0:
            return f"{size // per}{unit}"
    return size


# --------------------------------------------------------------------------- value kinds


class _Kind(abc.ABC):
    """How one setting is spelt in TOML and what it becomes in Python."""

    __slots__ = ("expected",)

    def __init__(self, expected: str) -> None:
        self.expected = expected

    @abc.abstractmethod
    def read(self, key: str, raw: object) -> object:
        """Validate and convert ``raw`` read at ``key``; raise ``SettingsError`` if bad."""

    def write(self, value: Any) -> Any:
        return value

    def fail(self, key: str, raw: object, problem: str) -> SettingsError:
        return SettingsError(key, problem, self.expected, value=raw)


class _Bool(_Kind):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("true or false")

    def read(self, key: str, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise self.fail(key, raw, "is not a boolean")
        return raw


class _Int(_Kind):
    __slots__ = ("minimum",)

    def __init__(self, minimum: int) -> None:
        super().__init__(f"an integer >= {minimum}")
        self.minimum = minimum

    def read(self, key: str, raw: object) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise self.fail(key, raw, "is not an integer")
        if raw < self.minimum:
            raise self.fail(key, raw, "is too small")
        return raw


class _Number(_Kind):
    """A float within [low, high]."""

    __slots__ = ("high", "low")

    def __init__(self, low: float, high: float, expected: str) -> None:
        super().__init__(expected)
        self.low, self.high = low, high

    def read(self, key: str, raw: object) -> float:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise self.fail(key, raw, "is not a number")
        if not self.low <= raw <= self.high:
            raise self.fail(key, raw, f"is outside {self.low:g}..{self.high:g}")
        return float(raw)


class _Duration(_Kind):
    __slots__ = ("allow_zero",)

    def __init__(self, *, allow_zero: bool = False) -> None:
        super().__init__(_DURATION_EXPECTED)
        self.allow_zero = allow_zero

    def read(self, key: str, raw: object) -> float:
        seconds = parse_duration(raw, key=key)
        if seconds == 0 and not self.allow_zero:
            raise SettingsError(key, "is zero", 'a duration above zero, like "200ms"', value=raw)
        return seconds

    def write(self, value: Any) -> Any:
        return format_duration(value)


class _AutoOrDuration(_Kind):
    """``"auto"`` (None: derived from other settings where it is used) or a duration > 0."""

    __slots__ = ("duration",)

    def __init__(self) -> None:
        super().__init__('"auto" or ' + _DURATION_EXPECTED)
        self.duration = _Duration()

    def read(self, key: str, raw: object) -> float | None:
        if raw == "auto":
            return None
        try:
            return self.duration.read(key, raw)
        except SettingsError as exc:
            raise self.fail(key, raw, exc.problem) from None

    def write(self, value: Any) -> Any:
        return "auto" if value is None else format_duration(value)


class _Size(_Kind):
    __slots__ = ("minimum",)

    def __init__(self, *, minimum: int = 0) -> None:
        super().__init__(_SIZE_EXPECTED)
        self.minimum = minimum

    def read(self, key: str, raw: object) -> int:
        size = parse_size(raw, key=key)
        if size < self.minimum:
            raise self.fail(key, raw, f"is smaller than {self.minimum} bytes")
        return size

    def write(self, value: Any) -> Any:
        return format_size(value)


class _Choice(_Kind):
    __slots__ = ("options",)

    def __init__(self, *options: str) -> None:
        super().__init__("one of " + ", ".join(json.dumps(o) for o in options))
        self.options = options

    def read(self, key: str, raw: object) -> str:
        if raw not in self.options:
            raise self.fail(key, raw, "is not a valid choice")
        return str(raw)


class _Text(_Kind):
    __slots__ = ()

    def __init__(self, expected: str = "a non-empty string") -> None:
        super().__init__(expected)

    def read(self, key: str, raw: object) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(key, raw, "is not a non-empty string")
        return raw


class _OptionalText(_Kind):
    __slots__ = ()

    def read(self, key: str, raw: object) -> str:
        if not isinstance(raw, str):
            raise self.fail(key, raw, "is not a string")
        return raw


class _Hex(_Kind):
    __slots__ = ("digits",)

    def __init__(self, digits: int, expected: str) -> None:
        super().__init__(expected)
        self.digits = digits

    def read(self, key: str, raw: object) -> str:
        if (
            not isinstance(raw, str)
            or len(raw) != self.digits
            or raw.strip("0123456789abcdefABCDEF")
        ):
            raise self.fail(key, raw, f"is not {self.digits} hex digits")
        return raw.lower()


class _ListOf(_Kind):
    """A list read into a tuple, duplicates dropped (merged layers may repeat items)."""

    __slots__ = ("item",)

    def __init__(self, item: _Kind, expected: str) -> None:
        super().__init__(expected)
        self.item = item

    def read(self, key: str, raw: object) -> tuple[object, ...]:
        if not isinstance(raw, list | tuple):
            raise self.fail(key, raw, "is not a list")
        items = [self.item.read(f"{key}[{i}]", v) for i, v in enumerate(raw)]
        return tuple(dict.fromkeys(items))

    def write(self, value: Any) -> Any:
        return [self.item.write(v) for v in value]


class _Section(_Kind):
    """A table read into one of the dataclasses below."""

    __slots__ = ("cls",)

    def __init__(self, cls: type[DataclassInstance]) -> None:
        super().__init__("a table")
        self.cls = cls

    def read(self, key: str, raw: object) -> object:
        return _read_dataclass(self.cls, key, raw)

    def write(self, value: Any) -> Any:
        return _write_dataclass(value)


_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


class _TableOf(_Kind):
    """A table of name -> value, names chosen by the user (operations, flags)."""

    __slots__ = ("value",)

    def __init__(self, value: _Kind, expected: str) -> None:
        super().__init__(expected)
        self.value = value

    def read(self, key: str, raw: object) -> Mapping[str, object]:
        if not isinstance(raw, Mapping):
            raise self.fail(key, raw, "is not a table")
        for name in raw:
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise SettingsError(
                    f"{key}.{name}",
                    "is not a valid name",
                    "letters, digits, _ and -",
                    value=raw[name],
                )
        return _FrozenMap((name, self.value.read(f"{key}.{name}", v)) for name, v in raw.items())

    def write(self, value: Any) -> Any:
        return {name: self.value.write(v) for name, v in value.items()}


class _Free(_Kind):
    """A plugin's own table: any TOML values, frozen (tuples for arrays, read-only maps for
    tables). raftmw does not know their meaning; the plugin checks them in its
    ``raftmw_validate_settings`` hook."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("a table of the plugin's own settings")

    def read(self, key: str, raw: object) -> Mapping[str, object]:
        if not isinstance(raw, Mapping):
            raise self.fail(key, raw, "is not a table")
        return self._value(key, raw)  # type: ignore[return-value]

    def _value(self, key: str, raw: object) -> object:
        if isinstance(raw, Mapping):
            return _FrozenMap(
                (str(name), self._value(f"{key}.{name}", value)) for name, value in raw.items()
            )
        if isinstance(raw, list | tuple):
            return tuple(self._value(f"{key}[{i}]", value) for i, value in enumerate(raw))
        if isinstance(raw, str | int | float | bool | datetime.date | datetime.time):
            return raw
        raise SettingsError(
            key, "is not a TOML value", "a string, number, boolean, date, array or table", value=raw
        )

    def write(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {name: self.write(v) for name, v in value.items()}
        if isinstance(value, tuple):
            return [self.write(v) for v in value]
        return value


class _Flag(_Kind):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(
            "true, false or a rollout table like "
            "{ enabled = true, percent = 25, include = [1], exclude = [3] }"
        )

    def read(self, key: str, raw: object) -> FlagValue:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, Mapping):
            return _read_dataclass(Rollout, key, raw)
        raise self.fail(key, raw, "is not a flag value")

    def write(self, value: Any) -> Any:
        return value if isinstance(value, bool) else _write_dataclass(value)


def _kind(kind: _Kind) -> dict[str, _Kind]:
    """Field metadata: how the field is read and written."""
    return {"kind": kind}


_BOOL: Final = _Bool()
_DURATION: Final = _kind(_Duration())
_DURATION_OR_ZERO: Final = _kind(_Duration(allow_zero=True))
_NODE_IDS: Final = _kind(_ListOf(_Int(0), "a list of node ids (integers >= 0)"))


# --------------------------------------------------------------------------- settings objects

_K = TypeVar("_K")
_V = TypeVar("_V")


class _FrozenMap(Mapping[_K, _V]):
    """A read-only dict that can be hashed, pickled and copied (MappingProxyType cannot)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = ()) -> None:
        self._items: dict[_K, _V] = dict(items)

    def __getitem__(self, key: _K) -> _V:
        return self._items[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


def _empty_map() -> Mapping[str, str]:
    return _FrozenMap()


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftSettings:
    """The kernel's knobs (etcd/raft `Config` names). Durations in seconds, sizes in bytes."""

    tick_interval: float = field(metadata=_DURATION)
    election_tick: int = field(metadata=_kind(_Int(1)))
    heartbeat_tick: int = field(metadata=_kind(_Int(1)))
    pre_vote: bool = field(metadata=_kind(_BOOL))
    check_quorum: bool = field(metadata=_kind(_BOOL))
    max_inflight_msgs: int = field(metadata=_kind(_Int(1)))
    max_size_per_msg: int = field(metadata=_kind(_Size()))
    max_uncommitted_entries_size: int = field(metadata=_kind(_Size()))  # 0: no limit
    lease_reads: bool = field(metadata=_kind(_BOOL))
    snapshot_threshold_entries: int = field(metadata=_kind(_Int(1)))
    max_batch_proposals: int = field(metadata=_kind(_Int(1)))
    lease_drift_ticks: int = field(default=4, metadata=_kind(_Int(0)))
    snapshot_trailing_entries: int = field(default=5000, metadata=_kind(_Int(0)))
    """Entries kept before a snapshot's index when the log is compacted, so a briefly
    lagging follower catches up from the log instead of a whole snapshot."""

    def _validate(self, key: str) -> None:
        # Heartbeats must come more often than followers time out, or a healthy leader
        # loses its followers between two heartbeats.
        if self.election_tick <= self.heartbeat_tick:
            raise SettingsError(
                f"{key}.election_tick",
                f"is not greater than {key}.heartbeat_tick ({self.heartbeat_tick})",
                "an election_tick greater than heartbeat_tick (etcd uses 10 times it)",
                value=self.election_tick,
            )
        # A lease read is sound only if the lease ends before a follower may vote again.
        if self.lease_reads and not 2 <= self.lease_drift_ticks < self.election_tick:
            raise SettingsError(
                f"{key}.lease_drift_ticks",
                f"is out of range for lease_reads with election_tick {self.election_tick}",
                "at least 2 (a tick of granularity on each side) plus the clock drift over "
                "an election timeout, and less than election_tick",
                value=self.lease_drift_ticks,
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSettings:
    engine: str = field(metadata=_kind(_Choice("sqlite", "memory")))
    sync: str = field(metadata=_kind(_Choice("always", "os")))
    data_dir: str = field(metadata=_kind(_Text("a directory path")))


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportSettings:
    kind: str = field(metadata=_kind(_Text('a transport name, like "tcp"')))
    max_frame_size: int = field(metadata=_kind(_Size(minimum=1024)))
    max_message_size: int = field(metadata=_kind(_Size(minimum=1024)))
    connect_timeout: float = field(metadata=_DURATION)
    dead_connection_timeout: float = field(metadata=_DURATION)
    reconnect_backoff_min: float = field(metadata=_DURATION_OR_ZERO)
    reconnect_backoff_max: float = field(metadata=_DURATION)

    def _validate(self, key: str) -> None:
        if self.max_message_size < self.max_frame_size:
            raise SettingsError(
                f"{key}.max_message_size",
                f"is less than max_frame_size ({self.max_frame_size} bytes)",
                "a size at least max_frame_size",
                value=str(self.max_message_size),
            )
        if self.reconnect_backoff_max < self.reconnect_backoff_min:
            raise SettingsError(
                f"{key}.reconnect_backoff_max",
                f"is less than reconnect_backoff_min "
                f"({_show(format_duration(self.reconnect_backoff_min))})",
                "a duration at least reconnect_backoff_min",
                value=format_duration(self.reconnect_backoff_max),
            )


ATTEMPT_TIMEOUT_FLOOR: Final = 0.5
"""Seconds: the least ``client.attempt_timeout = "auto"`` gives, so a slow link or a busy
leader is not given up on after a fast profile's 100ms election timeout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """A node's certificates (``raftmw tls init`` makes them); all three or none."""

    ca: str = field(default="", metadata=_kind(_OptionalText('a PEM file path, or ""')))
    cert: str = field(default="", metadata=_kind(_OptionalText('a PEM file path, or ""')))
    key: str = field(default="", metadata=_kind(_OptionalText('a PEM file path, or ""')))
    insecure: bool = field(default=False, metadata=_kind(_BOOL))
    """Listen on a non-loopback address without TLS anyway (``--insecure``)."""

    @property
    def enabled(self) -> bool:
        return bool(self.ca)

    def _validate(self, key: str) -> None:
        given = [name for name in ("ca", "cert", "key") if getattr(self, name)]
        if given and len(given) != 3:
            missing = sorted({"ca", "cert", "key"} - set(given))
            raise SettingsError(
                f"{key}.{missing[0]}",
                f"is missing while {', '.join(f'{key}.{g}' for g in given)} "
                f"{'is' if len(given) == 1 else 'are'} set",
                "all of tls.ca, tls.cert and tls.key, or none of them",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSettings:
    """A client token: the role it grants and the SHA-256 of the token (never the token)."""

    role: str = field(metadata=_kind(_Choice("read-write", "admin")))
    sha256: str = field(
        metadata=_kind(_Hex(64, "the token's SHA-256 as 64 hex digits (raftmw tls token)"))
    )


def _no_tokens() -> Mapping[str, TokenSettings]:
    return _FrozenMap()


@dataclass(frozen=True, slots=True, kw_only=True)
class SecuritySettings:
    """Bounds on connections before authentication, and client tokens."""

    max_connections: int = field(default=1024, metadata=_kind(_Int(1)))
    max_connections_per_address: int = field(default=256, metadata=_kind(_Int(1)))
    handshake_frame_size: int = field(default=4096, metadata=_kind(_Size(minimum=64)))
    tokens: Mapping[str, TokenSettings] = field(
        default_factory=_no_tokens,
        metadata=_kind(
            _TableOf(_Section(TokenSettings), "a table of token name -> { role, sha256 }")
        ),
    )

    def _validate(self, key: str) -> None:
        if self.max_connections_per_address > self.max_connections:
            raise SettingsError(
                f"{key}.max_connections_per_address",
                f"is more than max_connections ({self.max_connections})",
                "at most max_connections",
                value=self.max_connections_per_address,
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    request_timeout: float = field(metadata=_DURATION)
    attempt_timeout: float | None = field(metadata=_kind(_AutoOrDuration()))
    """None for ``"auto"``: see ``Settings.client_attempt_timeout``."""
    retry_backoff: float = field(metadata=_DURATION_OR_ZERO)

    def _validate(self, key: str) -> None:
        if self.attempt_timeout is not None and self.attempt_timeout > self.request_timeout:
            raise SettingsError(
                f"{key}.attempt_timeout",
                f"is longer than {key}.request_timeout "
                f"({_show(format_duration(self.request_timeout))}), the deadline of the "
                "whole request",
                '"auto" or a duration at most request_timeout',
                value=format_duration(self.attempt_timeout),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class BackpressureSettings:
    max_pending: int = field(metadata=_kind(_Int(1)))
    enable_priority: bool = field(metadata=_kind(_BOOL))
    memory_pressure_threshold: float = field(
        metadata=_kind(_Number(0, 1, "a number from 0 to 1, like 0.8"))
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerSettings:
    failure_threshold: int = field(metadata=_kind(_Int(1)))
    timeout: float = field(metadata=_DURATION)
    success_threshold: int = field(metadata=_kind(_Int(1)))


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutSettings:
    """One operation's timeout: fixed at base_timeout, or adaptive between the bounds."""

    base_timeout: float = field(metadata=_DURATION)
    max_timeout: float = field(metadata=_DURATION)
    enable_adaptive: bool = field(metadata=_kind(_BOOL))

    def _validate(self, key: str) -> None:
        if self.max_timeout < self.base_timeout:
            raise SettingsError(
                f"{key}.max_timeout",
                f"is less than base_timeout ({_show(format_duration(self.base_timeout))})",
                "a duration at least base_timeout",
                value=format_duration(self.max_timeout),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceSettings:
    """The plan's PerformanceConfig; ``timeouts`` is keyed by operation name."""

    enable_lock_free: bool = field(metadata=_kind(_BOOL))
    backpressure: BackpressureSettings = field(metadata=_kind(_Section(BackpressureSettings)))
    circuit_breaker: CircuitBreakerSettings = field(
        metadata=_kind(_Section(CircuitBreakerSettings))
    )
    timeouts: Mapping[str, TimeoutSettings] = field(
        metadata=_kind(
            _TableOf(
                _Section(TimeoutSettings),
                "a table of operation name -> { base_timeout, max_timeout, enable_adaptive }",
            )
        )
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    """A flag rolled out to part of the cluster.

    Only the shape is checked here; framework/flags.py decides who is in (``include`` always,
    ``exclude`` never, the rest by a stable hash against ``percent``).
    """

    enabled: bool = field(default=True, metadata=_kind(_BOOL))
    percent: float = field(
        default=100.0, metadata=_kind(_Number(0, 100, "a percentage from 0 to 100"))
    )
    include: tuple[int, ...] = field(default=(), metadata=_NODE_IDS)
    exclude: tuple[int, ...] = field(default=(), metadata=_NODE_IDS)

    def _validate(self, key: str) -> None:
        both = sorted(set(self.include) & set(self.exclude))
        if both:
            raise SettingsError(
                f"{key}.exclude",
                f"repeats node ids of {key}.include: {both}",
                "each node id in at most one of include and exclude",
                value=list(self.exclude),
            )


FlagValue: TypeAlias = bool | Rollout


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginSettings:
    blocked: tuple[str, ...] = field(metadata=_kind(_ListOf(_Text(), "a list of plugin names")))
    enabled: tuple[str, ...] = field(metadata=_kind(_ListOf(_Text(), "a list of plugin names")))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything settings.toml describes, validated.

    ``sources`` maps each dotted key to the layer that set it ("default", "profile NAME", a
    file path, an environment variable's name, "override"); it is provenance, not part of
    the value, so it does not take part in ``==``.
    """

    raft: RaftSettings = field(metadata=_kind(_Section(RaftSettings)))
    storage: StorageSettings = field(metadata=_kind(_Section(StorageSettings)))
    transport: TransportSettings = field(metadata=_kind(_Section(TransportSettings)))
    client: ClientSettings = field(metadata=_kind(_Section(ClientSettings)))
    performance: PerformanceSettings = field(metadata=_kind(_Section(PerformanceSettings)))
    flags: Mapping[str, FlagValue] = field(
        metadata=_kind(_TableOf(_Flag(), "a table of flag name -> flag value"))
    )
    plugins: PluginSettings = field(metadata=_kind(_Section(PluginSettings)))
    plugin: Mapping[str, Mapping[str, object]] = field(
        metadata=_kind(_TableOf(_Free(), "a table of plugin name -> its own settings table"))
    )
    """Each plugin's own settings, ``[plugin.<name>]``, as written (the plugin validates)."""
    tls: TlsSettings = field(default_factory=TlsSettings, metadata=_kind(_Section(TlsSettings)))
    security: SecuritySettings = field(
        default_factory=SecuritySettings, metadata=_kind(_Section(SecuritySettings))
    )
    sources: Mapping[str, str] = field(default_factory=_empty_map, compare=False)

    @property
    def client_attempt_timeout(self) -> float:
        """How long a client waits for one node before trying another (seconds).

        ``client.attempt_timeout`` if set; for ``"auto"``, one election timeout
        (``raft.election_tick`` x ``raft.tick_interval``: a leader silent that long is what
        followers take for dead) but at least ``ATTEMPT_TIMEOUT_FLOOR``, and never past
        ``client.request_timeout``.
        """
        explicit = self.client.attempt_timeout
        if explicit is not None:
            return explicit
        election = self.raft.election_tick * self.raft.tick_interval
        return min(self.client.request_timeout, max(ATTEMPT_TIMEOUT_FLOOR, election))


_D = TypeVar("_D", bound="DataclassInstance")


def _read_dataclass(cls: type[_D], key: str, raw: object) -> _D:
    settable = {f.name: f for f in fields(cls) if "kind" in f.metadata}
    if not isinstance(raw, Mapping):
        raise SettingsError(key, "is not a table", "a table of " + ", ".join(settable), value=raw)
    # Unknown keys first: a misspelt key is the likely cause of a "missing" one.
    for name, value in raw.items():
        if name not in settable:
            raise SettingsError(
                _join(key, str(name)),
                "is not a known setting",
                "one of " + ", ".join(sorted(settable)) + (f" in [{key}]" if key else ""),
                value=value,
            )
    values: dict[str, object] = {}
    for name, f in settable.items():
        kind: _Kind = f.metadata["kind"]
        if name in raw:
            values[name] = kind.read(_join(key, name), raw[name])
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SettingsError(_join(key, name), "is missing", kind.expected)
    made = cast(Callable[..., _D], cls)(**values)
    validate = getattr(made, "_validate", None)
    if validate is not None:
        validate(key)
    return made


def _write_dataclass(obj: DataclassInstance) -> dict[str, object]:
    return {
        f.name: f.metadata["kind"].write(getattr(obj, f.name))
        for f in fields(obj)
        if "kind" in f.metadata
    }


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


# --------------------------------------------------------------------------- public helpers


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate a complete, plain nested mapping (e.g. parsed TOML) into `Settings`.

    Nothing is filled in: a missing key is an error. To check a partial file on top of the
    defaults, use ``load_settings(files=[path])``.
    """
    return _read_dataclass(Settings, "", data)


def settings_to_mapping(settings: Settings) -> dict[str, Any]:
    """Plain nested dict, as TOML spells it: durations "200ms", sizes "64MiB", lists."""
    return _write_dataclass(settings)


def settings_to_toml(settings: Settings) -> str:
    """A flat settings file (the ``--settings`` layout) that loads back to equal settings."""
    return tomli_w.dumps(settings_to_mapping(settings))


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
    return replace(settings, sources=_FrozenMap((k, v) for k, v in sources.items() if k in kept))


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
    # Every option dynaconf consults is given here, so none falls back to os.environ; the
    # loaders are skipped (see the module docstring) and fed by _merge instead.
    return _Dynaconf(**_DYNACONF_OPTIONS, ENV_FOR_DYNACONF=profile.upper())


def _sources(dyn: Any, layers: Mapping[tuple[str, str, str], _Layer]) -> dict[str, str]:
    """Dotted leaf key -> the last layer (in dynaconf's loading order) that set it."""
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
        key = _join(prefix, str(name).lower())
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
