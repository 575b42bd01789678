"""Pools: one lbkit balancer per ``upstream``, plus the state nginx keeps beside it.

A :class:`Pool` joins three things about each backend:

* the operator's (or active health check's) state: ``up``, ``down``, ``drain``
  (nginx ``server ... down``; the API's drain);
* passive health (:class:`lbkit.health.PassiveHealth`, nginx max_fails);
* the balancer (``lbkit.algorithms``), told ``down`` while either of the
  first two says no, and ``up`` again when both agree.

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
the pool empty is not lost.
"""

from __future__ import annotations

from collections.abc import Collection

from lbkit.algorithms import Backend, Flow, NoBackendAvailable, make_balancer
from lbkit.health import PassiveHealth

from .model import Upstream, UpstreamServer
from .retry import RetryBudget

DEFAULT_PORTS = {"http": 80, "https": 443}


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


class Pool:
    """One upstream's balancer, health and retry budget."""

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

    # -------------------------------------------------------------- states
    def _apply(self, name: str) -> None:
        state = self.admin[name]
        if state == "up" and name in self.ejected:
            state = "down"
        if self.balancer.state(name) != state:
            self.balancer.set_state(name, state)

    def set_admin_state(self, name: str, state: str) -> None:
        """Operator or active health check: ``up``, ``down`` or ``drain``."""
        if name not in self.admin:
            raise KeyError(f"upstream {self.name!r} has no backend {name!r}")
        self.balancer.set_state(name, state)  # validates ``state``
        self.admin[name] = state
        self._apply(name)

    def _sync(self, name: str, now: float) -> None:
        """Mirror passive health into the balancer: down while unavailable."""
        out = not self.health[name].available(now)
        if out != (name in self.ejected):
            (self.ejected.add if out else self.ejected.discard)(name)
            self._apply(name)

    def _recover(self, now: float) -> None:
        for name in list(self.ejected):
            self._sync(name, now)

    def choosable(self, name: str, now: float) -> bool:
        """Whether ``name`` may take a new request now (up, healthy, below max_conns)."""
        self._recover(now)
        b = self.balancer.backend(name)
        full = bool(b.max_conns) and self.balancer.active(b) >= b.max_conns
        return self.balancer.state(b) == "up" and not full

    def has_candidate(self, exclude: Collection[str], now: float) -> bool:
        """Whether some backend outside ``exclude`` may take a new request now."""
        return any(self.choosable(b.name, now) for b in self.backends if b.name not in exclude)

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
        if exclude:
            backend = self._pick_hiding(flow, now, exclude)
        else:
            try:
                backend = self.balancer.pick(flow, now)
            except NoBackendAvailable:
                backend = None
        if backend is None and self.ejected and self.quick_recovery:
            for name in self.ejected:  # quick recovery: forget the failures
                self.health[name].reset()
            ejected, self.ejected = self.ejected, set()
            for name in ejected:
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

    def on_finish(self, backend: Backend, now: float, *, failure: bool) -> None:
        """An attempt ended; ``failure`` feeds passive health (and may eject the backend)."""
        self.balancer.on_finish(backend, now, ok=not failure)
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

    def stats(self) -> dict[str, object]:
        rows = []
        for row, b in zip(self.balancer.stats(), self.backends, strict=True):
            h = self.health[b.name]
            rows.append(
                row
                | {
                    "address": b.address,
                    "admin_state": self.admin[b.name],
                    "fails": h.fails,
                    "max_fails": h.max_fails,
                    "ejected": b.name in self.ejected,
                    "ejections": self.ejections[b.name],
                }
            )
        return {
            "algorithm": self.upstream.algorithm,
            "backends": rows,
            "active": self.active_requests(),
            "retries": self.retries,
            "retry_budget": self.budget.stats(),
        }
