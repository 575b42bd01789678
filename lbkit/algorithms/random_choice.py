"""Random: each new flow to a backend drawn at random (by weight)."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import Balancer, Flow


class RandomChoice(Balancer):
    """Draw a backend at random, with probability proportional to its weight.

    The baseline of the "supermarket model" (Mitzenmacher, *The Power of Two
    Choices in Randomized Load Balancing*, 2001, §1): with Poisson arrivals
    each backend behaves as an independent M/M/1 queue, so at load 0.9 the
    mean time in system is 1 / (1 - 0.9) = 10 service times.

    nginx config: ``upstream pool { random; server a; server b; }``.
    """

    name = "random"

    def _changed(self) -> None:
        w0 = self.backends[0].weight
        self._uniform = all(b.weight == w0 for b in self.backends)

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        if self._uniform:
            return candidates[int(self.rng.random() * len(candidates))]
        weights = [self.backends[i].weight for i in candidates]
        return self.rng.choices(candidates, weights=weights)[0]
