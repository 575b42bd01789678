"""Active health checking, sans-I/O: results in, states and transitions out.

A :class:`BackendHealth` is one backend's state machine. It is fed probe
results (``ok``, a ``reason``, the time) and answers with the health state
``unknown``, ``up`` or ``down``, emitting a :class:`Transition` when that
changes. A :class:`HealthChecker` holds one machine per backend, schedules
the probes (interval, jitter, HAProxy's ``fastinter``/``downinter``) and
combines health with the operator's choice (``ready``, ``drain``,
``maint``) into the state a balancer takes: ``up``, ``down`` or ``drain``
(:meth:`lbkit.algorithms.Balancer.set_state`). No socket, no clock: the
probes live in :mod:`lbkit.health.probes` and call :meth:`HealthChecker.record`.

Sources:

* HAProxy configuration manual, section 5.2 "Server and default-server
  options": ``check``, ``inter``, ``fastinter``, ``downinter``, ``rise``
  (default 2), ``fall`` (default 3), ``init-state``; the global
  ``spread-checks`` for the jitter.
* Envoy, ``arch_overview/upstream/health_checking`` and the ``HealthCheck``
  proto: ``healthy_threshold``/``unhealthy_threshold``, ``interval``,
  ``timeout``, ``interval_jitter_percent``; "during startup, only a single
  successful health check is required to mark a host healthy".

The state machine (``rise`` successes in a row bring a backend up, ``fall``
failures in a row take it down; counters are consecutive, one result of the
other kind resets them):

============  ===========================  ==========================
state         result                       next state
============  ===========================  ==========================
``unknown``   success                      ``up`` (after 1 success)
``unknown``   failure                      ``down`` (after 1 failure)
``up``        failure, ``fall`` in a row   ``down``
``down``      success, ``rise`` in a row   ``up``
anything      anything else                unchanged
============  ===========================  ==========================

``unknown`` counts as up for traffic, and the first result decides. That
is Envoy's startup rule for the way up (one success) and HAProxy's default
``init-state up`` for the way down (available at once, and DOWN
immediately if the first check fails), so a backend that is dead at start gets at
most the traffic of one check interval. ``HealthConfig(initial="up")``
starts up and needs ``fall`` failures (HAProxy ``init-state fully-up``);
``initial="down"`` starts down and needs ``rise`` successes (``fully-down``).

The operator's choice combined with health (:data:`EFFECTIVE`):

=========  =========  =========  =========
admin      unknown    up         down
=========  =========  =========  =========
ready      up         up         down
drain      drain      drain      down
maint      down       down       down
=========  =========  =========  =========

A failed check wins over drain: ``drain`` lets the flows a backend already
has finish there, which is pointless when the checks say it cannot serve
them (the L4 box re-picks a backend for the flows of a ``down`` one, as
IPVS ``expire_nodest_conn``). Checks keep running in every admin state, so
health is known the moment the operator sets ``ready`` again.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from lbkit.algorithms import Balancer

Health = Literal["unknown", "up", "down"]
Admin = Literal["ready", "drain", "maint"]
HEALTH_STATES: tuple[str, ...] = ("unknown", "up", "down")
ADMIN_STATES: tuple[str, ...] = ("ready", "drain", "maint")

#: (admin, health) -> the state a balancer is given. See the module docstring.
EFFECTIVE: dict[tuple[str, str], str] = {
    ("ready", "unknown"): "up",
    ("ready", "up"): "up",
    ("ready", "down"): "down",
    ("drain", "unknown"): "drain",
    ("drain", "up"): "drain",
    ("drain", "down"): "down",
    ("maint", "unknown"): "down",
    ("maint", "up"): "down",
    ("maint", "down"): "down",
}


def timeout_reason(timeout: float) -> str:
    """The reason recorded for a probe that did not finish: ``timeout after 1.0 s``."""
    return f"timeout after {float(timeout)} s"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """How one backend is checked. Defaults are HAProxy's ``rise 2 fall 3 inter 2s``.

    ``timeout``: seconds a probe may take before it counts as a failure.
    ``jitter``: each wait is ``interval x (1 + jitter x u)``, ``u`` uniform
    in [-1, 1) (HAProxy ``spread-checks``, a percentage there, a fraction
    here). ``fastinter``: the interval while the state is in transition
    (``unknown``, up with failures counted, down with successes counted);
    ``downinter``: while fully down. Both default to ``interval`` (HAProxy
    5.2). ``history``: how many recent results each backend keeps.
    """

    rise: int = 2
    fall: int = 3
    interval: float = 2.0
    timeout: float = 1.0
    jitter: float = 0.1
    fastinter: float | None = None
    downinter: float | None = None
    initial: Health = "unknown"
    history: int = 16

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be >= 1")
        for name in ("interval", "timeout", "fastinter", "downinter"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds; got {value!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter is a fraction of the interval in [0, 1); got {self.jitter}")
        if self.initial not in HEALTH_STATES:
            raise ValueError(f"initial must be one of {', '.join(HEALTH_STATES)}")
        if self.history < 1:
            raise ValueError("history must be >= 1")


@dataclass(frozen=True, slots=True)
class Result:
    """One probe result as recorded: when, whether it passed, and why."""

    at: float
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Transition:
    """A change worth telling a human: health, operator or outlier ejection.

    ``old``/``new`` are the states before and after (health states for the
    checker, ``ready``/``drain``/``maint`` for the operator, ``active``/
    ``ejected`` for :mod:`lbkit.health.outlier`); ``message`` is the line
    for the log, e.g. ``api2 DOWN after 3 failures: HTTP 500 on /healthz``.
    """

    backend: str
    old: str
    new: str
    at: float
    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


class BackendHealth:
    """One backend's health state machine (see the module docstring's table).

    ``successes``/``failures`` count consecutive results; ``last_change``
    is the time of the last transition (None before the first);
    ``history`` holds the last ``config.history`` results.
    """

    __slots__ = ("config", "failures", "history", "last_change", "name", "state", "successes")

    def __init__(self, name: str, config: HealthConfig | None = None) -> None:
        self.name = name
        self.config = config or HealthConfig()
        self.state: str = self.config.initial
        self.successes = 0
        self.failures = 0
        self.last_change: float | None = None
        self.history: deque[Result] = deque(maxlen=self.config.history)

    def result(self, ok: bool, reason: str, now: float) -> Transition | None:
        """Record one probe result; return the transition it caused, if any."""
        self.history.append(Result(now, ok, reason))
        if ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        old = self.state
        if ok and (old == "unknown" or (old == "down" and self.successes >= self.config.rise)):
            self.state = "up"
            message = f"{self.name} UP after {_plural(self.successes, 'success', 'successes')}"
        elif not ok and (old == "unknown" or (old == "up" and self.failures >= self.config.fall)):
            self.state = "down"
            count = _plural(self.failures, "failure", "failures")
            message = f"{self.name} DOWN after {count}: {reason}"
        else:
            return None
        self.last_change = now
        return Transition(self.name, old, self.state, now, reason, message)

    def interval(self) -> float:
        """The base wait before the next check, by state (HAProxy inter/fastinter/downinter)."""
        cfg = self.config
        if self.state == "down" and self.successes == 0:
            return cfg.downinter or cfg.interval
        if (
            self.state == "unknown"
            or (self.state == "up" and self.failures)
            or (self.state == "down" and self.successes)
        ):
            return cfg.fastinter or cfg.interval
        return cfg.interval

    def __repr__(self) -> str:
        return (
            f"<BackendHealth {self.name} {self.state} "
            f"ok={self.successes}/{self.config.rise} fail={self.failures}/{self.config.fall}>"
        )


class HealthChecker:
    """Health machines and probe schedule for many backends, plus the operator's choice.

    The driver loop asks :meth:`due` which backends to probe now (they are
    then *in flight* and not due again until their result is recorded),
    sleeps until :meth:`next_due`, and hands each result to :meth:`record`.
    After a result the next check is due ``interval x (1 + jitter x u)``
    later (the wait starts when the result arrives, as Envoy's timer does,
    so one backend never has two probes in flight). A new backend's first
    check is due at once, plus up to ``jitter x interval`` so that many
    backends added together are not all probed in the same instant. The
    jitter is drawn from ``random.Random(seed)``: a run is reproducible.

    ``on_change(name, state)`` is called whenever a backend's
    :meth:`effective_state` changes (pass ``balancer.set_state``);
    :meth:`apply` pushes every state at once. ``events`` keeps the last
    ``max_events`` transitions, health and operator alike.
    """

    def __init__(
        self,
        backends: Iterable[str] = (),
        config: HealthConfig | None = None,
        *,
        seed: int = 0,
        now: float = 0.0,
        on_change: Callable[[str, str], object] | None = None,
        max_events: int = 256,
    ) -> None:
        self.config = config or HealthConfig()
        self.rng = random.Random(seed)
        self.on_change = on_change
        self.events: deque[Transition] = deque(maxlen=max_events)
        self.machines: dict[str, BackendHealth] = {}
        self._admin: dict[str, str] = {}
        self._next: dict[str, float] = {}
        self._inflight: set[str] = set()
        for name in backends:
            self.add(name, now)

    # ------------------------------------------------------------ membership
    @property
    def names(self) -> list[str]:
        return list(self.machines)

    def add(self, name: str, now: float = 0.0, config: HealthConfig | None = None) -> BackendHealth:
        """Start checking ``name`` (first check due at ``now`` plus a jitter spread)."""
        if name in self.machines:
            raise ValueError(f"{name!r} is already checked")
        machine = BackendHealth(name, config or self.config)
        self.machines[name] = machine
        self._admin[name] = "ready"
        cfg = machine.config
        self._next[name] = now + self.rng.random() * cfg.jitter * cfg.interval
        return machine

    def remove(self, name: str) -> None:
        """Stop checking ``name``; a result still in flight for it will be refused."""
        self._machine(name)
        del self.machines[name], self._admin[name], self._next[name]
        self._inflight.discard(name)

    # ------------------------------------------------------------ scheduling
    def due(self, now: float) -> list[str]:
        """Backends to probe now, earliest first; they are in flight until recorded."""
        ready = [n for n, t in self._next.items() if t <= now and n not in self._inflight]
        ready.sort(key=lambda n: (self._next[n], n))
        self._inflight.update(ready)
        return ready

    def next_due(self, now: float) -> float:
        """When :meth:`due` next has something (never before ``now``; inf if all in flight)."""
        times = [t for n, t in self._next.items() if n not in self._inflight]
        return max(now, min(times)) if times else math.inf

    def in_flight(self) -> set[str]:
        return set(self._inflight)

    def abandon(self, name: str, now: float) -> None:
        """Forget a probe in flight without a result (driver stopped): due again at ``now``."""
        self._machine(name)
        self._inflight.discard(name)
        self._next[name] = now

    def _wait(self, machine: BackendHealth) -> float:
        jitter = machine.config.jitter
        return machine.interval() * (1.0 + jitter * (2.0 * self.rng.random() - 1.0))

    # --------------------------------------------------------------- results
    def record(self, name: str, ok: bool, reason: str, now: float) -> Transition | None:
        """A probe of ``name`` finished at ``now``; schedules the next one.

        Returns the health transition, if any (also appended to ``events``
        and, when the effective state changes, passed to ``on_change``).
        """
        machine = self._machine(name)
        before = self.effective_state(name)
        transition = machine.result(ok, reason, now)
        self._inflight.discard(name)
        self._next[name] = now + self._wait(machine)
        if transition is not None:
            self.events.append(transition)
            self._notify(name, before)
        return transition

    def record_timeout(self, name: str, now: float) -> Transition | None:
        """The probe of ``name`` took longer than its ``timeout``: a failure."""
        return self.record(name, False, timeout_reason(self._machine(name).config.timeout), now)

    # ------------------------------------------------------------- operator
    def set_admin(self, name: str, admin: str, now: float = 0.0) -> str:
        """The operator sets ``ready``, ``drain`` or ``maint``; returns the effective state."""
        if admin not in ADMIN_STATES:
            raise ValueError(f"admin state must be one of {', '.join(ADMIN_STATES)}; got {admin!r}")
        self._machine(name)
        old = self._admin[name]
        if old != admin:
            before = self.effective_state(name)
            self._admin[name] = admin
            message = f"{name} {admin.upper()} (operator)"
            self.events.append(Transition(name, old, admin, now, "operator", message))
            self._notify(name, before)
        return self.effective_state(name)

    def admin(self, name: str) -> str:
        self._machine(name)
        return self._admin[name]

    # --------------------------------------------------------------- output
    def state(self, name: str) -> str:
        """The health state: ``unknown``, ``up`` or ``down``."""
        return self._machine(name).state

    def effective_state(self, name: str) -> str:
        """What the balancer should be told: ``up``, ``down`` or ``drain`` (:data:`EFFECTIVE`)."""
        return EFFECTIVE[self._admin[name], self._machine(name).state]

    def states(self) -> dict[str, str]:
        """Every backend's effective state."""
        return {name: self.effective_state(name) for name in self.machines}

    def apply(self, balancer: Balancer) -> dict[str, str]:
        """Push the effective state of each of ``balancer``'s backends that is checked here."""
        pushed = {}
        for backend in balancer.backends:
            if backend.name in self.machines:
                pushed[backend.name] = state = self.effective_state(backend.name)
                balancer.set_state(backend, state)
        return pushed

    # --------------------------------------------------------------- helpers
    def _notify(self, name: str, before: str) -> None:
        after = self.effective_state(name)
        if after != before and self.on_change is not None:
            self.on_change(name, after)

    def _machine(self, name: str) -> BackendHealth:
        try:
            return self.machines[name]
        except KeyError:
            raise KeyError(f"{name!r} is not checked here") from None

    def __repr__(self) -> str:
        return f"<HealthChecker {self.states()}>"
