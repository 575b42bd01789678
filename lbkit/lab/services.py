"""Which services each role runs, and where they listen under each provider.

Pure. With network namespaces and docker every host has its own address, so
services use their standard ports. With the ``local`` provider every host is
a process on loopback: it gets its own 127.0.1.x address where the system
has them (Linux routes all of 127.0.0.0/8 to lo), and ports below 1024 move
up by 8000 so no root is needed (80 -> 8080). Where only 127.0.0.1 exists
(macOS), each host gets its own block of ports instead.

A service marked ``internal`` (an L7 router's admin API) listens natively
on the host's own 127.0.0.1 only: reached from inside that host.

One thing is read from disk: whether an l7 host's router file terminates TLS
(a ``listen ... ssl``), which gives it the ``https`` service on 443 (8443
locally). The file is read once per version (path, size, mtime), with the
router's own loader; a file that does not load counts as no TLS here (``lab
up`` reports its mistake). Editing the file adds or drops the service at the
next ``lab up``, not at a reload.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .topology import L7_KINDS, Host, Topology, l7_router_option


@dataclass(frozen=True)
class Service:
    """One listening socket of a role."""

    name: str
    proto: str  # "tcp" | "udp"
    port: int
    description: str
    #: Reached at this address natively instead of the host's own (an L4 box's VIP).
    address: str | None = None
    #: Natively bound to the host's own 127.0.0.1 only (reached from inside the host).
    internal: bool = False


BACKEND_SERVICES = (
    Service("http", "tcp", 80, "HTTP: answers with its name; /echo, /healthz"),
    Service(
        "http-alt", "tcp", 3000, "the same HTTP server on :3000 (the seed's nginx upstream port)"
    ),
    Service("line", "tcp", 7000, "line-based TCP: each line comes back as 'NAME: line'"),
    Service("echo", "udp", 7, "UDP echo (RFC 862), prefixed with 'NAME: '"),
)
PLACEHOLDER_SERVICES = (
    Service("http", "tcp", 80, "placeholder page: this tier arrives in a later chapter"),
)
#: An l7 host with a router file (``options.config`` or ``options.nginx_conf``).
L7_SERVICES = (
    Service("http", "tcp", 80, "L7 router: routes by path, host, header, cookie"),
    Service("admin", "tcp", 9101, "admin API /stats, /metrics (inside the host)", internal=True),
)
#: ... and when that file has a ``listen ... ssl``: HTTPS too, certificates from the lab CA.
L7_TLS_SERVICES = (
    L7_SERVICES[0],
    Service("https", "tcp", 443, "L7 router over TLS (lab CA)"),
    L7_SERVICES[1],
)
#: Service name -> URL scheme (``lab.url``); any other is ``http``.
SCHEMES = {"https": "https"}

ROLE_SERVICES: dict[str, tuple[Service, ...]] = {
    "client": (),
    "tools": (),
    "backend": BACKEND_SERVICES,
    "l4": PLACEHOLDER_SERVICES,
    "l7": PLACEHOLDER_SERVICES,
}

#: ``addressing`` values: how a host's services are bound and reached.
ADDRESSINGS = ("native", "loopback", "loopback-shared")

LOCAL_PORT_SHIFT = 8000
SHARED_PORT_BASE = 20000


def services_of(host: Host) -> tuple[Service, ...]:
    """The host's services: its role's, an L4 box's VIP ports when it forwards, or an
    L7 router's when it has a router file."""
    if l7_router_option(host) is not None:
        return L7_TLS_SERVICES if router_terminates_tls(host) else L7_SERVICES
    if host.role == "l4" and "vip" in host.options:
        vip = str(host.options["vip"])
        return tuple(
            Service(
                "vip" if i == 0 else f"vip{i}",
                str(svc.get("proto", "tcp")),
                int(svc["port"]),
                f"VIP {vip}:{svc['port']}: balanced over {', '.join(map(str, svc['backends']))}",
                address=vip,
            )
            for i, svc in enumerate(host.options.get("services", []))
            if isinstance(svc, dict) and "port" in svc and "backends" in svc
        )
    return ROLE_SERVICES[host.role]


def endpoint(topology: Topology, host: Host, service: Service, addressing: str) -> tuple[str, int]:
    """The ``(ip, port)`` where ``service`` of ``host`` is reached.

    * ``native`` (netns, docker): the host's own address, the standard port.
    * ``loopback`` (local, Linux): ``127.0.1.<n>`` with ``n`` the host's place
      in the file + 2 (so .1 stays free), ports < 1024 shifted by 8000.
    * ``loopback-shared`` (local, macOS): 127.0.0.1 and a port block per host:
      20000 + 10 x place + the service's index in its role.
    """
    if addressing == "native":
        if service.internal:
            return "127.0.0.1", service.port
        return service.address or host.ip, service.port
    place = list(topology.hosts).index(host.name)
    if addressing == "loopback":
        port = service.port + LOCAL_PORT_SHIFT if service.port < 1024 else service.port
        return f"127.0.1.{place + 2}", port
    if addressing == "loopback-shared":
        index = services_of(host).index(service)
        return "127.0.0.1", SHARED_PORT_BASE + 10 * place + index
    raise ValueError(f"unknown addressing {addressing!r}; expected one of {', '.join(ADDRESSINGS)}")


def bind_address(
    addressing: str, topology: Topology, host: Host, service: Service
) -> tuple[str, int]:
    """Where the host's process binds: all addresses natively (127.0.0.1 for an internal
    service), its loopback address locally."""
    ip, port = endpoint(topology, host, service, addressing)
    return ("0.0.0.0", port) if addressing == "native" and not service.internal else (ip, port)


def endpoint_map(topology: Topology, addressing: str) -> dict[tuple[str, int], tuple[str, int]]:
    """Every lab TCP service's native ``(address, port)`` -> where it is reached under
    ``addressing``: ``("10.0.1.10", 80)`` -> ``("127.0.1.6", 8080)`` locally.

    Each of a host's addresses maps (a VIP service: its VIP); internal services do not.
    """
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for host in topology.hosts.values():
        for svc in services_of(host):
            if svc.proto != "tcp" or svc.internal:
                continue
            target = endpoint(topology, host, svc, addressing)
            for ip in [svc.address] if svc.address else [itf.ip for itf in host.interfaces]:
                out[(ip, svc.port)] = target
    return out


def default_service(host: Host) -> str:
    """What ``lab.url(host)`` means: ``http``, or an L4 box's first VIP port."""
    names = [s.name for s in services_of(host)]
    return "http" if "http" in names or not names else names[0]


def router_terminates_tls(host: Host) -> bool:
    """Whether ``host``'s router file has a TLS address (a ``listen ... ssl``); False for
    a host without one, or whose file does not load (``lab up`` names that mistake)."""
    found = l7_router_option(host)
    if found is None or host.router_path is None:
        return False
    try:
        st = os.stat(host.router_path)
    except OSError:
        return False
    return _has_tls(host.router_path, L7_KINDS[found[0]], st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _has_tls(path: str, kind: str, _size: int, _mtime_ns: int) -> bool:
    from lbkit.l7.cli import ConfigError, load_config
    from lbkit.l7.tls import tls_addresses

    try:
        return bool(tls_addresses(load_config(path, kind)))
    except ConfigError:
        return False


def scheme(service: str) -> str:
    """The URL scheme of a service: ``https`` for ``https``, else ``http``."""
    return SCHEMES.get(service, "http")


def service_named(host: Host, name: str) -> Service:
    for s in services_of(host):
        if s.name == name:
            return s
    raise KeyError(f"{host.name} ({host.role}) has no service {name!r}")
