"""Maglev consistent hashing (Eisenbud et al., NSDI 2016)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from ._base import Backend, Balancer, Flow
from ._hashing import stable_hash64

#: Maglev paper §5.3: 65537 entries (a prime) keeps every backend's share within
#: about 1% of even for up to a few hundred backends.
DEFAULT_TABLE_SIZE = 65537


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    f = 2
    while f * f <= n:
        if n % f == 0:
            return False
        f += 1
    return True


def maglev_table(backends: Sequence[Backend | str], size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """Build a Maglev lookup table: entry -> index into ``backends``.

    Maglev paper §3.4, Pseudocode 1. Backend ``i`` has a preference list
    ``permutation[i][j] = (offset + j * skip) mod M`` with
    ``offset = h1(name) mod M`` and ``skip = h2(name) mod (M - 1) + 1``; since
    ``M`` is prime every preference list visits every entry. Backends take
    turns claiming their next preferred free entry until the table is full,
    so with equal weights every backend owns ``floor(M/N)`` or ``ceil(M/N)``
    entries. Weights follow Envoy's ``MaglevTable`` (a backend of weight
    ``w`` takes a turn in ``w / max_weight`` of the rounds).

    Strings are backends of weight 1. Pure and deterministic: the same names
    and weights give the same table on every machine, which is what lets
    several L4 boxes agree without talking to each other.
    """
    if not backends:
        raise ValueError("maglev_table: needs at least one backend")
    if not _is_prime(size):
        raise ValueError(f"maglev_table: size must be prime (Maglev §3.4), got {size}")
    names = tuple(b if isinstance(b, str) else b.name for b in backends)
    weights = tuple(1 if isinstance(b, str) else b.weight for b in backends)
    return list(_build(names, weights, size))


@lru_cache(maxsize=16)
def _build(names: tuple[str, ...], weights: tuple[int, ...], size: int) -> tuple[int, ...]:
    n = len(names)
    offset = [stable_hash64(nm, person=b"maglev-h1") % size for nm in names]
    skip = [stable_hash64(nm, person=b"maglev-h2") % (size - 1) + 1 for nm in names]
    nxt = [0] * n
    target = [0] * n
    top = max(weights)
    table = [-1] * size
    filled = 0
    iteration = 0
    while filled < size:
        iteration += 1
        for i in range(n):
            # Envoy: a backend of weight w claims an entry in w/top of the rounds.
            if iteration * weights[i] < target[i]:
                continue
            target[i] += top
            off, sk, j = offset[i], skip[i], nxt[i]
            c = (off + j * sk) % size
            while table[c] >= 0:
                j += 1
                c = (off + j * sk) % size
            table[c] = i
            nxt[i] = j + 1
            filled += 1
            if filled == size:
                break
    return tuple(table)


class Maglev(Balancer):
    """Maglev hashing: a flow's hash indexes a precomputed table of backends.

    Lookup is one array access, O(1), however many backends. When a backend
    leaves, the table is rebuilt from the remaining ones; Maglev's fill keeps
    most entries where they were, so about 1/N of flows move (a little more
    than a ring's exact 1/N: Maglev trades perfect stability for perfectly
    even shares; paper §3.4 and Figure 11). Draining and down backends are
    left out of the table; a backend at ``max_conns`` is skipped by probing
    the next entries.

    Hashes ``Flow.key`` when set, otherwise the 5-tuple. Google's Maglev and
    Facebook's Katran use it at L4; Envoy offers it as ``MAGLEV``.
    """

    name = "maglev"
    needs_flow = True
    consistent = True

    def __init__(self, backends, *, seed: int = 0, table_size: int = DEFAULT_TABLE_SIZE) -> None:
        if not _is_prime(table_size):
            raise ValueError(f"maglev: table_size must be prime, got {table_size}")
        self.table_size = table_size
        super().__init__(backends, seed=seed)

    def _changed(self) -> None:
        tier = self._tier
        if tier:
            local = maglev_table([self.backends[i] for i in tier], self.table_size)
            self._table = [tier[k] for k in local]
        else:
            self._table = []

    def table(self) -> list[int]:
        """The current lookup table as indices into ``backends`` (for plotting)."""
        return list(self._table)

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        assert flow is not None
        h = stable_hash64(flow.hash_input(), person=b"flow") % self.table_size
        table = self._table
        if candidates is self._tier:
            return table[h]
        # Some backends are at max_conns, or the tier changed to backups:
        allowed = frozenset(candidates)
        if not allowed.issubset(self._tier):
            local = maglev_table([self.backends[i] for i in candidates], self.table_size)
            return candidates[local[h]]
        for k in range(self.table_size):
            owner = table[(h + k) % self.table_size]
            if owner in allowed:
                return owner
        raise AssertionError("unreachable: every candidate owns table entries")
