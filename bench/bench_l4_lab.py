"""End to end through the L4 tier: wrk on the client, nginx on the backends (root, netns).

Run: .venv/bin/python bench/bench_l4_lab.py [--seconds 5] [--connections 32]

For each engine (and mode), the issue's topology comes up (client 10.0.1.100,
L4 box 10.0.1.2 with VIP 10.0.1.200, api1..3), nginx answers a fixed 200 on
port 8080 in every backend, and wrk measures from the client:

* keep-alive requests/s (HTTP/1.1, ``-c`` connections held open),
* new connections/s (``Connection: close``: every request a new TCP connection).

Also measured: the same wrk straight at one backend, with no L4 box between.
Numbers, not pass/fail; they go in docs/benchmarks.md. Every load run is bounded
by ``--seconds`` and stops by itself; the lab is taken down after each engine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import tomli_w

from lbkit._nginx import write_nginx_conf
from lbkit._proc import stop_group
from lbkit.l4.labtopo import VIP, l4_topology_data
from lbkit.lab import Lab

PORT = 8080
SERVER = '  server {{ listen {port} reuseport backlog=4096; location / {{ return 200 "ok\\n"; }} }}'
CASES = [("nat", "nftables"), ("nat", "fast"), ("nat", "scapy"), ("dsr", "fast")]


def topology(path: Path, mode: str, engine: str) -> Path:
    data = l4_topology_data(mode, engine)
    data["hosts"]["lb"]["options"]["services"] = [
        {"port": PORT, "backends": ["api1", "api2", "api3"]}
    ]
    path.write_text(tomli_w.dumps(data))
    tomllib.loads(path.read_text())
    return path


def start_nginx(lab: Lab, host: str, work: Path) -> subprocess.Popen:
    prefix = work / host
    write_nginx_conf(prefix, SERVER.format(port=PORT), error_level="error", worker_connections=4096)
    argv = [
        *lab.exec_prefix(host),
        shutil.which("nginx") or "/usr/sbin/nginx",
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-g",
        "daemon off;",
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def wait_http(lab: Lab, url: str) -> None:
    for _ in range(100):
        if lab.exec("client", ["curl", "-s", "-m", "1", url]).stdout == "ok\n":
            return
    raise RuntimeError(f"{url} does not answer")


def wrk(lab: Lab, url: str, seconds: int, connections: int, close: bool) -> float:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = lab.exec("client", argv, timeout=seconds + 30).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(found.group(1)) if found else 0.0


def run_case(mode: str, engine: str, seconds: int, connections: int, work: Path) -> dict:
    topo = topology(work / f"{mode}-{engine}.toml", mode, engine)
    lab = Lab(topo, provider="netns", state_dir=work / f"state-{mode}-{engine}")
    nginxes = []
    try:
        lab.up()
        # Many short connections: reuse TIME_WAIT ports and use the whole port range.
        lab.exec(
            "client",
            [
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; "
                "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range",
            ],
        )
        nginxes = [start_nginx(lab, h, work) for h in ("api1", "api2", "api3")]
        url = f"http://{VIP}:{PORT}/"
        wait_http(lab, url)
        result = {
            "mode": mode,
            "engine": engine,
            "keepalive": wrk(lab, url, seconds, connections, close=False),
            "new_conns": wrk(lab, url, seconds, connections, close=True),
        }
        if engine == "nftables":
            direct = f"http://10.0.1.10:{PORT}/"
            result["direct_keepalive"] = wrk(lab, direct, seconds, connections, close=False)
        return result
    finally:
        for proc in nginxes:
            stop_group(proc.pid)
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="lbkit-l4bench-") as tmp:
        for mode, engine in CASES:
            r = run_case(mode, engine, args.seconds, args.connections, Path(tmp))
            results.append(r)
            print(
                f"{mode:4} {engine:9} keep-alive {r['keepalive']:9.0f} req/s   "
                f"new connections {r['new_conns']:8.0f}/s",
                flush=True,
            )
            if "direct_keepalive" in r:
                print(
                    f"     (one backend, no L4 box: keep-alive {r['direct_keepalive']:.0f} req/s)"
                )
    kernel = next(r["keepalive"] for r in results if r["engine"] == "nftables")
    fast = next(r["keepalive"] for r in results if r["engine"] == "fast" and r["mode"] == "nat")
    print(f"fast path keep-alive = {fast / kernel:.0%} of the kernel's (nftables) (target >= 25%)")


if __name__ == "__main__":
    main()
