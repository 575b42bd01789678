"""``lbkit l4``: run the L4 forwarder on an interface until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from lbkit.algorithms import ALGORITHMS

from .config import ENGINES, MODES


def add_l4_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "l4",
        help="run the L4 forwarder (NAT, DSR or tunnel) on an interface",
        description=(
            "An L4 load balancer on a real interface: frames in over AF_PACKET, rewritten by "
            "lbkit's core (engine scapy or fast), or the kernel programmed with nftables DNAT "
            "(engine nftables, nat mode). Needs root (it runs as the l4 role in the lab)."
        ),
        epilog=(
            "example (inside the lab's l4 host):\n"
            "  lbkit l4 --iface eth0 --vip 10.0.1.200:80 --vip 10.0.1.200:7/udp --mode nat \\\n"
            "           --backend 10.0.1.10 --backend 10.0.1.11 --backend 10.0.1.12\n"
            "  with HTTP health checks every 0.5 s, down after 2 failures:\n"
            "  lbkit l4 --iface eth0 --vip 10.0.1.200:80 --backend 10.0.1.10 \\\n"
            "           --backend 10.0.1.11 --health http:/healthz \\\n"
            "           --health-interval 0.5 --health-fall 2\n"
            "admin API (inside the host): curl 127.0.0.1:9100/stats, /health, /metrics,\n"
            "  curl -X POST '127.0.0.1:9100/backends/10.0.1.11?state=down'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--iface", required=True, help="interface facing clients and backends")
    p.add_argument(
        "--vip",
        action="append",
        default=[],
        metavar="IP:PORT[/udp]",
        help="a virtual IP and port to balance (repeatable; one VIP address)",
    )
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="a backend (repeatable); without a port it serves every VIP port",
    )
    p.add_argument("--mode", choices=MODES, default="nat")
    p.add_argument("--engine", choices=ENGINES, default="fast")
    p.add_argument(
        "--algorithm",
        default="maglev",
        metavar="NAME",
        help=f"one of {', '.join(ALGORITHMS)} (default: maglev)",
    )
    p.add_argument(
        "--admin", default="127.0.0.1:9100", help="admin API address (default: %(default)s)"
    )
    h = p.add_argument_group(
        "health checks",
        "active checks sent from this box to each backend's own address (not the VIP); "
        "without --health there are none and only the admin API sets backend states",
    )
    h.add_argument(
        "--health",
        metavar="tcp|http[:PATH]",
        help="check type: tcp (connect) or http (GET PATH, default /healthz)",
    )
    h.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="port to probe on every backend (default: its port of each TCP service)",
    )
    h.add_argument(
        "--health-expect", metavar="STATUSES", help="http statuses that pass (default 200-399)"
    )
    h.add_argument(
        "--health-body", metavar="TEXT", help="text an http answer must contain (default: any)"
    )
    h.add_argument(
        "--health-interval", type=float, metavar="S", help="seconds between checks (default 2)"
    )
    h.add_argument(
        "--health-timeout", type=float, metavar="S", help="seconds a check may take (default 1)"
    )
    h.add_argument(
        "--health-rise", type=int, metavar="N", help="successes in a row to come up (default 2)"
    )
    h.add_argument(
        "--health-fall", type=int, metavar="N", help="failures in a row to go down (default 3)"
    )
    h.add_argument(
        "--health-jitter",
        type=float,
        metavar="F",
        help="spread of each wait, a fraction of the interval (default 0.1)",
    )
    p.set_defaults(func=_run)


HEALTH_FLAGS = ("port", "expect", "body", "interval", "timeout", "rise", "fall", "jitter")


def health_flags(args: argparse.Namespace) -> dict[str, object]:
    """The ``--health*`` flags given, by health key (``--health`` is ``type``)."""
    given: dict[str, object] = {}
    if args.health is not None:
        given["type"] = args.health
    for key in HEALTH_FLAGS:
        value = getattr(args, f"health_{key}")
        if value is not None:
            given[key] = value
    return given


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from lbkit.lab.roles.runner import loop_factory, until_signal

    from .config import from_cli
    from .forwarder import Forwarder

    cfg = from_cli(
        args.iface,
        args.vip,
        args.backend,
        mode=args.mode,
        engine=args.engine,
        algorithm=args.algorithm,
        admin=args.admin,
        health=health_flags(args),
    )
    fwd = Forwarder(cfg)

    def ready() -> None:
        ports = ", ".join(f"{s.port}/{s.proto}" for s in cfg.services)
        checks = f"health: {cfg.health.describe()}" if cfg.health else "no health checks"
        print(
            f"ready: {cfg.vip} ({ports}) {cfg.mode} via {cfg.engine} on {cfg.iface}; {checks}; "
            f"admin http://{cfg.admin[0]}:{cfg.admin[1]}/stats",
            flush=True,
        )

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(until_signal(fwd.serve(ready)))
    print("stopped; VIP and rules removed", file=sys.stderr)
    return 0
