"""Writing a self-contained nginx.conf under a private prefix (tests and benchmarks)."""

from __future__ import annotations

import shutil
from pathlib import Path

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def write_nginx_conf(
    prefix: Path, http_block: str, *, error_level: str = "warn", worker_connections: int = 1024
) -> Path:
    """``PREFIX/nginx.conf``: one worker, pid and temp paths under ``prefix``, no access log.

    ``http_block`` goes inside ``http {}``. The prefix is made world-readable:
    nginx's workers run as an unprivileged user when the master is root.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log stderr {error_level};\n"
        f"events {{ worker_connections {worker_connections}; }}\n"
        "http {\n"
        "  access_log off;\n"
        f"  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi;\n"
        f"  scgi_temp_path {prefix}/scgi;\n"
        f"{http_block}\n"
        "}\n"
    )
    return conf
