"""`lbkit l4` flags and topology options: one config shape, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lbkit.l4.config import from_cli, from_topology
from lbkit.lab import LabError, load_topology, parse_topology


def test_cli_flags_build_one_service_per_vip_port():
    """Two --vip ports share the backends, each at the VIP's port."""
    cfg = from_cli("eth0", ["10.0.1.200:80", "10.0.1.200:7/udp"], ["10.0.1.10", "10.0.1.11"])
    assert [(s.port, s.proto) for s in cfg.services] == [(80, "tcp"), (7, "udp")]
    assert [b.port for b in cfg.services[1].backends] == [7, 7]


@pytest.mark.parametrize(
    ("vips", "backends", "message"),
    [
        (["10.0.1.200"], ["10.0.1.10"], "expected IP:PORT"),
        (["10.0.1.200:99999"], ["10.0.1.10"], "out of range"),
        (["10.0.1.200:80/sctp"], ["10.0.1.10"], "tcp or udp"),
        (["10.0.1.200:80", "10.0.1.201:80"], ["10.0.1.10"], "one VIP address"),
        (["10.0.1.200:80"], [], "--backend is required"),
        (["10.0.1.200:80", "10.0.1.200:81"], ["10.0.1.10:8080"], "without a port"),
        (["10.0.1.200:80"], ["api1"], "not an IPv4 address"),
    ],
)
def test_bad_flags_say_which(vips, backends, message):
    """Each mistake is a LabError naming the flag."""
    with pytest.raises(LabError, match=message):
        from_cli("eth0", vips, backends)


def test_nftables_engine_is_nat_only():
    """nftables DNAT implements NAT mode only."""
    with pytest.raises(LabError, match="nat mode only"):
        from_cli("eth0", ["10.0.1.200:80"], ["10.0.1.10"], mode="dsr", engine="nftables")


def test_topology_options_resolve_host_names():
    """labs/l4.toml: backends named by host resolve to their addresses and ports."""
    topo = load_topology("labs/l4.toml")
    cfg = from_topology(topo, topo.host("lb"))
    assert cfg.vip == "10.0.1.200" and cfg.iface == "eth0"
    first = cfg.services[0].backends[0]
    assert (first.name, first.ip, first.port) == ("api1", "10.0.1.10", 80)


def test_topology_option_mistakes_name_the_key():
    """An unknown backend host is reported with the services key."""
    data = {
        "name": "t",
        "segments": {"lan": {"subnet": "10.0.1.0/24"}},
        "hosts": {"lb": {"role": "l4", "addresses": ["10.0.1.2"], "options": {
            "vip": "10.0.1.200", "services": [{"port": 80, "backends": ["nobody"]}]}}},
    }  # fmt: skip
    topo = parse_topology(data, source="x.toml")
    with pytest.raises(
        LabError, match=r"hosts\.lb\.options\.services\[0\]\.backends: no host named"
    ):
        from_topology(topo, topo.host("lb"))


def test_cli_error_is_one_line():
    """`lbkit l4` with a bad --vip: exit 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "lbkit", "l4", "--iface", "eth0", "--vip",
                           "10.0.1.200", "--backend", "10.0.1.10"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "IP:PORT" in proc.stderr
