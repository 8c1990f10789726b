"""Cost per client request of ``NodeHealth.on_request`` (the staged-migration metrics), as
a ratio to the legacy timeout policy's ``observe()`` that the node already calls once per
request; interleaved rounds, median and spread of the ratio.

    python benchmarks/bench_node_health.py
"""

import statistics
import timeit

from framework.config import load_settings
from framework.runtime.node_health import NodeHealth
from legacy.timeouts import FixedTimeouts

settings = load_settings()
timeouts = FixedTimeouts(settings)
health = NodeHealth()
N = 200_000
ratios = []
for _ in range(15):
    a = timeit.timeit(lambda: health.on_request(0.0021, None), number=N)
    b = timeit.timeit(lambda: timeouts.observe("client_request", 0.0021, ok=True), number=N)
    ratios.append(a / b)
ratios.sort()
print(
    f"on_request / observe: median {statistics.median(ratios):.2f}, "
    f"min {ratios[0]:.2f}, max {ratios[-1]:.2f} (15 interleaved rounds of {N})"
)
print(f"on_request: {a / N * 1e9:.0f} ns/call in the last round")
