"""Print one line per simulator seed that names everything deterministic the run produced.

Two kernels that print the same lines for the same seeds behaved identically on them: the
same Readies (messages, entries, hard and soft states, in the same order, at the same tick)
and the same counters. Used to show that a change meant to be behaviour-free (a speed-up)
is: run it on both trees and compare the outputs.

    python benchmarks/kernel_equivalence.py --seeds 2000 > new.txt
    (cd /tmp && PYTHONPATH=/path/to/other/tree python /path/to/this/kernel_equivalence.py \\
        --seeds 2000 > old.txt)
    cmp old.txt new.txt

A seed whose run fails prints its failure's first line instead (that too must match).
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from framework.sim.simulator import SimResult, SimulationFailure, run_seed


def describe(seed: int) -> str:
    try:
        result = run_seed(seed)
    except SimulationFailure as exc:
        return f"{seed} FAIL {str(exc).splitlines()[0]}"
    values = [
        f"{f.name}={getattr(result, f.name)}" for f in fields(SimResult) if f.name != "options"
    ]
    return f"{seed} " + " ".join(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=2000, help="how many seeds")
    args = parser.parse_args()
    for seed in range(args.first, args.first + args.seeds):
        print(describe(seed), flush=True)


if __name__ == "__main__":
    main()
