"""Settings loaded apart (framework/settings_apart.py): a forked child loads them, so the
process that goes on running never imports dynaconf (issue #15), and it gets the same
`Settings`, the same `SettingsError`, or a clear error when the child dies without a result.

Every case runs in a fresh interpreter (`_run`): the test process has imported dynaconf and
runs pytest-xdist's threads, so there the load would stay in-process by design. The programs
count forks (``os.register_at_fork``) and say whether dynaconf got imported, which is how a
test sees that the load went through a child. A serving node's own ``sys.modules`` is checked
by tests/runtime/test_node_imports.py (dynaconf is in its NOT_IN_A_NODE).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from framework.config import SettingsError, load_settings
from framework.runtime.localcluster import free_ports

REPO = Path(__file__).resolve().parents[1]

# Run before each program: counts this process's forks, and reports values by pickle.
_PRELUDE = """\
import os, pickle, sys, threading
forks = []
os.register_at_fork(before=lambda: forks.append(1))
import framework.settings_apart as apart
from framework.config import SettingsError, load_settings

def report(**values):
    print("REPORT", pickle.dumps(values).hex(), flush=True)

def dynaconf_imported():
    return any(name.split(".")[0] == "dynaconf" for name in sys.modules)
"""


def _environment(cwd_variables: dict[str, str]) -> dict[str, str]:
    # No RAFTMW_* of the machine's; this checkout's framework first on the path.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMW_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    return environ | cwd_variables


def _run(program: str, cwd: Path, **variables: str) -> dict[str, Any]:
    """Run ``program`` after `_PRELUDE` in a new interpreter; what it `report`-ed."""
    done = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(program)],
        cwd=cwd,
        env=_environment(variables),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("REPORT "))
    report: dict[str, Any] = pickle.loads(bytes.fromhex(line.split()[1]))
    return report


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, for the child programs and for the in-process loads."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_a_forked_load_gives_the_in_process_settings_without_importing_dynaconf(
    cwd: Path,
) -> None:
    # Every layer: a profile, ./settings.toml, a --settings file, a variable, overrides.
    (cwd / "settings.toml").write_text('[high_throughput.client]\nretry_backoff = "30ms"\n')
    extra = cwd / "extra.toml"
    extra.write_text("[performance.backpressure]\nmax_pending = 60000\n")
    arguments = {
        "profile": "high_throughput",
        "files": [str(extra)],
        "overrides": {"flags.actors": True, "performance.circuit_breaker.timeout": "45s"},
    }
    variables = {"RAFTMW_RAFT__ELECTION_TICK": "30"}
    result = _run(
        f"""
        settings = apart.load_settings_apart(**{arguments!r})
        report(settings=settings, forks=len(forks), dynaconf=dynaconf_imported())
        """,
        cwd,
        **variables,
    )
    expected = load_settings(**arguments, env=variables)  # type: ignore[arg-type]
    assert set(expected.sources.values()) >= {
        "profile high_throughput",
        f"{cwd / 'settings.toml'} [high_throughput]",
        str(extra),
        "RAFTMW_RAFT__ELECTION_TICK",
        "override",
    }
    assert result == {"settings": expected, "forks": 1, "dynaconf": False}


def test_a_bad_settings_file_raises_the_same_settings_error_from_the_child(cwd: Path) -> None:
    bad = cwd / "bad.toml"
    bad.write_text('[raft]\nelection_tick = "soon"\n')
    result = _run(
        f"""
        try:
            apart.load_settings_apart(files=[{str(bad)!r}])
        except SettingsError as error:
            report(error=error, forks=len(forks), dynaconf=dynaconf_imported())
        """,
        cwd,
    )
    with pytest.raises(SettingsError) as expected:
        load_settings(files=[bad], env={})
    error = result["error"]
    assert type(error) is SettingsError
    assert str(error) == str(expected.value)
    assert vars(error) == vars(expected.value)  # key, problem, expected, value, source
    assert (result["forks"], result["dynaconf"]) == (1, False)


@pytest.mark.parametrize(
    ("death", "how"),
    [
        ("os._exit(3)", "exited with status 3"),
        ("os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL"),
    ],
)
def test_a_child_that_ends_without_a_result_is_an_error_naming_how(
    cwd: Path, death: str, how: str
) -> None:
    # The replacement is made before the fork, so the child runs it; were the load not
    # forked, it would end this program instead, and `_run` would fail.
    result = _run(
        f"""
        import signal

        def die(**arguments):
            {death}

        apart.load_settings = die
        try:
            apart.load_settings_apart()
        except apart.LoadApartError as error:
            try:
                os.waitpid(-1, os.WNOHANG)
                unreaped = True
            except ChildProcessError:
                unreaped = False
            report(message=str(error), unreaped=unreaped)
        """,
        cwd,
    )
    assert result["message"].startswith("the process loading the settings (pid ")
    assert result["message"].endswith(f") {how} without a result")
    assert result["unreaped"] is False


_EXCEPTIONS = """
class TwoArguments(Exception):  # pickles, but unpickling calls TwoArguments(message)
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")

class HoldsALambda(Exception):  # does not pickle at all
    def __init__(self, message):
        super().__init__(message)
        self.callback = lambda: None
"""


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            "TwoArguments('one', 'two')",
            "LoadApartError: loading the settings raised __main__.TwoArguments: one and two",
        ),
        (
            "HoldsALambda('held')",
            "LoadApartError: loading the settings raised __main__.HoldsALambda: held",
        ),
        ("LookupError('plain')", "LookupError: plain"),
    ],
)
def test_an_exception_of_the_child_reaches_the_parent_even_if_it_cannot_be_pickled(
    cwd: Path, raised: str, expected: str
) -> None:
    result = _run(
        _EXCEPTIONS
        + f"""
def fail(**arguments):
    raise {raised}

apart.load_settings = fail
try:
    apart.load_settings_apart()
except Exception as error:
    report(
        text=f"{{type(error).__name__}}: {{error}}",
        notes=getattr(error, "__notes__", []),
        forks=len(forks),
    )
""",
        cwd,
    )
    assert result["text"].startswith(expected)
    assert result["forks"] == 1
    if "LoadApartError" not in expected:  # it came back as it was, with where it arose
        (note,) = result["notes"]
        assert note.startswith("Traceback in the process loading the settings:")
        assert "in fail" in note


def test_the_load_stays_in_process_while_threads_run_or_once_dynaconf_is_imported(
    cwd: Path,
) -> None:
    result = _run(
        """
        first = apart.load_settings_apart(env={})
        seen = [(len(forks), dynaconf_imported())]
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        second = apart.load_settings_apart(env={})  # two threads: no fork
        stop.set()
        thread.join()
        seen.append((len(forks), dynaconf_imported()))
        third = apart.load_settings_apart(env={})  # dynaconf imported: no fork
        seen.append((len(forks), dynaconf_imported()))
        report(seen=seen, same=first == second == third)
        """,
        cwd,
    )
    assert result == {"seen": [(1, False), (1, True), (1, True)], "same": True}


def test_settings_for_loads_apart_only_when_asked(cwd: Path) -> None:
    result = _run(
        """
        import framework.cli
        from framework.cli_options import settings_for

        apart_settings = settings_for("default", (), ("actors=on",), apart=True)
        after_apart = dynaconf_imported()
        here = settings_for("default", (), ("actors=on",))
        report(after_apart=after_apart, after_here=dynaconf_imported(), same=apart_settings == here)
        """,
        cwd,
    )
    assert result == {"after_apart": False, "after_here": True, "same": True}


# `raftmw node` as its console script runs it, saying at exit whether dynaconf was imported.
_NODE = """
import atexit, sys, threading
if sys.argv[1] == "thread":  # a thread running: settings_apart loads in this process
    threading.Thread(target=threading.Event().wait, daemon=True).start()
atexit.register(lambda: print("DYNACONF", "dynaconf" in sys.modules, flush=True))
from framework.cli import run
sys.argv = ["raftmw", *sys.argv[2:]]
run()
"""


def test_a_node_given_a_bad_setting_fails_as_it_did_in_process(cwd: Path) -> None:
    bad = cwd / "bad.toml"
    bad.write_text('[raft]\nelection_tick = "soon"\n')
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    arguments = ["node", "--id", "1", "--listen", address, "--peers", f"1={address}"]
    arguments += ["--data-dir", str(cwd / "n1"), "--settings", str(bad)]
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", _NODE, mode, *arguments],
            cwd=cwd,
            env=_environment({}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        for mode in ("forked", "thread")
    }
    with pytest.raises(SettingsError) as expected:
        load_settings(files=[bad], env={})
    forked, in_process = runs["forked"], runs["thread"]
    assert forked.stderr.endswith(f"Error: bad settings: {expected.value}\n"), forked.stderr
    assert (forked.returncode, forked.stderr) == (in_process.returncode, in_process.stderr)
    assert forked.returncode == 2  # click's usage error
    assert (forked.stdout, in_process.stdout) == ("DYNACONF False\n", "DYNACONF True\n")
    assert not (cwd / "n1").exists()
