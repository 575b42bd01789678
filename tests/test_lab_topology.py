"""Topology files: the shipped labs load, and mistakes name the file and key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lbkit.lab import TopologyError, load_topology, parse_topology
from lbkit.lab.providers.netns import plan
from lbkit.lab.services import endpoint, service_named


def minimal(**host: object) -> dict:
    return {
        "name": "t",
        "segments": {"lan": {"subnet": "10.0.1.0/24"}},
        "hosts": {"a": {"role": "client", "addresses": ["10.0.1.2"], **host}},
    }


def test_basic_lab_has_a_client_and_three_backends():
    """labs/basic.toml: client + api1..3 at the seed's .10-.12."""
    topo = load_topology("labs/basic.toml")
    assert [h.role for h in topo.hosts.values()] == ["client", "backend", "backend", "backend"]
    assert [topo.host(f"api{i}").ip for i in (1, 2, 3)] == ["10.0.1.10", "10.0.1.11", "10.0.1.12"]


def test_layered_lab_has_every_tier():
    """labs/layered.toml: client, nlb, two albs and the named backend pools."""
    topo = load_topology("labs/layered.toml")
    assert topo.host("nlb").role == "l4" and len(topo.host("nlb").interfaces) == 2
    assert {h.name for h in topo.by_role("l7")} == {"alb1", "alb2"}
    names = {h.name for h in topo.by_role("backend")}
    assert names >= {"api1", "api2", "api3", "static1", "static2", "mobile1", "app1", "canary1"}
    assert str(topo.host("client").gateway) == "198.51.100.10"


def test_graph_links_hosts_to_segments():
    """The networkx graph has a node per host and segment, an edge per interface."""
    g = load_topology("labs/layered.toml").graph()
    assert g.has_edge("nlb", "[public]") and g.has_edge("nlb", "[vpc]")
    assert g.nodes["api1"]["role"] == "backend"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "router"}, "hosts.a.role: unknown role 'router'"),
        ({"addresses": ["10.0.1.300"]}, "hosts.a.addresses: '10.0.1.300' is not an IPv4 address"),
        ({"addresses": ["10.0.2.5"]}, "hosts.a.addresses: 10.0.2.5 is in no segment"),
        ({"addresses": ["10.0.1.1"]}, ".1 stays free"),
        ({"addresses": ["10.0.1.255"]}, "broadcast"),
        ({"gateway": "10.9.9.9"}, "hosts.a.gateway: 10.9.9.9 is not on any"),
        ({"colour": "red"}, "hosts.a.colour: unknown key"),
    ],
)
def test_host_mistakes_name_the_key(change, message):
    """A bad host field raises TopologyError naming source and key."""
    with pytest.raises(TopologyError, match=re.escape(message)):
        parse_topology(minimal(**change), source="x.toml")


def test_duplicate_address_is_a_clash():
    """Two hosts with one address: the second is named with the first's name."""
    data = minimal()
    data["hosts"]["b"] = {"role": "backend", "addresses": ["10.0.1.2"]}
    with pytest.raises(
        TopologyError, match=re.escape("hosts.b.addresses: 10.0.1.2 is already a's")
    ):
        parse_topology(data, source="x.toml")


def test_bad_segment_and_name():
    """Overlapping segments and bad lab names are reported with their key."""
    data = minimal()
    data["segments"]["two"] = {"subnet": "10.0.0.0/16"}
    with pytest.raises(TopologyError, match=re.escape("segments.two.subnet: 10.0.0.0/16 overlaps")):
        parse_topology(data)
    with pytest.raises(TopologyError, match="name:"):
        parse_topology({**minimal(), "name": "Has Spaces"})


def test_missing_and_malformed_files(tmp_path):
    """A missing file and invalid TOML are one-line errors naming the file."""
    with pytest.raises(TopologyError, match=re.escape("nope.toml: no such topology file")):
        load_topology(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(TopologyError, match=re.escape("bad.toml: not valid TOML")):
        load_topology(bad)


def test_cli_reports_a_bad_topology_in_one_line(tmp_path):
    """`lbkit lab up BAD.toml`: exit 2, one line, file and key named, no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\n[segments.lan]\nsubnet = "10.0.1.0/24"\n'
        '[hosts.a]\nrole = "wizard"\naddresses = ["10.0.1.2"]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "lbkit", "lab", "up", str(bad), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "hosts.a.role: unknown role 'wizard'" in proc.stderr


def test_netns_plan_never_touches_the_root_namespace():
    """Every planned command acts inside a lab namespace (ip -n / netns add / netns exec)."""
    steps = plan(load_topology("labs/layered.toml"), "lbkt")
    for step in steps:
        assert step.command.startswith(("ip netns add lbkt-", "ip -n lbkt-", "ip netns exec lbkt-"))
    assert any("peer name eth1 netns lbkt-nlb" in s.command for s in steps)
    assert any(s.command == "ip -n lbkt-api1 route add default via 10.0.1.2" for s in steps)


def test_endpoints_per_addressing():
    """Native: own address and port 80; loopback: 127.0.1.x and 8080; shared: a port block."""
    topo = load_topology("labs/basic.toml")
    api1 = topo.host("api1")
    http = service_named(api1, "http")
    assert endpoint(topo, api1, http, "native") == ("10.0.1.10", 80)
    assert endpoint(topo, api1, http, "loopback") == ("127.0.1.3", 8080)
    assert endpoint(topo, api1, http, "loopback-shared") == ("127.0.0.1", 20010)


def test_routes_and_loopback_vips_are_parsed():
    """labs/l4.toml: NAT backends route the client via the L4 box; variants hold the VIP on lo."""
    from lbkit.l4.labtopo import l4_topology_data

    nat = load_topology("labs/l4.toml")
    assert nat.host("api2").routes == ("10.0.1.100/32 via 10.0.1.2",)
    dsr = parse_topology(l4_topology_data("dsr"))
    assert dsr.host("api2").loopback == ("10.0.1.200",) and dsr.host("api2").routes == ()
    tunnel = parse_topology(l4_topology_data("tunnel"))
    assert tunnel.host("api2").options["decap"] is True
    assert "advmss 1440" in tunnel.host("api2").routes[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"routes": ["via 10.0.1.3"]},
            "hosts.a.routes: 'via 10.0.1.3' does not start with a destination",
        ),
        ({"routes": "10.0.0.0/8 via 10.0.1.3"}, "hosts.a.routes: expected a list"),
        ({"loopback": ["vip"]}, "hosts.a.loopback: 'vip' is not an IPv4 address"),
    ],
)
def test_bad_routes_and_loopback_name_the_key(change, message):
    """A malformed route or loopback address is reported with its key."""
    with pytest.raises(TopologyError, match=re.escape(message)):
        parse_topology(minimal(**change), source="x.toml")
