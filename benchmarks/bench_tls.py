"""What mutual TLS costs: ``raftmw bench`` with TLS on and off, interleaved and repeated.

    python benchmarks/bench_tls.py [--rounds 5] [--seconds 5] [--clients 64]
        [--connections 4] [--payload 100] [--sync always|os]

Each round runs one bench with TLS (as every local tool runs) and one without (plain TCP on
loopback), in alternating order so that a drift of the shared machine's speed falls on
both. Printed: every run, then per mode the median writes/s, p50 latency and the nodes'
CPU time per acknowledged write (the steadiest of the three on a shared machine) with
their range, and the ratios TLS/plain of the medians with the range of the per-round
ratios.
"""

from __future__ import annotations

import argparse
import statistics

from framework.runtime.bench import BenchOptions, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--sync", choices=["always", "os"], default="always")
    args = parser.parse_args()
    runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for round_ in range(args.rounds):
        order = (True, False) if round_ % 2 == 0 else (False, True)
        for tls in order:
            report = run_bench(
                BenchOptions(
                    clients=args.clients,
                    connections=args.connections,
                    payload=args.payload,
                    seconds=args.seconds,
                    sync=args.sync,
                    tls=tls,
                ),
                progress=False,
            )
            ops, p50 = report["ops_per_second"], report["latency_ms"]["p50"]
            cpu = report["node_cpu_us_per_write"]
            runs[tls].append((ops, p50, cpu))
            errors = report["client_errors"] or "none"
            print(
                f"round {round_ + 1} TLS {'on ' if tls else 'off'}: {ops:8.0f} writes/s, "
                f"p50 {p50:.2f} ms, node CPU {cpu:.0f} us/write, errors {errors}",
                flush=True,
            )
    print()
    for tls in (True, False):
        ops = [r[0] for r in runs[tls]]
        p50 = [r[1] for r in runs[tls]]
        cpu = [r[2] for r in runs[tls]]
        print(
            f"TLS {'on ' if tls else 'off'}: median {statistics.median(ops):.0f} writes/s "
            f"(range {min(ops):.0f}-{max(ops):.0f}), p50 median {statistics.median(p50):.2f} ms "
            f"(range {min(p50):.2f}-{max(p50):.2f}), node CPU median "
            f"{statistics.median(cpu):.0f} us/write (range {min(cpu):.0f}-{max(cpu):.0f})"
        )
    pairs = list(zip(runs[True], runs[False], strict=True))
    ops_ratios = [on[0] / off[0] for on, off in pairs]
    p50_ratios = [on[1] / off[1] for on, off in pairs]
    on_ops = statistics.median(r[0] for r in runs[True])
    off_ops = statistics.median(r[0] for r in runs[False])
    on_p50 = statistics.median(r[1] for r in runs[True])
    off_p50 = statistics.median(r[1] for r in runs[False])
    cpu_ratios = [on[2] / off[2] for on, off in pairs]
    on_cpu = statistics.median(r[2] for r in runs[True])
    off_cpu = statistics.median(r[2] for r in runs[False])
    print(
        f"writes/s TLS/plain: {on_ops / off_ops:.2f} (per-round {min(ops_ratios):.2f}-"
        f"{max(ops_ratios):.2f}); p50 TLS/plain: {on_p50 / off_p50:.2f} (per-round "
        f"{min(p50_ratios):.2f}-{max(p50_ratios):.2f}); node CPU per write TLS/plain: "
        f"{on_cpu / off_cpu:.2f} (per-round {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f})"
    )


if __name__ == "__main__":
    main()
