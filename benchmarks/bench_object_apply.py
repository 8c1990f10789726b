"""What the determinism check costs: ``ObjectMachine.apply`` with and without it.

    python benchmarks/bench_object_apply.py [--rounds 7] [--calls 20000] [--batch 1]

Applies ``--calls`` committed ``@replicated`` calls (append a 100-byte string, the same
method as ``bench_objects.py``) to a fresh ``ObjectMachine`` per round, once with the
clock/randomness guard of ``framework.apps.determinism`` (what nodes run) and once with it
replaced by a no-op, rounds alternating so a drift of the shared machine's speed falls on
both. Entries are encoded before timing: the figure is the machine's apply path alone
(session lookup, call decode, method, outcome encode). After every ``--batch`` calls the
loop reads ``time.monotonic()`` as the event loop does between two Readies, which takes the
guards away until the next call installs them: ``--batch 1`` is one call per Ready (the
worst case), a larger batch is many calls committed together. Printed: per round, then the median
microseconds per call of each with its range, and the median per-round difference.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator

from bench_objects import (
    Notes,  # the class bench_objects.py replicates (benchmarks/ is on the path)
)

import framework.apps.objects as objects
from framework.apps.objects import ObjectMachine, encode_call
from framework.core.entries import Entry, EntryKind
from framework.statemachine import AppCommand, encode_app_command


@contextlib.contextmanager
def _unchecked(method: str) -> Iterator[None]:
    yield


def _entries(calls: int) -> list[Entry]:
    note = "x" * 100
    return [
        Entry(
            index=i,
            term=1,
            kind=EntryKind.NORMAL,
            data=encode_app_command(
                AppCommand(
                    client_id=1 + i % 64,
                    seq=1 + i // 64,
                    time=1.0,
                    payload=encode_call("add", (note,), {}),
                )
            ),
        )
        for i in range(1, calls + 1)
    ]


def _time(entries: list[Entry], checked: bool, batch: int) -> float:
    guard = objects.deterministic
    objects.deterministic = guard if checked else _unchecked  # type: ignore[assignment]
    try:
        machine = ObjectMachine(Notes)
        started = time.perf_counter()
        for i, entry in enumerate(entries):
            machine.apply(entry)
            if i % batch == 0:
                time.monotonic()  # looked up each time, as asyncio's loop.time() does
        return (time.perf_counter() - started) / len(entries) * 1e6
    finally:
        objects.deterministic = guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    entries = _entries(args.calls)
    checked: list[float] = []
    unchecked: list[float] = []
    for round_ in range(1, args.rounds + 1):
        order = (True, False) if round_ % 2 else (False, True)
        for on in order:
            us = _time(entries, on, args.batch)
            (checked if on else unchecked).append(us)
            print(f"round {round_} {'checked' if on else 'unchecked':9} {us:6.2f} us/call")
    for name, values in (("checked", checked), ("unchecked", unchecked)):
        print(
            f"{name:9} median {statistics.median(values):6.2f} us/call "
            f"(range {min(values):.2f}-{max(values):.2f})"
        )
    diffs = [c - u for c, u in zip(checked, unchecked, strict=True)]
    print(
        f"check costs median {statistics.median(diffs):.2f} us/call "
        f"(range {min(diffs):.2f}-{max(diffs):.2f}), {args.calls} calls x {args.rounds} rounds, "
        f"batch {args.batch}"
    )


if __name__ == "__main__":
    main()
