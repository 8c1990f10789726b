"""The command line's ``--flag NAME=VALUE``: the forms it accepts and the error naming
the text and the forms when it is none of them."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import fields
from typing import Final

import msgspec

from framework.config import FlagValue, Rollout
from framework.flag_changes import RolloutWire
from framework.flag_evaluation import included_and_excluded
from framework.flag_registry import FLAG_NAME_RE, FlagError

__all__ = ["parse_flag_assignment"]


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
    if not FLAG_NAME_RE.fullmatch(name):
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
    both = included_and_excluded(rollout)
    if both:
        raise fail(f"node ids {both} are both included and excluded")
    return rollout
