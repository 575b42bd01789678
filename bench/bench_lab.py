"""How fast a lab comes up and goes down (numbers for docs/benchmarks.md).

Run as root for netns: .venv/bin/python bench/bench_lab.py [--repeat 3]
Each run brings labs/layered.toml (12 hosts, 2 segments) up, waits until every
host answers on its control socket, then takes it down.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from lbkit.lab import Lab


def once(topology: str, provider: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="lbkit-bench-") as state:
        lab = Lab(topology, provider=provider, state_dir=state)
        t0 = time.perf_counter()
        lab.up()
        t1 = time.perf_counter()
        lab.down()
        return t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    providers = ["netns", "local"] if os.geteuid() == 0 else ["local"]
    for topology in ("labs/basic.toml", "labs/layered.toml"):
        for provider in providers:
            ups, downs = zip(*(once(topology, provider) for _ in range(args.repeat)), strict=True)
            print(
                f"{topology:18} {provider:6} up: median {statistics.median(ups):.2f} s "
                f"(best {min(ups):.2f}), down: median {statistics.median(downs):.2f} s"
            )


if __name__ == "__main__":
    main()
