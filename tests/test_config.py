"""Settings: layering and its sources, the plan's examples, every error, writing back.

Every test runs in an empty working directory (see `_isolated_cwd`) and passes ``env``
explicitly unless it is about the process environment, so the machine's own settings.toml
or RAFTMW_* variables cannot change the outcome.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import FrozenInstanceError, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import framework.config as config
from framework.config import (
    BackpressureSettings,
    RaftSettings,
    Rollout,
    Settings,
    SettingsError,
    TimeoutSettings,
    format_duration,
    format_size,
    load_settings,
    parse_duration,
    parse_size,
    settings_from_mapping,
    settings_to_mapping,
    settings_to_toml,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "framework" / "settings.toml"
PROFILES = ("default", "high_throughput", "low_latency")

# The plan's "Configuration Examples" (seed/000_f0b320be9daffc67.txt), copied verbatim.
HIGH_THROUGHPUT_EXAMPLE = """\
[performance]
enable_lock_free = true

[performance.backpressure]
max_pending = 50000
enable_priority = true
memory_pressure_threshold = 0.9

[performance.circuit_breaker]
failure_threshold = 3
timeout = "30s"
success_threshold = 5

[performance.timeouts.raft_message]
base_timeout = "200ms"
max_timeout = "2s"
enable_adaptive = true
"""

LOW_LATENCY_EXAMPLE = """\
[performance]
enable_lock_free = true

[performance.backpressure]
max_pending = 10000
enable_priority = true
memory_pressure_threshold = 0.7

[performance.circuit_breaker]
failure_threshold = 2
timeout = "10s"
success_threshold = 2

[performance.timeouts.raft_message]
base_timeout = "50ms"
max_timeout = "500ms"
enable_adaptive = true
"""


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(**kwargs: Any) -> Settings:
    kwargs.setdefault("env", {})
    return load_settings(**kwargs)


# --------------------------------------------------------------------------- defaults, profiles


def test_defaults() -> None:
    s = load()
    assert s.raft == RaftSettings(
        tick_interval=0.01,
        election_tick=20,
        heartbeat_tick=2,
        pre_vote=True,
        check_quorum=True,
        max_inflight_msgs=256,
        max_size_per_msg=1 << 20,
        max_uncommitted_entries_size=64 << 20,
        lease_reads=False,
        snapshot_threshold_entries=100_000,
        max_batch_proposals=1024,
    )
    assert (s.storage.engine, s.storage.sync, s.storage.data_dir) == (
        "sqlite",
        "always",
        "raftmw-data",
    )
    assert (s.transport.kind, s.transport.max_frame_size, s.transport.connect_timeout) == (
        "tcp",
        64 << 20,
        1.0,
    )
    assert (s.transport.reconnect_backoff_min, s.transport.reconnect_backoff_max) == (0.05, None)
    assert s.reconnect_backoff_max == 0.2  # "auto": one election timeout, 20 ticks of 10ms
    assert (s.client.request_timeout, s.client.retry_backoff) == (5.0, 0.02)
    assert set(s.performance.timeouts) == {"raft_message", "client_request", "connect", "snapshot"}
    assert s.flags == {}
    assert s.plugins.blocked == ()


@pytest.mark.parametrize(
    ("profile", "example"),
    [("high_throughput", HIGH_THROUGHPUT_EXAMPLE), ("low_latency", LOW_LATENCY_EXAMPLE)],
)
def test_profiles_hold_the_plan_examples_verbatim(profile: str, example: str) -> None:
    packaged = tomllib.loads(PACKAGED.read_text(encoding="utf-8"))
    assert {"performance": packaged[profile]["performance"]} == tomllib.loads(example)


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            HIGH_THROUGHPUT_EXAMPLE,
            (
                True,
                BackpressureSettings(
                    max_pending=50000, enable_priority=True, memory_pressure_threshold=0.9
                ),
                (3, 30.0, 5),
                TimeoutSettings(base_timeout=0.2, max_timeout=2.0, enable_adaptive=True),
            ),
        ),
        (
            LOW_LATENCY_EXAMPLE,
            (
                True,
                BackpressureSettings(
                    max_pending=10000, enable_priority=True, memory_pressure_threshold=0.7
                ),
                (2, 10.0, 2),
                TimeoutSettings(base_timeout=0.05, max_timeout=0.5, enable_adaptive=True),
            ),
        ),
    ],
    ids=["high_throughput", "low_latency"],
)
def test_plan_examples_load_as_settings_files(
    tmp_path: Path, example: str, expected: tuple[Any, ...]
) -> None:
    path = tmp_path / "example.toml"
    path.write_text(example, encoding="utf-8")
    perf = load(files=[path]).performance
    breaker = perf.circuit_breaker
    got = (
        perf.enable_lock_free,
        perf.backpressure,
        (breaker.failure_threshold, breaker.timeout, breaker.success_threshold),
        perf.timeouts["raft_message"],
    )
    assert got == expected
    # The example leaves the other operations at their defaults.
    assert perf.timeouts["snapshot"] == load().performance.timeouts["snapshot"]


@pytest.mark.parametrize(
    ("profile", "example"),
    [("high_throughput", HIGH_THROUGHPUT_EXAMPLE), ("low_latency", LOW_LATENCY_EXAMPLE)],
)
def test_profile_equals_its_example_as_a_file(tmp_path: Path, profile: str, example: str) -> None:
    path = write(tmp_path / "example.toml", example)
    assert load(profile=profile).performance == load(files=[path]).performance


def test_profiles_also_tune_raft() -> None:
    default, fast, quick = (load(profile=p).raft for p in PROFILES)
    assert fast.max_batch_proposals > default.max_batch_proposals
    assert fast.max_inflight_msgs > default.max_inflight_msgs
    assert quick.tick_interval == 0.005 < default.tick_interval


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, 0.2),  # one election timeout: 20 ticks of 10ms
        ({"raft.tick_interval": "50ms"}, 1.0),
        ({"transport.reconnect_backoff_max": "3s"}, 3.0),  # an explicit value as given
        ({"raft.tick_interval": "1ms", "raft.election_tick": 3}, 0.05),  # at least the minimum
    ],
)
def test_reconnect_backoff_max_auto_is_one_election_timeout(
    overrides: dict[str, object], expected: float
) -> None:
    """Only the lower id dials, so a restarted higher-id peer is linked again within this
    wait: no longer than an election timeout, or a leader failing meanwhile cannot be
    replaced (its followers cannot reach each other)."""
    settings = load_settings(env={}, overrides=overrides)
    assert settings.reconnect_backoff_max == expected


def test_profile_name_is_case_insensitive() -> None:
    assert load(profile="HIGH_THROUGHPUT") == load(profile="high_throughput")


# --------------------------------------------------------------------------- precedence, sources

MAX_PENDING = "performance.backpressure.max_pending"
MAX_PENDING_VAR = "RAFTMW_PERFORMANCE__BACKPRESSURE__MAX_PENDING"


@pytest.mark.parametrize(
    ("layers", "value", "source"),
    [
        ((), 10000, "default"),
        (("profile",), 50000, "profile high_throughput"),
        (("profile", "file"), 60000, "FILE"),
        (("file",), 60000, "FILE"),
        (("profile", "file", "env"), 70000, MAX_PENDING_VAR),
        (("env",), 70000, MAX_PENDING_VAR),
        (("profile", "file", "env", "override"), 80000, "override"),
        (("override",), 80000, "override"),
    ],
)
def test_precedence_default_profile_file_env_override(
    tmp_path: Path, layers: tuple[str, ...], value: int, source: str
) -> None:
    path = write(tmp_path / "s.toml", "[performance.backpressure]\nmax_pending = 60000\n")
    kwargs: dict[str, Any] = {"env": {}}
    if "profile" in layers:
        kwargs["profile"] = "high_throughput"
    if "file" in layers:
        kwargs["files"] = [path]
    if "env" in layers:
        kwargs["env"] = {MAX_PENDING_VAR: "70000"}
    if "override" in layers:
        kwargs["overrides"] = {MAX_PENDING: 80000}
    s = load_settings(**kwargs)
    assert s.performance.backpressure.max_pending == value
    assert s.sources[MAX_PENDING] == source.replace("FILE", str(path))


def test_later_settings_files_win(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", "[raft]\nelection_tick = 30\nheartbeat_tick = 3\n")
    b = write(tmp_path / "b.toml", "[raft]\nelection_tick = 40\n")
    s = load(files=[a, b])
    assert (s.raft.election_tick, s.raft.heartbeat_tick) == (40, 3)
    assert (s.sources["raft.election_tick"], s.sources["raft.heartbeat_tick"]) == (str(b), str(a))


def test_sources_name_the_layer_of_every_key(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", '[client]\nretry_backoff = "30ms"\n')
    s = load(
        profile="low_latency",
        files=[path],
        env={"RAFTMW_RAFT__ELECTION_TICK": "30", "RAFTMW_FLAGS__ACTORS": "true"},
        overrides={"storage.engine": "memory", "flags.backpressure": {"percent": 25}},
    )
    assert {
        key: s.sources[key]
        for key in (
            "raft.heartbeat_tick",
            "raft.tick_interval",
            "performance.circuit_breaker.timeout",
            "client.retry_backoff",
            "raft.election_tick",
            "flags.actors",
            "storage.engine",
            "flags.backpressure.percent",
        )
    } == {
        "raft.heartbeat_tick": "default",
        "raft.tick_interval": "profile low_latency",
        "performance.circuit_breaker.timeout": "profile low_latency",
        "client.retry_backoff": str(path),
        "raft.election_tick": "RAFTMW_RAFT__ELECTION_TICK",
        "flags.actors": "RAFTMW_FLAGS__ACTORS",
        "storage.engine": "override",
        "flags.backpressure.percent": "override",
    }
    # A key a layer restates with the value it already had still names that layer.
    assert s.sources["performance.backpressure.enable_priority"] == "profile low_latency"


def test_every_default_key_has_a_source() -> None:
    s = load()
    leaves = _leaves(settings_to_mapping(s))
    assert set(s.sources) == leaves
    assert set(s.sources.values()) == {"default"}


def test_lists_accumulate_across_layers(tmp_path: Path) -> None:
    # dynaconf merges lists by appending; a later layer adds to plugins.blocked.
    path = write(tmp_path / "s.toml", '[plugins]\nblocked = ["chaos"]\n')
    s = load(files=[path], env={"RAFTMW_PLUGINS__BLOCKED": '["iroh_transport", "chaos"]'})
    assert s.plugins.blocked == ("chaos", "iroh_transport")


def test_env_values_are_parsed_like_toml() -> None:
    s = load(
        env={
            "RAFTMW_RAFT__PRE_VOTE": "false",
            "RAFTMW_RAFT__LEASE_READS": "True",
            "RAFTMW_PERFORMANCE__BACKPRESSURE__MEMORY_PRESSURE_THRESHOLD": "0.5",
            "RAFTMW_CLIENT__REQUEST_TIMEOUT": "750ms",
            "RAFTMW_FLAGS__ACTORS": "{ enabled = true, percent = 25, include = [1] }",
            "RAFTMW_PROFILE": "ignored: the command line's own variable",
            "OTHER_APP_SETTING": "ignored: no prefix",
        }
    )
    assert (s.raft.pre_vote, s.raft.lease_reads) == (False, True)
    assert s.performance.backpressure.memory_pressure_threshold == 0.5
    assert s.client.request_timeout == 0.75
    assert s.flags == {"actors": Rollout(enabled=True, percent=25.0, include=(1,))}


def test_flag_values() -> None:
    s = load(
        overrides={
            "flags.actors": True,
            "flags.lock_free": False,
            "flags.backpressure": {"enabled": True, "percent": 25, "include": [1], "exclude": [3]},
            "flags.circuit_breaker": {"percent": 50},
        }
    )
    assert s.flags == {
        "actors": True,
        "lock_free": False,
        "backpressure": Rollout(enabled=True, percent=25.0, include=(1,), exclude=(3,)),
        "circuit_breaker": Rollout(enabled=True, percent=50.0, include=(), exclude=()),
    }


# --------------------------------------------------------------------------- working directory


def test_cwd_settings_toml_layers_over_the_profile(_isolated_cwd: Path, tmp_path: Path) -> None:
    local = write(
        _isolated_cwd / "settings.toml",
        """\
        [default.raft]
        max_batch_proposals = 2000

        [high_throughput.performance.backpressure]
        max_pending = 55000

        [staging.raft]
        election_tick = 40
        """,
    )
    s = load()
    assert s.raft.max_batch_proposals == 2000
    assert s.sources["raft.max_batch_proposals"] == f"{local} [default]"

    # Each file applies its [default] and then the profile's table; a later file wins.
    fast = load(profile="high_throughput")
    assert (fast.raft.max_batch_proposals, fast.performance.backpressure.max_pending) == (
        2000,
        55000,
    )
    assert fast.sources[MAX_PENDING] == f"{local} [high_throughput]"
    assert fast.raft.max_inflight_msgs == 1024  # from the packaged profile

    # A profile defined by the local file exists.
    assert load(profile="staging").raft.election_tick == 40

    # --settings files come after it.
    path = write(tmp_path / "s.toml", "[performance.backpressure]\nmax_pending = 60000\n")
    assert load(profile="high_throughput", files=[path]).performance.backpressure.max_pending == (
        60000
    )


@pytest.mark.parametrize("where", ["repository root", "symlink elsewhere"])
def test_cwd_settings_toml_that_is_the_packaged_file_is_read_once(
    where: str, _isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "repository root":
        monkeypatch.chdir(REPO)
    else:
        (_isolated_cwd / "settings.toml").symlink_to(PACKAGED)
    s = load(profile="high_throughput")
    assert set(s.sources.values()) == {"default", "profile high_throughput"}


def test_cwd_settings_toml_written_flat_is_refused(_isolated_cwd: Path) -> None:
    write(_isolated_cwd / "settings.toml", HIGH_THROUGHPUT_EXAMPLE)
    with pytest.raises(SettingsError) as caught:
        load()
    message = str(caught.value)
    assert message.startswith("performance: {enable_lock_free = true")
    assert "[default.performance]" in message
    assert "--settings" in message


# --------------------------------------------------------------------------- the packaged file


def test_root_settings_toml_is_a_symlink_to_the_packaged_file() -> None:
    root = REPO / "settings.toml"
    assert root.is_symlink()
    assert os.readlink(root) == "framework/settings.toml"
    assert root.resolve() == PACKAGED.resolve()


def test_packaged_file_is_found_through_the_package_not_the_cwd() -> None:
    with config.resources.as_file(config._packaged_defaults()) as path:
        assert Path(path).resolve() == PACKAGED.resolve()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "settings.toml" in pyproject["tool"]["setuptools"]["package-data"]["framework"]


def test_defaults_load_from_a_zipped_package(tmp_path: Path) -> None:
    # A zip import is stricter than an installed wheel: no file sits at a path beside the
    # module, so this passes only if the defaults are found with importlib.resources.
    archive = tmp_path / "framework.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("framework/__init__.py", '"""raftmw."""\n')
        for module in ("config.py", "settings_kinds.py", "settings_schema.py"):
            zf.write(REPO / "framework" / module, f"framework/{module}")
        zf.write(PACKAGED, "framework/settings.toml")
    script = (
        "import framework, framework.config as c; s = c.load_settings(env={}); "
        "print(framework.__file__, s.raft.election_tick, sorted(set(s.sources.values())))"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMW_")}
    environ["PYTHONPATH"] = str(archive)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(archive / "framework" / "__init__.py"), "20", "['default']"]


# --------------------------------------------------------------------------- process isolation


def test_env_argument_isolates_from_the_process_environment(
    tmp_path: Path, _isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stray = write(tmp_path / "stray.toml", "[default.raft]\nelection_tick = 99\n")
    write(_isolated_cwd / ".env", "RAFTMW_RAFT__HEARTBEAT_TICK=7\n")
    for name, value in {
        "RAFTMW_RAFT__ELECTION_TICK": "50",
        "DYNACONF_RAFT__ELECTION_TICK": "60",
        "ENV_FOR_DYNACONF": "low_latency",
        "SETTINGS_FILE_FOR_DYNACONF": str(stray),
        "INCLUDES_FOR_DYNACONF": str(stray),
        "LOAD_DOTENV_FOR_DYNACONF": "true",
        "UNRELATED": "x",
    }.items():
        monkeypatch.setenv(name, value)
    before = dict(os.environ)

    isolated = load_settings(env={})
    assert isolated == load_settings(env={"UNRELATED": "x"})
    assert (isolated.raft.election_tick, isolated.raft.heartbeat_tick) == (20, 2)
    assert isolated.raft.tick_interval == 0.01  # not the low_latency profile

    from_process = load_settings()  # env defaults to os.environ: RAFTMW_* only
    assert (from_process.raft.election_tick, from_process.raft.heartbeat_tick) == (50, 2)
    assert from_process.sources["raft.election_tick"] == "RAFTMW_RAFT__ELECTION_TICK"

    assert dict(os.environ) == before
    assert Path.cwd() == _isolated_cwd


def test_loading_leaves_its_arguments_alone() -> None:
    overrides = {
        "flags.backpressure": {"percent": 25, "include": [1]},
        "raft": {"lease_reads": True},
    }
    env = {"RAFTMW_RAFT__ELECTION_TICK": "30"}
    saved = copy.deepcopy((overrides, env))
    load_settings(env=env, overrides=overrides)
    load_settings(env=env, overrides=overrides)
    assert (overrides, env) == saved


def test_no_module_level_dynaconf_instance() -> None:
    from dynaconf import LazySettings  # type: ignore[import-untyped]
    from dynaconf.base import Settings as DynaconfSettings  # type: ignore[import-untyped]

    assert not [
        name
        for name, value in vars(config).items()
        if isinstance(value, LazySettings | DynaconfSettings)
    ]


# --------------------------------------------------------------------------- errors

Kwargs = Callable[[Path], dict[str, Any]]


def _file(text: str) -> Kwargs:
    def make(tmp: Path) -> dict[str, Any]:
        return {"files": [write(tmp / "bad.toml", text)]}

    return make


def _bytes_file(data: bytes) -> Kwargs:
    def make(tmp: Path) -> dict[str, Any]:
        (tmp / "bad.toml").write_bytes(data)
        return {"files": [tmp / "bad.toml"]}

    return make


def _over(**overrides: object) -> Kwargs:
    dotted = {k.replace("__", "."): v for k, v in overrides.items()}
    return lambda _tmp: {"overrides": dotted}


def _env(**variables: str) -> Kwargs:
    return lambda _tmp: {"env": variables}


ERRORS: list[tuple[str, Kwargs, str, list[str]]] = [
    # (case, inputs, key the message starts with, other text it must contain)
    ("unknown key", _over(raft__election_tikc=20), "raft.election_tikc", ["20", "election_tick"]),
    (
        "misspelt section in a file",
        _file("[performance.backpresure]\nmax_pending = 5\n"),
        "performance.backpresure",
        ["{max_pending = 5}", "backpressure", "bad.toml"],
    ),
    (
        "unknown section from the environment",
        _env(RAFTMW_RAFFT__ELECTION_TICK="3"),
        "rafft",
        ["{election_tick = 3}", "RAFTMW_RAFFT__ELECTION_TICK"],
    ),
    ("bool of the wrong type", _over(raft__pre_vote="yes"), "raft.pre_vote", ['"yes"', "true"]),
    (
        "int of the wrong type",
        _env(RAFTMW_RAFT__MAX_INFLIGHT_MSGS="many"),
        "raft.max_inflight_msgs",
        ['"many"', "integer", "RAFTMW_RAFT__MAX_INFLIGHT_MSGS"],
    ),
    ("int too small", _over(raft__max_inflight_msgs=0), "raft.max_inflight_msgs", ["0", ">= 1"]),
    ("negative size", _over(transport__max_frame_size=-1), "transport.max_frame_size", ["-1"]),
    (
        "size with a bad unit",
        _over(raft__max_size_per_msg="1 parsec"),
        "raft.max_size_per_msg",
        ['"1 parsec"', "KiB"],
    ),
    (
        "size of part of a byte",
        _over(raft__max_size_per_msg="0.1KiB"),
        "raft.max_size_per_msg",
        ['"0.1KiB"', "whole number of bytes"],
    ),
    (
        "bad duration",
        _over(performance__circuit_breaker__timeout="30 parsecs"),
        "performance.circuit_breaker.timeout",
        ['"30 parsecs" is not a duration; expected a number followed by ms, s, m or h'],
    ),
    ("duration without a unit", _over(client__request_timeout=5), "client.request_timeout", ["5"]),
    ("zero duration", _over(raft__tick_interval="0ms"), "raft.tick_interval", ['"0ms"', "zero"]),
    (
        "threshold above 1",
        _over(performance__backpressure__memory_pressure_threshold=1.5),
        "performance.backpressure.memory_pressure_threshold",
        ["1.5", "0..1"],
    ),
    (
        "threshold below 0",
        _over(performance__backpressure__memory_pressure_threshold=-0.1),
        "performance.backpressure.memory_pressure_threshold",
        ["-0.1"],
    ),
    (
        "max_timeout below base_timeout",
        _file(
            '[performance.timeouts.raft_message]\nbase_timeout = "200ms"\nmax_timeout = "100ms"\n'
        ),
        "performance.timeouts.raft_message.max_timeout",
        ['"100ms"', '"200ms"', "base_timeout"],
    ),
    (
        "backoff maximum below minimum",
        _over(transport__reconnect_backoff_max="10ms"),
        "transport.reconnect_backoff_max",
        ['"10ms"', '"50ms"'],
    ),
    (
        "election_tick not above heartbeat_tick",
        _over(raft__election_tick=2),
        "raft.election_tick",
        ["2", "raft.heartbeat_tick (2)"],
    ),
    (
        "unknown profile",
        lambda _tmp: {"profile": "fast"},
        "profile",
        ['"fast"', "default, high_throughput, low_latency"],
    ),
    ("bad choice", _over(storage__engine="postgres"), "storage.engine", ['"postgres"', '"sqlite"']),
    ("empty string", _over(storage__data_dir=" "), "storage.data_dir", ['" "']),
    ("bad flag value", _over(flags__actors="yes"), "flags.actors", ['"yes"', "rollout"]),
    ("percent above 100", _over(flags__actors={"percent": 150}), "flags.actors.percent", ["150"]),
    (
        "unknown rollout key",
        _over(flags__actors={"precent": 5}),
        "flags.actors.precent",
        ["5", "percent"],
    ),
    (
        "node in include and exclude",
        _over(flags__actors={"include": [1, 2], "exclude": [2]}),
        "flags.actors.exclude",
        ["[2]", "include"],
    ),
    ("node id not an int", _over(flags__actors={"include": ["a"]}), "flags.actors.include[0]", []),
    ("bad flag name", _over(flags={"a b": True}), "flags.a b", ["true"]),
    ("blocked not a list", _over(plugins__blocked="chaos"), "plugins.blocked", ['"chaos"']),
    (
        "operation not a table",
        _over(performance__timeouts__raft_message="1s"),
        "performance.timeouts.raft_message",
        ['"1s"', "table"],
    ),
    (
        "operation added without all its keys",
        _env(RAFTMW_PERFORMANCE__TIMEOUTS__ELECTION__BASE_TIMEOUT="1s"),
        "performance.timeouts.election.max_timeout",
        ["is missing", "(from RAFTMW_PERFORMANCE__TIMEOUTS__ELECTION__BASE_TIMEOUT)"],
    ),
    ("invalid TOML", _file("[raft\n"), "BAD", ["is not valid TOML", "line 1"]),
    ("invalid UTF-8", _bytes_file(b"# \xff\n"), "BAD", ["is not valid TOML", "utf-8"]),
    (
        "missing file",
        lambda tmp: {"files": [tmp / "nope.toml"]},
        "NOPE",
        ["cannot be read", "No such file"],
    ),
    (
        "profile table in a --settings file",
        _file("[default.raft]\nelection_tick = 30\n"),
        "default",
        ["{raft = {election_tick = 30}}", "--settings", "[raft]"],
    ),
    ("variable naming nothing", _env(RAFTMW_="1"), "RAFTMW_", ['"1"']),
]


@pytest.mark.parametrize(
    ("inputs", "key", "contains"),
    [pytest.param(*row[1:], id=row[0]) for row in ERRORS],
)
def test_errors_name_key_value_and_expectation(
    tmp_path: Path, inputs: Kwargs, key: str, contains: list[str]
) -> None:
    kwargs = {"env": {}, **inputs(tmp_path)}
    key = key.replace("BAD", str(tmp_path / "bad.toml")).replace(
        "NOPE", str(tmp_path / "nope.toml")
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(**kwargs)
    error = caught.value
    assert isinstance(error, ValueError)
    message = str(error)
    assert message.startswith(f"{key}: "), message
    assert error.key == key
    assert "; expected " in message
    for text in contains:
        assert text.replace("bad.toml", str(tmp_path / "bad.toml")) in message, message


def test_error_message_format() -> None:
    with pytest.raises(SettingsError) as caught:
        load(overrides={"performance.circuit_breaker.timeout": "30 parsecs"})
    assert str(caught.value) == (
        'performance.circuit_breaker.timeout: "30 parsecs" is not a duration; expected a number'
        ' followed by ms, s, m or h, like "200ms" or "30s" (from override)'
    )


def test_missing_key_in_a_complete_mapping() -> None:
    data = settings_to_mapping(load())
    del data["raft"]["tick_interval"]
    with pytest.raises(SettingsError, match=r"^raft\.tick_interval: is missing; expected a"):
        settings_from_mapping(data)


# --------------------------------------------------------------------------- durations, sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10ms", 0.01),
        ("200ms", 0.2),
        ("1.5s", 1.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        (" 250 ms ", 0.25),
        ("0ms", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30 parsecs", "-1s", "s", "10", "1e3ms", "1.s", "", 10, 1.5, None])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(SettingsError, match="is not a duration"):
        parse_duration(bad, key="k")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.01, "10ms"),
        (0.2, "200ms"),
        (2.0, "2s"),
        (60.0, "1m"),
        (5400.0, "90m"),
        (7200, "2h"),
        (1.5, "1500ms"),
        (0.0005, "0.5ms"),
        (0.0, "0ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_format_duration_parses_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("512B", 512),
        ("64KiB", 65536),
        ("4MiB", 4 << 20),
        ("1GiB", 1 << 30),
        ("1.5KiB", 1536),
        ("64kib", 65536),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("bad", [-1, "-1KiB", "64 parsecs", "64KB", "0.1KiB", True, 1.5, "1024"])
def test_parse_size_refuses(bad: object) -> None:
    with pytest.raises(SettingsError):
        parse_size(bad, key="k")


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_size_parses_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


# --------------------------------------------------------------------------- writing back


@pytest.mark.parametrize("profile", PROFILES)
def test_toml_round_trip(tmp_path: Path, profile: str) -> None:
    settings = load(
        profile=profile,
        overrides={
            "flags.actors": True,
            "flags.backpressure": {"percent": 12.5, "include": [1], "exclude": [3]},
            "plugins.blocked": ["chaos"],
            "plugin.chaos": {"rate": 0.5, "kinds": ["drop", "delay"], "limits": {"max": 3}},
            "performance.timeouts.election": {
                "base_timeout": "150ms",
                "max_timeout": "1.5s",
                "enable_adaptive": False,
            },
        },
    )
    assert settings.performance.timeouts["election"].max_timeout == 1.5
    text = settings_to_toml(settings)
    path = write(tmp_path / "written.toml", text)
    assert load(files=[path]) == settings
    assert settings_from_mapping(tomllib.loads(text)) == settings


def test_a_plugin_table_is_kept_as_written_and_frozen(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mine.toml",
        '[plugin.audit]\nlog_path = "/var/log/a.jsonl"\nlevels = ["x", "y"]\n'
        "[plugin.audit.rotate]\nkeep = 3\n",
    )
    s = load(files=[path], env={"RAFTMW_PLUGIN__AUDIT__ROTATE__KEEP": "4"})
    audit = s.plugin["audit"]
    assert audit["log_path"] == "/var/log/a.jsonl"
    assert audit["levels"] == ("x", "y")  # frozen: settings are immutable
    assert audit["rotate"]["keep"] == 4  # the environment layers on top, as for any key
    assert s.sources["plugin.audit.rotate.keep"] == "RAFTMW_PLUGIN__AUDIT__ROTATE__KEEP"
    with pytest.raises(TypeError):
        audit["log_path"] = "elsewhere"  # type: ignore[index]
    assert load().plugin == {}


def test_a_plugin_table_for_no_installed_plugin_is_refused_naming_the_closest() -> None:
    from framework.plugins import PluginHost

    problems = PluginHost().validate_settings(load(overrides={"plugin.legcy.x": 1}))
    assert any("[plugin.legcy]" in p and "'legacy'" in p for p in problems), problems
    assert PluginHost().validate_settings(load(overrides={"plugin.legacy.x": 1})) == []


def test_toml_writes_durations_and_sizes_as_text() -> None:
    written = tomllib.loads(settings_to_toml(load(profile="high_throughput")))
    assert written["raft"]["tick_interval"] == "10ms"
    assert written["raft"]["max_size_per_msg"] == "4MiB"
    assert written["performance"]["timeouts"]["raft_message"] == {
        "base_timeout": "200ms",
        "max_timeout": "2s",
        "enable_adaptive": True,
    }


# --------------------------------------------------------------------------- the objects


def test_settings_objects_are_frozen_slotted_keyword_only() -> None:
    s = load(overrides={"flags.actors": {"percent": 5}})
    for obj in (
        s,
        s.raft,
        s.storage,
        s.transport,
        s.client,
        s.performance,
        s.performance.backpressure,
        s.performance.circuit_breaker,
        s.performance.timeouts["connect"],
        s.flags["actors"],
        s.plugins,
    ):
        cls = type(obj)
        assert not hasattr(obj, "__dict__"), cls
        name = fields(obj)[0].name
        with pytest.raises(FrozenInstanceError):
            setattr(obj, name, getattr(obj, name))
        with pytest.raises(TypeError):
            cls(*[getattr(obj, f.name) for f in fields(obj)])
    for mapping in (s.performance.timeouts, s.flags, s.sources):
        with pytest.raises(TypeError):
            mapping["x"] = 1  # type: ignore[index]


def test_settings_hash_pickle_and_copy() -> None:
    s = load(overrides={"flags.actors": {"percent": 5, "include": [1]}})
    assert hash(s) == hash(load(overrides={"flags.actors": {"percent": 5, "include": [1]}}))
    again = pickle.loads(pickle.dumps(s))
    assert again == s
    assert again.sources == s.sources
    assert copy.deepcopy(s) == s


def test_sources_do_not_take_part_in_equality(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", "[raft]\nelection_tick = 20\n")  # the default value
    a, b = load(), load(files=[path])
    assert a == b
    assert (a.sources["raft.election_tick"], b.sources["raft.election_tick"]) == (
        "default",
        str(path),
    )


def _leaves(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        keys |= _leaves(value, key) if isinstance(value, Mapping) else {key}
    return keys


# --------------------------------------------------------------------------- config check

ALL_WRONG = """\
[raft]
election_tick = "soon"
heartbeat_tikc = 3
[performance.circuit_breaker]
timeout = "30 parsecs"
[performance]
backpressure = 7
"""


def test_check_settings_reports_every_bad_key_in_one_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(ALL_WRONG)
    settings, problems = config.check_settings(files=[bad], env={})
    assert sorted(p.key for p in problems) == [
        "performance.backpressure",
        "performance.circuit_breaker.timeout",
        "raft.election_tick",
        "raft.heartbeat_tikc",
    ]
    assert all(p.source == str(bad) for p in problems)
    by_key = {p.key: str(p) for p in problems}
    assert "30 parsecs" in by_key["performance.circuit_breaker.timeout"]
    # With the bad keys set aside the defaults decide them; the file is untouched.
    assert settings is not None and settings.raft.election_tick == 20
    assert bad.read_text() == ALL_WRONG


def test_check_settings_accepts_a_good_file_and_stops_at_one_that_is_not_toml(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[raft]\nelection_tick = 30\n")
    settings, problems = config.check_settings(files=[good], env={})
    assert problems == [] and settings is not None and settings.raft.election_tick == 30
    broken = tmp_path / "broken.toml"
    broken.write_text("[raft\nelection_tick = 30\n")
    settings, problems = config.check_settings(files=[broken], env={})
    assert settings is None and len(problems) == 1 and "not valid TOML" in str(problems[0])


def test_config_check_command_reports_settings_and_plugin_problems_together(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from framework.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(ALL_WRONG + "[flags]\nactorz = true\n[plugin.audit]\nlog_path = 5\n")
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    for fragment in (
        "raft.election_tick",
        "raft.heartbeat_tikc",
        "performance.circuit_breaker.timeout",
        "performance.backpressure",
        "undeclared flag 'actorz'",  # what node start refuses, found by the same check
        "[plugin.audit] log_path = 5",
        "6 problem(s)",
    ):
        assert fragment in result.output, result.output
    blocked = tmp_path / "blocked.toml"
    blocked.write_text('[plugins]\nblocked = ["nosuch"]\n')
    result = CliRunner().invoke(main, ["config", "check", str(blocked)])
    assert result.exit_code == 1 and "cannot block unknown plugin(s) ['nosuch']" in result.output
