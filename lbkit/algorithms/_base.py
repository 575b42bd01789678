"""The balancer interface that every algorithm implements.

Sans-I/O: a balancer never reads a clock, opens a socket or draws from the
global random generator. Time comes in as ``now`` (seconds, any origin) and
randomness from a ``random.Random`` seeded at construction, so a run is
reproducible and two processes given the same inputs pick the same backends.

Common semantics, honoured by every algorithm (modelled on nginx's upstream
module, ``ngx_http_upstream_round_robin.c``):

* ``weight``: a positive integer; each algorithm says how it uses it.
* ``backup``: used only when no primary backend is available
  (nginx ``server ... backup``).
* state ``down``: never picked. ``drain``: gets no new flows, but the
  flows it already has finish (``on_finish`` still counts them down).
* ``max_conns``: a backend with that many active flows is skipped until one
  finishes (nginx ``server ... max_conns=N``; 0 means no limit).
* nothing available: :class:`NoBackendAvailable`.

Subclasses implement :meth:`Balancer._choose`, which receives the indices of
the backends that may take a new flow right now and returns one of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

_T = TypeVar("_T")

try:  # mypy brings it; `make fast` (lbkit.compiled) compiles this module with mypyc
    from mypy_extensions import mypyc_attr
except ImportError:  # nothing is compiled without mypy: the mark has nothing to say

    def mypyc_attr(*attrs: str, **kwattrs: Any) -> Callable[[_T], _T]:  # type: ignore[misc]
        return lambda cls: cls


State = Literal["up", "down", "drain"]
STATES: tuple[str, ...] = ("up", "down", "drain")


class NoBackendAvailable(Exception):
    """Every backend is down, draining or at its ``max_conns``.

    (An ``Exception``, not a ``RuntimeError``: mypyc compiles no class derived from
    most built-in exception types, and this module is compiled by ``make fast``.)"""


@dataclass(eq=False)
class Backend:
    """A server the balancer may choose, as configured by the operator.

    Compared by identity: two ``Backend("a")`` objects are different servers.
    Run-time state (``up``/``down``/``drain``, active flows) lives in the
    balancer, so one ``Backend`` may sit in several balancers.
    """

    name: str
    weight: int = 1
    backup: bool = False
    max_conns: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("backend name must not be empty")
        if not isinstance(self.weight, int) or self.weight < 1:
            raise ValueError(f"backend {self.name!r}: weight must be an integer >= 1")
        if self.max_conns < 0:
            raise ValueError(f"backend {self.name!r}: max_conns must be >= 0")


@dataclass(frozen=True, slots=True)
class Flow:
    """What a balancer may know about a new connection or request.

    The 5-tuple as an L4 box sees it, plus an optional ``key``: the value an
    L7 router hashes instead (``hash $request_uri consistent``, a session
    cookie). Every field has a default so callers give only what they have.
    """

    client_ip: str = "0.0.0.0"
    client_port: int = 0
    vip: str = "0.0.0.0"
    vport: int = 0
    protocol: str = "tcp"
    key: str | bytes | None = None

    def hash_input(self) -> bytes:
        """The bytes hash-based algorithms hash: ``key`` if set, else the 5-tuple."""
        if self.key is not None:
            return self.key if isinstance(self.key, bytes) else self.key.encode()
        return (
            f"{self.protocol}|{self.client_ip}|{self.client_port}|{self.vip}|{self.vport}"
        ).encode()


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled, the algorithms in Python subclass it
class Balancer:
    """Base class: backend bookkeeping and the common semantics above.

    Per-backend run-time data is kept in lists indexed like ``backends``
    (``_active``, ``_state``), which keeps :meth:`pick` cheap: the balancer
    is on the per-request path of the simulator, the L4 box and the router.
    """

    name: ClassVar[str] = "base"
    needs_flow: ClassVar[bool] = False
    #: Whether the algorithm holds per-flow affinity (hashes): used by docs and plots.
    consistent: ClassVar[bool] = False

    def __init__(self, backends: Iterable[Backend], *, seed: int = 0) -> None:
        self.backends: list[Backend] = list(backends)
        if not self.backends:
            raise ValueError(f"{self.name}: needs at least one backend")
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: backend names must be unique, got {names}")
        self._index = {b: i for i, b in enumerate(self.backends)}
        n = len(self.backends)
        self._state: list[str] = ["up"] * n
        self._active: list[int] = [0] * n
        self._picked: list[int] = [0] * n
        self._failed: list[int] = [0] * n
        self.rng = random.Random(seed)
        self._limited = any(b.max_conns for b in self.backends)
        self._tier: list[int] = []
        self._refresh()

    # ----------------------------------------------------------------- picking
    def pick(self, flow: Flow | None = None, now: float = 0.0) -> Backend:
        """Choose the backend for a new flow. Raises :class:`NoBackendAvailable`."""
        if flow is None and self.needs_flow:
            raise TypeError(f"{self.name} hashes the flow: call pick(Flow(...))")
        candidates = self._available() if self._limited else self._tier
        if not candidates:
            raise NoBackendAvailable(self._why_none())
        i = self._choose(candidates, flow, now)
        self._picked[i] += 1
        return self.backends[i]

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        raise NotImplementedError

    def _available(self) -> list[int]:
        """The tier that may take a new flow now, honouring ``max_conns``."""
        primaries = [i for i in self._primary_up if not self._full(i)]
        if primaries:
            return primaries
        return [i for i in self._backup_up if not self._full(i)]

    def _full(self, i: int) -> bool:
        limit = self.backends[i].max_conns
        return bool(limit) and self._active[i] >= limit

    def _why_none(self) -> str:
        states = ", ".join(
            f"{b.name}={self._state[i]}"
            + (f" ({self._active[i]}/{b.max_conns} conns)" if self._full(i) else "")
            for i, b in enumerate(self.backends)
        )
        return f"no backend available ({states})"

    # -------------------------------------------------------------- feedback
    def on_start(self, backend: Backend, now: float = 0.0) -> None:
        """A flow began on ``backend`` (counts towards least-conn and max_conns)."""
        self._active[self._index[backend]] += 1

    def on_finish(
        self, backend: Backend, now: float = 0.0, ok: bool = True, latency: float | None = None
    ) -> None:
        """A flow on ``backend`` ended at ``now``; ``ok=False`` if it failed.

        ``latency`` is the flow's duration when the caller knows it; latency-
        aware algorithms otherwise assume flows on one backend end in the
        order they started (true for a FIFO server).
        """
        i = self._index[backend]
        if self._active[i] > 0:
            self._active[i] -= 1
        if not ok:
            self._failed[i] += 1

    def penalize(self, backend: Backend, amount: int) -> None:
        """A failed attempt lowers ``backend``'s effective weight by ``amount`` (nginx:
        ``weight / max_fails``), which climbs back by one per pick. Only the algorithms
        that keep nginx's ``effective_weight`` (smooth WRR, least_conn) use it."""

    # ------------------------------------------------------------ operations
    def set_state(self, backend: Backend | str, state: str) -> None:
        """Set ``up``, ``down`` or ``drain`` (by operator or health check)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}; got {state!r}")
        i = self._lookup(backend)
        if self._state[i] != state:
            self._state[i] = state
            self._refresh()

    def set_weight(self, backend: Backend | str, weight: int) -> None:
        """Change a backend's weight at run time (takes effect on the next pick)."""
        i = self._lookup(backend)
        if not isinstance(weight, int) or weight < 1:
            raise ValueError(f"weight must be an integer >= 1; got {weight!r}")
        self.backends[i].weight = weight
        self._refresh()

    def state(self, backend: Backend | str) -> str:
        return self._state[self._lookup(backend)]

    def active(self, backend: Backend | str) -> int:
        return self._active[self._lookup(backend)]

    def backend(self, name: str) -> Backend:
        return self.backends[self._lookup(name)]

    def stats(self) -> list[dict[str, object]]:
        """One row per backend: name, weight, backup, state, active, picked, failed."""
        return [
            {
                "name": b.name,
                "weight": b.weight,
                "backup": b.backup,
                "state": self._state[i],
                "active": self._active[i],
                "picked": self._picked[i],
                "failed": self._failed[i],
            }
            for i, b in enumerate(self.backends)
        ]

    # --------------------------------------------------------------- helpers
    def _lookup(self, backend: Backend | str) -> int:
        if isinstance(backend, Backend):
            try:
                return self._index[backend]
            except KeyError:
                raise KeyError(f"{backend.name!r} is not a backend of this balancer") from None
        for i, b in enumerate(self.backends):
            if b.name == backend:
                return i
        raise KeyError(f"no backend named {backend!r}")

    def _refresh(self) -> None:
        """Recompute the cached tiers after a state or weight change."""
        up = [i for i, s in enumerate(self._state) if s == "up"]
        self._primary_up = [i for i in up if not self.backends[i].backup]
        self._backup_up = [i for i in up if self.backends[i].backup]
        self._tier = self._primary_up or self._backup_up
        self._changed()

    def _changed(self) -> None:
        """Hook for subclasses that cache tables built from the backends."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {[b.name for b in self.backends]}>"
