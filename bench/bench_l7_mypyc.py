"""What compiling the L7 request path would buy: the same source built with mypyc, measured.

Issue 5's speed targets are out of reach for the pure-Python proxy (see
docs/benchmarks.md). Before anyone rewrites the request path in C or Cython,
this measures the cheapest compiled option: the unchanged modules of the
request path compiled by mypyc (mypy's compiler for annotated Python). It
copies ``lbkit/`` and ``bench/`` into a temporary folder, builds the
extensions there with mypy from a throw-away venv (PyPI), then runs
``bench_l7_inprocess.py`` and ``bench_l7_proxy.py`` (nginx, lbkit compiled,
aiohttp, the blind relay) against the copy. Nothing is installed in the project or left behind.

    .venv/bin/python bench/bench_l7_mypyc.py [--duration 5] [--rounds 3]

Needs gcc and the Python headers (the machine has both) and about a minute
for the build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MYPY = "mypy==2.4.1"
#: The modules a proxied request runs through (the router's pool and algorithm included).
MODULES = [
    "lbkit/l7/proxy.py",
    "lbkit/l7/exchange.py",
    "lbkit/l7/wire.py",
    "lbkit/l7/upstream.py",
    "lbkit/l7/router.py",
    "lbkit/l7/headerplan.py",
    "lbkit/l7/headers.py",
    "lbkit/l7/pools.py",
    "lbkit/l7/retry.py",
    "lbkit/algorithms/_smooth.py",
    "lbkit/algorithms/weighted_round_robin.py",
    "lbkit/health/passive.py",
]


def run(argv: list[str], **kw) -> None:
    print("$", " ".join(str(a) for a in argv), flush=True)
    subprocess.run(argv, check=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs (median)")
    args = ap.parse_args()
    if shutil.which("gcc") is None:
        print("bench_l7_mypyc: gcc not found (mypyc compiles C)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="lbkit-mypyc-"))
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
        for part in ("lbkit", "bench"):
            shutil.copytree(ROOT / part, tmp / part, ignore=ignore)
        (tmp / "tests").mkdir()
        shutil.copy(ROOT / "tests" / "_l7_stub.py", tmp / "tests")  # bench --router stub
        builder = tmp / "venv"
        venv.create(builder, with_pip=True)
        run([builder / "bin" / "pip", "install", "-q", MYPY, "setuptools"])
        run(
            [builder / "bin" / "mypyc", "--ignore-missing-imports", "--follow-imports=silent",
             *MODULES],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        built = sorted(p.name for p in (tmp / "lbkit").rglob("*.so"))
        print(f"compiled {len(built)} modules: {', '.join(built)}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(tmp)}
        py = sys.executable
        run([py, tmp / "bench" / "bench_l7_inprocess.py"], env=env)
        run(
            [py, tmp / "bench" / "bench_l7_proxy.py", "--router", "real", "--duration",
             str(args.duration), "--rounds", str(args.rounds)],
            env=env,
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
