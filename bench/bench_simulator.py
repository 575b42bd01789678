"""Benchmarks for the algorithms and the simulator (numbers for docs/benchmarks.md).

Run: .venv/bin/python bench/bench_simulator.py [--repeat 3]

1. The simulator: 1,000,000 requests over 100 backends with power_of_two,
   through ``make_balancer`` (the same balancer objects L4 and L7 use).
2. ``pick`` + ``on_start`` + ``on_finish`` per algorithm over 100 backends.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from lbkit.algorithms import ALGORITHMS, Backend, Flow, make_balancer
from lbkit.sim import Workload, identical_servers, simulate


def bench_simulator(repeat: int) -> list[float]:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        r = simulate(
            "power_of_two", identical_servers(100), Workload(requests=1_000_000), seed=i + 1
        )
        times.append(time.perf_counter() - t0)
        print(f"  run {i + 1}: {times[-1]:.2f} s (mean latency {r.mean_latency:.3f})")
    return times


def bench_picks(n_picks: int = 100_000) -> dict[str, float]:
    flows = [
        Flow(client_ip=f"198.18.{k % 256}.{k // 256 % 256}", client_port=k % 65536)
        for k in range(4096)
    ]
    out = {}
    for name in ALGORITHMS:
        lb = make_balancer(name, [Backend(f"b{i}") for i in range(100)])
        t0 = time.perf_counter()
        for k in range(n_picks):
            b = lb.pick(flows[k & 4095], k * 1e-4)
            lb.on_start(b, k * 1e-4)
            lb.on_finish(b, k * 1e-4 + 5e-5)
        out[name] = (time.perf_counter() - t0) / n_picks * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or '?'}"
    )
    print("simulate('power_of_two', 100 backends, 1,000,000 requests, load 0.9):")
    times = bench_simulator(args.repeat)
    print(
        f"  best {min(times):.2f} s, median {statistics.median(times):.2f} s "
        f"({1_000_000 / min(times) / 1000:.0f}k simulated requests/s)"
    )
    print("pick + on_start + on_finish over 100 backends (microseconds per request):")
    for name, us in bench_picks().items():
        print(f"  {name:22s} {us:6.2f} us")


if __name__ == "__main__":
    main()
