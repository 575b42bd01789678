"""The ``local`` provider: every host a process on loopback; no root, any OS.

Each host binds its own 127.0.1.x address where the system routes all of
127.0.0.0/8 to loopback (Linux), else shares 127.0.0.1 with a block of ports
per host (macOS). There are no namespaces: commands "inside" a host run on
this machine, and packet-level features (AF_PACKET forwarding, captures of
a host's own interface) are not available; the lab says so.
"""

from __future__ import annotations

import socket

NOTICE = (
    "local provider: hosts are processes on loopback (no root needed). Packet-level L4 "
    "modes and per-host captures need the netns provider (Linux, root)."
)


def loopback_addressing() -> str:
    """``loopback`` if 127.0.1.x can be bound here (Linux), else ``loopback-shared``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.1.2", 0))
        except OSError:
            return "loopback-shared"
    return "loopback"


def port_free(ip: str, port: int, proto: str = "tcp") -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True
