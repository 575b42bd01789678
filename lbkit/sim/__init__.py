"""Discrete-event simulation of load-balancing algorithms in front of queues.

>>> from lbkit.sim import simulate, identical_servers, Workload
>>> r = simulate("power_of_two", identical_servers(10), Workload(requests=2000))
>>> r.requests
2000
"""

from ._engine import simulate
from ._model import ARRIVALS, SERVICES, ServerSpec, Workload, identical_servers
from ._report import BackendReport, RemapReport, SimResult, remap_report
from ._theory import supermarket_mean_time

__all__ = [
    "ARRIVALS",
    "SERVICES",
    "BackendReport",
    "RemapReport",
    "ServerSpec",
    "SimResult",
    "Workload",
    "identical_servers",
    "remap_report",
    "simulate",
    "supermarket_mean_time",
]
