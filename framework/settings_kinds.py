"""How a setting is spelt in TOML and what it becomes in Python.

Each field of a settings dataclass (`framework.settings_schema`) carries a `Kind` in its
metadata (``field(metadata=as_metadata(Int(1)))``): it reads the raw TOML value at a dotted
key into the Python value, or raises `SettingsError` naming the key, the value and what was
expected, and writes the value back as TOML spells it. `read_dataclass` reads a whole table
into a dataclass, strictly (an unknown key is an error, and so is a missing one without a
default), then runs the dataclass's own ``_validate(key)`` for rules across its fields.

Durations are float seconds, written ``"200ms"``, ``"30s"``, ``"5m"``, ``"1h"`` (bare numbers
are refused: seconds or milliseconds would be a guess); sizes are int bytes, written as a
count or ``"64KiB"``, ``"4MiB"``. Tables and lists become read-only values (`FrozenMap`,
tuples), so the settings objects built from them are frozen all the way down.
"""

from __future__ import annotations

import abc
import datetime
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "BOOL",
    "DURATION",
    "DURATION_OR_ZERO",
    "NODE_IDS",
    "AutoOrDuration",
    "Bool",
    "Choice",
    "Duration",
    "Free",
    "FrozenMap",
    "Hex",
    "Int",
    "Kind",
    "ListOf",
    "Number",
    "OptionalText",
    "Section",
    "SettingsError",
    "Size",
    "TableOf",
    "Text",
    "as_metadata",
    "format_duration",
    "format_size",
    "join_key",
    "parse_duration",
    "parse_size",
    "read_dataclass",
    "show_value",
    "write_dataclass",
]


# --------------------------------------------------------------------------- errors


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"

    def __reduce__(self) -> str:
        # Pickled by name, so an unpickled error still finds `value is _NO_VALUE`.
        return "_NO_VALUE"


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
        shown = "" if value is _NO_VALUE else f" {show_value(value)}"
        where = "" if source is None else f" (from {source})"
        super().__init__(f"{key}:{shown} {problem}; expected {expected}{where}")

    def with_source(self, source: str | None) -> SettingsError:
        """The same error, naming the layer the bad value came from."""
        return SettingsError(self.key, self.problem, self.expected, value=self.value, source=source)

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles ``args`` (here the one rendered message) and would call
        # SettingsError(message) to unpickle; rebuild from the fields instead, so an error
        # raised where settings are loaded apart (framework.settings_apart) arrives whole.
        parts = (self.key, self.problem, self.expected, self.value, self.source)
        return _settings_error, parts, self.__dict__


def _settings_error(
    key: str, problem: str, expected: str, value: object, source: str | None
) -> SettingsError:
    return SettingsError(key, problem, expected, value=value, source=source)


def show_value(value: object) -> str:
    """A value as TOML would spell it, short enough for one line of an error."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {show_value(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(show_value(v) for v in value) + "]"
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


class Kind(abc.ABC):
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


class Bool(Kind):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("true or false")

    def read(self, key: str, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise self.fail(key, raw, "is not a boolean")
        return raw


class Int(Kind):
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


class Number(Kind):
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


class Duration(Kind):
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


class AutoOrDuration(Kind):
    """``"auto"`` (None: derived from other settings where it is used) or a duration > 0."""

    __slots__ = ("duration",)

    def __init__(self) -> None:
        super().__init__('"auto" or ' + _DURATION_EXPECTED)
        self.duration = Duration()

    def read(self, key: str, raw: object) -> float | None:
        if raw == "auto":
            return None
        try:
            return self.duration.read(key, raw)
        except SettingsError as exc:
            raise self.fail(key, raw, exc.problem) from None

    def write(self, value: Any) -> Any:
        return "auto" if value is None else format_duration(value)


class Size(Kind):
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


class Choice(Kind):
    __slots__ = ("options",)

    def __init__(self, *options: str) -> None:
        super().__init__("one of " + ", ".join(json.dumps(o) for o in options))
        self.options = options

    def read(self, key: str, raw: object) -> str:
        if raw not in self.options:
            raise self.fail(key, raw, "is not a valid choice")
        return str(raw)


class Text(Kind):
    __slots__ = ()

    def __init__(self, expected: str = "a non-empty string") -> None:
        super().__init__(expected)

    def read(self, key: str, raw: object) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(key, raw, "is not a non-empty string")
        return raw


class OptionalText(Kind):
    __slots__ = ()

    def read(self, key: str, raw: object) -> str:
        if not isinstance(raw, str):
            raise self.fail(key, raw, "is not a string")
        return raw


class Hex(Kind):
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


class ListOf(Kind):
    """A list read into a tuple, duplicates dropped (merged layers may repeat items)."""

    __slots__ = ("item",)

    def __init__(self, item: Kind, expected: str) -> None:
        super().__init__(expected)
        self.item = item

    def read(self, key: str, raw: object) -> tuple[object, ...]:
        if not isinstance(raw, list | tuple):
            raise self.fail(key, raw, "is not a list")
        items = [self.item.read(f"{key}[{i}]", v) for i, v in enumerate(raw)]
        return tuple(dict.fromkeys(items))

    def write(self, value: Any) -> Any:
        return [self.item.write(v) for v in value]


class Section(Kind):
    """A table read into a settings dataclass (`read_dataclass`)."""

    __slots__ = ("cls",)

    def __init__(self, cls: type[DataclassInstance]) -> None:
        super().__init__("a table")
        self.cls = cls

    def read(self, key: str, raw: object) -> object:
        return read_dataclass(self.cls, key, raw)

    def write(self, value: Any) -> Any:
        return write_dataclass(value)


_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


class TableOf(Kind):
    """A table of name -> value, names chosen by the user (operations, flags)."""

    __slots__ = ("value",)

    def __init__(self, value: Kind, expected: str) -> None:
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
        return FrozenMap((name, self.value.read(f"{key}.{name}", v)) for name, v in raw.items())

    def write(self, value: Any) -> Any:
        return {name: self.value.write(v) for name, v in value.items()}


class Free(Kind):
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
            return FrozenMap(
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


def as_metadata(kind: Kind) -> dict[str, Kind]:
    """Field metadata: how the field is read and written."""
    return {"kind": kind}


BOOL: Final = Bool()
DURATION: Final = as_metadata(Duration())
DURATION_OR_ZERO: Final = as_metadata(Duration(allow_zero=True))
NODE_IDS: Final = as_metadata(ListOf(Int(0), "a list of node ids (integers >= 0)"))


_K = TypeVar("_K")
_V = TypeVar("_V")


class FrozenMap(Mapping[_K, _V]):
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


_D = TypeVar("_D", bound="DataclassInstance")


def read_dataclass(cls: type[_D], key: str, raw: object) -> _D:
    settable = {f.name: f for f in fields(cls) if "kind" in f.metadata}
    if not isinstance(raw, Mapping):
        raise SettingsError(key, "is not a table", "a table of " + ", ".join(settable), value=raw)
    # Unknown keys first: a misspelt key is the likely cause of a "missing" one.
    for name, value in raw.items():
        if name not in settable:
            raise SettingsError(
                join_key(key, str(name)),
                "is not a known setting",
                "one of " + ", ".join(sorted(settable)) + (f" in [{key}]" if key else ""),
                value=value,
            )
    values: dict[str, object] = {}
    for name, f in settable.items():
        kind: Kind = f.metadata["kind"]
        if name in raw:
            values[name] = kind.read(join_key(key, name), raw[name])
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SettingsError(join_key(key, name), "is missing", kind.expected)
    made = cast(Callable[..., _D], cls)(**values)
    validate = getattr(made, "_validate", None)
    if validate is not None:
        validate(key)
    return made


def write_dataclass(obj: DataclassInstance) -> dict[str, object]:
    return {
        f.name: f.metadata["kind"].write(getattr(obj, f.name))
        for f in fields(obj)
        if "kind" in f.metadata
    }


def join_key(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
