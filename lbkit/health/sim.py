"""Active health checking, simulated: the real checker, simulated time, no sockets.

:func:`simulate_health` puts N backends behind one or more balancers, each
with its own :class:`~lbkit.health.checker.HealthChecker` (the very object
the L4 box and the L7 router run), and drives everything with simulated
time: the checker's schedule and jitter decide when probes start, the
backends' *modes* decide what the probes and the clients' requests get,
and the checker's transitions take backends in and out of the balancer
(:mod:`lbkit.algorithms`, round robin by default). Nothing sleeps and
nothing reads a clock; a run is a function of its arguments and its seed.

A backend follows a timeline of the lab backend's modes
(:mod:`lbkit.lab.roles.backend_core`), e.g. ``api2`` turns ``error-500`` at
10 s and ``healthy`` again at 40 s. What a mode does (``T`` is the check's
``timeout``, ``C`` the client's, ``d`` the ``slow_delay``):

====================  ================  ===================  =====================
mode                  TCP check         HTTP check           client request
====================  ================  ===================  =====================
``healthy``           passes            passes (200)         ok
``slow``              passes            passes if d < T,     ok if d < C,
                                        else times out       else times out
``error-500``         passes            fails (500)          500
``healthz-500``       passes            fails (500)          ok (only /healthz
                                                             is broken)
``accept-no-answer``  passes            times out after T    times out after C
``refuse``            fails (refused)   fails (refused)      refused
====================  ================  ===================  =====================

That table is the seed's point ("a server can accept TCP but be returning
500s: L4 wouldn't notice"): under a TCP check an ``error-500`` backend
stays in rotation and its share of requests fails until the mode ends;
under an HTTP check the errors stop ``fall`` checks after the change.
``healthz-500`` is the opposite lesson: the check says down while real
requests would have worked (a health endpoint that lies).

Time model: a probe's verdict is decided by the backend's mode when the
probe *starts*; an answered probe takes ``probe_time``, one that times out
takes the check's ``timeout``; the result is recorded when the probe ends,
as :func:`lbkit.health.run_checks` does. A request is judged by the mode
when it is sent, gets no retry (an L7 tier's retries would hide some of
these errors, :mod:`lbkit.l7.retry`), and holds its backend until it ends
(so ``least_connections`` sees hung requests pile up). Several balancers
(``balancers=2``: two ALB nodes, say) each check every backend on their own
schedule and take turns at the client requests.

:func:`predict_detection` and :func:`predict_recovery` give the windows
the simulated (and measured, ``bench/bench_health.py``) delays must fall
in; :func:`detection_samples` and :func:`probe_load_samples` produce the
data behind :mod:`lbkit.viz.health`'s plots.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from lbkit.algorithms import Backend, Flow, NoBackendAvailable, make_balancer

from .checker import HealthChecker, HealthConfig, Transition, timeout_reason
from .probes import ProbeResult

if TYPE_CHECKING:
    import numpy as np

#: The lab backend's modes (:data:`lbkit.lab.roles.backend_core.MODES`).
MODES: tuple[str, ...] = (
    "healthy",
    "slow",
    "error-500",
    "healthz-500",
    "accept-no-answer",
    "refuse",
)
#: Check kinds: an L4 ``tcp`` connect or an L7 ``http`` GET.
CHECKS: tuple[str, ...] = ("tcp", "http")
#: What a client request can end as.
OUTCOMES: tuple[str, ...] = ("ok", "500", "refused", "timeout", "no backend")
#: Default duration of an answered probe: a loopback or same-rack round trip.
PROBE_TIME = 0.001


# ----------------------------------------------------------------- inputs
@dataclass(frozen=True, slots=True)
class SimBackend:
    """One backend: its name and the modes it goes through.

    ``changes`` holds ``(time, mode)`` pairs; before the first the backend
    is ``initial``. ``slow_delay`` is how long ``slow`` answers take.
    ``SimBackend("api2", [(10, "error-500"), (40, "healthy")])``.
    """

    name: str
    changes: Sequence[tuple[float, str]] = ()
    initial: str = "healthy"
    slow_delay: float = 1.0
    weight: int = 1

    def __post_init__(self) -> None:
        changes = tuple(sorted((float(t), m) for t, m in self.changes))
        for t, mode in ((0.0, self.initial), *changes):
            if mode not in MODES:
                raise ValueError(f"{self.name}: unknown mode {mode!r} ({', '.join(MODES)})")
            if not (t >= 0 and math.isfinite(t)):
                raise ValueError(f"{self.name}: a mode change needs a time >= 0, got {t!r}")
        if self.slow_delay < 0:
            raise ValueError(f"{self.name}: slow_delay must be >= 0")
        object.__setattr__(self, "changes", changes)

    def mode_at(self, t: float) -> str:
        """The mode at time ``t`` (a change at ``t`` has already happened)."""
        i = bisect_right(self.changes, t, key=lambda c: c[0])
        return self.changes[i - 1][1] if i else self.initial

    def spans(self, duration: float) -> list[tuple[float, float, str]]:
        """``(start, end, mode)`` covering ``[0, duration]``, equal neighbours merged."""
        out: list[tuple[float, float, str]] = []
        points = [(0.0, self.initial), *((t, m) for t, m in self.changes if t < duration)]
        for k, (t, mode) in enumerate(points):
            end = points[k + 1][0] if k + 1 < len(points) else duration
            if out and out[-1][2] == mode:
                out[-1] = (out[-1][0], end, mode)
            elif end > t or not out:
                out.append((t, end, mode))
        return out


@dataclass(frozen=True, slots=True)
class Traffic:
    """The clients: ``rate`` requests/s in total, ``fixed`` spacing or ``poisson``.

    ``timeout``: how long a client waits for an answer before giving up;
    ``service``: how long a healthy backend takes to answer.
    """

    rate: float = 50.0
    arrivals: str = "fixed"
    timeout: float = 5.0
    service: float = 0.005
    clients: int = 100

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate}")
        if self.arrivals not in ("fixed", "poisson"):
            raise ValueError("arrivals must be 'fixed' or 'poisson'")
        if not (self.timeout > 0 and self.service >= 0 and self.clients >= 1):
            raise ValueError("timeout must be > 0, service >= 0, clients >= 1")


def probe_outcome(
    check: str,
    mode: str,
    *,
    timeout: float,
    slow_delay: float = 1.0,
    probe_time: float = PROBE_TIME,
    path: str = "/healthz",
) -> ProbeResult:
    """What a ``check`` (``tcp``/``http``) of a backend in ``mode`` returns (module table).

    The reasons are the real probes' texts (:mod:`lbkit.health.probes`), so
    the simulated transitions read like the lab's.
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}; got {check!r}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if mode == "refuse":
        return ProbeResult(False, "connection refused", probe_time)
    if check == "tcp":
        return ProbeResult(True, "TCP connect ok", probe_time)
    took = probe_time + (slow_delay if mode == "slow" else 0.0)
    if mode == "accept-no-answer" or took >= timeout:
        return ProbeResult(False, timeout_reason(timeout), timeout)
    if mode in ("error-500", "healthz-500"):
        return ProbeResult(False, f"HTTP 500 on {path}", took)
    return ProbeResult(True, f"HTTP 200 on {path}", took)


def request_outcome(mode: str, traffic: Traffic, slow_delay: float = 1.0) -> tuple[str, float]:
    """``(outcome, seconds)`` of one client request to a backend in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if mode == "accept-no-answer":
        return "timeout", traffic.timeout
    if mode == "refuse":
        return "refused", traffic.service
    if mode == "error-500":
        return "500", traffic.service
    took = traffic.service + (slow_delay if mode == "slow" else 0.0)
    if took >= traffic.timeout:
        return "timeout", traffic.timeout
    return "ok", took


def scenario(
    mode: str = "error-500",
    start: float = 10.0,
    end: float | None = 40.0,
    *,
    names: Sequence[str] = ("api1", "api2", "api3"),
    failing: str = "api2",
) -> list[SimBackend]:
    """The course's case: ``failing`` is in ``mode`` from ``start`` to ``end``, others healthy."""
    if failing not in names:
        raise ValueError(f"{failing!r} is not one of {list(names)}")
    changes = [(start, mode)] + ([(end, "healthy")] if end is not None else [])
    return [SimBackend(n, changes if n == failing else ()) for n in names]


# ---------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One probe: which balancer sent it to which backend, when, and its verdict."""

    balancer: str
    backend: str
    start: float
    end: float
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One client request: sent at ``at`` through ``balancer`` to ``backend``."""

    at: float
    balancer: str
    backend: str | None
    outcome: str
    latency: float

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A checker transition, with the balancer whose checker made it."""

    balancer: str
    transition: Transition

    @property
    def at(self) -> float:
        return self.transition.at

    @property
    def backend(self) -> str:
        return self.transition.backend

    @property
    def new(self) -> str:
        return self.transition.new

    @property
    def message(self) -> str:
        return self.transition.message


@dataclass(frozen=True, slots=True)
class Outage:
    """A span in which a backend fails its checks or its clients, as one balancer saw it.

    ``start``/``end``: when the backend entered and left its failing modes
    (``end`` None: still failing when the run stopped). ``down_at``: the
    balancer's first DOWN transition for it after ``start`` (None: never
    detected, e.g. a TCP check of an ``error-500`` backend); ``up_at``: the
    UP transition after that. ``client_errors`` counts the failed requests
    this balancer sent it from ``start`` until the next outage (or the end),
    ``errors_after_down`` those sent after ``down_at``.
    """

    backend: str
    balancer: str
    modes: tuple[str, ...]
    start: float
    end: float | None
    down_at: float | None
    up_at: float | None
    client_errors: int
    errors_after_down: int

    @property
    def detected(self) -> bool:
        return self.down_at is not None

    @property
    def detection_delay(self) -> float | None:
        """Seconds from the mode change to the DOWN transition (None: not detected)."""
        return None if self.down_at is None else self.down_at - self.start

    @property
    def recovery_delay(self) -> float | None:
        """Seconds from the backend's return to a passing mode to its UP transition."""
        if self.up_at is None or self.end is None:
            return None
        return self.up_at - self.end


@dataclass
class HealthSimResult:
    """Everything a :func:`simulate_health` run saw. Times are simulated seconds.

    ``events``: every checker transition (with its message), in time order;
    ``probes``: every probe started; ``requests``: every client request.
    Methods answer the course's questions: :meth:`spans` (state timeline),
    :meth:`outages` (detection and recovery delays), :meth:`error_counts`
    (client errors over time), :meth:`probe_rate` (probe load).
    """

    check: str
    config: HealthConfig
    duration: float
    algorithm: str
    balancers: tuple[str, ...]
    backends: tuple[SimBackend, ...]
    traffic: Traffic | None
    probe_time: float
    seed: int
    events: list[HealthEvent] = field(default_factory=list)
    probes: list[ProbeRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)

    # --------------------------------------------------------------- lookup
    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]

    def backend(self, name: str) -> SimBackend:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(f"no backend named {name!r}")

    def _lb(self, balancer: str | None) -> str:
        if balancer is None:
            return self.balancers[0]
        if balancer not in self.balancers:
            raise KeyError(f"no balancer named {balancer!r} (have {', '.join(self.balancers)})")
        return balancer

    # ---------------------------------------------------------- transitions
    def transitions(
        self, balancer: str | None = None, backend: str | None = None
    ) -> list[Transition]:
        """One balancer's transitions (the first by default), optionally for one backend."""
        lb = self._lb(balancer)
        return [
            e.transition
            for e in self.events
            if e.balancer == lb and (backend is None or e.backend == backend)
        ]

    def messages(self, balancer: str | None = None) -> list[str]:
        """The transitions as log lines: ``api2 DOWN after 3 failures: HTTP 500 on /healthz``."""
        return [t.message for t in self.transitions(balancer)]

    def spans(self, backend: str, balancer: str | None = None) -> list[tuple[float, float, str]]:
        """``(start, end, state)`` of a backend's health state over ``[0, duration]``."""
        self.backend(backend)
        state, since = self.config.initial, 0.0
        out = []
        for t in self.transitions(balancer, backend):
            if t.at >= self.duration:
                break
            if t.at > since:
                out.append((since, t.at, state))
            state, since = t.new, t.at
        out.append((since, self.duration, state))
        return out

    def state_at(self, backend: str, t: float, balancer: str | None = None) -> str:
        """The health state (``unknown``/``up``/``down``) a balancer held at time ``t``."""
        state = self.config.initial
        for tr in self.transitions(balancer, backend):
            if tr.at > t:
                break
            state = tr.new
        return state

    # ------------------------------------------------------------- outages
    def fails(self, mode: str, slow_delay: float = 1.0) -> bool:
        """Whether ``mode`` fails this run's check or its clients' requests."""
        probe = probe_outcome(
            self.check, mode, timeout=self.config.timeout, slow_delay=slow_delay, probe_time=0.0
        )
        client = request_outcome(mode, self.traffic or Traffic(), slow_delay)[0]
        return not probe.ok or client != "ok"

    def outages(self, balancer: str | None = None, backend: str | None = None) -> list[Outage]:
        """Each span of failing modes per backend, with when this balancer noticed it."""
        lb = self._lb(balancer)
        out = []
        for b in self.backends:
            if backend is not None and b.name != backend:
                continue
            spans: list[list] = []  # [start, end, modes]
            for start, end, mode in b.spans(self.duration):
                if not self.fails(mode, b.slow_delay):
                    continue
                if spans and spans[-1][1] == start:
                    spans[-1][1] = end
                    spans[-1][2].append(mode)
                else:
                    spans.append([start, end, [mode]])
            moves = self.transitions(lb, b.name)
            for k, (start, end, modes) in enumerate(spans):
                stop = spans[k + 1][0] if k + 1 < len(spans) else math.inf
                down = next((t.at for t in moves if t.new == "down" and start <= t.at < stop), None)
                up = None
                if down is not None:
                    up = next(
                        (t.at for t in moves if t.new == "up" and max(down, end) <= t.at < stop),
                        None,
                    )
                mine = [
                    r
                    for r in self.requests
                    if r.balancer == lb and r.backend == b.name and start <= r.at < stop
                ]
                errors = [r for r in mine if not r.ok]
                after = [r for r in errors if down is not None and r.at >= down]
                out.append(
                    Outage(
                        backend=b.name,
                        balancer=lb,
                        modes=tuple(modes),
                        start=start,
                        end=end if end < self.duration else None,
                        down_at=down,
                        up_at=up,
                        client_errors=len(errors),
                        errors_after_down=len(after),
                    )
                )
        return out

    # -------------------------------------------------------------- clients
    def errors(self, backend: str | None = None) -> list[RequestRecord]:
        """The client requests that failed (every balancer), optionally to one backend."""
        return [r for r in self.requests if not r.ok and (backend is None or r.backend == backend)]

    def bins(self, width: float = 1.0) -> np.ndarray:
        """Bin edges ``0, width, ...`` covering the run."""
        import numpy as np  # here, so that importing lbkit.health stays light

        if not width > 0:
            raise ValueError("bin width must be > 0")
        return np.arange(0.0, self.duration + width, width)

    def error_counts(
        self, width: float = 1.0, backend: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, counts)``: failed client requests per ``width``-second bin, by send time."""
        import numpy as np

        edges = self.bins(width)
        counts, _ = np.histogram([r.at for r in self.errors(backend)], bins=edges)
        return edges, counts

    # --------------------------------------------------------------- probes
    def probe_counts(
        self, width: float = 1.0, balancer: str | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(edges, {backend: counts})``: probes started per bin (all balancers by default)."""
        import numpy as np

        edges = self.bins(width)
        counts = {}
        for name in self.names:
            starts = [
                p.start
                for p in self.probes
                if p.backend == name and (balancer is None or p.balancer == balancer)
            ]
            counts[name] = np.histogram(starts, bins=edges)[0]
        return edges, counts

    def probe_rate(self, backend: str | None = None, balancer: str | None = None) -> float:
        """Probes per second over the run: to ``backend`` (None: all), from ``balancer``
        (None: all balancers together)."""
        n = sum(
            1
            for p in self.probes
            if p.start < self.duration
            and (backend is None or p.backend == backend)
            and (balancer is None or p.balancer == balancer)
        )
        return n / self.duration

    def summary(self) -> str:
        """A few lines for a notebook: check, transitions, errors, delays, probe load."""
        lines = [
            f"{self.check.upper()} check, {len(self.balancers)} balancer(s), "
            f"{len(self.backends)} backends, {self.duration:g} s, "
            f"{len(self.requests)} requests, {len(self.errors())} failed"
        ]
        lines += [f"  {e.at:7.2f} s  [{e.balancer}] {e.message}" for e in self.events]
        for o in self.outages():
            det = "never" if o.detection_delay is None else f"{o.detection_delay:.2f} s"
            rec = "" if o.recovery_delay is None else f", back UP {o.recovery_delay:.2f} s after"
            lines.append(
                f"  {o.backend} {'/'.join(o.modes)} from {o.start:g} s: DOWN {det}{rec}; "
                f"{o.client_errors} client errors"
            )
        per = self.probe_rate() / max(len(self.backends), 1)
        lines.append(f"  probe load: {per:.2f} probes/s per backend, {self.probe_rate():.2f} total")
        return "\n".join(lines)


# --------------------------------------------------------------- the run
_PROBE_DONE, _REQUEST_DONE = 0, 1


def simulate_health(
    backends: Sequence[SimBackend | str],
    config: HealthConfig | None = None,
    *,
    check: str = "http",
    duration: float = 60.0,
    traffic: Traffic | None = Traffic(),  # frozen: sharing the default is safe
    algorithm: str = "round_robin",
    balancers: int = 1,
    probe_time: float = PROBE_TIME,
    path: str = "/healthz",
    seed: int = 0,
) -> HealthSimResult:
    """Run ``duration`` simulated seconds of health checks (and traffic) over ``backends``.

    ``check``: ``tcp`` or ``http`` (module table). ``traffic=None`` runs the
    checks alone (fast; enough for delays and probe load). ``balancers``
    independent balancers, each with its own checker and ``algorithm``
    instance, named ``lb1``, ``lb2``...; client requests take turns among
    them. Deterministic for a given ``seed`` (checker jitter, Poisson
    arrivals, randomised algorithms).
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}; got {check!r}")
    if not duration > 0 or balancers < 1 or probe_time < 0:
        raise ValueError("duration must be > 0, balancers >= 1, probe_time >= 0")
    specs = tuple(b if isinstance(b, SimBackend) else SimBackend(b) for b in backends)
    if not specs:
        raise ValueError("needs at least one backend")
    by_name = {b.name: b for b in specs}
    if len(by_name) != len(specs):
        raise ValueError("backend names must be unique")
    cfg = config or HealthConfig()
    lb_names = tuple(f"lb{i + 1}" for i in range(balancers))
    result = HealthSimResult(
        check=check,
        config=cfg,
        duration=float(duration),
        algorithm=algorithm,
        balancers=lb_names,
        backends=specs,
        traffic=traffic,
        probe_time=probe_time,
        seed=seed,
    )
    lbs = []
    checkers = []
    for i in range(balancers):
        lb = make_balancer(
            algorithm, [Backend(b.name, weight=b.weight) for b in specs], seed=seed + i
        )
        lbs.append(lb)
        checkers.append(
            HealthChecker(
                [b.name for b in specs],
                cfg,
                seed=seed * 1009 + i,
                on_change=lb.set_state,
                max_events=16,
            )
        )
        for name, state in checkers[-1].states().items():
            lb.set_state(name, state)

    rng = random.Random(f"traffic-{seed}")
    heap: list[tuple[float, int, int, tuple]] = []
    seq = 0

    def next_arrival(k: int, last: float) -> float:
        if traffic is None:
            return math.inf
        if traffic.arrivals == "fixed":
            return (k + 0.5) / traffic.rate
        return last + rng.expovariate(traffic.rate)

    k = 0
    arrival = next_arrival(0, 0.0)
    now = 0.0
    while True:
        t_due = min(ck.next_due(now) for ck in checkers)
        t_evt = heap[0][0] if heap else math.inf
        now = min(t_due, t_evt, arrival)
        if now >= duration:
            break
        if t_evt <= now:
            _, kind, _, payload = heapq.heappop(heap)
            if kind == _PROBE_DONE:
                i, name, res = payload
                transition = checkers[i].record(name, res.ok, res.reason, now)
                if transition is not None:
                    result.events.append(HealthEvent(lb_names[i], transition))
            else:
                i, b, ok, latency = payload
                lbs[i].on_finish(b, now, ok, latency)
            continue
        if t_due <= now:
            for i, ck in enumerate(checkers):
                for name in ck.due(now):
                    spec = by_name[name]
                    res = probe_outcome(
                        check,
                        spec.mode_at(now),
                        timeout=ck.machines[name].config.timeout,
                        slow_delay=spec.slow_delay,
                        probe_time=probe_time,
                        path=path,
                    )
                    result.probes.append(
                        ProbeRecord(lb_names[i], name, now, now + res.elapsed, res.ok, res.reason)
                    )
                    heapq.heappush(heap, (now + res.elapsed, _PROBE_DONE, seq, (i, name, res)))
                    seq += 1
            continue
        assert traffic is not None
        i = k % balancers
        lb = lbs[i]
        flow = None
        if lb.needs_flow:
            c = rng.randrange(traffic.clients)
            flow = Flow(client_ip=f"198.18.{c >> 8 & 255}.{c & 255}", client_port=1024 + k % 60000)
        try:
            b = lb.pick(flow, now)
        except NoBackendAvailable:
            result.requests.append(RequestRecord(now, lb_names[i], None, "no backend", 0.0))
        else:
            spec = by_name[b.name]
            outcome, latency = request_outcome(spec.mode_at(now), traffic, spec.slow_delay)
            result.requests.append(RequestRecord(now, lb_names[i], b.name, outcome, latency))
            lb.on_start(b, now)
            payload = (i, b, outcome == "ok", latency)
            heapq.heappush(heap, (now + latency, _REQUEST_DONE, seq, payload))
            seq += 1
        k += 1
        arrival = next_arrival(k, now)
    return result


def compare_checks(
    backends: Sequence[SimBackend | str],
    config: HealthConfig | None = None,
    checks: Iterable[str] = CHECKS,
    **options: object,
) -> dict[str, HealthSimResult]:
    """The same run under each check kind: ``{"tcp": result, "http": result}``."""
    return {c: simulate_health(backends, config, check=c, **options) for c in checks}  # type: ignore[arg-type]


# ------------------------------------------------------------ predictions
@dataclass(frozen=True, slots=True)
class DelayWindow:
    """Where a delay must fall (``low``..``high``, seconds) and its expected value."""

    low: float
    high: float
    mean: float

    def __contains__(self, delay: object) -> bool:
        return isinstance(delay, int | float) and self.low - 1e-9 <= delay <= self.high + 1e-9


def _residual(period: float, spread: float) -> float:
    """Mean wait from a random instant to the next start of checks ``period`` apart on
    average, uniformly spread over ``period ± spread`` (renewal theory: E[P²] / 2E[P])."""
    return (period * period + spread * spread / 3.0) / (2.0 * period)


def _streak_window(
    period: float, before: float, count: int, step: float, each: float, jitter: float
) -> DelayWindow:
    """When ``count`` checks in a row, of ``each`` seconds apiece, have all seen a change.

    Checks run ``period`` apart (``± jitter``) before the change, each previous one
    lasting ``before``; the first check to see the change starts 0 .. ``period(1+j) +
    before`` after it (mean: the residual wait, :func:`_residual`); the other
    ``count - 1`` follow ``step(1 ± j)`` apart, and each of the ``count`` takes ``each``.
    """
    steps = (count - 1) * step
    tail = count * each
    return DelayWindow(
        low=steps * (1 - jitter) + tail,
        high=period * (1 + jitter) + before + steps * (1 + jitter) + tail,
        mean=_residual(period + before, period * jitter) + steps + tail,
    )


def predict_detection(
    config: HealthConfig, *, timeouts: bool = False, probe_time: float = 0.0
) -> DelayWindow:
    """The window in which a backend that starts failing is marked DOWN.

    HAProxy's rule (configuration manual 5.2, ``fall``): a server is marked
    down after ``fall`` consecutive failed checks. Counting the time from
    the change to the DOWN transition, with ``I`` the interval, ``F`` the
    ``fastinter`` (default ``I``), ``j`` the jitter, ``d_ok`` how long a
    passing probe takes (``probe_time``) and ``d_fail`` how long a failing
    one takes (``probe_time``, or the ``timeout`` when the backend never
    answers: ``timeouts=True``):

    1. The first failing check *starts* 0 .. ``I(1+j) + d_ok`` after the
       change: the change falls anywhere between two checks of a healthy
       backend, which start ``d_ok + I(1 ± j)`` apart (a check in flight at
       the change was judged when it started, and passed).
    2. Each further check starts ``d_fail + F(1 ± j)`` after the previous
       one (lbkit's checker, like Envoy's timer, waits *after* a result;
       HAProxy uses ``fastinter`` while a server is "going down").
    3. The ``fall``-th failure is recorded ``d_fail`` after it starts.

    So: ``low = (fall-1) F (1-j) + fall d_fail`` and ``high = I(1+j) +
    d_ok + (fall-1) F (1+j) + fall d_fail``: roughly ``(fall-1 .. fall) x
    interval`` for a backend answering 500 or refusing, plus ``fall x
    timeout`` for one that hangs (each timed-out check adds its timeout,
    because the wait starts after the result; a scheduler on a fixed tick
    would add one timeout). The mean uses the mean residual wait of step 1,
    about half a period. Assumes the backend was up and passing before the
    change (not ``unknown``: then one failure takes it down).
    """
    d_fail = config.timeout if timeouts else probe_time
    fast = config.fastinter or config.interval
    return _streak_window(config.interval, probe_time, config.fall, fast, d_fail, config.jitter)


def predict_recovery(
    config: HealthConfig, *, timeouts: bool = False, probe_time: float = 0.0
) -> DelayWindow:
    """The window in which a DOWN backend that works again is marked UP.

    The mirror of :func:`predict_detection`: ``rise`` consecutive successes
    (HAProxy 5.2 ``rise``). While fully down the checks are
    ``downinter`` apart (default ``interval``) plus the failing probe's
    duration (the ``timeout`` when ``timeouts``); the first passing check
    starts 0 .. ``downinter(1+j) + d_fail`` after the backend recovers, the
    next ``rise-1`` come ``d_ok + fastinter(1 ± j)`` apart, and each takes
    ``d_ok`` (``probe_time``).
    """
    d_fail = config.timeout if timeouts else probe_time
    fast = config.fastinter or config.interval
    down = config.downinter or config.interval
    return _streak_window(down, d_fail, config.rise, fast, probe_time, config.jitter)


def predict_probe_load(
    config: HealthConfig, *, backends: int = 1, balancers: int = 1, probe_time: float = 0.0
) -> float:
    """Probes per second for ``backends`` healthy backends checked by ``balancers`` checkers.

    Each checker probes each backend once per ``interval + probe_time`` on
    average (the jitter is symmetric): the load is ``balancers x backends /
    interval``. Every balancer node checks every backend on its own (AWS
    Elastic Load Balancing, "Health checks for your target groups": each
    load balancer node checks the health of each target), so adding
    balancers multiplies the load the backends see.
    """
    return balancers * backends / (config.interval + probe_time)


# ----------------------------------------------------- data for the plots
@dataclass(frozen=True, slots=True)
class DetectionSample:
    """One detection delay (None: not detected) under ``config``, with its predicted window."""

    config: HealthConfig
    seed: int
    delay: float | None
    window: DelayWindow
    check: str = "http"
    mode: str = "error-500"

    @property
    def interval(self) -> float:
        return self.config.interval

    @property
    def fall(self) -> int:
        return self.config.fall


def _times_out(check: str, mode: str, config: HealthConfig, slow_delay: float = 1.0) -> bool:
    res = probe_outcome(check, mode, timeout=config.timeout, slow_delay=slow_delay, probe_time=0)
    return res.reason == timeout_reason(config.timeout)


def detection_samples(
    intervals: Iterable[float],
    falls: Iterable[int],
    *,
    seeds: Iterable[int] = range(10),
    base: HealthConfig | None = None,
    check: str = "http",
    mode: str = "error-500",
    probe_time: float = PROBE_TIME,
) -> list[DetectionSample]:
    """Simulated detection delays for each (interval, fall) and seed.

    One backend, checked alone (no traffic), goes into ``mode`` at a time
    drawn per seed uniformly over one interval, a few intervals after the
    start (so the change falls at every phase of the check schedule).
    """
    cfg0 = base or HealthConfig()
    falls = list(falls)
    seeds = list(seeds)
    out = []
    for interval in intervals:
        for fall in falls:
            cfg = replace(cfg0, interval=interval, fall=fall)
            window = predict_detection(
                cfg, timeouts=_times_out(check, mode, cfg), probe_time=probe_time
            )
            for seed in seeds:
                phase = random.Random(f"phase-{seed}-{interval}-{fall}").random()
                t0 = 3.0 * interval + phase * interval
                run = simulate_health(
                    [SimBackend("api1", [(t0, mode)])],
                    cfg,
                    check=check,
                    duration=t0 + window.high + interval,
                    traffic=None,
                    probe_time=probe_time,
                    seed=seed,
                )
                delay = run.outages()[0].detection_delay
                out.append(DetectionSample(cfg, seed, delay, window, check, mode))
    return out


@dataclass(frozen=True, slots=True)
class DetectionRow:
    """Detection delays summarised for one (interval, fall); delays in seconds."""

    interval: float
    fall: int
    runs: int
    detected: int
    median: float | None
    low: float | None
    high: float | None
    window: DelayWindow
    inside: int

    @property
    def delays_ok(self) -> bool:
        """Every run detected, every delay inside the predicted window."""
        return self.detected == self.runs and self.inside == self.runs


def detection_table(samples: Iterable[DetectionSample]) -> list[DetectionRow]:
    """One :class:`DetectionRow` per (interval, fall), sorted by interval then fall."""
    groups: dict[tuple[float, int], list[DetectionSample]] = {}
    for s in samples:
        groups.setdefault((s.interval, s.fall), []).append(s)
    rows = []
    for (interval, fall), group in sorted(groups.items()):
        delays = [s.delay for s in group if s.delay is not None]
        window = group[0].window
        rows.append(
            DetectionRow(
                interval=interval,
                fall=fall,
                runs=len(group),
                detected=len(delays),
                median=statistics.median(delays) if delays else None,
                low=min(delays) if delays else None,
                high=max(delays) if delays else None,
                window=window,
                inside=sum(s.delay is not None and s.delay in s.window for s in group),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class ProbeLoad:
    """Probe load measured (or simulated) for one (interval, balancers), in probes/s."""

    interval: float
    balancers: int
    backends: int
    per_backend: float
    total: float
    predicted_per_backend: float
    predicted_total: float


def probe_load_samples(
    intervals: Iterable[float],
    balancer_counts: Iterable[int] = (1, 2),
    *,
    backends: int = 3,
    base: HealthConfig | None = None,
    check: str = "http",
    periods: int = 50,
    probe_time: float = PROBE_TIME,
    seed: int = 0,
) -> list[ProbeLoad]:
    """Simulated probe load on healthy backends for each interval and number of balancers.

    Each run lasts ``periods`` intervals; ``per_backend`` is the mean over
    backends of the probes each received per second from all balancers.
    """
    cfg0 = base or HealthConfig()
    counts = list(balancer_counts)
    names = [f"api{i + 1}" for i in range(backends)]
    out = []
    for interval in intervals:
        cfg = replace(cfg0, interval=interval)
        for n in counts:
            run = simulate_health(
                names,
                cfg,
                check=check,
                duration=periods * interval,
                traffic=None,
                balancers=n,
                probe_time=probe_time,
                seed=seed,
            )
            total = run.probe_rate()
            predicted = predict_probe_load(
                cfg, backends=backends, balancers=n, probe_time=probe_time
            )
            out.append(
                ProbeLoad(
                    interval, n, backends, total / backends, total, predicted / backends, predicted
                )
            )
    return out
