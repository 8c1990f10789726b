"""The kernel does no I/O and is deterministic (DESIGN.md "The kernel", STYLE.md principle
1): no module of framework/core imports an I/O, clock, concurrency or storage module,
nothing of the rest of the project, and nothing draws from the global random generator
(a ``random.Random`` comes in as a parameter; ``import random`` for annotations is fine).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import framework.core

CORE = Path(framework.core.__file__).parent
FILES = sorted(CORE.glob("*.py"))

FORBIDDEN_MODULES = {
    "anyio",
    "asyncio",
    "socket",
    "time",
    "threading",
    "trio",
    "sqlite3",
    "os",
    "selectors",
    "subprocess",
    "multiprocessing",
    "concurrent",
    "datetime",
    "uuid",
    "secrets",
    "signal",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
}
FORBIDDEN_PREFIXES = (
    "framework",
    "plugins",
    "legacy",
    "migration",
)
# Module-level functions of ``random`` that use the hidden global generator.
GLOBAL_RANDOM = {
    "random",
    "randint",
    "randrange",
    "choice",
    "choices",
    "shuffle",
    "sample",
    "uniform",
    "gauss",
    "seed",
    "getrandbits",
    "randbytes",
    "betavariate",
    "expovariate",
    "triangular",
    "normalvariate",
    "lognormvariate",
    "vonmisesvariate",
    "paretovariate",
    "weibullvariate",
    "getstate",
    "setstate",
    "SystemRandom",
}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: inside framework.core
                continue
            found.append((node.lineno, node.module or ""))
    return found


def _violations(source: str) -> list[str]:
    tree = ast.parse(source)
    problems = []
    random_aliases = set()
    for lineno, name in _imports(tree):
        root = name.split(".")[0]
        if root in FORBIDDEN_MODULES:
            problems.append(f"line {lineno}: imports {name}")
        if name.startswith(FORBIDDEN_PREFIXES) and not name.startswith("framework.core"):
            problems.append(f"line {lineno}: imports {name} (core imports only core)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            random_aliases |= {a.asname or a.name for a in node.names if a.name == "random"}
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            for alias in node.names:
                if alias.name in GLOBAL_RANDOM:
                    problems.append(f"line {node.lineno}: from random import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in random_aliases
            and node.attr in GLOBAL_RANDOM
        ):
            problems.append(f"line {node.lineno}: uses random.{node.attr} (global generator)")
    return problems


def test_core_has_modules() -> None:
    assert {p.name for p in FILES} >= {"raft.py", "log.py", "messages.py", "ready.py"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_core_module_does_no_io_and_no_global_randomness(path: Path) -> None:
    assert _violations(path.read_text()) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time", ["line 1: imports time"]),
        ("import os.path", ["line 1: imports os.path"]),
        ("from asyncio import sleep", ["line 1: imports asyncio"]),
        ("import anyio as a", ["line 1: imports anyio"]),
        (
            "from framework.storage import MemoryLogStore",
            ["line 1: imports framework.storage (core imports only core)"],
        ),
        (
            "import framework.runtime.node",
            ["line 1: imports framework.runtime.node (core imports only core)"],
        ),
        ("from framework import hooks", ["line 1: imports framework (core imports only core)"]),
        ("import plugins.actors", ["line 1: imports plugins.actors (core imports only core)"]),
        ("from legacy import x", ["line 1: imports legacy (core imports only core)"]),
        ("import random\nrandom.randint(1, 2)", ["line 2: uses random.randint (global generator)"]),
        ("import random as r\nx = r.random()", ["line 2: uses random.random (global generator)"]),
        ("from random import choice", ["line 1: from random import choice"]),
        ("import random\ndef f(rng: random.Random) -> int:\n    return rng.randrange(3)", []),
        ("from framework.core.log import RaftLog", []),
        ("from .log import RaftLog", []),
    ],
)
def test_the_checker_itself(source: str, expected: list[str]) -> None:
    """The rule must be able to fail: each forbidden form is caught, allowed ones pass."""
    assert _violations(source) == expected
