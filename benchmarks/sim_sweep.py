"""Sweep the simulator's mixed-fault seeds on the honest kernel for a bounded time.

    python benchmarks/sim_sweep.py --start 0 --seconds 1200

Runs seeds ``start, start + 1, ...`` (each with ``SimOptions.mixed(seed)``, as the test
suite does) until ``seconds`` of CPU time are spent in this process (or ``--wall-seconds``
pass, on a loaded machine), then prints the range swept, how many passed and every failure
with its replay command. Anything a seed raises
counts as a failure, not only ``SimulationFailure``: a kernel that raises ``KernelMisuse``
under some schedule is a finding too. Exit status 1 if any seed failed. One process, one
core: run it under ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from framework.sim.simulator import SimOptions, SimulationFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/sim_sweep.py")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seconds", type=float, default=1200.0, help="CPU-seconds to spend")
    parser.add_argument(
        "--wall-seconds", type=float, default=None, help="also stop after this much wall time"
    )
    parser.add_argument("--max-seeds", type=int, default=100_000, help="stop after this many")
    parser.add_argument("--every", type=int, default=1000, help="progress line every N seeds")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.max_seeds <= 0:
        parser.error(f"--seconds {args.seconds} and --max-seeds {args.max_seeds}: expected > 0")
    began = time.process_time()
    wall_end = time.monotonic() + args.wall_seconds if args.wall_seconds else float("inf")
    seed = args.start
    failures: list[tuple[int, str]] = []
    while (
        seed - args.start < args.max_seeds
        and time.process_time() - began < args.seconds
        and time.monotonic() < wall_end
    ):
        try:
            run_seed(seed)
        except SimulationFailure as exc:
            failures.append((seed, str(exc)))
            print(f"FAIL seed {seed}: {exc}", flush=True)
        except Exception:  # any crash of a seed is a finding; keep sweeping
            text = traceback.format_exc()
            failures.append((seed, text))
            print(f"ERROR seed {seed}: {text}\n{SimOptions.mixed(seed).command()}", flush=True)
        seed += 1
        done = seed - args.start
        if done % args.every == 0:
            spent = time.process_time() - began
            print(f"{done} seeds, {len(failures)} failed, {spent:.0f} CPU-s", flush=True)
    spent = time.process_time() - began
    swept = seed - args.start
    print(
        f"seeds {args.start}-{seed - 1}: {swept} swept, {swept - len(failures)} passed, "
        f"{len(failures)} failed, {spent:.0f} CPU-s ({spent / max(1, swept):.3f} per seed)"
    )
    for failed, _ in failures:
        print(f"  failed: {SimOptions.mixed(failed).command()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
