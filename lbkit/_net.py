"""Small socket helpers shared by tests and benchmarks (loopback only)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time


def free_ports(n: int, ip: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``ip`` right now (bound together, then released)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((ip, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_listening(
    port: int, proc: subprocess.Popen, deadline_s: float = 10.0, ip: str = "127.0.0.1"
) -> None:
    """Return once ``ip:port`` accepts a connection; RuntimeError if ``proc`` exits first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {err!r}")
        with contextlib.suppress(OSError), socket.create_connection((ip, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {ip}:{port} within {deadline_s} s")
