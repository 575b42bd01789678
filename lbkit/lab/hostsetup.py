"""Network settings a host makes for itself before serving (docker needs them).

In a network namespace the provider has already set everything, so these
are no-ops there; in a container docker has installed its own default route
through ``.1``, and the topology's ``gateway`` must replace it. Doing it in
the host command keeps the command identical under every provider.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess

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
