"""Slow start: a backend that just recovered gets its weight back gradually.

A backend back from ``down`` has cold caches, empty connection pools and a
JIT that has not warmed up; its full share of traffic at once can knock it
down again. Slow start scales its weight over a window. The formula is
Envoy's (``arch_overview/upstream/load_balancing/slow_start``; the
``SlowStartConfig`` proto: ``slow_start_window``, ``aggression`` default
1.0, ``min_weight_percent`` default 10)::

    time_factor = max(time_since_start_seconds, 1) / slow_start_window_seconds
    new_weight  = weight * max(min_weight_percent / 100, time_factor ** (1 / aggression))

and the full ``weight`` once the window has passed. ``aggression`` 1 is a
linear ramp, as HAProxy's ``slowstart`` (configuration manual 5.2, where
the weight grows linearly from 0 to 100 % over the time given) and nginx
Plus's ``slow_start`` (weight from zero to nominal);
above 1 the ramp is faster at first, below 1 slower. The floor keeps the
backend in the rotation from the first second.

Which algorithms honour it (:data:`SLOW_START_ALGORITHMS`): those that use
weights as shares or as load divisors. Envoy supports slow start for round
robin and least request only; ours also weigh ``random`` by weight, so it
takes part. The hash-based ones do not (:data:`NO_SLOW_START`): there a
weight decides which keys a backend owns, so ramping it would move flows
between backends on every step and break the affinity they exist for
(Envoy ignores slow start for ring hash and Maglev too).

:class:`SlowStart` drives a weight-based balancer through
:meth:`lbkit.algorithms.Balancer.set_weight`. Weights there are integers
>= 1, so it multiplies every configured weight by ``resolution`` (100) for
as long as it is attached: shares are unchanged (every weight-based
algorithm here is scale-invariant), and a ramping backend's weight can take
100 steps instead of jumping from 1 to full. ``set_weight`` writes the
``Backend`` object, so a backend shared by two balancers sees the scaled
weight in both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbkit.algorithms import Balancer

    from .checker import Transition

#: Algorithms whose picks follow the weight, so a ramped weight ramps the traffic.
SLOW_START_ALGORITHMS: frozenset[str] = frozenset(
    {
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "least_response_time",
        "power_of_two",
        "random",
    }
)

_REMAP = (
    "changing a weight remaps keys between backends, so each step of the ramp would move "
    "flows that should stick; Envoy ignores slow start for hash-based balancers too"
)

#: Algorithms that ignore slow start, and why.
NO_SLOW_START: dict[str, str] = {
    "ip_hash": f"ip_hash pins each client address to a backend: {_REMAP}",
    "ring_hash": f"ring_hash places a weight's worth of points on the ring: {_REMAP}",
    "maglev": f"maglev fills the lookup table in proportion to weight: {_REMAP}",
}


def _name(algorithm: str | Balancer) -> str:
    return algorithm if isinstance(algorithm, str) else algorithm.name


def supports_slow_start(algorithm: str | Balancer) -> bool:
    """Whether ``algorithm`` (a name or a balancer) honours slow start."""
    name = _name(algorithm)
    if name in SLOW_START_ALGORITHMS:
        return True
    if name in NO_SLOW_START:
        return False
    raise ValueError(f"unknown algorithm {name!r}")


def why_no_slow_start(algorithm: str | Balancer) -> str | None:
    """The reason ``algorithm`` ignores slow start; None if it honours it."""
    return None if supports_slow_start(algorithm) else NO_SLOW_START[_name(algorithm)]


def slow_start_factor(
    since_up: float, window: float, aggression: float = 1.0, min_weight_percent: float = 10.0
) -> float:
    """The weight multiplier ``since_up`` seconds after recovery, in (0, 1] (Envoy's formula)."""
    if aggression <= 0:
        raise ValueError("aggression must be > 0")
    if not 0 <= min_weight_percent <= 100:
        raise ValueError("min_weight_percent must be in [0, 100]")
    if window <= 0 or since_up >= window:
        return 1.0
    time_factor = max(since_up, 1.0) / window
    return max(min_weight_percent / 100.0, time_factor ** (1.0 / aggression))


def slow_start_weight(
    weight: float,
    since_up: float,
    window: float,
    aggression: float = 1.0,
    min_weight_percent: float = 10.0,
) -> float:
    """Envoy's ``new_weight`` for a backend of ``weight`` that came up ``since_up`` s ago."""
    return weight * slow_start_factor(since_up, window, aggression, min_weight_percent)


class SlowStart:
    """Ramp the weights of recovered backends in one balancer.

    Call :meth:`start` (or :meth:`observe` with a health
    :class:`~lbkit.health.checker.Transition`) when a backend comes back,
    and :meth:`update` as time passes (each second is plenty: Envoy
    recomputes on its own schedule too). On a hash-based balancer the
    object is inert: ``enabled`` is False and ``reason`` says why.

    ``configured`` holds the operator's weights (read from the backends at
    construction); change them with :meth:`set_weight`, not on the
    balancer, or the next :meth:`update` overwrites the change.
    """

    def __init__(
        self,
        balancer: Balancer,
        window: float,
        *,
        aggression: float = 1.0,
        min_weight_percent: float = 10.0,
        resolution: int = 100,
    ) -> None:
        if window <= 0:
            raise ValueError("window must be > 0 seconds")
        if resolution < 1:
            raise ValueError("resolution must be >= 1")
        slow_start_factor(0.0, window, aggression, min_weight_percent)  # validates the rest
        self.balancer = balancer
        self.window = window
        self.aggression = aggression
        self.min_weight_percent = min_weight_percent
        self.resolution = resolution
        self.reason = why_no_slow_start(balancer)
        self.enabled = self.reason is None
        self.configured: dict[str, int] = {b.name: b.weight for b in balancer.backends}
        self._since: dict[str, float] = {}
        if self.enabled:
            for name, weight in self.configured.items():
                balancer.set_weight(name, weight * resolution)

    def start(self, name: str, now: float) -> None:
        """``name`` came back into service at ``now``: its ramp begins."""
        if name not in self.configured:
            raise KeyError(f"no backend named {name!r}")
        if self.enabled:
            self._since[name] = now

    def observe(self, transition: Transition) -> bool:
        """Start the ramp on a health transition ``down`` -> ``up``; True if it did.

        As HAProxy (slowstart applies only to a server seen failed before,
        never at startup), the first ``unknown`` -> ``up`` does not ramp;
        Envoy ramps then too, and notes that a pool all ramping together
        gets the same shares as without slow start.
        """
        if (
            self.enabled
            and transition.old == "down"
            and transition.new == "up"
            and transition.backend in self.configured
        ):
            self.start(transition.backend, transition.at)
            return True
        return False

    def set_weight(self, name: str, weight: int) -> None:
        """The operator changes ``name``'s configured weight (ramps apply on top)."""
        if name not in self.configured:
            raise KeyError(f"no backend named {name!r}")
        if not isinstance(weight, int) or weight < 1:
            raise ValueError(f"weight must be an integer >= 1; got {weight!r}")
        self.configured[name] = weight
        if not self.enabled:
            self.balancer.set_weight(name, weight)

    def factors(self, now: float) -> dict[str, float]:
        """The backends still ramping at ``now`` and their weight multiplier."""
        out = {}
        for name, since in self._since.items():
            if now - since < self.window:
                out[name] = slow_start_factor(
                    now - since, self.window, self.aggression, self.min_weight_percent
                )
        return out

    def weights(self, now: float) -> dict[str, int]:
        """The integer weight each backend should have at ``now`` (pure: applies nothing)."""
        if not self.enabled:
            return dict(self.configured)
        factors = self.factors(now)
        return {
            name: max(1, round(weight * self.resolution * factors.get(name, 1.0)))
            for name, weight in self.configured.items()
        }

    def update(self, now: float) -> dict[str, int]:
        """Push the weights for ``now`` into the balancer; returns those that changed."""
        if not self.enabled:
            return {}
        changed = {}
        for name, weight in self.weights(now).items():
            if self.balancer.backend(name).weight != weight:
                self.balancer.set_weight(name, weight)
                changed[name] = weight
        for name in [n for n, since in self._since.items() if now - since >= self.window]:
            del self._since[name]
        return changed

    def ramping(self, now: float) -> set[str]:
        return set(self.factors(now))

    def __repr__(self) -> str:
        state = "on" if self.enabled else f"off ({self.reason})"
        return f"<SlowStart window={self.window:g}s {state} ramping={sorted(self._since)}>"
