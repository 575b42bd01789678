"""Run a real nginx on loopback for a test, and stop it by its pid afterwards."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
from collections.abc import Iterator
from pathlib import Path

from lbkit._net import free_ports, wait_listening
from lbkit._nginx import NGINX, write_nginx_conf

__all__ = ["NGINX", "free_ports", "get_body", "run_nginx", "wait_listening"]


@contextlib.contextmanager
def run_nginx(http_block: str, prefix: Path, probe_port: int) -> Iterator[None]:
    """Start nginx with ``http_block`` inside ``http {}``; stop it (by pid) on exit."""
    assert NGINX, "nginx is not installed (make system-deps)"
    conf = write_nginx_conf(prefix, http_block)
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(probe_port, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_body(port: int, source_ip: str = "127.0.0.1") -> str:
    """GET / from ``source_ip`` (any 127.0.0.0/8 address is local on Linux)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source_ip, 0))
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()
