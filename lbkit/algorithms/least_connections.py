"""Least connections: nginx's ``least_conn``."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import Backend, Balancer, Flow
from ._smooth import follow_weights, penalize


class LeastConnections(Balancer):
    """Pick the backend with the fewest active connections per unit of weight.

    Source: ``ngx_http_upstream_get_least_conn_peer`` in
    src/http/modules/ngx_http_upstream_least_conn_module.c. Connections are
    compared relative to weight by cross-multiplying
    (``conns_a * weight_b < conns_b * weight_a``), so no division happens;
    when several backends tie, nginx's smooth weighted round robin chooses
    among them, starting from the first backend that reached the minimum.

    Good for long-lived connections (WebSockets, database sessions, gRPC
    streams): a backend holding many of them gets no more until they end,
    which round robin cannot see.

    nginx config: ``upstream pool { least_conn; server a; server b; }``.
    """

    name = "least_connections"

    def _changed(self) -> None:
        if not hasattr(self, "_current"):
            self._current = [0] * len(self.backends)
        weights = [b.weight for b in self.backends]
        self._effective = follow_weights(
            getattr(self, "_effective", None), getattr(self, "_weights", None), weights
        )
        self._weights = weights

    def penalize(self, backend: Backend, amount: int) -> None:
        penalize(self._effective, self._index[backend], amount)

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        active = self._active
        backends = self.backends
        best = candidates[0]
        many = False
        for i in candidates[1:]:
            lhs = active[i] * backends[best].weight
            rhs = active[best] * backends[i].weight
            if lhs < rhs:
                best, many = i, False
            elif lhs == rhs:
                many = True
        if not many:
            return best
        # Smooth WRR among the tied backends, from ``best`` onwards as nginx walks.
        lead = best
        total = 0
        current = self._current
        effective = self._effective
        start = candidates.index(best)
        for i in candidates[start:]:
            if active[i] * backends[lead].weight != active[lead] * backends[i].weight:
                continue
            e = effective[i]  # nginx: peer->effective_weight, climbing back to weight
            current[i] += e
            total += e
            if e < backends[i].weight:
                effective[i] = e + 1
            if current[i] > current[best]:
                best = i
        current[best] -= total
        return best
