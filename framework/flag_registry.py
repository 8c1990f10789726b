"""Flag declarations: `FlagSpec` (what a plugin declares), `FlagRegistry` (every declared
flag, by name) and the errors of the flag modules (`FlagError`, `UnknownFlag`).

The theory of flags is in `framework.flags`, which re-exports the public names.
"""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "FLAG_NAME_RE",
    "FlagError",
    "FlagRegistry",
    "FlagSpec",
    "UnknownFlag",
    "on_off",
    "short_repr",
    "unknown_name",
]

FLAG_NAME_RE: Final = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*", re.ASCII)
short_repr = reprlib.Repr()
short_repr.maxstring = 60
short_repr.maxother = 60


# --------------------------------------------------------------------------- errors


class FlagError(ValueError):
    """A flag declaration, value, change or snapshot is wrong; the message says which."""


class UnknownFlag(FlagError):
    """No plugin declared a flag of this name. The message suggests the closest one."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        self.suggestion = _closest(name, self.known)
        super().__init__(unknown_name(name, self.known, what="unknown flag"))


def _closest(name: str, known: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(name, known, n=1)
    return matches[0] if matches else None


def unknown_name(name: str, known: Sequence[str], *, what: str, where: str = "") -> str:
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
        if not isinstance(self.name, str) or not FLAG_NAME_RE.fullmatch(self.name):
            raise FlagError(
                f"flag name {self.name!r} (declared by {self.owner!r}) is not lower_snake_case; "
                "expected a name like 'adaptive_timeout'"
            )
        if not isinstance(self.default, bool):
            raise FlagError(
                f"flag {self.name!r} (declared by {self.owner!r}) has default "
                f"{short_repr.repr(self.default)}; expected true or false"
            )
        if not isinstance(self.owner, str) or not self.owner.strip():
            raise FlagError(f"flag {self.name!r} has no owner; expected the declaring plugin")
        if not isinstance(self.description, str):
            raise FlagError(f"flag {self.name!r} has a description that is not a string")
        for what in ("requires", "conflicts"):
            names = getattr(self, what)
            if not isinstance(names, tuple) or not all(
                isinstance(n, str) and FLAG_NAME_RE.fullmatch(n) and n != self.name for n in names
            ):
                raise FlagError(
                    f"flag {self.name!r} (declared by {self.owner!r}) has {what}="
                    f"{short_repr.repr(names)}; expected a tuple of other flags' names"
                )


def _declaration(spec: FlagSpec) -> str:
    return f"{spec.owner!r} (default {on_off(spec.default)}, {short_repr.repr(spec.description)})"


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


def on_off(value: bool) -> str:
    return "true" if value else "false"
