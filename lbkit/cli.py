"""``lbkit``: the command line of the course and the lab.

A thin adapter: it parses arguments, calls the library and prints with rich.
A user's mistake gets one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lbkit import __version__
from lbkit.algorithms import ALGORITHMS, NGINX_DIRECTIVE
from lbkit.lab.errors import LabError

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line or its values; printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _number_list(kind: type, text: str) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run an algorithm in front of simulated servers and report latency",
        description=(
            "Discrete-event simulation of a balancer in front of FIFO servers. Defaults are "
            "the supermarket model (Mitzenmacher 2001): 100 identical servers, Poisson "
            "arrivals at 90%% load, exponential service of mean 1. Latencies are in units "
            "of the mean service time; theory says 10.0 for random and 2.61 for "
            "power_of_two."
        ),
        epilog=(
            "examples:\n"
            "  lbkit simulate --algorithm power_of_two\n"
            "  lbkit simulate --algorithm round_robin --backends 3 --speeds 1,1,0.25 --load 0.7\n"
            "  lbkit simulate --algorithm weighted_round_robin --backends 3 --weights 5,1,1 "
            "--speeds 5,1,1 --json\n"
            "  lbkit simulate --algorithm least_connections --plot lc.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--algorithm",
        "-a",
        default="power_of_two",
        metavar="NAME",
        help=f"one of: {', '.join(ALGORITHMS)} (default: power_of_two)",
    )
    p.add_argument(
        "--backends",
        "-n",
        type=_positive_int,
        default=100,
        metavar="N",
        help="number of servers (default: 100)",
    )
    p.add_argument(
        "--load",
        type=_positive_float,
        default=0.9,
        help="offered load as a fraction of total capacity (default: 0.9)",
    )
    p.add_argument(
        "--requests",
        type=_positive_int,
        default=200_000,
        metavar="N",
        help="requests to simulate (default: 200000)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument(
        "--arrivals",
        choices=["poisson", "bursty"],
        default="poisson",
        help="arrival process (default: poisson)",
    )
    p.add_argument(
        "--service",
        choices=["exponential", "deterministic", "lognormal", "bimodal"],
        default="exponential",
        help="service-time distribution (default: exponential)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="C",
        help="requests each server works on at once; 0 = unlimited (default: 1)",
    )
    p.add_argument(
        "--speeds",
        type=lambda t: _number_list(float, t),
        metavar="S1,S2,...",
        help="per-server speed, one value per backend (default: all 1)",
    )
    p.add_argument(
        "--weights",
        type=lambda t: _number_list(int, t),
        metavar="W1,W2,...",
        help="per-server weight, one value per backend (default: all 1)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="fraction of requests left out of latency figures (default: 0.1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also draw the result to this PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def _per_backend(values: list | None, n: int, flag: str, default: object) -> list:
    if values is None:
        return [default] * n
    if len(values) != n:
        raise UsageError(f"{flag} has {len(values)} values but --backends is {n}")
    return values


def _cmd_simulate(args: argparse.Namespace) -> int:
    from lbkit.sim import ServerSpec, Workload, simulate, supermarket_mean_time

    if args.algorithm not in ALGORITHMS:
        raise UsageError(
            f"--algorithm: unknown algorithm {args.algorithm!r}; choose one of: "
            f"{', '.join(ALGORITHMS)}"
        )
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    n = args.backends
    speeds = _per_backend(args.speeds, n, "--speeds", 1.0)
    weights = _per_backend(args.weights, n, "--weights", 1)
    try:
        servers = [
            ServerSpec(f"s{i + 1}", speed=speeds[i], weight=weights[i], workers=args.workers)
            for i in range(n)
        ]
        workload = Workload(
            requests=args.requests,
            load=args.load,
            arrivals=args.arrivals,
            service=args.service,
            warmup=args.warmup,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    err = Console(stderr=True)
    show_progress = not args.no_progress and not args.json and err.is_terminal
    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("sim", total=args.requests)
            result = simulate(
                args.algorithm,
                servers,
                workload,
                seed=args.seed,
                progress=lambda done, _total: bar.update(task, completed=done),
            )
    else:
        result = simulate(args.algorithm, servers, workload, seed=args.seed)

    theory = None
    supermarket = (
        args.arrivals == "poisson"
        and args.service == "exponential"
        and args.workers == 1
        and args.speeds is None
        and args.weights is None
        and args.load < 1
    )
    if supermarket and args.algorithm in ("random", "power_of_two"):
        theory = supermarket_mean_time(args.load, 1 if args.algorithm == "random" else 2)

    if args.plot:
        from lbkit.viz.algorithms import plot_sim_result

        try:
            plot_sim_result(result, path=str(args.plot))
        except OSError as e:
            raise UsageError(f"--plot {args.plot}: {e.strerror or e}") from None

    if args.json:
        data = result.to_dict()
        data["theory_mean_latency"] = theory
        print(json.dumps(data, indent=2))
        return 0
    _print_result(result, theory, args)
    return 0


def _print_result(result, theory: float | None, args: argparse.Namespace) -> None:
    out = Console()
    out.print(
        f"[bold]{result.algorithm}[/]: {len(result.backends)} backends, load {result.load}, "
        f"{result.requests:,} requests, {args.arrivals} arrivals, {args.service} service "
        f"(latency in mean service times)"
    )
    t = Table(show_edge=False)
    for col in ("mean", "p50", "p95", "p99", "max queue", "errors", "refused"):
        t.add_column(col, justify="right")
    t.add_row(
        f"{result.mean_latency:.3f}",
        f"{result.p50:.3f}",
        f"{result.p95:.3f}",
        f"{result.p99:.3f}",
        str(result.max_queue),
        str(result.errors),
        str(result.refused),
    )
    out.print(t)
    if theory is not None:
        gap = (result.mean_latency - theory) / theory * 100
        out.print(f"supermarket-model theory (n -> infinity): mean {theory:.3f} ({gap:+.1f}%)")
    served = [b.served for b in result.backends]
    if len(result.backends) <= 16:
        bt = Table(title="per backend", show_edge=False)
        for col in ("backend", "weight", "speed", "served", "share", "max queue", "mean latency"):
            bt.add_column(col, justify="right")
        total = sum(served) or 1
        for b in result.backends:
            bt.add_row(
                b.name,
                str(b.weight),
                f"{b.speed:g}",
                f"{b.served:,}",
                f"{b.served / total:.1%}",
                str(b.max_queue),
                f"{b.mean_latency:.3f}",
            )
        out.print(bt)
    else:
        out.print(
            f"served per backend: min {min(served):,}, max {max(served):,}, "
            f"mean {sum(served) / len(served):,.0f}"
        )
    if args.plot:
        out.print(f"plot written to {args.plot}")


def _cmd_algorithms(args: argparse.Namespace) -> int:
    t = Table(show_edge=False)
    t.add_column("name")
    t.add_column("nginx")
    t.add_column("what it does")
    for name, cls in ALGORITHMS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        t.add_row(name, NGINX_DIRECTIVE[name] or "-", doc)
    Console().print(t)
    return 0


def _add_course(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("course", help="start, stop or show the course (JupyterLab on 127.0.0.1)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".lab"),
        help="where the running course is recorded (default: .lab)",
    )
    p.add_argument(
        "--notebooks",
        type=Path,
        default=Path("notebooks"),
        help="folder to serve (default: notebooks)",
    )
    p.add_argument("--port", type=int, default=None, help="port (default: first free from 8888)")
    p.set_defaults(func=_cmd_course)


def _cmd_course(args: argparse.Namespace) -> int:
    from lbkit import course

    out = Console(soft_wrap=True)  # never break the URL across lines
    if args.action == "down":
        stopped = course.down(args.state_dir)
        with_state = args.state_dir
        if with_state.is_dir() and not any(with_state.iterdir()):
            with_state.rmdir()
        out.print("course stopped" if stopped else "course was not running")
        return 0
    if args.action == "status":
        running = course.status(args.state_dir)
        if not running:
            out.print("course: not running (start it with: make lab-up)")
            return 1
        out.print(f"course: running, pid {running.pid}\n  {running.url}")
        return 0
    try:
        running, started = course.up(args.state_dir, args.notebooks, port=args.port)
    except course.CourseError as e:
        raise UsageError(str(e)) from None
    verb = "started" if started else "already running"
    out.print(f"course {verb}: JupyterLab serving {running.root}")
    out.print(f"  open: [bold]{running.url}[/]")
    out.print(f"  log:  {running.log}")
    out.print("  stop: make lab-down")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lbkit",
        description="lbkit: learn load balancing, L4 vs L7, by running real load balancers.",
        epilog="Start with `make lab-up`, then open the URL it prints.",
    )
    parser.add_argument("--version", action="version", version=f"lbkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_simulate(sub)
    sub.add_parser("algorithms", help="list the balancing algorithms").set_defaults(
        func=_cmd_algorithms
    )
    _add_course(sub)
    from lbkit.lab.cli import add_lab_parser

    add_lab_parser(sub)
    from lbkit.l4.cli import add_l4_parser

    add_l4_parser(sub)
    from lbkit.l7.cli import add_l7_parser

    add_l7_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (UsageError, LabError) as e:
        print(f"lbkit {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
