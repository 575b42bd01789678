"""L4 load balancing at packet level: conntrack and NAT, DSR and tunnel rewrites.

Sans-I/O: :class:`L4Balancer` takes a received Ethernet frame and ``now``
and returns the frames to transmit; nothing here opens a socket or reads a
clock. The AF_PACKET forwarder is a thin adapter around it.

>>> from lbkit.algorithms import Backend
>>> from lbkit.l4 import L4Balancer, Service
>>> svc = Service("10.0.1.200", 80, "tcp", [Backend("api1", address="10.0.1.10:8080")])
>>> lb = L4Balancer([svc], mode="nat", self_mac="02:00:00:00:00:02",
...                 neighbors={"10.0.1.10": "02:00:00:00:00:10"})
>>> from scapy.layers.inet import IP, TCP
>>> from scapy.layers.l2 import Ether
>>> syn = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
...        / IP(src="10.0.1.1", dst="10.0.1.200") / TCP(sport=40000, dport=80, flags="S"))
>>> out = lb.handle(syn, now=0.0)
>>> out[0][IP].dst, out[0][TCP].dport, out[0].dst
('10.0.1.10', 8080, '02:00:00:00:00:10')

Modules, split by concern as Katran's ``lib/bpf``: :mod:`.flow` (keys,
header parsers), :mod:`.conntrack`, :mod:`.checksum` (RFC 1071 / RFC 1624),
:mod:`.rewrite` (NAT / DSR / tunnel on scapy packets), :mod:`.fastpath` (the
same on bytes), :mod:`.icmp` (errors about tracked flows), :mod:`.balancer`
(the decision; its docstring lists every drop and pass reason).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Lazy re-exports (PEP 562): the balancer pulls in scapy (~0.25 s to import),
# which the package's other modules (CLI, config) and `lbkit --help` do not need.
_EXPORTS = {
    "MODES": "balancer",
    "L4Balancer": "balancer",
    "Service": "balancer",
    "backend_address": "balancer",
    "TIMEOUTS": "conntrack",
    "Conntrack": "conntrack",
    "Entry": "conntrack",
    "Target": "conntrack",
    "tcp_next": "conntrack",
    "FlowKey": "flow",
    "IPv4": "flow",
    "Ports": "flow",
    "parse_ipv4": "flow",
    "parse_ports": "flow",
}

if TYPE_CHECKING:
    from .balancer import MODES, L4Balancer, Service, backend_address
    from .conntrack import TIMEOUTS, Conntrack, Entry, Target, tcp_next
    from .flow import FlowKey, IPv4, Ports, parse_ipv4, parse_ports


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lbkit.l4' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "MODES",
    "TIMEOUTS",
    "Conntrack",
    "Entry",
    "FlowKey",
    "IPv4",
    "L4Balancer",
    "Ports",
    "Service",
    "Target",
    "backend_address",
    "parse_ipv4",
    "parse_ports",
    "tcp_next",
]
