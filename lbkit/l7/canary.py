"""Canary split: send ``percent`` of a route's requests to another pool.

Each request is an independent draw, not a counter ("every 100th"): a
counter would be exact but predictable and synchronised across routers,
while independent draws make the canary's share a binomial variable whose
spread a test (and the course) can state: for n requests at share p, the
count has mean n*p and standard deviation sqrt(n*p*(1-p)).

* ``sticky="request"``: a fresh draw from the router's seeded RNG.
* ``sticky="client"``: a stable hash of the client address decides, so a
  client stays on one side of the split (Envoy's ``runtime_fraction`` with a
  hash key; nginx ``split_clients "${remote_addr}"``, which uses MurmurHash2).
* a ``force_header`` with a truthy value forces the canary (for testers).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lbkit.algorithms import stable_hash64

from .headers import joined
from .model import Split

#: Values of the force header that do *not* force the canary.
FALSY = frozenset(("", "0", "false", "no", "off"))


def forced(split: Split, headers: Sequence[tuple[str, str]]) -> bool:
    """Whether the request carries the split's force header with a truthy value."""
    if not split.force_header:
        return False
    value = joined(headers, split.force_header)
    return value is not None and value.strip().lower() not in FALSY


def client_fraction(client_ip: str) -> float:
    """A stable number in [0, 1) for a client address (the same on every router)."""
    return stable_hash64(client_ip, person=b"canary") / 2.0**64


def to_canary(
    split: Split, headers: Sequence[tuple[str, str]], client_ip: str, rng: random.Random
) -> bool:
    """Whether this request goes to ``split.upstream``."""
    if forced(split, headers):
        return True
    share = split.percent / 100.0
    if split.sticky == "client":
        return client_fraction(client_ip) < share
    return rng.random() < share
