"""Health for the L4 tier: :mod:`lbkit.health` checks driving the forwarder's balancers.

The glue between the sans-I/O health core and the L4 engines, itself
without sockets (the probes are :func:`lbkit.health.tcp_check` and
:func:`~lbkit.health.http_check`; :meth:`L4Health.run` is the only
coroutine):

* :func:`plan_checks` (pure): one check per distinct backend ``(address,
  port)``, and the services (``(proto, vport)``) whose pools it decides for.
  A backend is probed at its real address from the L4 box itself, never
  through the VIP: a probe through the VIP would be balanced like any
  client and test whichever backend the balancer picked.
* :class:`L4Health`: one :class:`~lbkit.health.HealthChecker` over those
  checks; each change of a check's effective state is handed to the
  engine's ``apply(check, state)`` (the lbkit core's
  :meth:`~lbkit.l4.L4Balancer.set_state`, a re-rendered nftables map, the
  proxy's balancers). The operator's ``up``/``drain``/``down`` (admin API,
  control channel) goes through the same checker as its admin state
  ``ready``/``drain``/``maint``, so a check and the operator never
  overwrite each other: :data:`lbkit.health.EFFECTIVE` combines them
  (``up`` from the operator means "ready": the checks decide again).
  Without a configured check the checker still holds the operator's
  choice, and no probe runs: today's behaviour.

What ``down`` does to flows already tracked is the engine's business:
the lbkit engines re-pick them on their next packet (IPVS
``expire_nodest_conn=1``, see :mod:`lbkit.l4.balancer`); the kernel's
nftables engine leaves them on the backend until they end or expire (see
:mod:`lbkit.l4.forwarder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from lbkit.health import (
    CheckSpec,
    HealthChecker,
    HealthConfig,
    Probe,
    Transition,
    http_check,
    run_checks,
    tcp_check,
)

from .config import ServiceSpec

log = logging.getLogger(__name__)

#: Operator state (admin API, ``set-backend``) -> the checker's admin state.
OPERATOR_ADMIN = {"up": "ready", "drain": "drain", "down": "maint"}
#: Transitions /stats and the ``health`` control op list (the checker keeps more).
REPORT_EVENTS = 50

Clock = Callable[[], float]


@dataclass(frozen=True)
class Check:
    """One health check: ``backend`` probed at ``ip:port`` (port None: never probed).

    ``key`` names it in the checker, /stats and messages: the backend's name,
    or ``name:port`` when one backend is probed on several ports.
    ``services`` are the ``(proto, vport)`` whose pools take its verdict.
    """

    key: str
    backend: str
    ip: str
    port: int | None
    services: tuple[tuple[str, int], ...]

    @property
    def address(self) -> str:
        return self.ip if self.port is None else f"{self.ip}:{self.port}"


def plan_checks(services: Sequence[ServiceSpec], spec: CheckSpec | None) -> list[Check]:
    """The checks for ``services``: one per distinct backend ``(address, port)``.

    The port probed is ``spec.port`` if set, else the backend's own port of
    a TCP service. A UDP service cannot be probed by a TCP or HTTP check on
    its own port, so its backend takes the verdict of that backend's first
    TCP check (keepalived checks UDP services with a ``TCP_CHECK`` on
    another port too); ValueError if the backend has no TCP service here.
    With ``spec`` None there is one (unprobed) entry per backend name.
    Deterministic: in the order of the services and their backends.
    """
    found: dict[tuple[str, int | None], list[tuple[str, int]]] = {}
    ips: dict[str, str] = {}
    first_tcp: dict[str, int] = {}
    udp: list[tuple[str, tuple[str, int]]] = []
    for s in services:
        for b in s.backends:
            ips.setdefault(b.name, b.ip)
            if spec is None:
                port: int | None = None
            elif spec.port is not None:
                port = spec.port
            elif s.proto == "tcp":
                port = b.port
                first_tcp.setdefault(b.name, port)
            else:
                udp.append((b.name, (s.proto, s.port)))
                continue
            found.setdefault((b.name, port), []).append((s.proto, s.port))
    for name, service in udp:
        if name not in first_tcp:
            raise ValueError(
                f"backend {name} serves only udp here ({service[1]}/udp), which a tcp or http "
                "check cannot probe; give the port to check"
            )
        found.setdefault((name, first_tcp[name]), []).append(service)
    ports = Counter(name for name, _ in found)
    return [
        Check(
            name if ports[name] == 1 else f"{name}:{port}",
            name,
            ips[name],
            port,
            tuple(dict.fromkeys(svcs)),
        )
        for (name, port), svcs in found.items()
    ]


def health_config(spec: CheckSpec | None) -> HealthConfig:
    """The core's :class:`~lbkit.health.HealthConfig` for ``spec`` (defaults for None)."""
    return HealthConfig() if spec is None else spec.config()


def make_probe(spec: CheckSpec, ip: str, port: int) -> Probe:
    """The probe ``spec`` describes, aimed at ``ip:port``."""
    if spec.type == "http":
        return http_check(ip, port, spec.path, expect=spec.expect, body_match=spec.body)
    return tcp_check(ip, port)


class _Checker(HealthChecker):
    """A :class:`~lbkit.health.HealthChecker` that also reports every result and transition.

    ``on_result(name)`` after each recorded probe result, ``on_event(transition)``
    for each transition it logs (health and operator alike), whether or
    not the effective state changed.
    """

    def __init__(
        self,
        *args,
        on_result: Callable[[str], object],
        on_event: Callable[[Transition], object],
        **kwargs,
    ) -> None:
        self.on_result = on_result
        self.on_event = on_event
        super().__init__(*args, **kwargs)

    def record(self, name: str, ok: bool, reason: str, now: float) -> Transition | None:
        transition = super().record(name, ok, reason, now)
        self.on_result(name)
        if transition is not None:
            self.on_event(transition)
        return transition

    def set_admin(self, name: str, admin: str, now: float = 0.0) -> str:
        before = self.events[-1] if self.events else None
        state = super().set_admin(name, admin, now)
        if self.events and self.events[-1] is not before:
            self.on_event(self.events[-1])
        return state


class L4Health:
    """Health checks (or only the operator's choice) for one L4 box's backends.

    ``apply(check, state)`` receives each change of a check's effective
    state (``up``, ``drain``, ``down``); it should not raise (an exception
    is logged and kept in ``apply_error``, the loop goes on). ``probes``
    overrides the probe per check key (tests pass fakes); ``endpoints``
    maps a check's ``(ip, port)`` to where it is reached (the local
    provider's loopback addresses); ``on_event(transition)`` hears every
    transition (the forwarder logs them). ``clock`` must advance with real time
    (:func:`lbkit.health.run_checks` sleeps on it); ``wall`` gives the
    epoch times reported.
    """

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        spec: CheckSpec | None,
        apply: Callable[[Check, str], object],
        *,
        probes: Mapping[str, Probe] | None = None,
        endpoints: Mapping[tuple[str, int], tuple[str, int]] | None = None,
        on_event: Callable[[Transition], object] | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        seed: int = 0,
        max_events: int = 256,
    ) -> None:
        self.spec = spec
        self.apply = apply
        self.on_event = on_event
        self.clock = clock
        self.checks: dict[str, Check] = {c.key: c for c in plan_checks(services, spec)}
        self._by_service: dict[tuple[str, str, int], str] = {
            (c.backend, *svc): c.key for c in self.checks.values() for svc in c.services
        }
        self.results: Counter[str] = Counter()
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.apply_error: str | None = None
        self._last: dict[str, Transition] = {}
        self._started = clock()
        self._wall0 = wall() - self._started
        self.checker = _Checker(
            self.checks,
            health_config(spec),
            now=self._started,
            seed=seed,
            on_change=self._changed,
            on_result=self._result,
            on_event=self._event,
            max_events=max_events,
        )
        self.probes: dict[str, Probe] = {}
        if spec is not None and probes is not None:
            self.probes = dict(probes)
        elif spec is not None:
            where = endpoints or {}
            for c in self.checks.values():  # with a spec, every check has a port
                ip, port = where.get((c.ip, c.port), (c.ip, c.port or 0))
                self.probes[c.key] = make_probe(spec, ip, port)

    @property
    def enabled(self) -> bool:
        """Whether active checks run (a ``health`` option or ``--health`` was given)."""
        return self.spec is not None

    # --------------------------------------------------------------- inputs
    async def run(self) -> None:
        """Probe every check on its schedule until cancelled (returns at once if disabled)."""
        if self.enabled:
            await run_checks(self.checker, self.probes, until=math.inf, clock=self.clock)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the checks as a task of the current loop while the block runs."""
        task = asyncio.ensure_future(self.run()) if self.enabled else None
        if task is not None:
            task.add_done_callback(_report_crash)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def set_operator(self, backend: str, state: str) -> None:
        """The operator sets ``backend`` ``up`` (ready), ``drain`` or ``down`` (maint).

        Applies to every check of that backend; KeyError if none, ValueError
        for another state.
        """
        if state not in OPERATOR_ADMIN:
            raise ValueError(f"state must be up, down or drain; got {state!r}")
        keys = [c.key for c in self.checks.values() if c.backend == backend]
        if not keys:
            raise KeyError(backend)
        now = self.clock()
        for key in keys:
            self.checker.set_admin(key, OPERATOR_ADMIN[state], now)

    # -------------------------------------------------------------- outputs
    def state(self, backend: str, proto: str, port: int) -> str:
        """The effective state of ``backend`` in the ``proto``/``port`` service."""
        return self.checker.effective_state(self._by_service[backend, proto, port])

    def states(self) -> dict[str, str]:
        """Every check's effective state, by key."""
        return self.checker.states()

    def report(self, events: int = REPORT_EVENTS) -> dict:
        """JSON for /stats ``health`` and the ``health`` control op (times: epoch seconds).

        ``{"checks": ..., "backends": {KEY: {"state", "since", "last", ...}},
        "events": [{"at", "message", ...}], "transitions": N}``: ``state`` is
        what the balancer is told, ``health`` what the checks say, ``admin``
        the operator's choice; ``since``/``last`` the time and message of the
        backend's latest transition (the start time and None before one);
        ``result`` the latest probe's reason.
        """
        backends = {}
        for key, check in self.checks.items():
            machine = self.checker.machines[key]
            last = self._last.get(key)
            backends[key] = {
                "state": self.checker.effective_state(key),
                "since": self._epoch(last.at if last else self._started),
                "last": last.message if last else None,
                "health": machine.state,
                "admin": self.checker.admin(key),
                "address": check.address,
                "services": [f"{port}/{proto}" for proto, port in check.services],
                "checks": self.results[key],
                "result": machine.history[-1].reason if machine.history else None,
            }
        recent = list(self.checker.events)[-events:] if events > 0 else []
        return {
            "checks": self.spec.describe() if self.spec else None,
            "backends": backends,
            "events": [
                {
                    "at": self._epoch(t.at),
                    "backend": t.backend,
                    "old": t.old,
                    "new": t.new,
                    "message": t.message,
                }
                for t in recent
            ],
            "transitions": sum(self.transitions.values()),
        }

    # ------------------------------------------------------------- internal
    def _epoch(self, t: float) -> float:
        return round(self._wall0 + t, 3)

    def _changed(self, key: str, state: str) -> None:
        try:
            self.apply(self.checks[key], state)
        except Exception as e:  # the check loop must go on; the engine says why
            log.exception("applying %s %s failed", key, state)
            self.apply_error = f"{key} {state}: {e}"

    def _result(self, key: str) -> None:
        self.results[key] += 1

    def _event(self, transition: Transition) -> None:
        self._last[transition.backend] = transition
        if transition.reason != "operator":
            self.transitions[transition.backend, transition.new] += 1
        if self.on_event is not None:
            self.on_event(transition)


def _report_crash(task: asyncio.Task) -> None:
    """A check loop that died says so in the host's log (the box keeps forwarding)."""
    if not task.cancelled() and task.exception() is not None:
        print(f"health: checks stopped: {task.exception()!r}", file=sys.stderr, flush=True)


def print_event(transition: Transition) -> None:
    """One line per transition on stdout (the lab host's log): ``health: api2 DOWN ...``."""
    print(f"health: {transition.message}", flush=True)
