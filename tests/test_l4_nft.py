"""The nftables engine: scripts rendered from data, checked by nft, then NAT in a real lab.

Rendering and counter parsing are pure. The rest needs root (CI is root):
``nft -c`` runs inside a throwaway namespace, and the NAT test builds a lab
of its own under ``tmp_path``; both are removed whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from itertools import pairwise

import pytest

from lbkit.l4.nft import (
    NftService,
    apply,
    backend_key,
    counters,
    delete_table,
    nat_sysctls,
    parse_counters,
    render_nat,
    render_vip_guard,
    set_sysctls,
    without_down,
)
from lbkit.lab import Lab, LabError
from lbkit.lab.providers.netns import list_namespaces, ns_name

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="network namespaces need root"
)
VIP = "10.0.1.200"
THREE = [("10.0.1.10", 80), ("10.0.1.11", 80), ("10.0.1.12", 8080)]

EXPECTED_NAT = """\
# lbkit nftables NAT: generated from data; edit the data and re-render, not this file
table ip lbnat
delete table ip lbnat
table ip lbnat {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 10.0.1.200 tcp dport 80 counter dnat ip addr . port to SELECTOR \
map { 0 : 10.0.1.10 . 80, 1 : 10.0.1.11 . 80, 2 : 10.0.1.12 . 8080 } comment "10.0.1.200:80/tcp"
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip daddr 10.0.1.10 tcp dport 80 ct original ip daddr 10.0.1.200 ct original proto-dst 80 \
counter comment "10.0.1.200:80/tcp -> 10.0.1.10:80"
\t\tip daddr 10.0.1.11 tcp dport 80 ct original ip daddr 10.0.1.200 ct original proto-dst 80 \
counter comment "10.0.1.200:80/tcp -> 10.0.1.11:80"
\t\tip daddr 10.0.1.12 tcp dport 8080 ct original ip daddr 10.0.1.200 ct original proto-dst 80 \
counter comment "10.0.1.200:80/tcp -> 10.0.1.12:8080"
\t}
}
"""

EXPECTED_GUARD = """\
# lbkit VIP guard: generated from data; edit the data and re-render, not this file
table ip lbguard
delete table ip lbguard
table ip lbguard {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip daddr 10.0.1.200 tcp dport 80 counter drop comment "10.0.1.200:80/tcp"
\t\tip daddr 10.0.1.200 udp dport 53 counter drop comment "10.0.1.200:53/udp"
\t}
}
"""

SELECTORS = {
    "round_robin": "numgen inc mod 3",
    "random": "numgen random mod 3",
    "hash": "jhash ip saddr . tcp sport mod 3",
}


def web(algorithm: str = "round_robin", backends=THREE) -> NftService:
    return NftService(VIP, 80, "tcp", backends, algorithm)


# ------------------------------------------------------------------ pure


@pytest.mark.parametrize("algorithm", list(SELECTORS))
def test_nat_script_for_three_backends(algorithm):
    """One tcp service, three backends: the exact script, per algorithm."""
    expected = EXPECTED_NAT.replace("SELECTOR", SELECTORS[algorithm])
    assert render_nat("lbnat", [web(algorithm)]) == expected


def test_down_backend_is_left_out():
    """A backend marked down disappears from the map and the counters; N shrinks."""
    script = render_nat("lbnat", [web()], down=[("10.0.1.11", 80)])
    assert "10.0.1.11" not in script
    assert "numgen inc mod 2 map { 0 : 10.0.1.10 . 80, 1 : 10.0.1.12 . 8080 }" in script
    assert script == render_nat("lbnat", without_down([web()], [("10.0.1.11", 80)]))


def test_all_backends_down_keeps_a_counting_rule_without_dnat():
    """With no backend up the service's packets reach the box itself (it answers a reset)."""
    script = render_nat("lbnat", [web()], down=THREE)
    assert "dnat" not in script and "numgen" not in script
    assert '\t\tip daddr 10.0.1.200 tcp dport 80 counter comment "10.0.1.200:80/tcp"\n' in script


def test_udp_service_matches_udp_and_hashes_udp_ports():
    """A udp service matches ``udp dport`` and its hash reads ``udp sport``."""
    svc = NftService(VIP, 53, "udp", [("10.0.1.10", 53), ("10.0.1.11", 53)], "hash")
    script = render_nat("lbnat", [svc])
    assert (
        "ip daddr 10.0.1.200 udp dport 53 counter dnat ip addr . port to "
        "jhash ip saddr . udp sport mod 2 map { 0 : 10.0.1.10 . 53, 1 : 10.0.1.11 . 53 } "
        'comment "10.0.1.200:53/udp"'
    ) in script
    assert "ip daddr 10.0.1.11 udp dport 53 ct original ip daddr 10.0.1.200" in script
    assert "tcp" not in script


def test_several_services_keep_their_order():
    """Each service gets its rule, in the order given, and its own backend counters."""
    a = web()
    b = NftService("10.0.1.201", 443, "tcp", [("10.0.1.10", 443)], "random")
    script = render_nat("lbnat", [a, b])
    assert script.index(f'comment "{a.key}"') < script.index(f'comment "{b.key}"')
    assert 'comment "10.0.1.201:443/tcp -> 10.0.1.10:443"' in script
    assert render_nat("lbnat", [a, b]) == script  # deterministic


def test_a_backend_listed_twice_gets_two_slots_and_one_counter():
    """Listing a backend twice weights it; its counter rule appears once."""
    script = render_nat("lbnat", [web(backends=[("10.0.1.10", 80)] * 2 + [("10.0.1.11", 80)])])
    assert "map { 0 : 10.0.1.10 . 80, 1 : 10.0.1.10 . 80, 2 : 10.0.1.11 . 80 }" in script
    assert script.count('-> 10.0.1.10:80"') == 1


def test_vip_guard_script():
    """The guard drops each VIP:port/proto in the input hook: the exact script."""
    vips = [(VIP, 80, "tcp"), (VIP, 53, "udp")]
    assert render_vip_guard("lbguard", vips) == EXPECTED_GUARD


@pytest.mark.parametrize(
    "make",
    [
        lambda: NftService(VIP, 80, "sctp", THREE),
        lambda: NftService(VIP, 80, "tcp", THREE, "least_connections"),
        lambda: NftService("10.0.1.300", 80, "tcp", THREE),
        lambda: NftService(VIP, 0, "tcp", THREE),
        lambda: NftService(VIP, 80, "tcp", [("10.0.1.10", 70000)]),
        lambda: render_nat("bad name", [web()]),
        lambda: render_nat("lbnat", [web(), web()]),
    ],
)
def test_bad_input_is_refused(make):
    """Unknown protocol or algorithm, bad addresses, ports, table names, duplicates: LabError."""
    with pytest.raises(LabError):
        make()


def test_counters_are_parsed_by_comment():
    """``nft -j`` output becomes {comment: {packets, bytes}}; a rule without one, CHAIN#HANDLE."""
    listing = {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "ip", "name": "lbnat", "handle": 1}},
            {
                "rule": {
                    "chain": "prerouting",
                    "handle": 4,
                    "comment": "10.0.1.200:80/tcp",
                    "expr": [{"counter": {"packets": 20, "bytes": 1200}}, {"dnat": {}}],
                }
            },
            {
                "rule": {
                    "chain": "input",
                    "handle": 7,
                    "expr": [{"counter": {"packets": 1, "bytes": 60}}],
                }
            },
            {"rule": {"chain": "input", "handle": 8, "expr": [{"accept": None}]}},
        ]
    }
    assert parse_counters(json.dumps(listing)) == {
        "10.0.1.200:80/tcp": {"packets": 20, "bytes": 1200},
        "input#7": {"packets": 1, "bytes": 60},
    }


def test_missing_nft_names_the_package(monkeypatch, tmp_path):
    """Without ``nft`` on PATH the error says which package to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError, match="nftables"):
        apply("table ip x\n")


def test_nat_sysctls_forward_and_never_redirect():
    """NAT mode forwards, and sends no ICMP redirect on all, default and the interface."""
    assert nat_sysctls("eth0") == {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/send_redirects": "0",
        "net/ipv4/conf/default/send_redirects": "0",
        "net/ipv4/conf/eth0/send_redirects": "0",
    }


# -------------------------------------------------------- nft, for real


@pytest.fixture(scope="module")
def scratch_ns() -> Iterator[str]:
    """A throwaway network namespace, deleted after the module."""
    name = f"lbknft{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    assert name not in list_namespaces()


RENDERED = {
    **{f"nat-{a}": lambda a=a: render_nat("lbnat", [web(a)]) for a in SELECTORS},
    "nat-down": lambda: render_nat("lbnat", [web()], down=[("10.0.1.10", 80)]),
    "nat-all-down": lambda: render_nat("lbnat", [web()], down=THREE),
    "nat-udp-hash": lambda: render_nat(
        "lbnat", [NftService(VIP, 53, "udp", [("10.0.1.10", 53), ("10.0.1.11", 53)], "hash")]
    ),
    "nat-several": lambda: render_nat(
        "lbnat", [web(), NftService("10.0.1.201", 443, "tcp", [("10.0.1.10", 443)], "random")]
    ),
    "guard": lambda: render_vip_guard("lbguard", [(VIP, 80, "tcp"), (VIP, 53, "udp")]),
}


@needs_root
@pytest.mark.parametrize("name", list(RENDERED))
def test_nft_accepts_the_rendered_script(scratch_ns, name):
    """``nft -c -f`` (check only, no change) accepts every rendered script."""
    apply(RENDERED[name](), scratch_ns, check=True)
    listed = subprocess.run(
        ["ip", "netns", "exec", scratch_ns, "nft", "list", "ruleset"],
        capture_output=True,
        text=True,
    )
    assert listed.stdout == ""  # check mode changed nothing


@needs_root
def test_apply_replaces_and_delete_table_is_idempotent(scratch_ns):
    """Applying twice leaves one copy of each rule; deleting a missing table is fine."""
    try:
        apply(render_nat("lbnat", [web()]), scratch_ns)
        apply(render_nat("lbnat", [web()], down=[("10.0.1.12", 8080)]), scratch_ns)
        found = counters("lbnat", scratch_ns)
        assert set(found) == {web().key, *(backend_key(web(), b) for b in THREE[:2])}
    finally:
        delete_table("lbnat", scratch_ns)
    delete_table("lbnat", scratch_ns)
    with pytest.raises(LabError, match="No such file"):
        counters("lbnat", scratch_ns)


@needs_root
def test_nft_rejection_is_a_lab_error_with_nfts_message(scratch_ns):
    """A script nft refuses gives a LabError quoting nft's error."""
    with pytest.raises(LabError, match="syntax error"):
        apply("table ip lbnat { chain x { nonsense } }\n", scratch_ns, check=True)


# ----------------------------------------------------- NAT, end to end

NAT_LAB = """\
name = "nftnat"
[segments.lan]
subnet = "10.0.1.0/24"
[hosts.client]
role = "client"
addresses = ["10.0.1.100"]
[hosts.lb]
role = "tools"
addresses = ["10.0.1.2"]
[hosts.web1]
role = "backend"
addresses = ["10.0.1.10"]
[hosts.web2]
role = "backend"
addresses = ["10.0.1.11"]
"""


@needs_root
def test_nat_round_robin_through_a_real_lab(tmp_path):
    """20 curls to the VIP alternate between the two backends; the counters say 10 and 10."""
    topo = tmp_path / "nftnat.toml"
    topo.write_text(NAT_LAB)
    lab = Lab(topo, provider="netns", state_dir=tmp_path / "state")
    svc = NftService(VIP, 80, "tcp", [("10.0.1.10", 80), ("10.0.1.11", 80)], "round_robin")
    try:
        lab.up()
        lb = ns_name(lab.prefix, "lb")
        subprocess.run(["ip", "-n", lb, "addr", "add", f"{VIP}/32", "dev", "eth0"], check=True)
        set_sysctls(nat_sysctls("eth0"), lb)
        apply(render_nat("lbnat", [svc]), lb)
        for host in ("web1", "web2"):
            route = ["ip", "-n", ns_name(lab.prefix, host), "route", "add", "10.0.1.100/32"]
            subprocess.run([*route, "via", "10.0.1.2"], check=True)
        answers = []
        for _ in range(20):
            done = lab.exec("client", ["curl", "-s", "-m", "5", f"http://{VIP}/"], timeout=15)
            answers.append(done.stdout.strip())
        assert set(answers) == {"web1", "web2"}
        assert all(a != b for a, b in pairwise(answers))  # alternates
        found = counters("lbnat", lb)
        assert found[svc.key]["packets"] == 20  # NAT rules see each connection's first packet
        assert [found[backend_key(svc, b)]["packets"] for b in svc.backends] == [10, 10]
    finally:
        lab.down()
    assert not [ns for ns in list_namespaces() if ns.startswith(f"{lab.prefix}-")]
