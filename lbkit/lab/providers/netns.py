"""The ``netns`` provider: every host a Linux network namespace.

Layout (Mininet's, with the switch in a namespace of its own):

* ``PREFIX-sw`` holds one bridge ``br-SEGMENT`` per segment;
* ``PREFIX-HOST`` holds the host's ``lo`` and one ``ethN`` per address; each
  ``ethN`` is one end of a veth pair whose other end (``hIeN``) sits in the
  switch namespace, enslaved to the segment's bridge.

Veth pairs are created *inside* the switch namespace with the peer placed
straight into the host's, so nothing of the lab ever exists in the root
namespace: no interface, no address, no route. Each step is done through
netlink (pyroute2) and carries the equivalent ``ip`` command, which
``lbkit lab up --dry-run`` prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabError
from ..topology import Host, Topology

SYSCTLS_ALL = {
    # IPv6 off inside the lab: no router solicitations or DAD in the captures.
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
}
SYSCTLS_BY_ROLE = {
    "l4": {"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0"},
}


@dataclass
class Step:
    """One change to the system, and the ``ip`` command a person would type for it."""

    command: str
    apply: Callable[[], None]
    namespace: str | None = None  # a namespace this step creates (recorded before it runs)


def require_root_and_tools() -> None:
    """One clear line if this machine cannot run the netns provider."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise LabError(
            "the netns provider needs root (it creates network namespaces); "
            "run as root, or use --provider local"
        )
    if not Path("/proc/self/ns/net").exists():
        raise LabError("this system has no network namespaces; use --provider local")
    if shutil.which("ip") is None:
        raise LabError("`ip` not found: install iproute2 (make system-deps)")


def ns_name(prefix: str, host: str) -> str:
    return f"{prefix}-{host}"


def switch_name(prefix: str) -> str:
    return f"{prefix}-sw"


def list_namespaces() -> list[str]:
    from pyroute2 import netns

    return sorted(netns.listnetns())


def namespace_pids(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns`` (``ip netns pids``)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def exec_prefix(prefix: str, host: str) -> list[str]:
    """argv prefix running a command inside ``host``."""
    return ["ip", "netns", "exec", ns_name(prefix, host)]


def plan(topology: Topology, prefix: str) -> list[Step]:
    """Every step that builds ``topology``'s network, in order."""
    sw = switch_name(prefix)
    steps = [
        Step(f"ip netns add {sw}", lambda: _create_ns(sw), namespace=sw),
        Step(f"ip -n {sw} link set lo up", lambda: _link_up(sw, "lo")),
    ]
    steps += _sysctl_steps(sw, SYSCTLS_ALL)  # else the switch's veth ends speak IPv6
    for seg in topology.segments.values():
        br = f"br-{seg.name}"
        steps.append(Step(f"ip -n {sw} link add {br} type bridge", _bridge(sw, br)))
        steps.append(Step(f"ip -n {sw} link set {br} up", _up(sw, br)))
    for place, host in enumerate(topology.hosts.values()):
        steps.extend(_host_steps(prefix, place, host))
    return steps


def _host_steps(prefix: str, place: int, host: Host) -> list[Step]:
    sw, ns = switch_name(prefix), ns_name(prefix, host.name)
    steps = [
        Step(f"ip netns add {ns}", _ns(ns), namespace=ns),
        Step(f"ip -n {ns} link set lo up", _up(ns, "lo")),
    ]
    steps += _sysctl_steps(ns, {**SYSCTLS_ALL, **SYSCTLS_BY_ROLE.get(host.role, {})})
    for itf in host.interfaces:
        outer = f"h{place}e{itf.index}"
        steps += [
            Step(
                f"ip -n {sw} link add {outer} type veth peer name {itf.name} netns {ns}",
                _veth(sw, outer, ns, itf.name),
            ),
            Step(
                f"ip -n {sw} link set {outer} master br-{itf.segment} up",
                _enslave(sw, outer, f"br-{itf.segment}"),
            ),
            Step(
                f"ip -n {ns} addr add {itf.address} dev {itf.name}",
                _addr(ns, itf.name, itf.ip, itf.address.network.prefixlen),
            ),
            Step(f"ip -n {ns} link set {itf.name} up", _up(ns, itf.name)),
        ]
    if host.gateway is not None:
        gw = str(host.gateway)
        steps.append(Step(f"ip -n {ns} route add default via {gw}", _default_route(ns, gw)))
    return steps


def _sysctl_steps(ns: str, sysctls: dict[str, str]) -> list[Step]:
    return [
        Step(
            f"ip netns exec {ns} sysctl -qw {key.replace('/', '.')}={value}",
            _sysctl(ns, key, value),
        )
        for key, value in sysctls.items()
    ]


# ------------------------------------------------------- netlink primitives
# Each returns a closure so a plan can be printed without touching anything.


def _create_ns(name: str) -> None:
    from pyroute2 import netns

    try:
        netns.create(name)
    except FileExistsError:
        raise LabError(f"network namespace {name} already exists: run `lbkit lab down`") from None


def _ns(name: str) -> Callable[[], None]:
    return lambda: _create_ns(name)


@contextlib.contextmanager
def _in(ns: str):
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        yield ipr


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} not found")
    return found[0]


def _link_up(ns: str, ifname: str) -> None:
    with _in(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname), state="up")


def _up(ns: str, ifname: str) -> Callable[[], None]:
    return lambda: _link_up(ns, ifname)


def _bridge(ns: str, br: str) -> Callable[[], None]:
    def run() -> None:
        with _in(ns) as ipr:
            ipr.link("add", ifname=br, kind="bridge", br_forward_delay=0)

    return run


def _veth(sw: str, outer: str, ns: str, inner: str) -> Callable[[], None]:
    def run() -> None:
        with _in(sw) as ipr:
            ipr.link("add", ifname=outer, kind="veth", peer={"ifname": inner, "net_ns_fd": ns})

    return run


def _enslave(sw: str, outer: str, br: str) -> Callable[[], None]:
    def run() -> None:
        with _in(sw) as ipr:
            ipr.link("set", index=_index(ipr, outer), master=_index(ipr, br), state="up")

    return run


def _addr(ns: str, ifname: str, ip: str, prefixlen: int) -> Callable[[], None]:
    def run() -> None:
        with _in(ns) as ipr:
            ipr.addr("add", index=_index(ipr, ifname), address=ip, prefixlen=prefixlen)

    return run


def _default_route(ns: str, gateway: str) -> Callable[[], None]:
    def run() -> None:
        with _in(ns) as ipr:
            ipr.route("add", dst="default", gateway=gateway)

    return run


def _sysctl(ns: str, key: str, value: str) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > /proc/sys/{key}"],
            check=True,
            capture_output=True,
        )

    return run


def delete_namespace(name: str) -> None:
    """Kill every process inside ``name``, then remove it (its veths go with it)."""
    from pyroute2 import netns

    from lbkit._proc import kill_pid

    for pid in namespace_pids(name):
        kill_pid(pid)
    with contextlib.suppress(FileNotFoundError, OSError):
        netns.remove(name)
