"""Least response time: latency-aware balancing with a peak-sensitive EWMA."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from ._base import Backend, Balancer, Flow

#: Cost of a backend that has flows in flight but no latency measured yet
#: (Finagle ``PeakEwma.Penalty``): large, so unknown-and-busy is avoided.
PENALTY = 1e6


class LeastResponseTime(Balancer):
    """Pick the backend with the lowest expected latency for one more request.

    Each backend keeps a *peak EWMA* of observed latencies, as Finagle's
    ``PeakEwma`` balancer (and Linkerd, and Envoy's latency-aware ideas):

    * a latency above the current estimate replaces it at once (the peak),
      so a backend that suddenly slows down is avoided immediately;
    * a lower latency is blended in with weight ``1 - exp(-dt / decay)``,
      so the estimate forgets old peaks smoothly over ``decay`` seconds;
    * at pick time the estimate decays towards 0 with the time since the last
      observation, so an idle backend is tried again instead of shunned
      forever.

    Score = estimate x (active + 1) / weight: the expected wait for one more
    request, since the requests already there are served first. The lowest
    score wins; ties (all cold at start) rotate so no backend is favoured.

    A mean latency (EWMA) tracks the middle of the distribution, roughly
    the p50; the peak rule makes it sensitive to the tail (p95, p99), which
    is where a slow backend shows first. The notebook plots both.
    """

    name = "least_response_time"

    def __init__(self, backends, *, seed: int = 0, decay: float = 10.0) -> None:
        if decay <= 0:
            raise ValueError("least_response_time: decay must be > 0 seconds")
        self.decay = decay
        super().__init__(backends, seed=seed)
        n = len(self.backends)
        self._cost = [0.0] * n
        self._stamp = [0.0] * n
        self._starts: list[deque[float]] = [deque() for _ in range(n)]
        self._turn = 0

    def estimate(self, backend: Backend | str, now: float) -> float:
        """The latency estimate for ``backend`` at ``now`` (seconds; 0 if never seen)."""
        i = self._lookup(backend)
        return self._decayed(i, now)

    def _decayed(self, i: int, now: float) -> float:
        dt = max(now - self._stamp[i], 0.0)
        return self._cost[i] * math.exp(-dt / self.decay)

    def _score(self, i: int, now: float) -> float:
        cost = self._decayed(i, now)
        if cost == 0.0 and self._active[i]:
            return PENALTY + self._active[i]
        return cost * (self._active[i] + 1) / self.backends[i].weight

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        m = len(candidates)
        self._turn = (self._turn + 1) % m
        best = candidates[self._turn]
        best_score = self._score(best, now)
        for k in range(1, m):
            i = candidates[(self._turn + k) % m]
            s = self._score(i, now)
            if s < best_score:
                best, best_score = i, s
        return best

    def on_start(self, backend: Backend, now: float = 0.0) -> None:
        super().on_start(backend, now)
        self._starts[self._index[backend]].append(now)

    def on_finish(
        self, backend: Backend, now: float = 0.0, ok: bool = True, latency: float | None = None
    ) -> None:
        i = self._index[backend]
        started = self._starts[i].popleft() if self._starts[i] else None
        super().on_finish(backend, now, ok, latency)
        if latency is None:
            if started is None:
                return
            latency = now - started
        self._observe(i, max(latency, 0.0), now)

    def _observe(self, i: int, rtt: float, now: float) -> None:
        """Finagle ``PeakEwma.observe``: jump up to peaks, decay down smoothly."""
        dt = max(now - self._stamp[i], 0.0)
        w = math.exp(-dt / self.decay)
        if rtt > self._cost[i]:
            self._cost[i] = rtt
        else:
            self._cost[i] = self._cost[i] * w + rtt * (1.0 - w)
        self._stamp[i] = now
