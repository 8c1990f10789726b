"""Run every transcript under ``transcripts/`` and compare its trace with the expected one.

``pytest tests/core --rewrite`` regenerates the expected parts from a fresh run; the diff
must then be read line by line, because each transcript is a specification of Raft
behaviour (the comments in each file say which rule each step shows).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from kernel_transcript import render_transcript, run_file

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.txt"))


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 6


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_transcript(path: Path, rewrite: bool) -> None:
    blocks, outputs = run_file(path)
    if rewrite:
        path.write_text(render_transcript(blocks, outputs))
        return
    failures = []
    for block, output in zip(blocks, outputs, strict=True):
        if output != block.expected:
            diff = "\n".join(
                difflib.unified_diff(block.expected, output, "expected", "actual", lineterm="")
            )
            failures.append(f"{path.name}:{block.line}: {block.command}\n{diff}")
            break  # later blocks depend on this one; the first difference is the story
    assert not failures, "\n\n".join(failures)
