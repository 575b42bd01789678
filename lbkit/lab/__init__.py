"""The lab: one topology file, run on network namespaces, on loopback, or with docker.

>>> from lbkit.lab import load_topology
>>> load_topology("labs/basic.toml").host("api1").ip
'10.0.1.10'
"""

from .errors import LabError, TopologyError
from .lab import Lab, default_provider
from .topology import Host, Segment, Topology, load_topology, parse_topology

__all__ = [
    "Host",
    "Lab",
    "LabError",
    "Segment",
    "Topology",
    "TopologyError",
    "default_provider",
    "load_topology",
    "parse_topology",
]
