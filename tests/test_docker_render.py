"""The docker provider: compose files generated from the topologies, checked offline."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lbkit.lab.hostcmd import host_command
from lbkit.lab.providers.docker import compose_hosts_table, render_compose
from lbkit.lab.topology import l7_router_option, load_topology

ROOT = Path(__file__).resolve().parent.parent
LABS = {
    "layered": ("labs/layered.toml", "docker/compose.yaml"),
    "basic": ("labs/basic.toml", "docker/compose.basic.yaml"),
    "l4": ("labs/l4.toml", "docker/compose.l4.yaml"),
}
REGENERATE = (
    "{out} is out of date with {topo}: regenerate it with "
    "`lbkit lab render docker {topo} > {out}` (docker/README.md, 'Regenerate')"
)


def render(lab: str) -> str:
    topo, _ = LABS[lab]
    return render_compose(load_topology(ROOT / topo), topology_file=topo)


def committed(lab: str) -> dict:
    return yaml.safe_load((ROOT / LABS[lab][1]).read_text())


@pytest.mark.parametrize("lab", sorted(LABS))
def test_committed_compose_file_is_the_render_of_its_topology(lab):
    """Rendering the topology gives the committed compose file byte for byte."""
    topo, out = LABS[lab]
    assert render(lab) == (ROOT / out).read_text(), REGENERATE.format(topo=topo, out=out)


def test_render_is_deterministic():
    """Two renders of the same topology are byte-identical."""
    assert render("layered") == render("layered")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("lab", sorted(LABS))
def test_docker_compose_validates_the_committed_file(lab):
    """`docker-compose -f FILE config -q` accepts the committed file (offline, no engine)."""
    out = LABS[lab][1]
    proc = subprocess.run(
        [shutil.which("docker-compose"), "-f", out, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("lab", sorted(LABS))
def test_every_service_runs_the_host_command(lab):
    """Each host is a service whose command is host_command(NAME, /lab/..., native)."""
    topology = load_topology(ROOT / LABS[lab][0])
    services = committed(lab)["services"]
    assert list(services) == list(topology.hosts)
    for name, svc in services.items():
        assert svc["command"] == host_command(name, "/lab/topology.toml", "/lab/state", "native")
        assert svc["hostname"] == name


@pytest.mark.parametrize("lab", sorted(LABS))
def test_addresses_and_subnets_match_the_topology(lab):
    """Each service's address per network, and each network's subnet, are the topology's."""
    topology = load_topology(ROOT / LABS[lab][0])
    doc = committed(lab)
    for host in topology.hosts.values():
        attached = doc["services"][host.name]["networks"]
        assert {seg: net["ipv4_address"] for seg, net in attached.items()} == {
            itf.segment: itf.ip for itf in host.interfaces
        }
    assert {n: net["ipam"]["config"][0]["subnet"] for n, net in doc["networks"].items()} == {
        s.name: str(s.subnet) for s in topology.segments.values()
    }


@pytest.mark.parametrize("lab", sorted(LABS))
def test_topology_file_and_state_volume_are_mounted(lab):
    """The topology is mounted read-only at /lab/topology.toml; /lab/state is a shared volume."""
    topo = LABS[lab][0]
    topology = load_topology(ROOT / topo)
    doc = committed(lab)
    for name, svc in doc["services"].items():
        routers = 1 if l7_router_option(topology.host(name)) else 0
        assert svc["volumes"][0] == f"../{topo}:/lab/topology.toml:ro"
        assert svc["volumes"][-1] == "labstate:/lab/state"
        assert len(svc["volumes"]) == 2 + routers
    assert "labstate" in doc["volumes"]


def test_l7_router_file_is_mounted_where_its_relative_path_leads():
    """alb1/alb2 get labs/l7 read-only at /lab/l7: /lab/topology.toml's l7/router.toml exists."""
    services = committed("layered")["services"]
    for name in ("alb1", "alb2"):
        assert services[name]["volumes"][1] == "../labs/l7:/lab/l7:ro"
        source = (ROOT / "docker" / "../labs/l7").resolve()
        assert (source / "router.toml").is_file()
        assert services[name]["command"] == host_command(
            name, "/lab/topology.toml", "/lab/state", "native"
        )
    assert len(services["nlb"]["volumes"]) == 2  # no router file, no extra mount


@pytest.mark.parametrize(
    ("written", "mount"),
    [
        ("router.toml", "../labs/router.toml:/lab/router.toml:ro"),  # beside: the file alone
        ("../nginx/site.conf", "../nginx:/nginx:ro"),
        ("../site.conf", "../site.conf:/site.conf:ro"),  # a folder mount would hide /
        ("/etc/lbkit/r.toml", "/etc/lbkit/r.toml:/etc/lbkit/r.toml:ro"),
    ],
)
def test_router_mount_never_hides_the_lab(written, mount):
    """Router files beside the topology, above it or absolute are mounted without hiding /lab."""
    from lbkit.lab import parse_topology

    data = {
        "name": "t",
        "segments": {"lan": {"subnet": "10.0.1.0/24"}},
        "hosts": {"alb": {"role": "l7", "addresses": ["10.0.1.3"], "options": {"config": written}}},
    }
    topo = parse_topology(data, source="labs/t.toml")
    svc = yaml.safe_load(render_compose(topo, topology_file="labs/t.toml"))["services"]["alb"]
    assert svc["volumes"][1] == mount


def test_l4_host_has_net_admin_and_forwards():
    """The nlb (role l4) has NET_ADMIN, ip_forward=1 and rp_filter=0."""
    nlb = committed("layered")["services"]["nlb"]
    assert "NET_ADMIN" in nlb["cap_add"]
    assert nlb["sysctls"]["net.ipv4.ip_forward"] == 1
    assert nlb["sysctls"]["net.ipv4.conf.all.rp_filter"] == 0


@pytest.mark.parametrize("lab", sorted(LABS))
def test_backends_have_arp_sysctls_for_dsr(lab):
    """Every backend has NET_ADMIN, arp_ignore=1 and arp_announce=2."""
    topology = load_topology(ROOT / LABS[lab][0])
    services = committed(lab)["services"]
    for host in topology.by_role("backend"):
        svc = services[host.name]
        assert "NET_ADMIN" in svc["cap_add"]
        assert svc["sysctls"]["net.ipv4.conf.all.arp_ignore"] == 1
        assert svc["sysctls"]["net.ipv4.conf.all.arp_announce"] == 2


def test_client_and_l7_hosts_get_only_what_their_gateway_needs():
    """No sysctls for client and L7 hosts; NET_ADMIN only to replace docker's default route."""
    services = committed("layered")["services"]
    for name in ("client", "alb1", "alb2"):
        assert "sysctls" not in services[name]
        assert services[name]["cap_add"] == ["NET_ADMIN"]  # each has a topology gateway
    assert "cap_add" not in committed("basic")["services"]["client"]  # no gateway, no privilege


@pytest.mark.parametrize("lab", sorted(LABS))
def test_network_gateway_is_dot_one_and_unused(lab):
    """Each network's gateway is .1 of its subnet, and no service takes that address."""
    doc = committed(lab)
    gateways = set()
    for net in doc["networks"].values():
        config = net["ipam"]["config"][0]
        subnet = ipaddress.IPv4Network(config["subnet"])
        assert ipaddress.IPv4Address(config["gateway"]) == subnet.network_address + 1
        gateways.add(config["gateway"])
    for svc in doc["services"].values():
        assert not {n["ipv4_address"] for n in svc["networks"].values()} & gateways


def test_multi_homed_host_lists_its_first_address_first():
    """The nlb's public network has the higher priority, so its first address is eth0."""
    networks = committed("layered")["services"]["nlb"]["networks"]
    assert list(networks) == ["public", "vpc"]
    assert networks["public"]["priority"] > networks["vpc"]["priority"]


def test_every_service_builds_the_same_image():
    """All services share one image tag and one build (compose builds it once)."""
    services = committed("layered")["services"].values()
    assert {s["image"] for s in services} == {"lbkit-lab:latest"}
    assert {(s["build"]["context"], s["build"]["dockerfile"]) for s in services} == {
        ("..", "docker/Dockerfile")
    }


def test_project_name_is_written_only_when_asked():
    """No top-level name by default (docker-compose 1.29 rejects it); `project` adds one."""
    topology = load_topology(ROOT / "labs/basic.toml")
    assert "name" not in yaml.safe_load(render("basic"))
    text = render_compose(topology, topology_file="labs/basic.toml", project="lbkit-basic")
    assert yaml.safe_load(text)["name"] == "lbkit-basic"


def test_header_says_generated_and_how_to_run():
    """The file starts with a do-not-edit comment and the commands to run it."""
    head = render("layered").split("\nservices:")[0]
    assert "lbkit lab render docker labs/layered.toml" in head
    assert "do not edit by hand" in head
    assert "docker compose -f docker/compose.yaml up -d" in head
    assert "exec client curl -s http://198.51.100.10/" in head


def test_header_shows_https_with_the_lab_ca_in_the_state_volume():
    """The layered lab's header curls alb1 over HTTPS trusting /lab/state/tls/ca.pem (the
    CA the l7 containers make in the shared volume); the basic lab, with no TLS, does not."""
    head = render("layered").split("\nservices:")[0]
    assert (
        "exec client curl -s --cacert /lab/state/tls/ca.pem "
        "--resolve app.example.com:443:10.0.1.3 https://app.example.com/"
    ) in head
    assert "https" not in render("basic").split("\nservices:")[0]


def test_hosts_table_lists_https_for_the_albs():
    """alb1's services: http on 80, https on 443, the admin API on its 127.0.0.1."""
    rows = compose_hosts_table(load_topology(ROOT / "labs/layered.toml"))
    alb1 = next(r for r in rows if r["host"] == "alb1")
    assert alb1["services"] == [
        "http 10.0.1.3:80/tcp",
        "https 10.0.1.3:443/tcp",
        "admin 127.0.0.1:9101/tcp",
    ]


def test_hosts_table_lists_native_service_addresses():
    """compose_hosts_table gives each host's role, addresses and services at native ports."""
    rows = compose_hosts_table(load_topology(ROOT / "labs/layered.toml"))
    nlb = next(r for r in rows if r["host"] == "nlb")
    assert nlb["addresses"] == {"public": "198.51.100.10", "vpc": "10.0.1.2"}
    api1 = next(r for r in rows if r["host"] == "api1")
    assert api1["role"] == "backend"
    assert "http 10.0.1.10:80/tcp" in api1["services"]


def test_dockerfile_installs_the_lab_tools_and_the_package():
    """The Dockerfile installs iproute2, nftables and tcpdump, and pip-installs /src."""
    text = (ROOT / "docker/Dockerfile").read_text()
    installs = " ".join(re.findall(r"apt-get install([^&]*)", text.replace("\\\n", " ")))
    for package in ("iproute2", "nftables", "tcpdump"):
        assert package in installs.split()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    assert re.search(r"^RUN pip install --no-cache-dir /src$", text, re.M)
    assert not re.search(r"^ENTRYPOINT", text, re.M)


@pytest.mark.parametrize(("engine", "forward"), [("fast", 0), ("scapy", 0), ("nftables", 1)])
def test_l4_box_sysctls_follow_its_engine(engine, forward):
    """lbkit engines forward themselves (ip_forward 0); nftables is the kernel (1, no redirects)."""
    from lbkit.l4.labtopo import l4_topology_data
    from lbkit.lab import parse_topology

    topo = parse_topology(l4_topology_data("nat", engine), source="labs/l4.toml")
    lb = yaml.safe_load(render_compose(topo, topology_file="labs/l4.toml"))["services"]["lb"]
    assert lb["sysctls"]["net.ipv4.ip_forward"] == forward
    redirects = lb["sysctls"].get("net.ipv4.conf.all.send_redirects")
    assert redirects == (0 if engine == "nftables" else None)
