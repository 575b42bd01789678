"""The one command every lab host runs, whichever provider hosts it.

netns runs it with ``ip netns exec``, local as a plain process, docker as
the container's command: the same argv, so what works in one works in all.
"""

from __future__ import annotations


def host_command(
    host: str,
    topology_path: str,
    state_dir: str,
    addressing: str,
    program: tuple[str, ...] = ("lbkit",),
) -> list[str]:
    """argv for ``lbkit lab host``: start ``host``'s role services and serve until SIGTERM."""
    return [
        *program,
        "lab",
        "host",
        host,
        "--topology",
        topology_path,
        "--state-dir",
        state_dir,
        "--addressing",
        addressing,
    ]


def control_socket(state_dir: str, host: str) -> str:
    """Path of ``host``'s control socket (UNIX stream socket) under the lab's state."""
    return f"{state_dir}/hosts/{host}.sock"


def tls_dir(state_dir: str) -> str:
    """The lab CA's folder under the lab's state (``ca.pem``, the hosts' certificates)."""
    return f"{state_dir}/tls"
