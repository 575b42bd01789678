"""A lab topology as data: hosts, their roles and addresses, and segments.

Pure: parsing and validation only, no I/O beyond reading the file. The same
:class:`Topology` is built by every provider (network namespaces, loopback
processes, docker compose), as Mininet builds its network from a ``Topo``.

File format (TOML)::

    name = "basic"
    description = "a client and three backends"

    [segments.lan]
    subnet = "10.0.1.0/24"

    [hosts.client]
    role = "client"
    addresses = ["10.0.1.2"]

    [hosts.api1]
    role = "backend"
    addresses = ["10.0.1.10"]
    gateway = "10.0.1.3"          # optional default route
    [hosts.api1.options]          # optional, role-specific
    mode = "healthy"

    [hosts.alb1]
    role = "l7"
    addresses = ["10.0.1.3"]
    options = { config = "l7/router.toml" }   # or nginx_conf = "..."; relative to this file

An address belongs to the segment whose subnet contains it. ``.1`` of every
segment stays free: docker takes it as the gateway.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import TopologyError

ROLES = ("client", "backend", "l4", "l7", "tools")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
SEGMENT_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
HOST_KEYS = {"role", "addresses", "gateway", "routes", "loopback", "options", "description"}
TOP_KEYS = {"name", "description", "segments", "hosts"}
#: An ``l7`` host's options: the router file it serves, in lbkit's TOML or nginx's syntax.
L7_OPTIONS = ("config", "nginx_conf")
#: Option key -> the router loader's kind (``lbkit.l7.cli.load_config``).
L7_KINDS = {"config": "toml", "nginx_conf": "nginx"}


@dataclass(frozen=True)
class Segment:
    """A layer-2 network (one bridge) and its IPv4 subnet."""

    name: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway_reserved(self) -> ipaddress.IPv4Address:
        """``.1``: kept free for docker's gateway."""
        return self.subnet.network_address + 1


@dataclass(frozen=True)
class Interface:
    """One network interface of a host: ``eth<index>`` on ``segment``."""

    index: int
    segment: str
    address: ipaddress.IPv4Interface

    @property
    def name(self) -> str:
        return f"eth{self.index}"

    @property
    def ip(self) -> str:
        return str(self.address.ip)


@dataclass(frozen=True)
class Host:
    """A machine of the lab: a network namespace, a process, or a container."""

    name: str
    role: str
    interfaces: tuple[Interface, ...]
    gateway: ipaddress.IPv4Address | None = None
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: Extra routes, each the arguments of ``ip route replace``: "10.0.1.100/32 via 10.0.1.2".
    routes: tuple[str, ...] = ()
    #: Addresses held on ``lo`` with ARP suppressed (a DSR / tunnel backend's VIPs).
    loopback: tuple[str, ...] = ()
    #: An l7 host's router file, its path resolved against the topology file's folder.
    router_path: str | None = None

    @property
    def ip(self) -> str:
        """The host's first address (the one people mean by "api1's address")."""
        return self.interfaces[0].ip


@dataclass
class Topology:
    """A whole lab: named segments and hosts, in file order."""

    name: str
    segments: dict[str, Segment]
    hosts: dict[str, Host]
    description: str = ""
    source: str = "<memory>"

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise TopologyError(
                f"{self.source}: no host named {name!r} (hosts: {', '.join(self.hosts)})"
            ) from None

    def by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts.values() if h.role == role]

    def graph(self):
        """A networkx graph: a node per host and per segment, an edge per interface."""
        import networkx as nx

        g = nx.Graph(name=self.name)
        for seg in self.segments.values():
            g.add_node(f"[{seg.name}]", kind="segment", subnet=str(seg.subnet))
        for h in self.hosts.values():
            g.add_node(h.name, kind="host", role=h.role, ip=h.ip)
            for itf in h.interfaces:
                g.add_edge(h.name, f"[{itf.segment}]", ifname=itf.name, ip=itf.ip)
        return g


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; :class:`TopologyError` names file and key."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise TopologyError(f"{p}: no such topology file") from None
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{p}: not valid TOML: {e}") from None
    return parse_topology(data, source=str(p))


def parse_topology(data: dict[str, Any], source: str = "<memory>") -> Topology:
    """Validate parsed TOML into a :class:`Topology`."""

    def fail(key: str, message: str) -> TopologyError:
        return TopologyError(f"{source}: {key}: {message}")

    unknown = set(data) - TOP_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key (expected {', '.join(sorted(TOP_KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail("name", "a lowercase name of 1-10 letters and digits is required")
    segments = _parse_segments(data.get("segments"), fail)
    hosts_data = data.get("hosts")
    if not isinstance(hosts_data, dict) or not hosts_data:
        raise fail("hosts", "at least one [hosts.NAME] table is required")
    hosts: dict[str, Host] = {}
    owner: dict[ipaddress.IPv4Address, str] = {}
    for hname, hdata in hosts_data.items():
        host = _parse_host(hname, hdata, segments, fail)
        found = l7_router_option(host)
        if found is not None:
            host = replace(host, router_path=str(Path(source).parent / found[1]))
        for itf in host.interfaces:
            if itf.address.ip in owner:
                raise fail(
                    f"hosts.{hname}.addresses",
                    f"{itf.ip} is already {owner[itf.address.ip]}'s address",
                )
            owner[itf.address.ip] = hname
        hosts[hname] = host
    return Topology(
        name=name,
        segments=segments,
        hosts=hosts,
        description=str(data.get("description", "")),
        source=source,
    )


def _parse_segments(raw: Any, fail) -> dict[str, Segment]:
    if not isinstance(raw, dict) or not raw:
        raise fail("segments", "at least one [segments.NAME] with a subnet is required")
    segments: dict[str, Segment] = {}
    for sname, sdata in raw.items():
        key = f"segments.{sname}"
        if not SEGMENT_RE.match(sname):
            raise fail(key, "segment names are 1-8 lowercase letters and digits")
        if not isinstance(sdata, dict) or set(sdata) - {"subnet", "description"}:
            raise fail(key, "expected a table with 'subnet' (and optional 'description')")
        try:
            subnet = ipaddress.IPv4Network(sdata.get("subnet", ""), strict=True)
        except ValueError as e:
            raise fail(f"{key}.subnet", f"not an IPv4 subnet: {e}") from None
        if subnet.prefixlen > 29:
            raise fail(f"{key}.subnet", "too small: use /29 or larger")
        for other in segments.values():
            if subnet.overlaps(other.subnet):
                raise fail(f"{key}.subnet", f"{subnet} overlaps segments.{other.name}")
        segments[sname] = Segment(sname, subnet)
    return segments


def _check_l7_options(key: str, options: dict[str, Any], fail) -> None:
    """The shape of an l7 host's options (the file itself is read at ``lab up``)."""
    unknown = sorted(set(options) - set(L7_OPTIONS))
    if unknown:
        raise fail(f"{key}.{unknown[0]}", f"unknown key (expected {' or '.join(L7_OPTIONS)})")
    given = [k for k in L7_OPTIONS if k in options]
    if len(given) > 1:
        raise fail(key, "give config (lbkit's TOML) or nginx_conf (nginx syntax), not both")
    for k in given:
        if not isinstance(options[k], str) or not options[k].strip():
            raise fail(f"{key}.{k}", "expected a file path, relative to the topology file")


def l7_router_option(host: Host) -> tuple[str, str] | None:
    """``(key, path as written)`` of an l7 host's router file, or None (a placeholder)."""
    if host.role != "l7":
        return None
    for key in L7_OPTIONS:
        if key in host.options:
            return key, str(host.options[key])
    return None


def _parse_host(hname: str, hdata: Any, segments: dict[str, Segment], fail) -> Host:
    key = f"hosts.{hname}"
    if not NAME_RE.match(hname):
        raise fail(key, "host names are 1-10 lowercase letters and digits, starting with a letter")
    if not isinstance(hdata, dict):
        raise fail(key, "expected a table")
    unknown = set(hdata) - HOST_KEYS
    if unknown:
        raise fail(
            f"{key}.{sorted(unknown)[0]}", f"unknown key (expected {', '.join(sorted(HOST_KEYS))})"
        )
    role = hdata.get("role")
    if role not in ROLES:
        raise fail(f"{key}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    addresses = hdata.get("addresses")
    if isinstance(addresses, str):
        addresses = [addresses]
    if not isinstance(addresses, list) or not addresses:
        raise fail(f"{key}.addresses", "a list of one or more IPv4 addresses is required")
    interfaces = []
    used_segments: set[str] = set()
    for i, text in enumerate(addresses):
        try:
            ip = ipaddress.IPv4Address(str(text))
        except ValueError:
            raise fail(f"{key}.addresses", f"{text!r} is not an IPv4 address") from None
        seg = next((s for s in segments.values() if ip in s.subnet), None)
        if seg is None:
            raise fail(f"{key}.addresses", f"{ip} is in no segment's subnet")
        if ip in (seg.subnet.network_address, seg.subnet.broadcast_address):
            raise fail(
                f"{key}.addresses", f"{ip} is the network or broadcast address of {seg.subnet}"
            )
        if ip == seg.gateway_reserved:
            raise fail(f"{key}.addresses", f"{ip} is reserved (.1 stays free for docker's gateway)")
        if seg.name in used_segments:
            raise fail(f"{key}.addresses", f"two addresses on segment {seg.name!r}")
        used_segments.add(seg.name)
        interfaces.append(
            Interface(i, seg.name, ipaddress.IPv4Interface(f"{ip}/{seg.subnet.prefixlen}"))
        )
    gateway = None
    if "gateway" in hdata:
        try:
            gateway = ipaddress.IPv4Address(str(hdata["gateway"]))
        except ValueError:
            raise fail(f"{key}.gateway", f"{hdata['gateway']!r} is not an IPv4 address") from None
        if not any(gateway in itf.address.network for itf in interfaces):
            raise fail(f"{key}.gateway", f"{gateway} is not on any of the host's segments")
    options = hdata.get("options", {})
    if not isinstance(options, dict):
        raise fail(f"{key}.options", "expected a table")
    if role == "l7":
        _check_l7_options(f"{key}.options", options, fail)
    routes = hdata.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
        raise fail(f"{key}.routes", 'expected a list like ["10.0.1.100/32 via 10.0.1.2"]')
    for route in routes:
        dst = route.split()[0] if route.split() else ""
        try:
            ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            raise fail(
                f"{key}.routes", f"{route!r} does not start with a destination subnet"
            ) from None
    loopback = hdata.get("loopback", [])
    if not isinstance(loopback, list):
        raise fail(f"{key}.loopback", "expected a list of IPv4 addresses")
    for text in loopback:
        try:
            ipaddress.IPv4Address(str(text))
        except ValueError:
            raise fail(f"{key}.loopback", f"{text!r} is not an IPv4 address") from None
    return Host(
        name=hname,
        role=role,
        interfaces=tuple(interfaces),
        gateway=gateway,
        options=dict(options),
        description=str(hdata.get("description", "")),
        routes=tuple(routes),
        loopback=tuple(str(a) for a in loopback),
    )
