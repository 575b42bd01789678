"""Round robin: backend 1, 2, 3, 1, 2, 3..."""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd

from ._base import Balancer, Flow


class RoundRobin(Balancer):
    """Plain rotation over the backends, in order.

    With equal weights this is the textbook 1, 2, 3, 1, 2, 3. Unequal weights
    are honoured as Linux IPVS's ``wrr`` scheduler does (net/netfilter/
    ipvs/ip_vs_wrr.c, ``ip_vs_wrr_schedule``): a current weight ``cw`` starts
    at the largest weight and steps down by the weights' gcd each time the
    rotation wraps; a backend is picked while its weight >= ``cw``. For a=5,
    b=1, c=1 that is ``a a a a a b c``: correct shares, but in bursts. nginx's
    ``weighted_round_robin`` spreads the same shares smoothly.

    Round robin looks at nothing but the order: not the load, not the
    latency. That is its charm and its weakness.
    """

    name = "round_robin"

    def _changed(self) -> None:
        if not hasattr(self, "_pos"):
            self._pos = -1
            self._cw = 0
        w0 = self.backends[0].weight
        self._equal = all(b.weight == w0 for b in self.backends)

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        n = len(self.backends)
        if self._equal and len(candidates) == n:
            self._pos = (self._pos + 1) % n
            return self._pos
        allowed = set(candidates)
        weights = [b.weight for b in self.backends]
        top = max(weights[i] for i in candidates)
        step = 0
        for i in candidates:
            step = gcd(step, weights[i])
        self._cw = min(self._cw, top)
        # One full sweep per weight level is enough to find a backend.
        for _ in range(n * (top // step + 1)):
            self._pos = (self._pos + 1) % n
            if self._pos == 0:
                self._cw -= step
                if self._cw <= 0:
                    self._cw = top
            if self._pos in allowed and weights[self._pos] >= self._cw:
                return self._pos
        raise AssertionError("unreachable: a candidate always matches within one sweep")
