"""Consistent hashing on a ring of virtual nodes (Karger et al., 1997; ketama)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from ._base import Backend, Balancer, Flow
from ._hashing import stable_hash64

#: Points per unit of weight: nginx ``hash ... consistent`` (ketama) uses 160.
DEFAULT_VNODES = 160


def build_ring(backends: Sequence[Backend], vnodes: int = DEFAULT_VNODES) -> list[tuple[int, int]]:
    """The ring as sorted ``(point, backend_index)``: ``vnodes x weight`` points each.

    Pure: the same backends give the same ring on every machine. A point's
    position is the stable hash of ``"name#k"``.
    """
    points = [
        (stable_hash64(f"{b.name}#{k}", person=b"ring"), i)
        for i, b in enumerate(backends)
        for k in range(vnodes * b.weight)
    ]
    points.sort()
    return points


class RingHash(Balancer):
    """Consistent hashing: a key goes to the first backend point clockwise of its hash.

    Karger et al., *Consistent Hashing and Random Trees* (STOC 1997); the
    virtual nodes are memcached's ketama, also nginx ``hash $key consistent``
    and Envoy's ``RING_HASH``. When a backend leaves, only the keys that
    pointed at it move (to the next point on the ring); every other key stays
    put. Unavailable backends are skipped by walking on, so a backend going
    down and coming back moves exactly its own keys twice.

    Hashes ``Flow.key`` when set, otherwise the 5-tuple.
    """

    name = "ring_hash"
    needs_flow = True
    consistent = True

    def __init__(self, backends, *, seed: int = 0, vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError("ring_hash: vnodes must be >= 1")
        self.vnodes = vnodes
        self._ring_key: tuple[int, ...] | None = None
        super().__init__(backends, seed=seed)

    def _changed(self) -> None:
        key = tuple(b.weight for b in self.backends)
        if key != self._ring_key:
            ring = build_ring(self.backends, self.vnodes)
            self._points = [p for p, _ in ring]
            self._owners = [i for _, i in ring]
            self._ring_key = key
        self._tier_set = frozenset(self._tier)

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        assert flow is not None
        allowed = self._tier_set if candidates is self._tier else frozenset(candidates)
        h = stable_hash64(flow.hash_input(), person=b"flow")
        n = len(self._points)
        start = bisect_left(self._points, h)
        for k in range(n):
            owner = self._owners[(start + k) % n]
            if owner in allowed:
                return owner
        raise AssertionError("unreachable: every candidate owns points on the ring")
