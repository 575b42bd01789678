"""Load-balancing algorithms: one module each, one interface, a registry by name.

>>> from lbkit.algorithms import Backend, make_balancer
>>> b = make_balancer("weighted_round_robin", [Backend("a", weight=5), Backend("b"), Backend("c")])
>>> "".join(b.pick().name for _ in range(7))
'aabacaa'

Every balancer is sans-I/O: time is passed in as ``now``, randomness is
seeded, and nothing reads a socket or a clock. The simulator, the L4
forwarder and the L7 router all drive these same objects.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._base import STATES, Backend, Balancer, Flow, NoBackendAvailable
from ._hashing import stable_hash64
from ._smooth import smooth_wrr_step
from .ip_hash import IpHash, nginx_ip_hash_key
from .least_connections import LeastConnections
from .least_response_time import LeastResponseTime
from .maglev import DEFAULT_TABLE_SIZE, Maglev, maglev_table
from .power_of_two import PowerOfTwo
from .random_choice import RandomChoice
from .ring_hash import RingHash, build_ring
from .round_robin import RoundRobin
from .weighted_round_robin import WeightedRoundRobin

#: Every algorithm by name, in the order the course teaches them.
ALGORITHMS: dict[str, type[Balancer]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        LeastConnections,
        IpHash,
        LeastResponseTime,
        PowerOfTwo,
        RandomChoice,
        RingHash,
        Maglev,
    )
}

#: The nginx ``upstream`` line that selects each algorithm (None: nginx has no equivalent).
NGINX_DIRECTIVE: dict[str, str | None] = {
    "round_robin": None,
    "weighted_round_robin": "(default: no directive)",
    "least_connections": "least_conn;",
    "ip_hash": "ip_hash;",
    "least_response_time": None,
    "power_of_two": "random two least_conn;",
    "random": "random;",
    "ring_hash": "hash $remote_addr consistent;",
    "maglev": None,
}


def make_balancer(name: str, backends: Iterable[Backend], **options: object) -> Balancer:
    """Build the balancer called ``name`` over ``backends``.

    ``options`` go to the algorithm (``seed`` for all; ``decay`` for
    least_response_time, ``vnodes`` for ring_hash, ``table_size`` for
    maglev). An unknown name raises ``ValueError`` listing the known ones.
    """
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}"
        ) from None
    return cls(backends, **options)


__all__ = [
    "ALGORITHMS",
    "DEFAULT_TABLE_SIZE",
    "NGINX_DIRECTIVE",
    "STATES",
    "Backend",
    "Balancer",
    "Flow",
    "IpHash",
    "LeastConnections",
    "LeastResponseTime",
    "Maglev",
    "NoBackendAvailable",
    "PowerOfTwo",
    "RandomChoice",
    "RingHash",
    "RoundRobin",
    "WeightedRoundRobin",
    "build_ring",
    "maglev_table",
    "make_balancer",
    "nginx_ip_hash_key",
    "smooth_wrr_step",
    "stable_hash64",
]
