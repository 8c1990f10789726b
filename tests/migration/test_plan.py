"""Plan parsing: a valid plan becomes frozen steps and analyses; every mistake is refused
with the key, the value and what was expected, all of them at once."""

from __future__ import annotations

import pytest

from migration.analysis import BUILTIN_METRICS
from migration.plan import Cohort, Gate, PlanError, parse_plan

FLAGS = ("actors", "backpressure", "chaos")

GOOD = """
[migration]
id = "actors-on"
write_settings = "flags-node{node}.toml"

[migration.target]
actors = true
backpressure = false

[analysis.canary]
interval = "500ms"
measurements = 3
failure_limit = 1
checks = [
  { metric = "client_latency_p99", max_ratio = 2.0 },
  { metric = "commit_latency_p99", max = 250 },
  { metric = "ready_pause_max", max_baseline_ratio = 3.0, min_reference = 5 },
]

[[steps]]
cohort = { count = 1 }
gate = { analysis = "canary" }

[[steps]]
cohort = { percent = 50 }
gate = { pause = "2d" }

[[steps]]
cohort = { role = "all" }
gate = { approval = true }
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_plan(text, flags=FLAGS, metrics=BUILTIN_METRICS, now=lambda: 1000.0)


def test_a_valid_plan_parses_into_steps_gates_and_analyses() -> None:
    plan = parse(GOOD)
    assert plan.id == "actors-on"
    assert dict(plan.target) == {"actors": True, "backpressure": False}
    assert [s.cohort for s in plan.steps] == [
        Cohort(count=1),
        Cohort(percent=50.0),
        Cohort(role="all"),
    ]
    assert [s.gate for s in plan.steps] == [
        Gate(analysis="canary"),
        Gate(pause=2 * 86400.0),
        Gate(approval=True),
    ]
    canary = plan.analyses["canary"]
    assert (canary.interval, canary.measurements, canary.failure_limit) == (0.5, 3, 1)
    assert canary.checks[2].min_reference == 5.0
    assert plan.needs_baseline and plan.write_settings == "flags-node{node}.toml"
    assert plan.text == GOOD
    assert plan.describe()[1].startswith("  step 1: 1 node; gate: analysis 'canary'")


def test_a_plan_without_an_id_gets_one_from_its_first_target_and_the_time() -> None:
    plan = parse(GOOD.replace('id = "actors-on"\n', ""))
    assert plan.id == "actors-1000"


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("actors = true", "actorz = true", ["migration.target.actorz", "unknown flag", "'actors'"]),
        ("actors = true", 'actors = "yes"', ["migration.target.actors", '"yes"', "true or false"]),
        (
            'metric = "commit_latency_p99"',
            'metric = "commit_latency_p999"',
            ["checks[1].metric", '"commit_latency_p999"', "unknown metric", "commit_latency_p99"],
        ),
        ('pause = "2d"', 'pause = "3 parsecs"', ["steps[1].gate.pause", '"3 parsecs"', "ms, s"]),
        ('pause = "2d"', "pause = 30", ["steps[1].gate.pause", "30", "not a duration"]),
        ('interval = "500ms"', 'interval = "0s"', ["analysis.canary.interval", "out of range"]),
        ("failure_limit = 1", "failure_limit = 3", ["failure_limit", "3", "0 to measurements - 1"]),
        ("count = 1", "count = 0", ["steps[0].cohort.count", "0", "1..1000"]),
        ('role = "all"', 'role = "everyone"', ["steps[2].cohort.role", '"everyone"', "followers"]),
        ('analysis = "canary"', 'analysis = "canery"', ["steps[0].gate.analysis", "canery"]),
        ("approval = true", "approval = false", ["steps[2].gate.approval", "false"]),
        ("max = 250", "max = -1", ["checks[1].max", "-1", ">= 0"]),
        ('id = "actors-on"', 'id = "no spaces"', ["migration.id", '"no spaces"']),
        (
            "[[steps]]\ncohort = { count = 1 }",
            '[[steps]]\ncohort = { count = 1, role = "all" }',
            ["steps[0].cohort", "more than one"],
        ),
        (
            'write_settings = "flags-node{node}.toml"',
            "write_settings = 3",
            ["migration.write_settings", "3"],
        ),
        (
            "[analysis.canary]",
            "[analysis.canary]\nwindow = 3",
            ["analysis.canary.window", "plan key"],
        ),
    ],
)
def test_plan_mistakes_are_refused_naming_key_value_and_expectation(
    old: str, new: str, named: list[str]
) -> None:
    assert old in GOOD
    with pytest.raises(PlanError) as caught:
        parse(GOOD.replace(old, new, 1))
    for text in named:
        assert text in str(caught.value), (text, str(caught.value))


def test_every_problem_is_reported_at_once() -> None:
    bad = GOOD.replace("actors = true", "actorz = true").replace('"2d"', '"soon"')
    with pytest.raises(PlanError) as caught:
        parse(bad)
    assert len(caught.value.problems) == 2
    assert "actorz" in str(caught.value) and "soon" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("this is = not [toml", "not TOML"),
        ("[[steps]]\ncohort = { count = 1 }", "[migration]"),
        ("[migration]\n[migration.target]\nactors = true\n", "steps"),
        ("[migration]\n[[steps]]\ncohort = { count = 1 }", "migration.target"),
        ("x" * 70_000, "bytes"),
    ],
)
def test_missing_parts_and_oversized_plans_are_refused(text: str, named: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse(text)
    assert named in str(caught.value)
