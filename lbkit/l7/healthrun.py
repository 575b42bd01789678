"""Active health checks for the L7 router: the asyncio edge that probes each pool's backends.

Everything that decides lives elsewhere, sans-I/O: each
:class:`~lbkit.l7.pools.Pool` of the router owns its
:class:`~lbkit.health.HealthChecker` (state machines, schedule) and combines
the verdicts with the operator, outlier detection and max_fails
(:mod:`lbkit.l7.pools`). A :class:`HealthRunner` only:

* makes one probe per backend of each pool that has a ``health_check``
  (:func:`make_probe`: :func:`lbkit.health.tcp_check` or
  :func:`~lbkit.health.http_check` at the backend's own address, never
  through the router; the lab's local provider has already mapped lab
  addresses to loopback, see :func:`lbkit.lab.roles.l7.map_upstreams`);
* runs :func:`lbkit.health.run_checks` per pool as tasks of the proxy's loop,
  and a ticker (:data:`TICK`) for outlier returns and slow-start ramps when a
  pool has them;
* on a reload (:meth:`HealthRunner.replace`) hands each new pool the state of
  the backends that stay (:meth:`Pool.adopt <lbkit.l7.pools.Pool.adopt>`:
  same pool, name, address and check) and restarts the tasks on the new
  router; :meth:`HealthRunner.stop` ends them;
* reports (:meth:`HealthRunner.report`), in the format the L4 tier's
  ``health`` control op uses (:meth:`lbkit.l4.health.L4Health.report`), times in
  epoch seconds.

With ``lbkit l7 --workers N`` every worker probes (N times the probes; nginx
Plus shares one verdict through its ``zone``). The clock is the loop's
(``loop.time()``), the one the proxy gives the router, so a pool's events,
whatever their source, share one time line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from lbkit.health import CheckSpec, Probe, Transition, http_check, run_checks, tcp_check

from .pools import Pool, split_address

log = logging.getLogger(__name__)

#: Seconds between ticks of pools with outlier detection or slow start.
TICK = 0.5
#: Transitions the report lists (each pool keeps more, see lbkit.l7.pools.MAX_EVENTS).
REPORT_EVENTS = 50

Clock = Callable[[], float]
#: ``(pool, backend, check, address) -> Probe``: how a backend is probed (tests pass fakes).
ProbeFactory = Callable[[str, str, CheckSpec, str], Probe]
#: Told each pool event: ``(pool name, transition)``.
EventSink = Callable[[str, Transition], object]


def make_probe(pool: str, backend: str, check: CheckSpec, address: str) -> Probe:
    """The probe ``check`` describes, aimed at ``address`` (``host:port``)."""
    host, port = split_address(address)
    if check.type == "tcp":
        return tcp_check(host, port)
    return http_check(host, port, check.path, expect=check.expect, body_match=check.body)


def pools_of(router: Any) -> dict[str, Pool]:
    """The router's pools (a stand-in router without any: none)."""
    return getattr(router, "pools", None) or {}


class HealthRunner:
    """The check loops of one router's pools, on the running event loop.

    ``clock`` defaults to the loop's time (taken at :meth:`start`); ``wall``
    gives the epoch times reported. ``on_event(pool, transition)`` hears
    every pool event (check, ejection, max_fails, operator) as it happens.
    """

    def __init__(
        self,
        router: Any,
        *,
        clock: Clock | None = None,
        wall: Clock = time.time,
        probes: ProbeFactory = make_probe,
        on_event: EventSink | None = None,
        tick: float = TICK,
    ) -> None:
        self.router = router
        self.clock = clock
        self.wall = wall
        self.probes = probes
        self.on_event = on_event
        self.tick_seconds = tick
        self.tasks: list[asyncio.Task] = []
        self.started_at: float | None = None  # in ``clock``'s time
        self.crashed: str | None = None
        self._wall0 = 0.0
        self._hook()

    @property
    def enabled(self) -> bool:
        """Whether any pool of the router has active checks."""
        return any(p.checker is not None for p in pools_of(self.router).values())

    # ------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start probing (call from the loop); nothing starts for a router without checks."""
        loop = asyncio.get_running_loop()
        if self.clock is None:
            self.clock = loop.time
        now = self.clock()
        self._wall0 = self.wall() - now
        if self.started_at is None:
            self.started_at = now
        self._launch(loop)

    def replace(self, router: Any) -> list[str]:
        """A reload: carry check state over to ``router``'s pools, restart the loops there.

        Synchronous (a signal handler may call it): the old loops are
        cancelled, not awaited; their probes in flight end on their own
        (each cancelled probe closes its socket). Returns ``pool/backend``
        for each backend whose state was carried over.
        """
        old = pools_of(self.router)
        for pool in old.values():
            pool.on_event = None
        self.router = router
        kept = []
        for name, pool in pools_of(router).items():
            if name in old and old[name] is not pool:
                kept += [f"{name}/{b}" for b in pool.adopt(old[name])]
        self._hook()
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        if self.started_at is not None:
            self._launch(asyncio.get_running_loop())
        return kept

    async def stop(self) -> None:
        """Cancel every loop and wait for them (probes in flight are abandoned)."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _hook(self) -> None:
        for pool in pools_of(self.router).values():
            pool.on_event = self._event

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.clock is not None
        pools = pools_of(self.router)
        for pool in pools.values():
            if pool.checker is None or pool.check is None:
                continue
            probes = {
                b.name: self.probes(pool.name, b.name, pool.check, b.address or b.name)
                for b in pool.backends
            }
            main = run_checks(pool.checker, probes, until=math.inf, clock=self.clock)
            self._track(loop.create_task(main, name=f"health checks of {pool.name}"))
        if any(p.needs_ticks for p in pools.values()):
            self._track(loop.create_task(self._ticker(), name="health ticks"))

    def _track(self, task: asyncio.Task) -> None:
        task.add_done_callback(self._done)
        self.tasks.append(task)

    def _done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.crashed = f"{task.get_name()}: {task.exception()!r}"
        print(f"health: {self.crashed}; the router keeps serving", file=sys.stderr, flush=True)

    async def _ticker(self) -> None:
        assert self.clock is not None
        while True:
            await asyncio.sleep(self.tick_seconds)
            try:
                self.router.tick(self.clock())
            except Exception:  # the ticks must go on; the log says why
                log.exception("health tick failed")

    def _event(self, pool: Pool, transition: Transition) -> None:
        if self.on_event is not None:
            try:
                self.on_event(pool.name, transition)
            except Exception:
                log.exception("health event sink failed")

    # ------------------------------------------------------------- reports
    def epoch(self, t: float) -> float:
        """A time of ``clock`` as epoch seconds, rounded to the millisecond."""
        return round(self._wall0 + t, 3)

    def report(self, events: int = REPORT_EVENTS) -> dict[str, Any]:
        """The ``health`` control op's answer (the L4 tier's format), JSON-able.

        ``{"checks": {POOL: description} or None, "backends": {KEY: row},
        "events": [{"at", "pool", "backend", "old", "new", "message"}],
        "transitions": N}``. ``KEY`` is the backend's name, or ``pool/name``
        when two pools share a name. Each row: ``state`` (what the balancer
        is told: up, drain, down), ``since`` and ``last`` (the latest
        transition's time and message; the start time and None before one),
        ``pool``, ``backend``, ``check`` (the pool's check, None without),
        ``health`` (the checks' verdict, None without checks), ``result``
        (the latest probe's reason), ``checks`` (probe results so far),
        ``admin``, ``failed`` (max_fails), ``ejected`` (outlier detection),
        ``weight``, ``backup``, ``address``.
        """
        pools = pools_of(self.router)
        seen: dict[str, int] = {}
        for pool in pools.values():
            for b in pool.backends:
                seen[b.name] = seen.get(b.name, 0) + 1
        start = self.started_at if self.started_at is not None else 0.0
        backends: dict[str, dict[str, Any]] = {}
        merged: list[tuple[float, str, Transition]] = []
        for pool in pools.values():
            check = pool.check.describe() if pool.check is not None else None
            for name, row in pool.health_rows().items():
                key = name if seen[name] == 1 else f"{pool.name}/{name}"
                since = row["since"]
                backends[key] = {
                    "state": row["state"],
                    "since": self.epoch(since if isinstance(since, float | int) else start),
                    "last": row["last"],
                    "pool": pool.name,
                    "backend": name,
                    "check": check,
                    **{k: v for k, v in row.items() if k not in ("state", "since", "last")},
                }
            merged += [(t.at, pool.name, t) for t in pool.events]
        merged.sort(key=lambda item: item[0])
        recent = merged[-events:] if events > 0 else []
        checks = {p.name: p.check.describe() for p in pools.values() if p.check is not None}
        return {
            "checks": checks or None,
            "backends": backends,
            "events": [
                {
                    "at": self.epoch(t.at),
                    "pool": pool,
                    "backend": t.backend,
                    "old": t.old,
                    "new": t.new,
                    "message": t.message,
                }
                for _, pool, t in recent
            ],
            "transitions": sum(sum(pool.transitions.values()) for pool in pools.values()),
        }


def print_event(stream: Any = None, prefix: str = "health: ") -> EventSink:
    """An ``on_event`` that writes ``health: api2 DOWN after 3 failures: ... (pool api)``."""

    def sink(pool: str, transition: Transition) -> None:
        out = stream or sys.stdout
        with contextlib.suppress(OSError, ValueError):
            out.write(f"{prefix}{transition.message} (pool {pool})\n")
            out.flush()

    return sink
