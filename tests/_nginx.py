"""Run a real nginx on loopback for a test, and stop it by its pid afterwards."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from lbkit._net import free_ports, wait_listening

__all__ = ["NGINX", "free_ports", "get_body", "run_nginx", "wait_listening"]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@contextlib.contextmanager
def run_nginx(http_block: str, prefix: Path, probe_port: int) -> Iterator[None]:
    """Start nginx with ``http_block`` inside ``http {}``; stop it (by pid) on exit."""
    assert NGINX, "nginx is not installed (make system-deps)"
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        "error_log stderr warn;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "  access_log off;\n"
        f"  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi;\n"
        f"  scgi_temp_path {prefix}/scgi;\n"
        f"{http_block}\n"
        "}\n"
    )
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
