"""The L7 proxy's Python cost per request, without sockets: what the live bench cannot split.

``bench_l7_proxy.py`` measures the whole process under wrk, kernel included.
This drives the same objects (:class:`lbkit.l7.proxy.ClientConnection`, the
router, :class:`lbkit.l7.upstream.UpstreamConnection`) through fake
transports: wrk's request in, the upstream request out, nginx's answer in,
the client's answer out, a keep-alive connection on both sides. It prints
microseconds per request (best of ``--repeat``) and, with ``--profile``, the
functions by own time (cProfile). The router is the one ``bench_l7_proxy.py``
uses (nginx semantics, ``proxy_http_version 1.1``, ``Connection ""``), or the
stand-in with ``--router stub``.

``--instructions`` counts CPU instructions per request instead, under
valgrind's callgrind: slow (about half a minute) but the same count on every
run, whatever else the machine is doing, so small changes can be compared.

Usage: ``.venv/bin/python bench/bench_l7_inprocess.py [--requests N] [--profile]
[--instructions] [--router stub]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_l7_proxy import IP, router_for  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from _l7_stub import FakeTransport  # noqa: E402

from lbkit.l7.model import Limits  # noqa: E402
from lbkit.l7.proxy import ClientConnection, Proxy  # noqa: E402
from lbkit.l7.upstream import UpstreamConnection  # noqa: E402

PORT = 8080
BACKENDS = [f"{IP}:{9001 + i}" for i in range(3)]
#: What wrk sends, and what an nginx backend with ``return 200 "ok"`` answers.
REQUEST = f"GET / HTTP/1.1\r\nHost: {IP}:{PORT}\r\n\r\n".encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 08:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\nok"
)


class Rig:
    """One client connection and one pooled upstream connection per backend."""

    def __init__(self, router: object) -> None:
        self.proxy = Proxy(router, Limits(), access_log=False)
        self.client = ClientConnection(self.proxy)
        self.client_tx = FakeTransport((IP, 40000), (IP, PORT))
        self.client.connection_made(self.client_tx)
        self.ups: list[UpstreamConnection] = []
        for i, address in enumerate(BACKENDS):
            up = UpstreamConnection(self.proxy.pool, address)
            up.connection_made(FakeTransport((IP, 9001 + i), (IP, 50000 + i)))
            self.proxy.pool.release(up)
            self.ups.append(up)

    def one(self) -> None:
        """One request through: client bytes in, upstream answer in."""
        self.client.data_received(REQUEST)
        for up in self.ups:
            if up.sink is not None:
                up.data_received(RESPONSE)
                return
        raise RuntimeError(f"no upstream request sent; the client got {self.client_tx.last!r}")

    def check(self) -> None:
        self.one()
        got = self.client_tx.last
        if not got.startswith(b"HTTP/1.1 200 OK\r\n") or not got.endswith(b"\r\n\r\nok"):
            raise RuntimeError(f"unexpected answer: {got!r}")


def per_request_us(rig: Rig, n: int, repeat: int) -> float:
    best = float("inf")
    one = rig.one
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


async def run(args: argparse.Namespace) -> None:
    router, what = router_for(BACKENDS, PORT, args.router)
    rig = Rig(router)
    rig.check()
    from lbkit.compiled import active

    print(f"router: {what}; request path {'compiled (make fast)' if active() else 'pure Python'}")
    print(f"upstream request:\n  {rig.ups[0].transport.last!r}")  # type: ignore[union-attr]
    print(f"client answer:\n  {rig.client_tx.last!r}")
    per_request_us(rig, 2000, 1)  # warm-up: caches filled
    us = per_request_us(rig, args.requests, args.repeat)
    print(f"{us:.2f} us per request in Python + llhttp (best of {args.repeat} x {args.requests})")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.requests):
            rig.one()
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(25)


def instructions(router: str) -> int:
    """Instructions per request: two callgrind runs, 1,000 and 6,000 requests, differenced
    (start-up, imports and the warm-up cancel out)."""
    counts = []
    for n in (1000, 6000):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             __file__, "--requests", str(n), "--repeat", "1", "--router", router],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
        counts.append(int(re.search(r"Collected : (\d+)", out.stderr).group(1)))  # type: ignore[union-attr]
    return (counts[1] - counts[0]) // 5000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--router", choices=["real", "stub"], default="real")
    ap.add_argument("--profile", action="store_true", help="cProfile, by own time")
    ap.add_argument(
        "--instructions", action="store_true", help="instructions per request (valgrind)"
    )
    args = ap.parse_args()
    if args.instructions:
        if shutil.which("valgrind") is None:
            print("bench_l7_inprocess: --instructions needs valgrind", file=sys.stderr)
            return 2
        print(f"{instructions(args.router)} instructions per request ({args.router} router)")
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
