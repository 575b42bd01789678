"""Network settings a host makes for itself before serving.

The host command (``lbkit lab host``) runs these in every native host,
namespace or container, so the command stays identical under every
provider:

* ``gateway``: in a container docker installed a default route through
  ``.1``; the topology's gateway replaces it (a no-op in a namespace);
* ``routes``: extra routes, e.g. a NAT backend's route to the client via the
  L4 box (replies must pass the box that rewrote the request);
* ``loopback``: VIPs on ``lo`` for direct server return and tunnel backends,
  with ``arp_ignore=1`` (answer ARP only for addresses on the asking
  interface) and ``arp_announce=2`` (never use a loopback VIP as the ARP
  source): only the L4 box may answer ARP for the VIP (LVS-DR HOWTO, "the
  ARP problem");
* ``options.tso = false``: segmentation offload off, so frames on the veth
  are no larger than the MTU, as on a real wire (a veth passes 64 KB TCP
  super-frames through otherwise, which a userspace forwarder would see).
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess
import sys

from .errors import LabError
from .topology import Host


def current_default_gateway(route_table: str) -> str | None:
    """The IPv4 default gateway in ``/proc/net/route`` text, or None.

    Columns (proc(5)): Iface Destination Gateway Flags ...; addresses are
    little-endian hex. The default route has Destination 00000000.
    """
    for line in route_table.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3 and cols[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(cols[2], 16)))
    return None


def _run(host: Host, argv: list[str], what: str, package: str = "iproute2") -> None:
    if shutil.which(argv[0]) is None:
        raise LabError(f"{host.name}: cannot {what}: `{argv[0]}` not found (install {package})")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"{host.name}: cannot {what}: {done.stderr.strip()}")


def set_sysctl(key: str, value: str, *, strict: bool = True) -> str:
    """Set ``key`` (dotted or slashed) to ``value``; return the old value.

    In a container ``/proc/sys`` is read-only and the compose file sets the
    sysctls instead: a write that fails is fine when the value is already
    right. Otherwise LabError (or, with ``strict=False``, a warning on stderr).
    """
    path = f"/proc/sys/{key.replace('.', '/')}"
    with open(path) as f:
        old = f.read().strip()
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        if old != value:
            message = f"cannot set {key}={value} ({e.strerror}); set it in the container's sysctls"
            if strict:
                raise LabError(message) from None
            sys.stderr.write(f"warning: {message}\n")
    return old


_sysctl = set_sysctl


def prepare(host: Host) -> None:
    """Everything a native host sets up for itself, in order."""
    ensure_gateway(host)
    for route in host.routes:
        _run(host, ["ip", "route", "replace", *route.split()], f"add route {route!r}")
    if host.loopback:
        for key in ("net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.default.arp_ignore"):
            _sysctl(key, "1")
        for key in ("net.ipv4.conf.all.arp_announce", "net.ipv4.conf.default.arp_announce"):
            _sysctl(key, "2")
        for vip in host.loopback:
            _run(host, ["ip", "addr", "replace", f"{vip}/32", "dev", "lo"], f"hold {vip} on lo")
    if host.options.get("tso") is False:
        for itf in host.interfaces:
            _run(
                host,
                ["ethtool", "-K", itf.name, "tso", "off", "gso", "off"],
                f"turn segmentation offload off on {itf.name}",
                package="ethtool",
            )


def ensure_gateway(host: Host) -> bool:
    """Make ``host.gateway`` the default route if it is not already; True if changed."""
    if host.gateway is None:
        return False
    try:
        with open("/proc/net/route") as f:
            table = f.read()
    except OSError:
        return False  # not Linux: nothing to route (local provider elsewhere)
    if current_default_gateway(table) == str(host.gateway):
        return False
    if shutil.which("ip") is None:
        raise LabError(f"{host.name}: cannot set its gateway: `ip` not found (install iproute2)")
    ipaddress.IPv4Address(host.gateway)
    done = subprocess.run(
        ["ip", "route", "replace", "default", "via", str(host.gateway)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise LabError(f"{host.name}: cannot set gateway {host.gateway}: {done.stderr.strip()}")
    return True
