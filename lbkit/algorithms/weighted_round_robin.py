"""Smooth weighted round robin: nginx's default balancing method."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import Backend, Balancer, Flow
from ._smooth import follow_weights, penalize, smooth_wrr_step


class WeightedRoundRobin(Balancer):
    """nginx's smooth weighted round robin (the default, no directive needed).

    Source: ``ngx_http_upstream_get_peer`` in
    src/http/ngx_http_upstream_round_robin.c. For weights a=5, b=1, c=1 it
    picks ``a a b a c a a`` and repeats: a gets 5 of every 7 picks, and the
    small backends are interleaved instead of waiting behind a burst of a's
    (compare ``round_robin``, which bursts).

    nginx config: ``upstream pool { server a weight=5; server b; server c; }``.
    """

    name = "weighted_round_robin"

    def _changed(self) -> None:
        if not hasattr(self, "_current"):
            self._current = [0] * len(self.backends)
        weights = [b.weight for b in self.backends]
        self._effective = follow_weights(
            getattr(self, "_effective", None), getattr(self, "_weights", None), weights
        )
        self._weights = weights

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        return smooth_wrr_step(self._current, self._weights, candidates, self._effective)

    def penalize(self, backend: Backend, amount: int) -> None:
        penalize(self._effective, self._index[backend], amount)
