"""Flags: declarations, precedence of sources, reasons, the rollout hash, cluster changes.

Each table row is one rule of framework/flags.py's theory of operation.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.config import FlagValue, Rollout, load_settings
from framework.flags import (
    HISTORY_LIMIT,
    ClusterFlagState,
    Evaluation,
    FlagChange,
    FlagError,
    FlagLayer,
    FlagRegistry,
    FlagSpec,
    Reason,
    RolloutWire,
    Source,
    UnknownFlag,
    bucket,
    decode_flag_change,
    encode_flag_change,
    evaluate,
    evaluate_all,
    layers_from_settings,
    parse_flag_assignment,
    validate_change,
    validate_layers,
)

PLAN_FLAGS = ("actors", "backpressure", "circuit_breaker", "adaptive_timeout", "lock_free")


def spec(name: str, default: bool = False, owner: str | None = None) -> FlagSpec:
    return FlagSpec(name=name, default=default, description=f"the {name} flag", owner=owner or name)


@pytest.fixture
def registry() -> FlagRegistry:
    return FlagRegistry(spec(name) for name in PLAN_FLAGS)


def layer(source: Source, **values: FlagValue) -> FlagLayer:
    return FlagLayer(source=source, values=values)


# --------------------------------------------------------------------------- declarations


def test_registry_lists_declared_flags_sorted(registry: FlagRegistry) -> None:
    assert registry.names() == tuple(sorted(PLAN_FLAGS))
    assert [s.name for s in registry.specs()] == sorted(PLAN_FLAGS)
    assert registry.get("actors") == spec("actors")
    assert "actors" in registry and "nope" not in registry
    assert len(registry) == len(PLAN_FLAGS)


def test_identical_redeclaration_is_a_no_op(registry: FlagRegistry) -> None:
    registry.declare(spec("actors"))
    assert registry.names() == tuple(sorted(PLAN_FLAGS))


@pytest.mark.parametrize(
    "other",
    [
        spec("actors", default=True),
        spec("actors", owner="someone_else"),
        dataclasses.replace(spec("actors"), description="another meaning"),
    ],
)
def test_a_different_redeclaration_names_both_owners(
    registry: FlagRegistry, other: FlagSpec
) -> None:
    with pytest.raises(FlagError) as caught:
        registry.declare(other)
    message = str(caught.value)
    assert "'actors' is declared twice" in message
    assert "by 'actors' (default false" in message
    assert f"by {other.owner!r} (default {'true' if other.default else 'false'}" in message
    assert registry.get("actors") == spec("actors")  # the first declaration stays


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"name": "Actors"}, "'Actors' (declared by 'p') is not lower_snake_case"),
        ({"name": "two words"}, "is not lower_snake_case"),
        ({"name": "trailing_"}, "is not lower_snake_case"),
        ({"name": "_private"}, "is not lower_snake_case"),
        ({"name": "dash-ed"}, "is not lower_snake_case"),
        ({"name": ""}, "is not lower_snake_case"),
        ({"default": 1}, "has default 1; expected true or false"),
        ({"owner": " "}, "has no owner"),
    ],
)
def test_flag_spec_validates(fields: dict[str, object], fragment: str) -> None:
    kwargs: dict[str, object] = {
        "name": "ok_name",
        "default": False,
        "description": "",
        "owner": "p",
    }
    kwargs.update(fields)
    with pytest.raises(FlagError) as caught:
        FlagSpec(**kwargs)  # type: ignore[arg-type]  # deliberately wrong types
    assert fragment in str(caught.value)


def test_unknown_flag_suggests_the_closest_name(registry: FlagRegistry) -> None:
    with pytest.raises(UnknownFlag) as caught:
        registry.get("actor")
    assert str(caught.value) == (
        "unknown flag 'actor'; did you mean 'actors'? (declared flags: actors, "
        "adaptive_timeout, backpressure, circuit_breaker, lock_free)"
    )
    assert caught.value.suggestion == "actors"
    assert isinstance(caught.value, FlagError)


def test_unknown_flag_without_a_close_name(registry: FlagRegistry) -> None:
    with pytest.raises(UnknownFlag) as caught:
        registry.get("zzzz")
    assert caught.value.suggestion is None
    assert str(caught.value).startswith("unknown flag 'zzzz' (declared flags: actors, ")
    with pytest.raises(UnknownFlag, match=r"^unknown flag 'x' \(no flags are declared\)$"):
        FlagRegistry().get("x")


# --------------------------------------------------------------------------- the hash

# Computed once and pinned: if one of these changes, every running rollout moves nodes.
GOLDEN_BUCKETS = [
    ("actors", 0, 58.48988501804725),
    ("actors", 1, 3.965514239607971),
    ("actors", 2, 81.74809764959622),
    ("actors", 3, 8.465136601807924),
    ("backpressure", 0, 97.45337275223814),
    ("backpressure", 1, 70.09305682179334),
    ("backpressure", 2, 36.34735042691212),
    ("backpressure", 3, 28.901185938209483),
    ("circuit_breaker", 0, 57.008871259597306),
    ("circuit_breaker", 1, 71.03391018295916),
    ("circuit_breaker", 2, 71.61780880099764),
    ("circuit_breaker", 3, 25.171663595194232),
    ("adaptive_timeout", 0, 44.99771037774031),
    ("adaptive_timeout", 1, 4.908246130310101),
    ("adaptive_timeout", 2, 40.94933735253772),
    ("adaptive_timeout", 3, 34.74812935719211),
    ("lock_free", 0, 62.50483084596841),
    ("lock_free", 1, 27.61755583691457),
    ("lock_free", 2, 44.30062971153915),
    ("lock_free", 3, 85.97456285308954),
    ("actors", 7, 44.94569856015103),
    ("backpressure", 42, 26.388837923427978),
    ("x", 123456789, 94.56453303487353),
    ("ünïcode", 5, 55.675875775137996),
]


@pytest.mark.parametrize(("flag", "node", "expected"), GOLDEN_BUCKETS)
def test_bucket_golden_values(flag: str, node: int, expected: float) -> None:
    assert bucket(flag, node) == expected


def test_bucket_is_salted_by_the_flag() -> None:
    # Different flags pick different canaries (node 1 is low for actors, high for backpressure).
    assert [bucket(f, 1) < 10 for f in ("actors", "backpressure")] == [True, False]


def test_buckets_spread_evenly() -> None:
    # Deterministic (the hash is fixed): about a quarter of 10000 nodes fall under 25.
    share = sum(bucket("actors", node) < 25 for node in range(10_000)) / 10_000
    assert 0.23 < share < 0.27


flag_names = st.from_regex(r"[a-z][a-z0-9]{0,10}(_[a-z0-9]{1,5}){0,2}", fullmatch=True)
node_ids = st.integers(min_value=0, max_value=2**63)
percents = st.floats(min_value=0, max_value=100)


@given(flag_names, node_ids)
def test_bucket_is_in_range(flag: str, node: int) -> None:
    assert 0 <= bucket(flag, node) < 100


@given(flag_names, st.lists(node_ids, max_size=30, unique=True), percents, percents)
def test_raising_the_percent_only_adds_nodes(
    flag: str, nodes: list[int], low: float, high: float
) -> None:
    low, high = sorted((low, high))
    registry = FlagRegistry([spec(flag)])

    def enabled(percent: float) -> set[int]:
        rollout = layer(Source.CLUSTER, **{flag: Rollout(percent=percent)})
        return {n for n in nodes if evaluate(registry, flag, n, [rollout]).value}

    assert enabled(low) <= enabled(high)


# --------------------------------------------------------------------------- precedence

SOURCES_ABOVE_DEFAULT = [s for s in Source if s is not Source.PLUGIN_DEFAULT]


@pytest.mark.parametrize("winner", list(Source), ids=lambda s: s.name)
def test_each_source_beats_every_lower_one(registry: FlagRegistry, winner: Source) -> None:
    # The winner says true; every lower source says false; no higher source says anything.
    layers = [layer(s, actors=s is winner) for s in Source if s <= winner]
    for order in (layers, layers[::-1]):  # the order they are given in does not matter
        result = evaluate(registry, "actors", 1, order)
        assert (result.value, result.source) == (True, winner)


@pytest.mark.parametrize("loser", SOURCES_ABOVE_DEFAULT, ids=lambda s: s.name)
def test_a_lower_source_decides_when_higher_ones_are_silent(
    registry: FlagRegistry, loser: Source
) -> None:
    layers = [layer(loser, actors=True)] + [layer(s, backpressure=True) for s in Source]
    assert evaluate(registry, "actors", 1, layers).source is loser


def test_of_two_layers_of_one_source_the_later_wins(registry: FlagRegistry) -> None:
    first, second = layer(Source.OVERRIDE, actors=False), layer(Source.OVERRIDE, actors=True)
    assert evaluate(registry, "actors", 1, [first, second]).value is True
    assert evaluate(registry, "actors", 1, [second, first]).value is False


def test_a_higher_rollout_replaces_a_lower_one_whole(registry: FlagRegistry) -> None:
    lower = layer(Source.SETTINGS_DEFAULT, actors=Rollout(include=(5,), percent=0))
    higher = layer(Source.CLUSTER, actors=Rollout(percent=0))
    assert evaluate(registry, "actors", 5, [lower, higher]).value is False


def test_precedence_is_the_documented_order() -> None:
    assert list(Source) == sorted(Source)
    assert [s.name for s in Source] == [
        "PLUGIN_DEFAULT",
        "SETTINGS_DEFAULT",
        "PROFILE",
        "ENVIRONMENT",
        "COMMAND_LINE",
        "CLUSTER",
        "OVERRIDE",
    ]


# --------------------------------------------------------------------------- reasons

# (layer source, value, node, expected value, reason, detail). Node buckets for "actors":
# node 1 -> 3.97, node 3 -> 8.47, node 0 -> 58.49.
REASONS = [
    (None, None, 1, True, Reason.DEFAULT, "default of plugin actors"),
    (Source.PLUGIN_DEFAULT, False, 1, False, Reason.DEFAULT, "false"),
    (Source.SETTINGS_DEFAULT, True, 1, True, Reason.STATIC, "true"),
    (Source.PROFILE, False, 1, False, Reason.STATIC, "false"),
    (Source.ENVIRONMENT, True, 1, True, Reason.STATIC, "true"),
    (Source.COMMAND_LINE, True, 1, True, Reason.STATIC, "true"),
    (Source.CLUSTER, False, 1, False, Reason.STATIC, "false"),
    (Source.OVERRIDE, False, 1, False, Reason.OVERRIDE, "false"),
    (
        Source.CLUSTER,
        Rollout(enabled=False, include=(1,)),
        1,
        False,
        Reason.STATIC,
        "rollout disabled",
    ),
    (Source.CLUSTER, Rollout(exclude=(1,)), 1, False, Reason.TARGETING_MATCH, "node 1 excluded"),
    (
        Source.CLUSTER,
        Rollout(percent=0, include=(1,)),
        1,
        True,
        Reason.TARGETING_MATCH,
        "node 1 included",
    ),
    (
        Source.CLUSTER,
        Rollout(include=(1,), exclude=(1,)),
        1,
        False,
        Reason.TARGETING_MATCH,
        "node 1 excluded",
    ),
    (
        Source.CLUSTER,
        Rollout(percent=25),
        3,
        True,
        Reason.SPLIT,
        "node 3 in 25% rollout (bucket 8.46)",
    ),
    (
        Source.CLUSTER,
        Rollout(percent=25),
        0,
        False,
        Reason.SPLIT,
        "node 0 not in 25% rollout (bucket 58.48)",
    ),
    (Source.CLUSTER, Rollout(percent=8.46), 3, False, Reason.SPLIT, "node 3 not in 8.46% rollout"),
    (Source.CLUSTER, Rollout(percent=8.47), 3, True, Reason.SPLIT, "node 3 in 8.47% rollout"),
    (Source.CLUSTER, Rollout(percent=0), 1, False, Reason.SPLIT, "node 1 not in 0% rollout"),
    (Source.CLUSTER, Rollout(percent=100), 0, True, Reason.SPLIT, "node 0 in 100% rollout"),
    (Source.OVERRIDE, Rollout(percent=100), 0, True, Reason.SPLIT, "node 0 in 100% rollout"),
]


@pytest.mark.parametrize(("source", "value", "node", "expected", "reason", "detail"), REASONS)
def test_reasons(
    source: Source | None,
    value: FlagValue | None,
    node: int,
    expected: bool,
    reason: Reason,
    detail: str,
) -> None:
    registry = FlagRegistry([spec("actors", default=True)])
    layers = [] if source is None or value is None else [layer(source, actors=value)]
    result = evaluate(registry, "actors", node, layers)
    assert (result.value, result.reason) == (expected, reason)
    assert result.detail.startswith(detail)
    assert result.source is (Source.PLUGIN_DEFAULT if source is None else source)
    assert result.log_index is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1, "1 is not a flag value"),
        ("yes", "'yes' is not a flag value"),
        (None, "None is not a flag value"),
        (Rollout(percent=150), "rollout percent 150 is not a percentage from 0 to 100"),
        (Rollout(percent=-1), "rollout percent -1 is not a percentage"),
        (Rollout(percent=math.nan), "rollout percent nan is not a percentage"),
        (Rollout(percent=True), "rollout percent True is not a percentage"),
        (Rollout(enabled=1), "rollout enabled 1 is not true or false"),  # type: ignore[arg-type]
        (Rollout(include=("1",)), "rollout include ('1',) is not a list of node ids"),  # type: ignore[arg-type]
        (Rollout(exclude=(-1,)), "rollout exclude (-1,) is not a list of node ids"),
    ],
)
def test_a_bad_value_gives_the_default_with_reason_error(value: object, problem: str) -> None:
    registry = FlagRegistry([spec("actors", default=True, owner="actors_plugin")])
    bad = FlagLayer(source=Source.ENVIRONMENT, values={"actors": value})  # type: ignore[dict-item]
    result = evaluate(registry, "actors", 1, [layer(Source.PROFILE, actors=False), bad])
    assert (result.value, result.reason, result.source) == (True, Reason.ERROR, Source.ENVIRONMENT)
    assert result.detail.startswith(problem)
    assert result.detail.endswith(
        "; set by the ENVIRONMENT layer; using the default of plugin actors_plugin (true)"
    )


def test_detail_names_the_origin_and_cluster_values_carry_their_log_index(
    registry: FlagRegistry,
) -> None:
    cluster = FlagLayer(
        source=Source.CLUSTER,
        values={"actors": Rollout(percent=25)},
        origins={"actors": "cluster log index 42"},
        log_indexes={"actors": 42},
    )
    assert evaluate(registry, "actors", 3, [cluster]) == Evaluation(
        flag="actors",
        value=True,
        reason=Reason.SPLIT,
        source=Source.CLUSTER,
        detail="node 3 in 25% rollout (bucket 8.46); set by cluster log index 42",
        log_index=42,
    )


def test_evaluating_an_undeclared_name_raises(registry: FlagRegistry) -> None:
    with pytest.raises(UnknownFlag, match="did you mean 'lock_free'"):
        evaluate(registry, "lockfree", 1, [])


def test_evaluate_all_covers_every_declared_flag_and_ignores_undeclared_ones(
    registry: FlagRegistry,
) -> None:
    layers = [layer(Source.CLUSTER, actors=True, from_a_missing_plugin=True)]
    results = evaluate_all(registry, 1, layers)
    assert list(results) == sorted(PLAN_FLAGS)
    assert results["actors"].reason is Reason.STATIC
    assert {r.reason for name, r in results.items() if name != "actors"} == {Reason.DEFAULT}
    assert results == {name: evaluate(registry, name, 1, layers) for name in PLAN_FLAGS}


def test_layers_and_evaluations_are_frozen() -> None:
    values = {"actors": True}
    made = FlagLayer(source=Source.CLUSTER, values=values)
    values["actors"] = False
    assert made.values == {"actors": True}  # copied
    with pytest.raises(TypeError):
        made.values["actors"] = False  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.source = Source.OVERRIDE  # type: ignore[misc]


# --------------------------------------------------------------------------- validate_layers


def test_validate_layers_reports_each_problem(registry: FlagRegistry) -> None:
    layers = [
        FlagLayer(
            source=Source.ENVIRONMENT,
            values={"actor": True},
            origins={"actor": "environment RAFTMW_FLAGS__ACTOR"},
        ),
        layer(Source.COMMAND_LINE, backpressure=Rollout(include=(1, 2), exclude=(2, 3))),
        layer(Source.OVERRIDE, lock_free=Rollout(percent=101)),
    ]
    assert validate_layers(registry, layers) == [
        "undeclared flag 'actor' (set by environment RAFTMW_FLAGS__ACTOR); did you mean "
        "'actors'? (declared flags: actors, adaptive_timeout, backpressure, circuit_breaker, "
        "lock_free)",
        "flag 'backpressure' (set by the COMMAND_LINE layer): node ids [2] are both included "
        "and excluded; expected each node id in at most one of include and exclude",
        "flag 'lock_free' (set by the OVERRIDE layer): rollout percent 101 is not a percentage "
        "from 0 to 100",
    ]


def test_validate_layers_accepts_good_layers(registry: FlagRegistry) -> None:
    layers = [layer(s, actors=Rollout(percent=10, include=(1,), exclude=(2,))) for s in Source]
    assert validate_layers(registry, layers) == []


# --------------------------------------------------------------------------- settings


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # so no ./settings.toml of the machine is read
    return work


def by_source(layers: list[FlagLayer]) -> dict[Source, dict[str, FlagValue]]:
    return {made.source: dict(made.values) for made in layers}


def test_layers_from_settings_assign_each_source(cwd: Path) -> None:
    (cwd / "settings.toml").write_text(
        "[default.flags]\nlocal_default = true\n[high_throughput.flags]\nlocal_profile = true\n"
    )
    extra = cwd / "extra.toml"
    extra.write_text("[flags]\nfrom_file = true\nmixed = { percent = 10, include = [1] }\n")
    settings = load_settings(
        profile="high_throughput",
        files=[extra],
        env={"RAFTMW_FLAGS__FROM_ENV": "true", "RAFTMW_FLAGS__MIXED__PERCENT": "30"},
        overrides={"flags.from_cli": {"percent": 25}},
    )
    layers = layers_from_settings(settings)
    assert [made.source for made in layers] == sorted(made.source for made in layers)
    assert by_source(layers) == {
        Source.SETTINGS_DEFAULT: {"local_default": True, "from_file": True},
        Source.PROFILE: {"local_profile": True, **PLUGIN_PROFILE_FLAGS, "lock_free": True},
        Source.ENVIRONMENT: {"from_env": True, "mixed": Rollout(percent=30, include=(1,))},
        Source.COMMAND_LINE: {"from_cli": Rollout(percent=25)},
    }
    origins = {
        name: o
        for made in layers
        for name, o in made.origins.items()
        if name not in PLUGIN_PROFILE_FLAGS and name != "lock_free"
    }
    assert origins == {
        "local_default": f"{cwd / 'settings.toml'} [default]",
        "local_profile": f"{cwd / 'settings.toml'} [high_throughput]",
        "from_file": str(extra),
        "mixed": f"{extra}, environment RAFTMW_FLAGS__MIXED__PERCENT",
        "from_env": "environment RAFTMW_FLAGS__FROM_ENV",
        "from_cli": "--flag",
    }


PLUGIN_PROFILE_FLAGS = {
    "actors": True,
    "backpressure": True,
    "circuit_breaker": True,
    "adaptive_timeout": True,
}
"""What the shipped profiles switch on besides lock_free (settings.toml says why)."""


@pytest.mark.parametrize("profile", ["high_throughput", "low_latency"])
def test_a_shipped_profile_runs_the_plugins_it_tunes(cwd: Path, profile: str) -> None:
    from framework.plugins import PluginHost

    registry = PluginHost().declare_flags()
    layers = layers_from_settings(load_settings(profile=profile, env={}))
    assert validate_layers(registry, layers) == []
    on = {n for n, ev in evaluate_all(registry, 1, layers).items() if ev.value}
    assert on == {*PLUGIN_PROFILE_FLAGS, "lock_free"}
    lock_free = evaluate(registry, "lock_free", 1, layers)
    assert (lock_free.source, lock_free.detail) == (
        Source.PROFILE,
        f"true; set by performance.enable_lock_free (profile {profile})",
    )


def test_the_default_profile_leaves_every_plugin_flag_at_its_default(cwd: Path) -> None:
    assert layers_from_settings(load_settings(env={})) == []


def test_enable_lock_free_sets_the_lock_free_flag_at_its_layer(
    cwd: Path, registry: FlagRegistry
) -> None:
    plan = cwd / "plan.toml"
    plan.write_text("[performance]\nenable_lock_free = true\n")
    on = load_settings(files=[plan], env={})
    assert evaluate(registry, "lock_free", 1, layers_from_settings(on)).value is True
    # A flag set at a higher layer, or at the same one, still decides.
    off = load_settings(files=[plan], env={}, overrides={"flags.lock_free": False})
    assert evaluate(registry, "lock_free", 1, layers_from_settings(off)).value is False
    plan.write_text("[performance]\nenable_lock_free = true\n[flags]\nlock_free = false\n")
    same = load_settings(files=[plan], env={})
    assert evaluate(registry, "lock_free", 1, layers_from_settings(same)).value is False
    # And false in a profile that turns it on turns it off.
    env = {"RAFTMW_PERFORMANCE__ENABLE_LOCK_FREE": "false"}
    fast = load_settings(profile="high_throughput", env=env)
    result = evaluate(registry, "lock_free", 1, layers_from_settings(fast))
    assert (result.value, result.source) == (False, Source.ENVIRONMENT)


@pytest.mark.parametrize(
    ("description", "source"),
    [
        ("default", Source.SETTINGS_DEFAULT),
        ("profile low_latency", Source.PROFILE),
        ("/etc/raftmw/settings.toml [default]", Source.SETTINGS_DEFAULT),
        ("/etc/raftmw/settings.toml [global]", Source.SETTINGS_DEFAULT),
        ("/etc/raftmw/settings.toml [low_latency]", Source.PROFILE),
        ("/tmp/cluster.toml", Source.SETTINGS_DEFAULT),
        ("RAFTMW_FLAGS__ACTORS", Source.ENVIRONMENT),
        ("override", Source.COMMAND_LINE),
    ],
)
def test_settings_provenance_maps_to_a_source(cwd: Path, description: str, source: Source) -> None:
    settings = load_settings(env={}, overrides={"flags.actors": True})
    relabelled = dataclasses.replace(settings, sources={"flags.actors": description})
    assert by_source(layers_from_settings(relabelled)) == {source: {"actors": True}}


def test_settings_flags_without_provenance_count_as_settings_defaults(cwd: Path) -> None:
    settings = load_settings(env={}, overrides={"flags.actors": False})
    bare = dataclasses.replace(settings, sources={})
    [only] = layers_from_settings(bare)
    assert (only.source, dict(only.values), dict(only.origins)) == (
        Source.SETTINGS_DEFAULT,
        {"actors": False},
        {"actors": "settings"},
    )


def test_settings_with_no_flags_give_no_layers(cwd: Path) -> None:
    assert layers_from_settings(load_settings(env={})) == []


def test_a_command_line_flag_beats_the_environment_through_settings(
    cwd: Path, registry: FlagRegistry
) -> None:
    name, value = parse_flag_assignment("actors=off")
    settings = load_settings(
        env={"RAFTMW_FLAGS__ACTORS": "true"}, overrides={f"flags.{name}": value}
    )
    result = evaluate(registry, "actors", 1, layers_from_settings(settings))
    assert (result.value, result.source, result.detail) == (
        False,
        Source.COMMAND_LINE,
        "false; set by --flag",
    )


# --------------------------------------------------------------------------- flag changes

rollouts = st.builds(
    Rollout,
    enabled=st.booleans(),
    percent=percents,
    include=st.lists(node_ids, max_size=3).map(tuple),
    exclude=st.lists(node_ids, max_size=3).map(tuple),
)
flag_values: st.SearchStrategy[FlagValue] = st.one_of(st.booleans(), rollouts)
wire_values = flag_values.map(lambda v: v if isinstance(v, bool) else RolloutWire.from_rollout(v))
changes = st.builds(
    FlagChange,
    set=st.dictionaries(flag_names, wire_values, max_size=4),
    unset=st.lists(flag_names, max_size=3),
    reason=st.text(max_size=20),
)


@given(changes)
def test_flag_change_round_trips(change: FlagChange) -> None:
    assert decode_flag_change(encode_flag_change(change)) == change


@given(rollouts)
def test_rollout_wire_round_trips(rollout: Rollout) -> None:
    assert RolloutWire.from_rollout(rollout).to_rollout() == rollout


def test_flag_change_encoding_is_deterministic() -> None:
    a = FlagChange(set={"b": True, "a": False}, unset=["c"])
    b = FlagChange(set={"a": False, "b": True}, unset=["c"])
    assert encode_flag_change(a) == encode_flag_change(b)


def test_flag_change_decodes_ignoring_fields_from_newer_nodes() -> None:
    newer = msgspec.msgpack.encode({"set": {"actors": True}, "unset": [], "added_later": 1})
    assert decode_flag_change(newer) == FlagChange(set={"actors": True})


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "flag change entry (0 bytes) is not valid: Input data was truncated"),
        (b"\xc1", "is not valid"),
        (msgspec.msgpack.encode([1, 2]), "Expected `object`, got `array`"),
        (msgspec.msgpack.encode({"set": {"a": 1}}), "at `$.set[...]`"),
        (msgspec.msgpack.encode({"set": {"a": {"percent": 101}}}), "<= 100.0 - at `$.set[...]"),
        (msgspec.msgpack.encode({"set": {"a": {"include": [-1]}}}), ">= 0 - at `$.set[...]"),
        (msgspec.msgpack.encode({"unset": "actors"}), "at `$.unset`"),
        ("text", "flag change entry is str, not bytes"),
    ],
)
def test_a_garbled_flag_change_is_a_flag_error(data: bytes, fragment: str) -> None:
    with pytest.raises(FlagError) as caught:
        decode_flag_change(data)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        (FlagChange(set={"actors": True}, unset=["backpressure"], reason="ok"), []),
        (FlagChange(set={"actors": RolloutWire(percent=25, include=(1,))}), []),
        (FlagChange(), ["the change sets and unsets nothing"]),
        (
            FlagChange(set={"actor": True}),
            [
                "cannot set 'actor'; did you mean 'actors'? (declared flags: actors, "
                "adaptive_timeout, backpressure, circuit_breaker, lock_free)"
            ],
        ),
        (
            FlagChange(unset=["circuitbreaker"]),
            [
                "cannot unset 'circuitbreaker'; did you mean 'circuit_breaker'? (declared flags: "
                "actors, adaptive_timeout, backpressure, circuit_breaker, lock_free)"
            ],
        ),
        (
            FlagChange(set={"actors": True}, unset=["actors"]),
            ["flag 'actors' is both set and unset; expected one or the other"],
        ),
        (
            FlagChange(set={"actors": RolloutWire(include=(1,), exclude=(1,))}),
            [
                "flag 'actors': node ids [1] are both included and excluded; expected each node "
                "id in at most one of include and exclude"
            ],
        ),
        (
            FlagChange(set={"actors": RolloutWire(percent=-5)}),  # made by hand, unchecked
            ["flag 'actors': rollout percent -5.0 is not a percentage from 0 to 100"],
        ),
    ],
)
def test_validate_change(registry: FlagRegistry, change: FlagChange, problems: list[str]) -> None:
    assert validate_change(registry, change) == problems


def test_a_flag_left_by_a_removed_plugin_can_be_unset(registry: FlagRegistry) -> None:
    state = ClusterFlagState()
    state.apply(FlagChange(set={"old_plugin_flag": True}), 1)
    change = FlagChange(unset=["old_plugin_flag"])
    assert validate_change(registry, change, state=state) == []
    assert validate_change(registry, change) != []


# --------------------------------------------------------------------------- cluster state


def test_cluster_state_applies_changes_at_their_log_index(registry: FlagRegistry) -> None:
    state = ClusterFlagState()
    assert (state.applied_index, state.values(), state.history()) == (0, {}, [])
    first = FlagChange(set={"actors": True, "backpressure": RolloutWire(percent=25)}, reason="go")
    second = FlagChange(set={"lock_free": True}, unset=["actors"], reason="roll back actors")
    state.apply(first, 3)
    state.apply(second, 7)
    assert state.applied_index == 7
    assert state.values() == {"backpressure": Rollout(percent=25), "lock_free": True}
    assert state.history() == [(3, first), (7, second)]
    made = state.layer()
    assert made.source is Source.CLUSTER
    assert dict(made.log_indexes) == {"backpressure": 3, "lock_free": 7}
    results = evaluate_all(registry, 1, [made])
    assert (results["lock_free"].log_index, results["backpressure"].log_index) == (7, 3)
    assert results["actors"].reason is Reason.DEFAULT  # unset: back to the plugin default
    assert results["backpressure"].detail.endswith("; set by cluster log index 3")


def test_a_multi_flag_change_is_one_entry() -> None:
    state = ClusterFlagState()
    state.apply(FlagChange(set={name: True for name in PLAN_FLAGS}), 1)
    assert dict(state.layer().log_indexes) == {name: 1 for name in PLAN_FLAGS}
    assert len(state.history()) == 1


def test_unset_then_set_within_one_change() -> None:
    state = ClusterFlagState()
    state.apply(FlagChange(set={"actors": True}, unset=["actors"]), 1)
    assert state.values() == {"actors": True}


@pytest.mark.parametrize("index", [0, 5, 4, -1])
def test_applying_out_of_log_order_raises_and_changes_nothing(index: int) -> None:
    state = ClusterFlagState()
    state.apply(FlagChange(set={"actors": True}), 5)
    before = state.to_bytes()
    with pytest.raises(FlagError, match=f"log index {index} applied after log index 5"):
        state.apply(FlagChange(set={"actors": False}), index)
    assert state.to_bytes() == before


def test_nodes_with_different_plugins_reach_the_same_state() -> None:
    # Node A knows "actors"; node B also has a plugin that declares "extra". Applying the
    # same entries must give byte-identical states; only their evaluations differ.
    entries = [
        FlagChange(set={"actors": True, "extra": RolloutWire(percent=50)}),
        FlagChange(set={"unheard_of": False}, unset=["actors"]),
        FlagChange(set={"extra": RolloutWire(include=[2], exclude=[3])}),  # type: ignore[arg-type]
    ]
    a, b = ClusterFlagState(), ClusterFlagState()
    for index, change in enumerate(entries, start=1):
        a.apply(decode_flag_change(encode_flag_change(change)), index)
        b.apply(change, index)
    assert a.to_bytes() == b.to_bytes() and a == b
    node_a = FlagRegistry([spec("actors")])
    node_b = FlagRegistry([spec("actors"), spec("extra")])
    assert list(evaluate_all(node_a, 1, [a.layer()])) == ["actors"]
    assert list(evaluate_all(node_b, 1, [b.layer()])) == ["actors", "extra"]


def test_history_keeps_the_last_thousand_changes() -> None:
    state = ClusterFlagState()
    for index in range(1, HISTORY_LIMIT + 11):
        state.apply(FlagChange(set={"actors": index % 2 == 0}), index)
    history = state.history()
    assert len(history) == HISTORY_LIMIT == 1000
    assert (history[0][0], history[-1][0]) == (11, HISTORY_LIMIT + 10)
    again = ClusterFlagState.from_bytes(state.to_bytes())
    assert again == state
    again.apply(FlagChange(), HISTORY_LIMIT + 11)
    assert len(again.history()) == HISTORY_LIMIT


@given(st.lists(changes, max_size=8), st.integers(min_value=1, max_value=5))
def test_snapshot_round_trips(entries: list[FlagChange], step: int) -> None:
    state = ClusterFlagState()
    for position, change in enumerate(entries, start=1):
        state.apply(change, position * step)
    again = ClusterFlagState.from_bytes(state.to_bytes())
    assert again == state
    assert again.to_bytes() == state.to_bytes()
    assert again.values() == state.values()
    assert dict(again.layer().log_indexes) == dict(state.layer().log_indexes)


def snapshot(**fields: object) -> bytes:
    good: dict[str, object] = {
        "version": 1,
        "applied_index": 4,
        "flags": {"actors": {"value": True, "log_index": 4}},
        "history": [[4, {"set": {"actors": True}, "unset": [], "reason": ""}]],
    }
    good.update(fields)
    return msgspec.msgpack.encode(good)


def test_the_snapshot_helper_builds_a_valid_snapshot() -> None:
    state = ClusterFlagState.from_bytes(snapshot())
    assert (state.applied_index, state.values()) == (4, {"actors": True})


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "flag state snapshot (0 bytes) is not valid"),
        (b"garbage!", "is not valid"),
        (msgspec.msgpack.encode({}), "Object missing required field"),
        (snapshot(flags={"actors": {"value": 3, "log_index": 4}}), "$.flags[...].value"),
        (snapshot(version=2), "is not consistent: version 2 is not 1"),
        (snapshot(applied_index=-1), "applied index -1 is negative"),
        (snapshot(applied_index=3), "flag 'actors' set at log index 4, outside 1..3"),
        (
            snapshot(history=[[2, {}], [2, {}]]),
            "history log indexes [2, 2]... are not increasing",
        ),
        (snapshot(history=[[9, {}]]), "history log indexes run outside 1..4"),
        (snapshot(history=[[0, {}]]), "history log indexes run outside 1..4"),
        (
            snapshot(applied_index=2000, history=[[i, {}] for i in range(1, 1002)]),
            "1001 history entries, more than 1000",
        ),
        (bytearray(b"\x00"), "is not valid"),
        ("not bytes", "flag state snapshot is str, not bytes"),
    ],
)
def test_a_garbled_snapshot_is_a_flag_error(data: bytes, fragment: str) -> None:
    with pytest.raises(FlagError) as caught:
        ClusterFlagState.from_bytes(data)
    assert fragment in str(caught.value)


def test_apply_accepts_a_hand_made_bad_value_and_evaluation_reports_it(
    registry: FlagRegistry,
) -> None:
    state = ClusterFlagState()
    state.apply(FlagChange(set={"actors": RolloutWire(percent=500)}), 1)  # never validated
    result = evaluate(registry, "actors", 1, [state.layer()])
    assert (result.value, result.reason, result.log_index) == (False, Reason.ERROR, 1)
    assert "rollout percent 500.0 is not a percentage" in result.detail
    state.apply(FlagChange(set={"lock_free": 7}), 2)  # type: ignore[dict-item]  # by hand
    result = evaluate(registry, "lock_free", 1, [state.layer()])
    assert (result.value, result.reason, result.log_index) == (False, Reason.ERROR, 2)
    assert result.detail.startswith("7 is not a flag value")


# --------------------------------------------------------------------------- --flag parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("actors=on", ("actors", True)),
        ("actors=off", ("actors", False)),
        ("actors=true", ("actors", True)),
        ("actors=false", ("actors", False)),
        ("actors=ON", ("actors", True)),
        (" actors = False ", ("actors", False)),
        ("backpressure=25%", ("backpressure", Rollout(percent=25))),
        ("backpressure=12.5%", ("backpressure", Rollout(percent=12.5))),
        ("backpressure=0%", ("backpressure", Rollout(percent=0))),
        ("backpressure=100%", ("backpressure", Rollout(percent=100))),
        (
            "actors={enabled=true,percent=25,include=[1],exclude=[3]}",
            ("actors", Rollout(enabled=True, percent=25, include=(1,), exclude=(3,))),
        ),
        ("actors={ percent = 10 }", ("actors", Rollout(percent=10))),
        ("actors={}", ("actors", Rollout())),
        ("actors={enabled=false}", ("actors", Rollout(enabled=False))),
    ],
)
def test_parse_flag_assignment(text: str, expected: tuple[str, FlagValue]) -> None:
    assert parse_flag_assignment(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("actors", "has no '='"),
        ("=on", "'' is not a flag name"),
        ("Actors=on", "'Actors' is not a flag name (lower_snake_case, like adaptive_timeout)"),
        ("actors=", "the value is empty"),
        ("actors=maybe", "'maybe' is not a flag value"),
        ("actors=1", "'1' is not a flag value"),
        ("actors=150%", "150% is more than 100%"),
        ("actors=-5%", "'-5%' is not a flag value"),
        ("actors={", "{ is not a TOML inline table"),
        ("actors={percent=10} x", "is not a TOML inline table"),
        ("actors={percnt=10}", "'percnt' is not a rollout field (enabled, percent, include"),
        ('actors={percent="x"}', "the rollout is not valid: Expected `float`, got `str`"),
        ("actors={percent=101}", "Expected `float` <= 100.0 - at `$.percent`"),
        ("actors={include=[-1]}", "Expected `int` >= 0 - at `$.include[0]`"),
        ("actors={include=[1,2],exclude=[2]}", "node ids [2] are both included and excluded"),
    ],
)
def test_parse_flag_assignment_errors(text: str, problem: str) -> None:
    with pytest.raises(FlagError) as caught:
        parse_flag_assignment(text)
    message = str(caught.value)
    assert message.startswith(f"--flag {text!r}: ")
    assert problem in message
    assert message.endswith(
        "; expected NAME=VALUE with VALUE on, off, true, false, a percentage like 25% or an "
        "inline table like {enabled=true,percent=25,include=[1],exclude=[3]}"
    )


# --------------------------------------------------------------------------- requires, conflicts


@pytest.fixture
def related() -> FlagRegistry:
    return FlagRegistry(
        [
            FlagSpec(name="base", default=False, description="", owner="p"),
            FlagSpec(name="addon", default=False, description="", owner="p", requires=("base",)),
            FlagSpec(name="rival", default=False, description="", owner="q", conflicts=("addon",)),
            FlagSpec(name="other", default=False, description="", owner="q"),
        ]
    )


@pytest.mark.parametrize(
    ("before", "change", "fragment"),
    [
        ({}, FlagChange(set={"addon": True}), "'addon' requires flag 'base'"),
        (
            {},
            FlagChange(set={"addon": True, "base": RolloutWire(percent=50)}),
            "'addon' requires flag 'base' on wherever it is on",
        ),
        ({"addon": True, "base": True}, FlagChange(unset=["base"]), "requires flag 'base'"),
        ({"addon": True, "base": True}, FlagChange(set={"rival": True}), "conflict"),
        (
            {"rival": True},
            FlagChange(set={"addon": RolloutWire(percent=10), "base": True}),
            "'rival' and 'addon' conflict",
        ),
    ],
)
def test_a_change_breaking_a_declared_dependency_is_refused(
    related: FlagRegistry, before: dict[str, bool], change: FlagChange, fragment: str
) -> None:
    state = ClusterFlagState()
    if before:
        state.apply(FlagChange(set=before), 1)
    problems = validate_change(related, change, state=state)
    assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize(
    "change",
    [
        FlagChange(set={"addon": True, "base": True}),
        FlagChange(set={"addon": RolloutWire(percent=30), "base": True}),
        FlagChange(set={"rival": True, "addon": False}),
        FlagChange(set={"rival": True, "addon": RolloutWire(percent=0)}),
        FlagChange(set={"other": True}),
    ],
)
def test_a_change_keeping_declared_dependencies_is_accepted(
    related: FlagRegistry, change: FlagChange
) -> None:
    assert validate_change(related, change, state=ClusterFlagState()) == []


def test_an_existing_breach_does_not_block_unrelated_changes(related: FlagRegistry) -> None:
    state = ClusterFlagState()
    state.apply(FlagChange(set={"addon": True}), 1)  # e.g. set before the rule was declared
    assert validate_change(related, FlagChange(set={"other": True}), state=state) == []
    assert validate_change(related, FlagChange(unset=["addon"]), state=state) == []


def test_a_requirement_no_plugin_declares_is_named() -> None:
    registry = FlagRegistry(
        [FlagSpec(name="addon", default=False, description="", owner="p", requires=("gone",))]
    )
    [problem] = validate_change(registry, FlagChange(set={"addon": True}))
    assert "'gone', which no installed plugin declares" in problem


@pytest.mark.parametrize("bad", [["base"], ("Base",), ("addon",)])
def test_requires_and_conflicts_must_name_other_flags(bad: object) -> None:
    with pytest.raises(FlagError, match="expected a tuple of other flags' names"):
        FlagSpec(name="addon", default=False, description="", owner="p", requires=bad)  # type: ignore[arg-type]
