"""Power of two choices: two random candidates, the less loaded wins."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import Balancer, Flow


class PowerOfTwo(Balancer):
    """Draw two distinct backends at random; send to the one with fewer active flows.

    Mitzenmacher, *The Power of Two Choices in Randomized Load Balancing*
    (IEEE TPDS 2001), Theorem 1: in the supermarket model with n servers at
    load λ < 1, sampling d = 2 servers instead of 1 shrinks the expected time
    in system from 1/(1-λ) to sum_{i>=1} λ^(2^i - 2) as n grows: 10 -> 2.61
    at λ = 0.9. The tail of queue lengths falls doubly exponentially instead
    of exponentially.

    Candidates are drawn with probability proportional to weight, and
    compared by active flows per unit of weight. Ties go to the first draw,
    which is itself random. Envoy's ``LEAST_REQUEST`` (choice_count 2) and
    nginx's ``random two least_conn`` are this algorithm.
    """

    name = "power_of_two"

    def _changed(self) -> None:
        w0 = self.backends[0].weight
        self._uniform = all(b.weight == w0 for b in self.backends)

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        m = len(candidates)
        if m == 1:
            return candidates[0]
        rnd = self.rng.random
        if self._uniform:
            a = int(rnd() * m)
            b = int(rnd() * (m - 1))
            if b >= a:
                b += 1
            i, j = candidates[a], candidates[b]
            active = self._active
            return j if active[j] < active[i] else i
        weights = [self.backends[k].weight for k in candidates]
        i = self.rng.choices(candidates, weights=weights)[0]
        j = i
        while j == i:
            j = self.rng.choices(candidates, weights=weights)[0]
        wi, wj = self.backends[i].weight, self.backends[j].weight
        return j if self._active[j] * wi < self._active[i] * wj else i
