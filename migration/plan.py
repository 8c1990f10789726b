"""Migration plans: TOML in, a frozen, validated `Plan` out.

A plan names the target flags (the new mode), the ordered steps (each a cohort change and
a gate), the analyses its gates use and, optionally, a settings file to write when it
completes. Every problem is a `PlanError` naming the key, the value and what was
expected, in the same words as settings errors (``steps[2].gate.pause: "3 parsecs" is
not a duration; expected ...``); `parse_plan` collects every problem it finds before
refusing, so an operator fixes a plan in one pass.

::

    [migration]
    id = "actors-2026-12"                     # optional: default "<first target>-<time>"
    description = "actors and backpressure on"
    write_settings = "flags-node{node}.toml"  # optional: written on each node at the end

    [migration.target]                        # the new mode: one entry, several flags
    actors = true
    backpressure = true

    [analysis.canary]
    interval = "2s"        # one measurement window
    measurements = 3       # windows per gate
    failure_limit = 0      # failed windows tolerated
    checks = [
      { metric = "client_latency_p99", max_ratio = 2.0 },  # migrated / old cohort
      { metric = "commit_latency_p99", max = 250 },        # absolute, on the migrated cohort
      { metric = "ready_pause_max", max_baseline_ratio = 3.0 },  # vs before step 1
    ]

    [[steps]]
    cohort = { count = 1 }             # nodes = [2] | count = 1 | percent = 50 | role = ...
    gate = { analysis = "canary" }     # pause = "30s" | analysis = NAME | approval = true

    [[steps]]
    cohort = { role = "all" }          # followers first, the leader last
    gate = { approval = true }

The module is pure: parsing does no I/O (the caller reads the file).
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from framework.config import SettingsError, parse_duration
from framework.migration_journal import MAX_PLAN_BYTES, MAX_STEPS

__all__ = [
    "ROLES",
    "Analysis",
    "Check",
    "Cohort",
    "Gate",
    "Plan",
    "PlanError",
    "Step",
    "parse_plan",
]

ROLES: Final = ("followers", "leader", "all")
MAX_PAUSE_SECONDS: Final = 30 * 86400.0
MAX_MEASUREMENTS: Final = 1000
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", re.ASCII)
_DAYS_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*d\s*", re.ASCII)
_PAUSE_EXPECTED: Final = 'a number followed by ms, s, m, h or d, like "200ms", "30s" or "2d"'


class PlanError(SettingsError):
    """A plan is wrong; the message names the key, the value and what was expected.
    ``problems`` holds every problem found (the message joins them)."""

    def __init__(self, problems: list[SettingsError]) -> None:
        first = problems[0]
        super().__init__(first.key, first.problem, first.expected, value=first.value)
        self.problems = problems
        self.args = ("; ".join(str(p) for p in problems),)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class Cohort:
    """Who is on the new mode once the step is applied (cumulative, never fewer)."""

    nodes: tuple[int, ...] = ()
    count: int | None = None
    percent: float | None = None
    role: str | None = None

    def describe(self) -> str:
        if self.nodes:
            return f"nodes {', '.join(map(str, self.nodes))}"
        if self.count is not None:
            return f"{self.count} node{'s' if self.count != 1 else ''}"
        if self.percent is not None:
            return f"{self.percent:g}% of nodes"
        return {"followers": "every follower", "leader": "the leader", "all": "every node"}[
            self.role or "all"
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """What must happen before the next step: exactly one of the three, or nothing."""

    pause: float | None = None
    analysis: str | None = None
    approval: bool = False

    def describe(self) -> str:
        if self.pause is not None:
            return f"pause {self.pause:g}s"
        if self.analysis is not None:
            return f"analysis {self.analysis!r}"
        if self.approval:
            return "manual approval (raftmw migrate promote)"
        return "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    cohort: Cohort
    gate: Gate


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    metric: str
    max_ratio: float | None = None
    """Migrated cohort's value / old cohort's value must not exceed this."""
    max: float | None = None
    """The migrated cohort's value must not exceed this."""
    max_baseline_ratio: float | None = None
    """Migrated cohort's value / the baseline (all nodes, before step 1) must not exceed this."""
    min_reference: float = 1.0
    """Reference values below this count as this (a ratio over ~0 says nothing)."""

    def describe(self) -> str:
        limits = []
        if self.max_ratio is not None:
            limits.append(f"<= {self.max_ratio:g} x old cohort")
        if self.max_baseline_ratio is not None:
            limits.append(f"<= {self.max_baseline_ratio:g} x baseline")
        if self.max is not None:
            limits.append(f"<= {self.max:g}")
        return f"{self.metric} {' and '.join(limits)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Analysis:
    name: str
    interval: float
    measurements: int
    failure_limit: int
    checks: tuple[Check, ...]

    @property
    def needs_baseline(self) -> bool:
        return any(c.max_baseline_ratio is not None for c in self.checks)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    id: str
    description: str
    target: Mapping[str, bool]
    steps: tuple[Step, ...]
    analyses: Mapping[str, Analysis]
    write_settings: str | None
    text: str
    """The TOML it was parsed from (what the start record carries)."""

    @property
    def needs_baseline(self) -> bool:
        return any(
            s.gate.analysis is not None and self.analyses[s.gate.analysis].needs_baseline
            for s in self.steps
        )

    def describe(self) -> list[str]:
        target = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in self.target.items())
        lines = [f"migration {self.id!r}: {target}"]
        for n, step in enumerate(self.steps, start=1):
            lines.append(f"  step {n}: {step.cohort.describe()}; gate: {step.gate.describe()}")
            if step.gate.analysis is not None:
                a = self.analyses[step.gate.analysis]
                lines.append(
                    f"          {a.measurements} x {a.interval:g}s, failure limit "
                    f"{a.failure_limit}: " + "; ".join(c.describe() for c in a.checks)
                )
        if self.write_settings:
            lines.append(f"  then: write the final flags to {self.write_settings}")
        return lines


class _Problems:
    def __init__(self) -> None:
        self.found: list[SettingsError] = []

    def add(self, key: str, problem: str, expected: str, value: object = None) -> None:
        if value is None:
            self.found.append(SettingsError(key, problem, expected))
        else:
            self.found.append(SettingsError(key, problem, expected, value=value))


def _duration(value: object, key: str, problems: _Problems, *, upper: float) -> float | None:
    try:
        if isinstance(value, str) and _DAYS_RE.fullmatch(value):
            seconds = float(_DAYS_RE.fullmatch(value)[1]) * 86400  # type: ignore[index]
        else:
            seconds = parse_duration(value, key=key)
    except SettingsError as error:
        problems.found.append(SettingsError(key, error.problem, _PAUSE_EXPECTED, value=value))
        return None
    if not 0 < seconds <= upper:
        problems.add(key, "is out of range", f"a duration above 0 and at most {upper:g}s", value)
        return None
    return seconds


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _unknown_keys(
    table: Mapping[str, Any], allowed: Collection[str], where: str, problems: _Problems
) -> None:
    for key in table:
        if key not in allowed:
            problems.add(
                f"{where}.{key}" if where else key,
                "is not a plan key",
                f"one of {', '.join(sorted(allowed))}",
            )


def parse_plan(
    text: str,
    *,
    flags: Collection[str],
    metrics: Collection[str],
    now: Callable[[], float] = time.time,
) -> Plan:
    """Parse and validate a plan against the declared ``flags`` and known ``metrics``."""
    problems = _Problems()
    if len(text.encode()) > MAX_PLAN_BYTES:
        problems.add("plan", f"is {len(text.encode())} bytes", f"at most {MAX_PLAN_BYTES}")
        raise PlanError(problems.found)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problems.add("plan", f"is not TOML ({error})", "a TOML document")
        raise PlanError(problems.found) from None
    _unknown_keys(doc, ("migration", "analysis", "steps"), "", problems)
    head = doc.get("migration")
    if not isinstance(head, dict):
        problems.add("migration", "is missing", "a [migration] table with a [migration.target]")
        head = {}
    _unknown_keys(head, ("id", "description", "target", "write_settings"), "migration", problems)
    target = _target(head.get("target"), flags, problems)
    plan_id = head.get("id")
    if plan_id is None:
        first = next(iter(target), "migration")
        plan_id = f"{first}-{int(now())}"
    elif not isinstance(plan_id, str) or not _ID_RE.fullmatch(plan_id):
        problems.add("migration.id", "is not an id", "1-64 letters, digits or '_.:-'", plan_id)
    description = head.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        problems.add("migration.description", "is not text", "a string of at most 500 characters")
        description = ""
    write = head.get("write_settings")
    if write is not None and (not isinstance(write, str) or not write.strip() or len(write) > 500):
        problems.add(
            "migration.write_settings", "is not a file path", "a non-empty path string", write
        )
        write = None
    analyses = _analyses(doc.get("analysis", {}), metrics, problems)
    steps = _steps(doc.get("steps"), analyses, problems)
    if problems.found:
        raise PlanError(problems.found)
    return Plan(
        id=str(plan_id),
        description=description,
        target=target,
        steps=steps,
        analyses=analyses,
        write_settings=write,
        text=text,
    )


def _target(value: object, flags: Collection[str], problems: _Problems) -> dict[str, bool]:
    if not isinstance(value, dict) or not value:
        problems.add(
            "migration.target",
            "is missing or empty",
            "a table of flags and the value the migration moves them to, like actors = true",
        )
        return {}
    target: dict[str, bool] = {}
    for name, flag_value in value.items():
        key = f"migration.target.{name}"
        if name not in flags:
            import difflib

            close = difflib.get_close_matches(name, list(flags), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(
                key, f"is an unknown flag{hint}", f"a declared flag: {', '.join(sorted(flags))}"
            )
        elif not isinstance(flag_value, bool):
            problems.add(key, "is not true or false", "true or false", flag_value)
        else:
            target[name] = flag_value
    return target


def _analyses(value: object, metrics: Collection[str], problems: _Problems) -> dict[str, Analysis]:
    if not isinstance(value, dict):
        problems.add("analysis", "is not a table", "[analysis.NAME] tables")
        return {}
    analyses: dict[str, Analysis] = {}
    for name, table in value.items():
        where = f"analysis.{name}"
        if not isinstance(table, dict):
            problems.add(where, "is not a table", "a table with interval, measurements, checks")
            continue
        _unknown_keys(
            table, ("interval", "measurements", "failure_limit", "checks"), where, problems
        )
        interval = _duration(table.get("interval", "5s"), f"{where}.interval", problems, upper=3600)
        measurements = table.get("measurements", 3)
        if not isinstance(measurements, int) or not 1 <= measurements <= MAX_MEASUREMENTS:
            problems.add(
                f"{where}.measurements",
                "is out of range",
                f"an integer 1..{MAX_MEASUREMENTS}",
                measurements,
            )
            measurements = 1
        limit = table.get("failure_limit", 0)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit < measurements:
            problems.add(
                f"{where}.failure_limit",
                "is out of range",
                f"an integer from 0 to measurements - 1 ({measurements - 1})",
                limit,
            )
            limit = 0
        checks = _checks(table.get("checks"), where, metrics, problems)
        if interval is not None:
            analyses[name] = Analysis(
                name=name,
                interval=interval,
                measurements=measurements,
                failure_limit=limit,
                checks=checks,
            )
    return analyses


_CHECK_KEYS: Final = ("metric", "max_ratio", "max", "max_baseline_ratio", "min_reference")


def _checks(
    value: object, where: str, metrics: Collection[str], problems: _Problems
) -> tuple[Check, ...]:
    if not isinstance(value, list) or not value or len(value) > 64:
        problems.add(
            f"{where}.checks",
            "is missing or not a list",
            'a list of 1..64 checks like { metric = "client_latency_p99", max_ratio = 2.0 }',
        )
        return ()
    checks = []
    for n, table in enumerate(value):
        key = f"{where}.checks[{n}]"
        if not isinstance(table, dict):
            problems.add(key, "is not a table", "{ metric = NAME, max_ratio = ... }")
            continue
        _unknown_keys(table, _CHECK_KEYS, key, problems)
        metric = table.get("metric")
        if metric not in metrics:
            problems.add(
                f"{key}.metric",
                "is an unknown metric",
                f"one of {', '.join(sorted(metrics))}",
                metric,
            )
        limits = {k: table[k] for k in ("max_ratio", "max", "max_baseline_ratio") if k in table}
        if not limits:
            problems.add(key, "has no limit", "max_ratio, max or max_baseline_ratio")
        for name, limit in limits.items():
            if not _number(limit) or limit < 0:
                problems.add(f"{key}.{name}", "is not a limit", "a number >= 0", limit)
        reference = table.get("min_reference", 1.0)
        if not _number(reference) or reference <= 0:
            problems.add(f"{key}.min_reference", "is not a reference", "a number > 0", reference)
            reference = 1.0
        checks.append(
            Check(
                metric=str(metric),
                min_reference=float(reference),
                **{k: float(v) for k, v in limits.items() if _number(v)},
            )
        )
    return tuple(checks)


def _steps(
    value: object, analyses: Mapping[str, Analysis], problems: _Problems
) -> tuple[Step, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STEPS:
        problems.add("steps", "is missing or has too many steps", f"1..{MAX_STEPS} [[steps]]")
        return ()
    steps = []
    for n, table in enumerate(value):
        where = f"steps[{n}]"
        if not isinstance(table, dict):
            problems.add(where, "is not a table", "a [[steps]] table with cohort and gate")
            continue
        _unknown_keys(table, ("cohort", "gate"), where, problems)
        cohort = _cohort(table.get("cohort"), where, problems)
        gate = _gate(table.get("gate", {}), where, analyses, problems)
        steps.append(Step(cohort=cohort, gate=gate))
    return tuple(steps)


def _cohort(value: object, where: str, problems: _Problems) -> Cohort:
    key = f"{where}.cohort"
    expected = 'one of nodes = [2, 3], count = 1, percent = 50, role = "followers"'
    if not isinstance(value, dict) or len(value) != 1:
        problems.add(key, "is missing or names more than one selector", expected)
        return Cohort(role="all")
    ((kind, raw),) = value.items()
    if kind == "nodes":
        if (
            not isinstance(raw, list)
            or not raw
            or len(raw) > 1000
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in raw)
        ):
            problems.add(f"{key}.nodes", "is not a list of node ids", "node ids >= 1", raw)
            return Cohort(role="all")
        return Cohort(nodes=tuple(sorted(set(raw))))
    if kind == "count":
        if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 1000:
            problems.add(f"{key}.count", "is out of range", "an integer 1..1000", raw)
            return Cohort(role="all")
        return Cohort(count=raw)
    if kind == "percent":
        if not _number(raw) or not 0 < raw <= 100:
            problems.add(f"{key}.percent", "is out of range", "a number above 0, up to 100", raw)
            return Cohort(role="all")
        return Cohort(percent=float(raw))
    if kind == "role":
        if raw not in ROLES:
            problems.add(f"{key}.role", "is not a role", f"one of {', '.join(ROLES)}", raw)
            return Cohort(role="all")
        return Cohort(role=str(raw))
    problems.add(f"{key}.{kind}", "is not a cohort selector", expected)
    return Cohort(role="all")


def _gate(value: object, where: str, analyses: Mapping[str, Analysis], problems: _Problems) -> Gate:
    key = f"{where}.gate"
    expected = 'one of pause = "30s", analysis = "NAME", approval = true'
    if not isinstance(value, dict) or len(value) > 1:
        problems.add(key, "is not one gate", expected)
        return Gate()
    if not value:
        return Gate()
    ((kind, raw),) = value.items()
    if kind == "pause":
        seconds = _duration(raw, f"{key}.pause", problems, upper=MAX_PAUSE_SECONDS)
        return Gate(pause=seconds) if seconds is not None else Gate()
    if kind == "analysis":
        if raw not in analyses:
            problems.add(
                f"{key}.analysis",
                "names no [analysis] table",
                f"one of {', '.join(sorted(analyses)) or '(none defined)'}",
                raw,
            )
            return Gate()
        return Gate(analysis=str(raw))
    if kind == "approval":
        if raw is not True:
            problems.add(f"{key}.approval", "is not true", "approval = true", raw)
            return Gate()
        return Gate(approval=True)
    problems.add(f"{key}.{kind}", "is not a gate", expected)
    return Gate()
