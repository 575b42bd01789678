"""Pools: one lbkit balancer per ``upstream``, plus the state nginx and Envoy keep beside it.

A :class:`Pool` joins what is known about each backend into the one state its
balancer is told (``up``, ``drain`` or ``down``):

* the operator's state: ``up``, ``down``, ``drain`` (nginx ``server ... down``;
  :meth:`Router.set_backend_state <lbkit.l7.router.Router.set_backend_state>`);
* active health, when the pool has a ``health_check``: a
  :class:`lbkit.health.HealthChecker` (``unknown``/``up``/``down``) whose probes
  :mod:`lbkit.l7.healthrun` runs (they record results in ``Pool.checker``);
* outlier detection (:class:`lbkit.health.OutlierDetector`, Envoy), when the
  pool has ``outlier``: fed each attempt's outcome by :meth:`Pool.on_finish`;
* passive health (:class:`lbkit.health.PassiveHealth`, nginx max_fails).

The operator and the checks combine as :data:`lbkit.health.EFFECTIVE` says
(the operator's ``up``/``drain``/``down`` are the checker's admin states
``ready``/``drain``/``maint``); then an outlier ejection or max_fails takes
an ``up`` backend ``down`` for their time:

=========  ==============  ==============  ==========
operator   check unknown   check up        check down
=========  ==============  ==============  ==========
up         up *            up *            down
drain      drain           drain           down
down       down            down            down
=========  ==============  ==============  ==========

(* ``down`` while ejected by outlier detection or out for max_fails.) A pool
without a check behaves as "check unknown", today's behaviour. A failed
check beats ``drain``: draining lets requests finish on a backend, pointless
when the checks say it cannot serve them. A check that brings a backend back
``UP`` (``rise`` successes after ``down``) also clears its max_fails count
(the check proved it serves again; nginx would otherwise keep it out for the
rest of ``fail_timeout``) and starts its slow-start ramp (``slow_start``
seconds, :class:`lbkit.health.SlowStart`; weight-based algorithms only). An
outlier ejection runs its time even when checks pass (Envoy would return it
at the next passing check: ``successful_active_health_check_uneject_host``).

Backups (``backup = true``) take requests only while no primary is ``up``
(the balancer's tiers); with nothing ``up`` at all the router answers 503
(lbkit TOML) or 502 (nginx configs).

Every change worth telling a human is a :class:`lbkit.health.Transition` in
``Pool.events`` (and ``Pool.last`` per backend): checks (``api2 DOWN after 3
failures: HTTP 500 on /healthz``), ejections, max_fails, the operator.
Times are the caller's clock (the proxy's loop time); nothing here reads one.

Retries need "any server not tried yet": :meth:`Pool.pick` takes the names
already tried and hides them from the balancer for that one pick, as
nginx's ``tried`` bitmap does (ngx_http_upstream_get_peer).

When no server at all can be chosen and some are out only for their
failures, nginx 1.22 answers 502 ("no live upstreams") until their
fail_timeout ends, even if they are well again: ``quick_recovery=False``,
used for nginx configs (the differential test shows it). Old nginx versions
instead forgot every failure count ("all peers failed, mark them as live for
quick recovery"), which is close to Envoy's panic mode (balance over every
host when too few are healthy); lbkit's TOML configs do that
(``quick_recovery=True``) and pick again at once, so the request that found
the pool empty is not lost. Quick recovery never overrides a failed check.

Cost: a pool with neither check nor outlier detection pays nothing per
request for them (``Pool.on_finish`` tests one attribute for None).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection

from lbkit.algorithms import Backend, Flow, NoBackendAvailable, make_balancer
from lbkit.health import (
    EFFECTIVE,
    CheckSpec,
    HealthChecker,
    OutlierDetector,
    PassiveHealth,
    SlowStart,
    Transition,
)

from .model import Upstream, UpstreamServer
from .retry import RetryBudget

DEFAULT_PORTS = {"http": 80, "https": 443}
#: The operator's state as the health checker's admin state (lbkit.health.EFFECTIVE).
ADMIN_OF = {"up": "ready", "drain": "drain", "down": "maint"}
#: Transitions a pool keeps (``Pool.events``).
MAX_EVENTS = 256


def split_address(address: str, default_port: int = 80) -> tuple[str, int]:
    """``"10.0.1.10:3000"`` -> ``("10.0.1.10", 3000)``; a missing port is ``default_port``.

    IPv6 goes in brackets: ``"[2001:db8::1]:80"``. Raises ``ValueError``.
    """
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {address!r}")
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    if not host:
        raise ValueError(f"bad address {address!r}: no host")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in address {address!r}")
    return host, int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_name(server: UpstreamServer) -> str:
    """A backend's name: its label, else its address."""
    return server.name or server.address


def server_names(servers: list[UpstreamServer]) -> list[str]:
    """Each server's :func:`server_name`; a name seen before gets ``#2``, ``#3``... added.

    nginx accepts one address listed twice in an ``upstream`` (``server a; server a;``)
    and keeps two peers, each with its weight, state and failures
    (ngx_http_upstream_init_round_robin); the balancer needs distinct names.
    """
    names: list[str] = []
    for s in servers:
        name, n = server_name(s), 1
        while (name if n == 1 else f"{name}#{n}") in names:
            n += 1
        names.append(name if n == 1 else f"{name}#{n}")
    return names


class _PoolChecker(HealthChecker):
    """A :class:`~lbkit.health.HealthChecker` that hands each health transition to its pool."""

    def __init__(self, pool: Pool, *args, **kwargs) -> None:
        self.pool = pool
        self.results: Counter[str] = Counter()  # probe results recorded, per backend
        super().__init__(*args, **kwargs)

    def record(self, name: str, ok: bool, reason: str, now: float) -> Transition | None:
        transition = super().record(name, ok, reason, now)
        self.results[name] += 1
        if transition is not None:
            self.pool._health_transition(transition)
        return transition


class Pool:
    """One upstream's balancer, health and retry budget (see the module docstring)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        seed: int = 0,
        scheme: str = "http",
        quick_recovery: bool = True,
    ) -> None:
        self.name = upstream.name
        self.quick_recovery = quick_recovery
        self.upstream = upstream
        backends = []
        names = server_names(upstream.servers)
        for s, name in zip(upstream.servers, names, strict=True):
            host, port = split_address(s.address, DEFAULT_PORTS.get(scheme, 80))
            backends.append(
                Backend(
                    name,
                    weight=s.weight,
                    backup=s.backup,
                    max_conns=s.max_conns,
                    address=join_address(host, port),
                )
            )
        self.balancer = make_balancer(upstream.algorithm, backends, seed=seed)
        self.health = {
            name: PassiveHealth(s.max_fails, s.fail_timeout)
            for s, name in zip(upstream.servers, names, strict=True)
        }
        self.admin = {
            name: ("down" if s.down else "up")
            for s, name in zip(upstream.servers, names, strict=True)
        }
        self.ejections = dict.fromkeys(self.admin, 0)
        self.ejected: set[str] = set()  # out for passive health now
        self.budget = RetryBudget()
        self.retries = 0
        self.events: deque[Transition] = deque(maxlen=MAX_EVENTS)
        self.last: dict[str, Transition] = {}  # each backend's latest transition
        #: (backend, new state) -> how many times, operator changes aside (for /metrics).
        self.transitions: Counter[tuple[str, str]] = Counter()
        #: Called with (pool, transition) for each event (the adapter logs them).
        self.on_event: Callable[[Pool, Transition], object] | None = None
        #: The active check, and its state machines (probes: lbkit.l7.healthrun).
        self.check: CheckSpec | None = upstream.health_check
        self.checker: _PoolChecker | None = None
        if self.check is not None:
            self.checker = _PoolChecker(self, names, self.check.config(), seed=seed)
        #: Outlier detection: made at the first observation, so its sweeps start then.
        self.outlier_config = upstream.outlier
        self.outlier: OutlierDetector | None = None
        self.outlier_out: set[str] = set()  # ejected by outlier detection now
        self.slow_start: SlowStart | None = None
        if upstream.slow_start > 0:
            self.slow_start = SlowStart(self.balancer, upstream.slow_start)
        for name in self.admin:
            self._apply(name)

    @property
    def backends(self) -> list[Backend]:
        return self.balancer.backends

    @property
    def size(self) -> int:
        """Servers in the pool, primaries and backups (``ngx_http_upstream_tries``)."""
        return len(self.balancer.backends)

    def backend(self, name: str) -> Backend:
        return self.balancer.backend(name)

    def active_requests(self) -> int:
        return sum(self.balancer.active(b) for b in self.backends)

    @property
    def needs_ticks(self) -> bool:
        """Whether :meth:`tick` has work: outlier returns and sweeps, slow-start ramps."""
        return self.outlier_config is not None or (
            self.slow_start is not None and self.slow_start.enabled
        )

    # -------------------------------------------------------------- states
    def _apply(self, name: str) -> None:
        """Tell the balancer the combined state (the module docstring's table)."""
        state = self.admin[name]
        if self.checker is not None:
            state = EFFECTIVE[ADMIN_OF[state], self.checker.machines[name].state]
        if state == "up" and (name in self.ejected or name in self.outlier_out):
            state = "down"
        if self.balancer.state(name) != state:
            self.balancer.set_state(name, state)

    def set_admin_state(self, name: str, state: str, now: float | None = None) -> None:
        """Operator: ``up``, ``down`` or ``drain``; with ``now``, the change is an event."""
        if name not in self.admin:
            raise KeyError(f"upstream {self.name!r} has no backend {name!r}")
        if state not in ADMIN_OF:
            self.balancer.set_state(name, state)  # raises, naming the states
        old = self.admin[name]
        self.admin[name] = state
        self._apply(name)
        if now is not None and old != state:
            message = f"{name} {state.upper()} (operator)"
            self._event(Transition(name, old, state, now, "operator", message))

    def state(self, name: str) -> str:
        """What the balancer is told for ``name``: ``up``, ``drain`` or ``down``."""
        return self.balancer.state(name)

    def _event(self, transition: Transition) -> None:
        self.events.append(transition)
        self.last[transition.backend] = transition
        if transition.reason != "operator":
            self.transitions[transition.backend, transition.new] += 1
        if self.on_event is not None:
            self.on_event(self, transition)

    def _health_transition(self, t: Transition) -> None:
        """The checks changed ``t.backend``'s health (from :class:`_PoolChecker`)."""
        self._event(t)
        name = t.backend
        if t.old == "down" and t.new == "up":
            passive = self.health[name]
            if passive.fails:
                passive.reset()
                self._sync(name, t.at, "failures cleared: health check UP")
            if self.slow_start is not None and self.slow_start.observe(t):
                self.slow_start.update(t.at)
        self._apply(name)

    def _sync(self, name: str, now: float, why: str = "") -> None:
        """Mirror passive health into the balancer: down while unavailable."""
        health = self.health[name]
        out = not health.available(now)
        if out != (name in self.ejected):
            if out:
                self.ejected.add(name)
                n = health.fails
                message = (
                    f"{name} OUT for {health.fail_timeout:g} s after {n} failed "
                    f"attempt{'s' if n != 1 else ''} (max_fails {health.max_fails})"
                )
                self._event(Transition(name, "active", "failed", now, "max_fails", message))
            else:
                self.ejected.discard(name)
                why = why or f"fail_timeout {health.fail_timeout:g} s over, may be tried again"
                message = f"{name} BACK: {why}"
                self._event(Transition(name, "failed", "active", now, "max_fails", message))
            self._apply(name)

    def _recover(self, now: float) -> None:
        for name in list(self.ejected):
            self._sync(name, now)

    def choosable(self, name: str, now: float) -> bool:
        """Whether ``name`` may take a new request now (up, healthy, below max_conns)."""
        if self.ejected:
            self._recover(now)
        if self.outlier_out:
            self.outlier.tick(now)  # type: ignore[union-attr]
        b = self.balancer.backend(name)
        full = bool(b.max_conns) and self.balancer.active(b) >= b.max_conns
        return self.balancer.state(b) == "up" and not full

    def has_candidate(self, exclude: Collection[str], now: float) -> bool:
        """Whether some backend outside ``exclude`` may take a new request now."""
        return any(self.choosable(b.name, now) for b in self.backends if b.name not in exclude)

    # ----------------------------------------------------------- over time
    def tick(self, now: float) -> None:
        """Let time pass: outlier returns and sweeps, max_fails windows, slow-start ramps.

        Picks do the first two lazily; the adapter calls this a few times a
        second so that stats are current and ramps progress without traffic.
        """
        if self.outlier_config is not None:
            self._detector(now).tick(now)
        if self.ejected:
            self._recover(now)
        if self.slow_start is not None:
            self.slow_start.update(now)

    def _detector(self, now: float) -> OutlierDetector:
        detector = self.outlier
        if detector is None:
            names = [b.name for b in self.backends]
            detector = self.outlier = OutlierDetector(
                names, self.outlier_config, now=now, on_change=self._outlier_changed
            )
        return detector

    def _outlier_changed(self, name: str, ejected: bool) -> None:
        assert self.outlier is not None
        (self.outlier_out.add if ejected else self.outlier_out.discard)(name)
        self._event(self.outlier.events[-1])
        self._apply(name)

    def observe(self, name: str, now: float, ok: bool, status: int | None) -> None:
        """Outlier detection hears one attempt's outcome (a 5xx or an error is a failure;
        an attempt the client abandoned before any status is not counted)."""
        detector = self._detector(now)
        if ok and status is None:
            return
        overflows = detector.overflows
        # The detector tells a status (int) from an error (False) by type; each call passes
        # one kind, never a variable of both (mypyc would store False in it as the int 0).
        if status is not None and (ok or status >= 500):
            detector.observe(name, status, now)
        else:
            detector.observe(name, False, now)
        if detector.overflows != overflows:  # an ejection refused by max_ejection_percent
            self._event(detector.events[-1])

    def adopt(self, old: Pool) -> list[str]:
        """After a reload: take over ``old``'s check state for backends that stay.

        Only when both pools run the same check; a backend stays when its name
        and address are unchanged. Its health, counters, result history and
        transitions carry over, so a backend that was down stays down until
        ``rise`` successes. Returns the names carried over.
        """
        if self.checker is None or old.checker is None or self.check != old.check:
            return []
        kept = []
        for b in self.backends:
            src = old.checker.machines.get(b.name)
            if src is None or old.backend(b.name).address != b.address:
                continue
            dst = self.checker.machines[b.name]
            dst.state, dst.successes, dst.failures = src.state, src.successes, src.failures
            dst.last_change = src.last_change
            dst.history.extend(src.history)
            self.checker.results[b.name] = old.checker.results[b.name]
            if b.name in old.last:
                self.last[b.name] = old.last[b.name]
            self._apply(b.name)
            kept.append(b.name)
        self.events.extend(t for t in old.events if t.backend in kept)
        for (name, new), n in old.transitions.items():
            if name in kept:
                self.transitions[name, new] += n
        return kept

    # ------------------------------------------------------------- picking
    def _pick_hiding(
        self, flow: Flow | None, now: float, exclude: Collection[str]
    ) -> Backend | None:
        hidden = {
            b.name: self.balancer.state(b)
            for b in self.backends
            if b.name in exclude and self.balancer.state(b) != "down"
        }
        for name in hidden:
            self.balancer.set_state(name, "down")
        try:
            return self.balancer.pick(flow, now)
        except NoBackendAvailable:
            return None
        finally:
            for name, state in hidden.items():
                self.balancer.set_state(name, state)

    def pick(self, flow: Flow | None, now: float, exclude: Collection[str] = ()) -> Backend | None:
        """A backend not in ``exclude`` for a new request, or None when none is left."""
        if self.ejected:
            self._recover(now)
        if self.outlier_out:
            self.outlier.tick(now)  # type: ignore[union-attr]
        if exclude:
            backend = self._pick_hiding(flow, now, exclude)
        else:
            try:
                backend = self.balancer.pick(flow, now)
            except NoBackendAvailable:
                backend = None
        if backend is None and self.ejected and self.quick_recovery:
            ejected, self.ejected = self.ejected, set()
            for name in ejected:  # quick recovery: forget the failures
                self.health[name].reset()
                message = f"{name} BACK: no server left, failures forgotten (quick recovery)"
                self._event(Transition(name, "failed", "active", now, "max_fails", message))
                self._apply(name)
            backend = self._pick_hiding(flow, now, exclude)
        if backend is not None:
            self.selected(backend, now)
        return backend

    def selected(self, backend: Backend, now: float) -> None:
        """A backend was chosen (by the balancer or a sticky cookie).

        Choosing a server whose failures reached max_fails makes it the probe:
        nobody else gets it until the probe's answer (see PassiveHealth).
        """
        health = self.health[backend.name]
        if health.fails:  # with no failure counted, selecting changes nothing observable
            health.selected(now)
            self._sync(backend.name, now)

    # ------------------------------------------------------------ feedback
    def on_start(self, backend: Backend, now: float) -> None:
        self.balancer.on_start(backend, now)

    def on_finish(
        self,
        backend: Backend,
        now: float,
        failure: bool = False,
        ok: bool = True,
        status: int | None = None,
    ) -> None:
        """An attempt ended; ``failure`` feeds passive health (and may eject the backend),
        ``ok`` and ``status`` outlier detection when the pool has it (:meth:`observe`)."""
        self.balancer.on_finish(backend, now, ok=not failure)
        if self.outlier_config is not None:
            self.observe(backend.name, now, ok, status)
        health = self.health[backend.name]
        if not failure:
            if not health.fails:
                return  # nothing to clear, nothing to sync (the common case)
            health.success(now)
            self._sync(backend.name, now)
            return
        if health.max_fails:  # nginx: effective_weight -= weight / max_fails
            self.balancer.penalize(backend, backend.weight // health.max_fails)
        if health.failure(now):
            self.ejections[backend.name] += 1
        self._sync(backend.name, now)

    # ------------------------------------------------------------- reports
    def health_rows(self) -> dict[str, dict[str, object]]:
        """Each backend's combined state and what decided it (times in the caller's clock).

        ``state`` is what the balancer is told; ``health`` the checks' verdict
        (None without checks), ``result`` the latest probe's reason, ``checks`` how
        many probe results were recorded (None without checks); ``admin``
        the operator's state; ``failed`` out for max_fails; ``ejected`` out by
        outlier detection; ``since``/``last`` the latest transition's time and
        message (None before one).
        """
        rows: dict[str, dict[str, object]] = {}
        for b in self.backends:
            machine = self.checker.machines[b.name] if self.checker is not None else None
            last = self.last.get(b.name)
            rows[b.name] = {
                "state": self.balancer.state(b),
                "since": last.at if last else None,
                "last": last.message if last else None,
                "health": machine.state if machine is not None else None,
                "result": machine.history[-1].reason if machine and machine.history else None,
                "checks": self.checker.results[b.name] if self.checker is not None else None,
                "admin": self.admin[b.name],
                "failed": b.name in self.ejected,
                "ejected": b.name in self.outlier_out,
                "weight": b.weight,
                "backup": b.backup,
                "address": b.address,
            }
        return rows

    def stats(self) -> dict[str, object]:
        rows = []
        health = self.health_rows()
        for row, b in zip(self.balancer.stats(), self.backends, strict=True):
            h = self.health[b.name]
            hr = health[b.name]
            rows.append(
                row
                | {
                    "address": b.address,
                    "admin_state": self.admin[b.name],
                    "fails": h.fails,
                    "max_fails": h.max_fails,
                    "ejected": b.name in self.ejected,
                    "ejections": self.ejections[b.name],
                    "health": hr["health"],
                    "check_result": hr["result"],
                    "outlier_ejected": hr["ejected"],
                    "last_transition": hr["last"],
                    "since": hr["since"],
                }
            )
        out: dict[str, object] = {
            "algorithm": self.upstream.algorithm,
            "backends": rows,
            "active": self.active_requests(),
            "retries": self.retries,
            "retry_budget": self.budget.stats(),
            "health_check": self.check.describe() if self.check is not None else None,
            "events": [_event_row(t) for t in list(self.events)[-10:]],
        }
        if self.outlier is not None:
            out["outlier_ejections"] = {n: self.outlier.ejections(n) for n in self.outlier.hosts}
        if self.slow_start is not None:
            out["slow_start"] = {
                "window": self.slow_start.window,
                "enabled": self.slow_start.enabled,
                "reason": self.slow_start.reason,
                "configured_weights": dict(self.slow_start.configured),
            }
        return out


def _event_row(t: Transition) -> dict[str, object]:
    return {"at": t.at, "backend": t.backend, "old": t.old, "new": t.new, "message": t.message}
