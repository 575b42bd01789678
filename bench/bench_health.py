"""Health checks on loopback, for real: detection time and probe load (numbers, not pass/fail).

    .venv/bin/python bench/bench_health.py [--quick] [--budget 60] [--check http|tcp]
                                           [--mode error-500|refuse|accept-no-answer]
                                           [--plot health.png]

K lab backends (the backend role itself, :func:`lbkit.lab.roles.backend.serve_backend`,
all in one child process on uvloop) listen on 127.0.0.1. This process runs
lbkit's checker with real probes (:func:`lbkit.health.run_checks` with
:func:`~lbkit.health.tcp_check` or :func:`~lbkit.health.http_check`), as the
L4 and L7 tiers do. Two experiments:

1. **Detection time.** For each (interval, fall) and each repetition: a
   fresh checker, every backend UP, a random wait of 0..interval (so the
   change falls at any phase of the schedule), then ``api2`` is switched
   to ``--mode`` through its control socket and the time to its DOWN
   transition is measured. Compared with
   :func:`lbkit.health.predict_detection` (given the probes' measured
   duration) and with the simulation (:func:`lbkit.health.detection_samples`).
2. **Probe load.** One or two checkers (two balancers) probe the healthy
   backends with HTTP checks for a few seconds; each backend's own request
   counter (its control ``status``) gives the probes it received per second.

Everything is bounded: the run plans its repetitions to fit ``--budget``
seconds (60; 10 with ``--quick``), every wait has a deadline, and the child
stops on SIGTERM, when this process goes away (its stdin closes), or after
its own lifetime. It is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lbkit._net import free_ports
from lbkit.health import (
    DetectionSample,
    HealthChecker,
    HealthConfig,
    Probe,
    ProbeLoad,
    ProbeResult,
    Transition,
    detection_samples,
    detection_table,
    http_check,
    predict_detection,
    predict_probe_load,
    run_checks,
    tcp_check,
)
from lbkit.health.sim import probe_outcome
from lbkit.lab.control import send_control

IP = "127.0.0.1"
TARGET = "api2"
STARTUP_DEADLINE = 15.0  # seconds for the child's backends to be listening
console = Console(width=None if sys.stdout.isatty() else 110)


# ----------------------------------------------------------- the backends
def serve(spec: list[dict], lifetime: float) -> None:
    """Child process: serve the backends in ``spec`` until SIGTERM, stdin EOF or ``lifetime``."""
    from lbkit.lab.roles.backend import serve_backend
    from lbkit.lab.roles.runner import loop_factory

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def parent_gone() -> None:
            if not os.read(sys.stdin.fileno(), 4096):
                loop.remove_reader(sys.stdin.fileno())
                stop.set()

        loop.add_reader(sys.stdin.fileno(), parent_gone)
        pending = {b["name"] for b in spec}

        def ready(name: str) -> Callable[[], None]:
            def done() -> None:
                pending.discard(name)
                if not pending:
                    print("ready", flush=True)

            return done

        tasks = [
            asyncio.create_task(
                serve_backend(
                    b["name"],
                    [(IP, b["http"])],
                    (IP, b["line"]),
                    (IP, 0),
                    b["control"],
                    on_ready=ready(b["name"]),
                )
            )
            for b in spec
        ]
        try:
            async with asyncio.timeout(lifetime):
                await stop.wait()
        except TimeoutError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())


@dataclass
class Backends:
    """The child process and how to reach each backend."""

    proc: subprocess.Popen
    http: dict[str, int]
    control: dict[str, str]

    def set_mode(self, name: str, mode: str) -> None:
        reply = send_control(self.control[name], {"op": "set-mode", "mode": mode})
        if not reply.get("ok"):
            raise RuntimeError(f"{name}: set-mode {mode} failed: {reply}")

    def http_requests(self, name: str) -> int:
        return int(send_control(self.control[name], {"op": "status"})["requests"]["http"])


@contextlib.contextmanager
def backends(n: int, lifetime: float):
    """Start ``n`` backends ``api1..apiN`` in one child process; stop it by its pid after."""
    tmp = Path(tempfile.mkdtemp(prefix="lbkit-bh-"))
    ports = free_ports(2 * n)
    spec = [
        {
            "name": f"api{i + 1}",
            "http": ports[2 * i],
            "line": ports[2 * i + 1],
            "control": str(tmp / f"api{i + 1}.sock"),
        }
        for i in range(n)
    ]
    cmd = [sys.executable, __file__, "--serve", json.dumps(spec), "--lifetime", str(lifetime)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        line = ""
        while line.strip() != "ready":
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"backends did not start (exit code {proc.poll()})")
            if select.select([proc.stdout], [], [], left)[0]:
                line = proc.stdout.readline()
        yield Backends(
            proc, {b["name"]: b["http"] for b in spec}, {b["name"]: b["control"] for b in spec}
        )
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


# -------------------------------------------------------------- checking
class WatchedChecker(HealthChecker):
    """A checker that wakes a waiter whenever a result changes a health state."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.changed = asyncio.Event()
        self.log: list[Transition] = []

    def record(self, name: str, ok: bool, reason: str, now: float) -> Transition | None:
        transition = super().record(name, ok, reason, now)
        if transition is not None:
            self.log.append(transition)
            self.changed.set()
        return transition

    async def until(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``predicate()`` holds (checked at each transition) or the deadline."""
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.changed.wait()
        return True


@dataclass
class Counts:
    """Probes sent per backend, and how long the answered ones took."""

    sent: dict[str, int] = field(default_factory=dict)
    elapsed: list[float] = field(default_factory=list)

    def wrap(self, name: str, probe: Probe) -> Probe:
        async def counted(timeout: float) -> ProbeResult:
            self.sent[name] = self.sent.get(name, 0) + 1
            result = await probe(timeout)
            if result.ok:
                self.elapsed.append(result.elapsed)
            return result

        return counted


def make_probes(check: str, b: Backends, counts: Counts) -> dict[str, Probe]:
    make = http_check if check == "http" else tcp_check
    return {name: counts.wrap(name, make(IP, port)) for name, port in b.http.items()}


@contextlib.asynccontextmanager
async def checking(checker: HealthChecker, probes: dict[str, Probe]):
    """Run ``run_checks`` in the background while the block runs; cancel it after."""
    task = asyncio.create_task(run_checks(checker, probes, until=math.inf))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Detection:
    interval: float
    fall: int
    rep: int
    delay: float | None
    switch_rtt: float


async def detect_once(
    b: Backends, cfg: HealthConfig, check: str, mode: str, rep: int, counts: Counts
) -> Detection:
    names = list(b.http)
    checker = WatchedChecker(names, cfg, seed=rep, now=time.monotonic())
    rng = random.Random(f"phase-{rep}-{cfg.interval}-{cfg.fall}")
    window = predict_detection(cfg, timeouts=mode == "accept-no-answer")
    try:
        async with checking(checker, make_probes(check, b, counts)):
            up = await checker.until(
                lambda: all(checker.state(n) == "up" for n in names),
                time.monotonic() + cfg.interval * 2 + cfg.timeout + 2.0,
            )
            if not up:
                raise RuntimeError("backends did not all come UP")
            await asyncio.sleep(rng.uniform(0, cfg.interval))  # the change's phase, at random
            before = time.monotonic()
            await asyncio.to_thread(b.set_mode, TARGET, mode)
            switched = time.monotonic()
            found = await checker.until(
                lambda: checker.state(TARGET) == "down", switched + window.high + 2.0
            )
        delay = None
        if found:
            down = next(t for t in checker.log if t.backend == TARGET and t.new == "down")
            delay = down.at - switched
        return Detection(cfg.interval, cfg.fall, rep, delay, switched - before)
    finally:
        await asyncio.to_thread(b.set_mode, TARGET, "healthy")


async def measure_load(
    b: Backends, cfg: HealthConfig, balancers: int, seconds: float
) -> tuple[float, float]:
    """(received, sent) probes/s per backend with ``balancers`` checkers (HTTP checks)."""
    names = list(b.http)
    counts = Counts()
    checkers = [
        WatchedChecker(names, cfg, seed=100 + i, now=time.monotonic()) for i in range(balancers)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for ck in checkers:
            await stack.enter_async_context(checking(ck, make_probes("http", b, counts)))
        await asyncio.sleep(cfg.interval)  # past the first, spread-out checks
        t0, before = time.monotonic(), [await asyncio.to_thread(b.http_requests, n) for n in names]
        sent0 = dict(counts.sent)
        await asyncio.sleep(seconds)
        t1, after = time.monotonic(), [await asyncio.to_thread(b.http_requests, n) for n in names]
        sent1 = dict(counts.sent)
    span = t1 - t0
    received = statistics.mean(a - z for a, z in zip(after, before, strict=True)) / span
    sent = statistics.mean(sent1.get(n, 0) - sent0.get(n, 0) for n in names) / span
    return received, sent


# ------------------------------------------------------------------ plan
@dataclass
class Plan:
    pairs: list[tuple[float, int]]
    reps: int
    load_intervals: list[float]
    load_seconds: float


def plan(args: argparse.Namespace) -> Plan:
    """Fit the repetitions into the budget (expected time per run from the prediction).

    A run takes about: the first check (within jitter x interval), the random
    phase (interval / 2 on average), the predicted mean detection time, and
    a few ms for the mode switches. A probe-load window lasts at least 20
    intervals, so that counting whole probes gives the rate within ~5 %.
    """
    if args.quick:
        pairs, load, seconds = [(0.1, 2), (0.1, 3), (0.2, 3)], [0.1], 2.0
    else:
        pairs = [(0.1, 2), (0.1, 3), (0.25, 2), (0.25, 3), (0.5, 2), (0.5, 3)]
        load, seconds = [0.1, 0.25], 3.0
    load_time = sum(2 * (i + max(seconds, 20 * i) + 0.1) for i in load)
    per_rep = 0.0
    for interval, fall in pairs:
        cfg = HealthConfig(interval=interval, fall=fall, timeout=args.timeout)
        w = predict_detection(cfg, timeouts=args.mode == "accept-no-answer")
        per_rep += interval * (0.5 + cfg.jitter) + w.mean + 0.05
    reps = int((args.budget - 1.0 - load_time) / per_rep)
    reps = max(1, min(args.reps, reps)) if args.reps else max(1, reps)
    return Plan(pairs, reps, load, seconds)


# ------------------------------------------------------------------ main
def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {load} (machine shared)"
    )


async def bench(args: argparse.Namespace, p: Plan, b: Backends, stop_at: float):
    counts = Counts()
    detections: list[Detection] = []
    runs = [(rep, pair) for rep in range(p.reps) for pair in p.pairs]
    for k, (rep, (interval, fall)) in enumerate(runs):
        if time.monotonic() > stop_at:
            console.print(f"[yellow]budget spent: {len(runs) - k} detection runs skipped")
            break
        cfg = HealthConfig(interval=interval, fall=fall, timeout=args.timeout)
        detections.append(await detect_once(b, cfg, args.check, args.mode, rep, counts))
    loads = []
    for interval in p.load_intervals:
        for n in (1, 2):
            cfg = HealthConfig(interval=interval, timeout=args.timeout)
            window = max(p.load_seconds, 20 * interval)
            received, sent = await measure_load(b, cfg, n, window)
            loads.append((interval, n, received, sent))
    return detections, loads, counts


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def report(args, p: Plan, detections, loads, counts: Counts, k: int, took: float) -> None:
    probe_time = statistics.median(counts.elapsed) if counts.elapsed else 0.0
    timeouts = args.mode == "accept-no-answer"
    samples = []
    for d in detections:
        cfg = HealthConfig(interval=d.interval, fall=d.fall, timeout=args.timeout)
        window = predict_detection(cfg, timeouts=timeouts, probe_time=probe_time)
        samples.append(DetectionSample(cfg, d.rep, d.delay, window, args.check, args.mode))
    table = Table(
        title=f"{args.check.upper()} check, {TARGET} switched to {args.mode}: time to DOWN (s)"
    )
    columns = ("inter", "fall", "runs", "detected", "median", "min", "max")
    for col in (*columns, "predicted window", "predicted mean", "inside"):
        table.add_column(col, justify="right")
    rows = detection_table(samples)
    for r in rows:
        table.add_row(
            f"{r.interval:g}",
            str(r.fall),
            str(r.runs),
            str(r.detected),
            fmt(r.median),
            fmt(r.low),
            fmt(r.high),
            f"{r.window.low:.3f} - {r.window.high:.3f}",
            f"{r.window.mean:.3f}",
            f"{r.inside}/{r.runs}",
        )
    console.print(table)
    rtt = max((d.switch_rtt for d in detections), default=0.0)
    console.print(
        f"median probe time {probe_time * 1000:.2f} ms; "
        f"mode switch round trip at most {rtt * 1000:.1f} ms (the delay is counted from its end)"
    )
    load_table = Table(title=f"probe load, HTTP checks, {k} backends (probes/s per backend)")
    for col in ("inter", "balancers", "received", "sent", "predicted", "total received"):
        load_table.add_column(col, justify="right")
    load_rows = []
    for interval, n, received, sent in loads:
        cfg = HealthConfig(interval=interval)
        predicted = predict_probe_load(cfg, balancers=n, probe_time=probe_time)
        load_rows.append(
            ProbeLoad(interval, n, k, received, received * k, predicted, predicted * k)
        )
        load_table.add_row(
            f"{interval:g}",
            str(n),
            f"{received:.2f}",
            f"{sent:.2f}",
            f"{predicted:.2f}",
            f"{received * k:.2f}",
        )
    console.print(load_table)
    console.print(f"{len(detections)} detection runs, {took:.1f} s in all; {machine()}")
    if args.plot:
        from lbkit.viz.health import plot_detection_times

        simulated = detection_samples(
            sorted({i for i, _ in p.pairs}),
            sorted({f for _, f in p.pairs}),
            seeds=range(20),
            base=HealthConfig(timeout=args.timeout),
            check=args.check,
            mode=args.mode,
            probe_time=probe_time,
        )
        simulated = [s for s in simulated if (s.interval, s.fall) in set(p.pairs)]
        fig = plot_detection_times({"measured (loopback)": samples, "simulated": simulated})
        fig.axes[0].set_title(
            f"{args.check.upper()} check, backend switched to {args.mode}:\n"
            "measured on loopback, simulated, predicted"
        )
        fig.savefig(args.plot, dpi=110)
        console.print(f"plot written to {args.plot}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 10 s instead of 60 s")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (60; quick 10)")
    parser.add_argument("--check", choices=("http", "tcp"), default="http")
    parser.add_argument(
        "--mode", choices=("error-500", "refuse", "accept-no-answer"), default="error-500"
    )
    parser.add_argument("--timeout", type=float, default=0.5, help="probe timeout (s)")
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--reps", type=int, default=0, help="cap on repetitions (0: fit budget)")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG: measured vs predicted")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve), args.lifetime)
        return
    args.budget = args.budget or (10.0 if args.quick else 60.0)
    if probe_outcome(args.check, args.mode, timeout=args.timeout).ok:
        console.print(f"[yellow]a {args.check} check passes on {args.mode}: no DOWN is expected")
    p = plan(args)
    console.print(
        f"{len(p.pairs)} (interval, fall) pairs x {p.reps} repetitions, then probe load at "
        f"intervals {p.load_intervals} with 1 and 2 checkers; budget {args.budget:g} s"
    )
    start = time.monotonic()
    with backends(args.backends, lifetime=args.budget + 60.0) as b:
        from lbkit.lab.roles.runner import loop_factory

        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            detections, loads, counts = runner.run(bench(args, p, b, start + args.budget))
    report(args, p, detections, loads, counts, args.backends, time.monotonic() - start)


if __name__ == "__main__":
    main()
