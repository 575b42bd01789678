"""L7 reverse proxies on loopback: nginx vs lbkit's proxy vs a plain aiohttp proxy.

One run, same machine, same nginx backends (each ``return 200 "ok"``, one
worker), wrk over keep-alive connections (``-t1 -c32 -d5s`` by default), one
worker per proxy. For each proxy: requests per second and CPU time per
request of the proxy's processes (utime+stime from /proc/PID/stat, before
and after the measured run, divided by the requests wrk completed).

    .venv/bin/python bench/bench_l7_proxy.py [--backends 3] [--duration 5]
                                             [--profile /tmp/l7.svg]

lbkit's proxy routes with the real router (``lbkit.l7.router``) when it is
there, else with the stand-in from ``tests/_l7_stub.py``; the table says
which, and whether the request path ran compiled (``make fast``, see
:mod:`lbkit.compiled`) or as Python (``make pure``). A blind TCP relay
(``bench/relay_proxy.py``: an L4 proxy at the socket level, bytes copied
unread) runs beside them as the floor: what uvloop and the kernel cost with
no HTTP work at all. ``--profile`` records lbkit's proxy
with py-spy during an extra wrk run (an SVG flame graph, plus the hottest
functions printed). Every process
started here is stopped by its pid at the end; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lbkit._net import free_ports, wait_listening
from lbkit._nginx import write_nginx_conf

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TICK = os.sysconf("SC_CLK_TCK")
IP = "127.0.0.1"

TARGETS = {  # lbkit vs the others (the brief): req/s and CPU per request
    "rps_vs_nginx": 0.7,
    "cpu_vs_nginx": 1.5,
    "rps_vs_aiohttp": 5.0,
}


def nginx_conf(prefix: Path, http_block: str) -> Path:
    return write_nginx_conf(prefix, http_block, error_level="error", worker_connections=4096)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path  # its stderr (a file: a pipe nobody reads would fill up and block it)

    def pids(self) -> list[int]:
        """The process and its children (nginx's master and worker)."""
        pid = self.popen.pid
        out = [pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            out += [int(c) for c in children]
        return out

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far, over the process and its children."""
        user = system = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                user += int(fields[11])  # utime (stat field 14)
                system += int(fields[12])  # stime (stat field 15)
        return user / TICK, system / TICK


@contextlib.contextmanager
def started(procs: list[Proc]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()


def start(procs: list[Proc], name: str, argv: list[str], port: int, logs: Path, **kw) -> Proc:
    log = logs / f"{name.replace(' ', '_')}.log"
    with log.open("wb") as err:
        popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, **kw)
    proc = Proc(name, popen, log)
    procs.append(proc)
    wait_listening(port, popen, 15.0, IP)
    return proc


def wrk(port: int, seconds: float, connections: int, path: str = "/") -> tuple[int, float, str]:
    """(requests, req/s, the summary) of one wrk run; errors fail the run."""
    out = subprocess.run(
        [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", f"http://{IP}:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on port {port}:\n{out}")
    return requests, rps, out


@dataclass
class Result:
    name: str
    rps: float
    us_per_request: float
    requests: int
    user_us: float  # of us_per_request, in user space
    sys_us: float  # in the kernel


def measure(proc: Proc, port: int, seconds: float, connections: int) -> Result:
    user0, sys0 = proc.cpu_seconds()
    requests, rps, _ = wrk(port, seconds, connections)
    user1, sys1 = proc.cpu_seconds()
    per = 1e6 / max(requests, 1)
    user, system = (user1 - user0) * per, (sys1 - sys0) * per
    return Result(proc.name, rps, user + system, requests, user, system)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# ------------------------------------------------------------------ lbkit's proxy process


def router_for(addresses: list[str], port: int, kind: str = "auto") -> tuple[object, str]:
    """The real router over ``addresses`` when lbkit.l7.router exists (or ``kind`` "stub"), else
    the stand-in."""
    try:
        if kind == "stub":
            raise ImportError("stub asked for")
        from lbkit.l7.cli import build_router
        from lbkit.l7.model import (
            Listen,
            Location,
            RouterConfig,
            ServerBlock,
            Upstream,
            UpstreamServer,
        )

        config = RouterConfig(
            servers=[
                ServerBlock(
                    listens=[Listen(port=port, address=IP)],
                    server_names=[""],
                    locations=[
                        Location(
                            pattern="/",
                            proxy_pass="http://backends",
                            set_headers=[("Connection", "")],
                            http_version="1.1",  # as nginx's proxy_http_version 1.1
                        )
                    ],
                )
            ],
            upstreams={"backends": Upstream("backends", [UpstreamServer(a) for a in addresses])},
        )
        return build_router(config), "real router (lbkit.l7.router)"
    except ImportError:
        sys.path.insert(0, str(ROOT / "tests"))
        from _l7_stub import StubRouter

        return StubRouter(addresses), "stub router (tests/_l7_stub.py)"


def serve_lbkit(port: int, addresses: list[str], kind: str) -> None:
    import asyncio

    from lbkit.compiled import active
    from lbkit.l7.model import Limits
    from lbkit.l7.proxy import serve_proxy
    from lbkit.lab.roles.runner import loop_factory

    router, what = router_for(addresses, port, kind)
    build = "compiled by mypyc (make fast)" if active() else "pure Python"
    print(f"{what}, request path {build}", file=sys.stderr, flush=True)
    main = serve_proxy(router, [(IP, port)], admin=None, limits=Limits(), access_log=False)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory()) as r:
        r.run(main)


# ------------------------------------------------------------------ the run


SYSCALL_LEAVES = ("write", "read", "writev", "readv", "epoll_pwait", "epoll_wait", "recv", "send")


def profile(proc: Proc, port: int, seconds: float, connections: int, svg: str) -> str:
    """py-spy (with native frames) on lbkit's proxy during a wrk run.

    Reports the share of samples inside I/O system calls, then, of the rest
    (user-space CPU), the Python functions by inclusive share; and writes a
    flame graph from a second, plain recording.
    """
    raw = svg + ".txt"
    spy = subprocess.Popen(
        ["py-spy", "record", "-o", raw, "--format", "raw", "--native", "--pid",
         str(proc.popen.pid), "--duration", str(int(seconds)), "--rate", "250"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wrk(port, seconds, connections)
        spy.wait(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.terminate()
            spy.wait()
    inclusive: dict[str, int] = {}
    io = user = 0
    for line in Path(raw).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        if frames[-1].split(" (")[0] in SYSCALL_LEAVES:
            io += n
            continue
        user += n
        for name in {f.split(" (")[0] for f in frames if ".py:" in f}:
            inclusive[name] = inclusive.get(name, 0) + n
    total = max(io + user, 1)
    lines = [
        f"py-spy --native: {io + user} wall-clock samples; {100 * io / total:.0f}% inside I/O "
        f"system calls (read/write/epoll; wall time, so waits for a CPU count too: the CPU "
        f"split is the table's user+sys), {100 * user / total:.0f}% in user space "
        f"(raw stacks: {raw})",
        "user-space samples by Python function (inclusive):",
    ]
    skip = {"<module>", "run", "Runner.run", "run_until_complete", "run_forever", "serve_lbkit",
            "main", "serve_proxy"}  # fmt: skip
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    for name, n in [kv for kv in ranked if kv[0] not in skip][:18]:
        lines.append(f"  {100 * n / max(user, 1):5.1f}%  {name}")
    spy2 = subprocess.Popen(
        ["py-spy", "record", "-o", svg, "--pid", str(proc.popen.pid), "--duration", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wrk(port, 3, connections)
        spy2.wait(timeout=30)
    finally:
        if spy2.poll() is None:
            spy2.terminate()
            spy2.wait()
    lines.append(f"flame graph: {svg}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", type=int, default=3, help="nginx backends (default 3)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument(
        "--rounds", type=int, default=3, help="measured runs per proxy, interleaved (median)"
    )
    ap.add_argument("--profile", metavar="SVG", help="py-spy lbkit's proxy into this flame graph")
    ap.add_argument(
        "--router",
        choices=["auto", "real", "stub"],
        default="auto",
        help="lbkit's router: the real one if present (auto), or the stand-in (stub)",
    )
    ap.add_argument(
        "--only",
        choices=["nginx", "lbkit", "aiohttp", "relay"],
        action="append",
        help="run only these (repeatable); default: all four",
    )
    ap.add_argument("--serve-lbkit", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_lbkit:
        serve_lbkit(int(args.serve_lbkit[0]), args.serve_lbkit[1:], args.router)
        return 0
    only = set(args.only or ["nginx", "lbkit", "aiohttp", "relay"])

    tmp = Path(tempfile.mkdtemp(prefix="lbkit-bench-l7-"))
    ports = free_ports(args.backends + 4, IP)
    backend_ports = ports[: args.backends]
    p_nginx, p_lbkit, p_aiohttp, p_relay = ports[args.backends :]
    addresses = [f"{IP}:{p}" for p in backend_ports]
    procs: list[Proc] = []
    proxies: list[tuple[Proc, int]] = []
    runs: dict[str, list[Result]] = {}
    notes: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lbkit = None
    try:
        with started(procs):
            for i, port in enumerate(backend_ports):
                conf = nginx_conf(
                    tmp / f"b{i}",
                    f'  server {{ listen {IP}:{port}; location / {{ return 200 "ok"; }} }}',
                )
                start(procs, f"backend{i}", [NGINX, "-p", str(tmp), "-c", str(conf),
                                             "-g", "daemon off;"], port, tmp)  # fmt: skip
            if "nginx" in only:
                servers = "".join(f"server {a}; " for a in addresses)
                conf = nginx_conf(
                    tmp / "proxy",
                    f"  upstream backends {{ {servers}keepalive 32; }}\n"
                    f"  server {{ listen {IP}:{p_nginx}; location / {{ proxy_pass http://backends;"
                    ' proxy_http_version 1.1; proxy_set_header Connection ""; } }',
                )
                argv = [NGINX, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
                nginx = start(procs, "nginx 1.22 proxy", argv, p_nginx, tmp)
                proxies.append((nginx, p_nginx))
            if "lbkit" in only:
                argv = [PY, __file__, "--router", args.router, "--serve-lbkit", str(p_lbkit),
                        *addresses]  # fmt: skip
                lbkit = start(procs, "lbkit proxy", argv, p_lbkit, tmp, env=env)
                proxies.append((lbkit, p_lbkit))
            if "aiohttp" in only:
                argv = [PY, str(ROOT / "bench" / "aiohttp_proxy.py"), str(p_aiohttp), *addresses]
                aio = start(procs, "aiohttp proxy", argv, p_aiohttp, tmp, env=env)
                proxies.append((aio, p_aiohttp))
            if "relay" in only:
                argv = [PY, str(ROOT / "bench" / "relay_proxy.py"), str(p_relay), *addresses]
                relay = start(procs, "TCP relay (L4)", argv, p_relay, tmp, env=env)
                proxies.append((relay, p_relay))
            for _, port in proxies:
                wrk(port, 1, args.connections)  # warm-up: pools filled, caches hot
            for _ in range(args.rounds):  # interleaved, so a noisy moment hits every proxy alike
                for proc, port in proxies:
                    result = measure(proc, port, args.duration, args.connections)
                    runs.setdefault(proc.name, []).append(result)
            if args.profile and lbkit is not None:
                notes.append(profile(lbkit, p_lbkit, args.duration, args.connections, args.profile))
            if lbkit is not None:
                lbkit.popen.terminate()
                lbkit.popen.wait(timeout=10)
                kind = lbkit.log.read_text().strip().splitlines()
                notes.insert(0, f"lbkit routes with: {kind[0] if kind else '?'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"wrk -t1 -c{args.connections} -d{args.duration:g}s keep-alive, "
          f"{args.backends} nginx backends (return 200 \"ok\"), one worker per proxy, "
          f"{os.cpu_count()} CPUs; median of {args.rounds} interleaved runs (min-max)")  # fmt: skip
    print(
        f"{'proxy':<18} {'req/s':>8} {'(min-max)':>15} {'CPU us/req':>11} {'(min-max)':>13}"
        f" {'user+sys':>12}"
    )
    med: dict[str, tuple[float, float]] = {}
    for name, rs in runs.items():
        rps = [r.rps for r in rs]
        cpu = [r.us_per_request for r in rs]
        split = f"{median([r.user_us for r in rs]):.1f}+{median([r.sys_us for r in rs]):.1f}"
        med[name.split()[0]] = (median(rps), median(cpu))
        print(
            f"{name:<18} {median(rps):>8.0f} {f'({min(rps):.0f}-{max(rps):.0f})':>15} "
            f"{median(cpu):>11.1f} {f'({min(cpu):.1f}-{max(cpu):.1f})':>13} {split:>12}"
        )
    if "lbkit" in med:
        lb_rps, lb_cpu = med["lbkit"]
        print("\nlbkit vs target (medians):")
        checks = []
        if "nginx" in med:
            ng_rps, ng_cpu = med["nginx"]
            checks += [
                ("req/s vs nginx  ", lb_rps / ng_rps, ">=", TARGETS["rps_vs_nginx"]),
                ("CPU/req vs nginx", lb_cpu / ng_cpu, "<=", TARGETS["cpu_vs_nginx"]),
            ]
        if "aiohttp" in med:
            checks.append(("req/s vs aiohttp", lb_rps / max(med["aiohttp"][0], 1e-9), ">=",
                           TARGETS["rps_vs_aiohttp"]))  # fmt: skip
        for label, ratio, op, target in checks:
            ok = ratio >= target if op == ">=" else ratio <= target
            print(f"  {label} {ratio:5.2f}x  (target {op} {target}x) {'ok' if ok else 'MISSED'}")
        if "TCP" in med:
            print(f"  CPU/req vs the blind TCP relay {lb_cpu / med['TCP'][1]:.2f}x (no target: the "
                  "floor, what reading HTTP adds)")  # fmt: skip
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
