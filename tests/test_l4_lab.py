"""The L4 forwarder live in the lab: every mode and engine on the issue's topology.

client 10.0.1.100 -> L4 box 10.0.1.2 holding VIP 10.0.1.200 -> api1..3 at .10-.12,
with checksum offload left on. Needs root (CI is root).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from lbkit.l4.labtopo import VIP, write_l4_topology
from lbkit.lab import Lab

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="network namespaces need root"
)
COMBOS = [
    ("nat", "fast"),
    ("nat", "scapy"),
    ("nat", "nftables"),
    ("dsr", "fast"),
    ("dsr", "scapy"),
    ("tunnel", "fast"),
    ("tunnel", "scapy"),
]
UDP_CLIENT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.settimeout(5)\n"
    "s.connect((sys.argv[1], 7))  # connected: a reply from any other source is dropped\n"
    "s.send(b'ping')\n"
    "print(s.recv(100).decode())\n"
)


def curls(lab: Lab, n: int) -> Counter:
    """``n`` GETs to the VIP from the client, each on a new connection, in one curl."""
    argv = ["curl", "-s", "-m", "20", "-H", "Connection: close", *[f"http://{VIP}/"] * n]
    out = lab.exec("client", argv, timeout=60).stdout.split()
    return Counter(out)


def mac(lab: Lab, host: str) -> str:
    return lab.exec(host, ["cat", "/sys/class/net/eth0/address"]).stdout.strip()


@pytest.fixture
def l4lab(request, tmp_path):
    mode, engine = request.param
    topology = write_l4_topology(tmp_path / "topology.toml", mode, engine)
    lab = Lab(topology, provider="netns", state_dir=tmp_path / "state")
    try:
        yield lab.up(), mode, engine
    finally:
        lab.down()


@pytest.mark.parametrize("l4lab", COMBOS, indirect=True, ids=[f"{m}-{e}" for m, e in COMBOS])
def test_vip_serves_curls_udp_and_a_large_post(l4lab):
    """200 curls spread over all backends; one set down midway is avoided; UDP and 1 MiB work."""
    lab, mode, _ = l4lab
    first = curls(lab, 100)
    assert sum(first.values()) == 100 and set(first) == {"api1", "api2", "api3"}
    down = lab.exec("lb", ["curl", "-s", "-X", "POST",
                           "http://127.0.0.1:9100/backends/api2?state=down"])  # fmt: skip
    assert down.returncode == 0 and json.loads(down.stdout)["mode"] == mode
    second = curls(lab, 100)
    assert sum(second.values()) == 100 and set(second) == {"api1", "api3"}
    udp = lab.exec("client", [sys.executable, "-c", UDP_CLIENT, VIP])
    assert udp.stdout.strip() in ("api1: ping", "api3: ping"), udp.stderr
    post = lab.exec("client", ["sh", "-c", "head -c 1048576 /dev/zero | curl -s -m 30 -X POST "
                               f"--data-binary @- http://{VIP}/echo"], timeout=60)  # fmt: skip
    echo = json.loads(post.stdout)
    assert echo["body_bytes"] == 1048576
    assert echo["client"].startswith("10.0.1.100:")  # L4 keeps the client's address


@pytest.mark.parametrize(
    ("l4lab", "replier"), [(("nat", "fast"), "box"), (("dsr", "fast"), "backends")],
    indirect=["l4lab"], ids=["nat", "dsr"],
)  # fmt: skip
def test_client_sees_replies_from_the_box_in_nat_and_from_backends_in_dsr(l4lab, replier, tmp_path):
    """NAT: every reply frame comes from the L4 box's MAC; DSR: from the backends' own MACs."""
    lab, _, _ = l4lab
    with lab.capture(["client"], tmp_path / "cap", filter=f"tcp and src host {VIP}") as cap:
        assert sum(curls(lab, 12).values()) == 12
    frames = rdpcap(str(cap.paths["client"]))
    assert len(frames) > 0, "no reply frames captured"
    sources = {Ether(bytes(frame)).src for frame in frames}  # each reply's Ethernet source
    backends = {mac(lab, h) for h in ("api1", "api2", "api3")}
    if replier == "box":
        assert sources == {mac(lab, "lb")}
    else:
        assert sources and sources <= backends and mac(lab, "lb") not in sources


def test_l4_lab_file_is_the_nat_variant():
    """labs/l4.toml is exactly what write_l4_topology produces for nat/fast, in content."""
    import tomllib

    from lbkit.l4.labtopo import l4_topology_data

    data = tomllib.loads(Path("labs/l4.toml").read_text())
    generated = l4_topology_data("nat", "fast")
    generated["name"] = data["name"]
    assert generated == data


def test_sigterm_removes_the_vip_and_the_guard(tmp_path):
    """Stopping the L4 box (SIGTERM) takes its VIP off eth0 and deletes its nft guard table."""
    import signal

    from lbkit._proc import alive
    from lbkit.lab.state import LabState

    topology = write_l4_topology(tmp_path / "topology.toml", "dsr", "fast")
    lab = Lab(topology, provider="netns", state_dir=tmp_path / "state")
    try:
        lab.up()
        assert VIP in lab.exec("lb", ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert "lbkit_l4_guard" in lab.exec("lb", ["nft", "list", "tables"]).stdout
        pid = LabState.load(lab.state_dir).processes["lb"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)
        assert VIP not in lab.exec("lb", ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert "lbkit_l4_guard" not in lab.exec("lb", ["nft", "list", "tables"]).stdout
        assert "Traceback" not in (lab.state_dir / "hosts" / "lb.log").read_text()
    finally:
        lab.down()
