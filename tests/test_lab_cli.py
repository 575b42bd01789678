"""`lbkit lab ...` as people type it: output, one-line errors, and cleanup."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbkit.lab import Lab, LabError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def lbkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lbkit", *args], capture_output=True, text=True, timeout=timeout
    )


def test_dry_run_prints_ip_commands_and_changes_nothing(tmp_path):
    """--dry-run lists `ip` commands and the host command; no state is written."""
    proc = lbkit("lab", "up", "labs/basic.toml", "--dry-run", "--provider", "netns",
                 "--state-dir", str(tmp_path / "s"))  # fmt: skip
    assert proc.returncode == 0
    assert "ip netns add lbk" in proc.stdout and "type veth peer name eth0" in proc.stdout
    assert "lab host api1 --topology" in proc.stdout
    assert not (tmp_path / "s").exists()


def test_show_prints_hosts_and_writes_a_picture(tmp_path):
    """`lab show` lists every host and writes a PNG."""
    out = tmp_path / "layered.png"
    proc = lbkit("lab", "show", "labs/layered.toml", "-o", str(out))
    assert proc.returncode == 0 and "canary1" in proc.stdout and "10.0.1.50" in proc.stdout
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_status_without_a_lab_is_a_clear_error(tmp_path):
    """`lab status` with nothing up: exit 2 and one line saying how to start one."""
    proc = lbkit("lab", "status", "--state-dir", str(tmp_path))
    assert proc.returncode == 2 and "lbkit lab up" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_local_provider_reports_a_port_in_use(tmp_path):
    """Something already on api1's port: up fails naming address, host and service."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.1.3", 8080))
        s.listen()
        lab = Lab("labs/basic.toml", provider="local", state_dir=tmp_path)
        with pytest.raises(LabError, match=r"127\.0\.1\.3:8080/tcp \(api1 http\) is in use"):
            lab.up()
    assert not (tmp_path / "lab.json").exists()


def test_render_docker_matches_the_committed_file():
    """`lab render docker` prints the committed compose file."""
    proc = lbkit("lab", "render", "docker", "labs/layered.toml")
    assert proc.returncode == 0
    assert proc.stdout == Path("docker/compose.yaml").read_text()


@root_only
def test_exec_status_backend_and_capture_from_the_command_line(tmp_path):
    """The CLI round trip: up, exec (options before --), backend, capture, status, down."""
    state = str(tmp_path / "state")
    try:
        up = lbkit("lab", "up", "labs/basic.toml", "--state-dir", state)
        assert up.returncode == 0, up.stderr
        assert "lab exec client -- curl -s http://10.0.1.10/echo" in up.stdout
        got = lbkit("lab", "exec", "client", "--state-dir", state, "--", "curl", "-s",
                    "http://10.0.1.12/")  # fmt: skip
        assert got.stdout == "api3\n"
        assert lbkit("lab", "backend", "api3", "--mode", "error-500", "--state-dir",
                     state).stdout.strip() == "api3: mode error-500"  # fmt: skip
        capture = subprocess.Popen(
            [sys.executable, "-m", "lbkit", "lab", "capture", "client,api3", "--count", "3",
             "--seconds", "30", "--filter", "tcp port 80", "-o", str(tmp_path / "caps"),
             "--state-dir", state],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while len(list((tmp_path / "caps").glob("*/*.pcap"))) < 2:
                assert time.monotonic() < deadline and capture.poll() is None, capture.stderr
                time.sleep(0.05)
            lbkit("lab", "exec", "client", "--state-dir", state, "--", "curl", "-s",
                  "http://10.0.1.12/")  # fmt: skip
            out, _ = capture.communicate(timeout=30)
        finally:
            if capture.poll() is None:
                capture.kill()
        assert capture.returncode == 0
        assert "6 packets; pcaps and timeline.json in" in out
        (timeline,) = (tmp_path / "caps").glob("*/timeline.json")
        flags = {}
        for row in json.loads(timeline.read_text()):
            flags.setdefault(row["host"], []).append(row["flags"])
        assert flags == {"client": ["S", "S.", "."], "api3": ["S", "S.", "."]}
        status = json.loads(lbkit("lab", "status", "--json", "--state-dir", state).stdout)
        assert status["up"] and [h["name"] for h in status["hosts"]][1:] == ["api1", "api2", "api3"]
    finally:
        down = lbkit("lab", "down", "--state-dir", state)
    assert down.stdout.strip() == "lab removed"


L4_LOCAL = """
import socket, sys, urllib.request
from collections import Counter
from lbkit.lab import Lab
lab = Lab("labs/l4.toml", provider="local", state_dir=sys.argv[1])
try:
    lab.up()
    seen = Counter(urllib.request.urlopen(lab.url("lb"), timeout=5).read().decode().strip()
                   for _ in range(30))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect(lab.endpoint("lb", "vip1"))
    s.send(b"ping")
    print(sorted(seen), s.recv(100).decode())
    print(lab.backend("lb")["mode"])
finally:
    lab.down()
"""


def test_l4_lab_without_root_falls_back_to_a_proxy(tmp_path):
    """As an unprivileged user, labs/l4.toml runs its L4 box as a TCP/UDP proxy that balances."""
    proc = subprocess.run(
        ["unshare", "--user", sys.executable, "-c", L4_LOCAL, str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, mode = proc.stdout.strip().splitlines()
    assert first.startswith("['api1', 'api2', 'api3'] api")  # all three served; UDP answered
    assert first.endswith(": ping") and mode == "proxy"


# ------------------------------------------------------------------ lab health

HEALTH_DOC = {
    "nlb": {"role": "l4", "checks": None, "backends": {}, "events": [], "note": "unknown op"},
    "lb": {
        "role": "l4",
        "checks": "tcp connect every 2 s",
        "backends": {
            "api1": {"state": "up", "since": 1000.0, "last": None, "health": "up",
                     "admin": "ready", "services": ["80/tcp"], "result": "TCP connect ok"},
        },
        "events": [],
    },
    "alb1": {
        "role": "l7",
        "checks": {"api": "http GET /healthz (200-399) every 0.2 s, timeout 0.2 s"},
        "backends": {
            "api2": {"state": "down", "since": 1090.0, "pool": "api", "backend": "api2",
                     "health": "down", "admin": "up", "failed": False, "ejected": False,
                     "last": "api2 DOWN after 3 failures: HTTP 500 on /healthz"},
            "static1": {"state": "up", "since": 1000.0, "pool": "static", "backend": "static1",
                        "health": None, "admin": "up", "last": None},
        },
        "events": [{"at": 1090.0, "pool": "api", "backend": "api2", "old": "up", "new": "down",
                    "message": "api2 DOWN after 3 failures: HTTP 500 on /healthz"}],
    },
    "alb2": {"role": "l7", "error": "alb2.sock: no control socket (is the host running?)"},
}  # fmt: skip


def test_lab_health_tables_show_each_host_its_backends_and_transitions():
    """The health table: a row per checked backend (why it is down, since when, the last
    transition), 'no active checks' for hosts and pools without, unreachable hosts; then
    the transitions."""
    from rich.console import Console

    from lbkit.lab.health_cli import events_table, health_table

    console = Console(record=True, width=200)
    console.print(health_table(HEALTH_DOC, now=1100.0))
    console.print(events_table(HEALTH_DOC, 10))
    text = console.export_text()
    lines = [" ".join(line.replace("│", " ").split()) for line in text.splitlines()]
    assert "nlb - - - - no active checks" in lines
    assert "lb 80/tcp api1 up 1m40s ago TCP connect ok" in lines
    assert (
        "alb1 api api2 down (check) 10.0s ago api2 DOWN after 3 failures: HTTP 500 on /healthz"
        in lines
    )
    assert "alb1 static - - - no active checks" in lines
    assert any(line.startswith("alb2 - - unreachable") for line in lines)
    assert "last transitions" in text and any(
        line.endswith("alb1 api api2 DOWN after 3 failures: HTTP 500 on /healthz") for line in lines
    )


def test_lab_health_without_a_lab_is_a_clear_error(tmp_path):
    """`lab health` with nothing up: exit 2, one line saying how to start one; --help says
    what it shows."""
    proc = lbkit("lab", "health", "--state-dir", str(tmp_path))
    assert proc.returncode == 2 and "lbkit lab up" in proc.stderr
    assert proc.stderr.count("\n") == 1
    helped = lbkit("lab", "health", "--help")
    assert helped.returncode == 0 and "no active checks" in helped.stdout
    assert "health_check = {" in helped.stdout and "--json" in helped.stdout
