"""Options for the kernel tests: ``--rewrite`` regenerates transcript expectations."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite the expected output of tests/core/transcripts/*.txt from a fresh run "
        "(read the diff: a transcript is a specification, not a snapshot)",
    )


@pytest.fixture
def rewrite(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--rewrite", default=False))
