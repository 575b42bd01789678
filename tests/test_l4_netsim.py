"""The in-memory L4 network: whole exchanges through the real L4 core, hop by hop, per mode."""

from __future__ import annotations

from collections import Counter

import pytest
from rich.console import Console
from scapy.layers.inet import IP, TCP

from lbkit.l4.labtopo import BOX, CLIENT, VIP
from lbkit.l4.netsim import ADDED, l4_network, mac_of, trace_from_capture
from lbkit.l4.tcpendpoint import mss_option
from lbkit.viz.exercises import L4_OR_L7_SITUATIONS, check_l4_or_l7
from lbkit.viz.l4trace import CHANGED_COLOR, compare_modes_html, trace_html, trace_table

MODES = ("nat", "dsr", "tunnel")
API = {"api1": "10.0.1.10", "api2": "10.0.1.11", "api3": "10.0.1.12"}


def box_hops_to_backend(trace):
    return [h for h in trace.sent_by("lb") if h.ip.src == CLIENT]


@pytest.mark.parametrize("mode", MODES)
def test_http_get_answers_with_the_serving_backends_name(mode):
    """One GET through the VIP returns the name of the backend that served it."""
    trace = l4_network(mode).http_get(client_port=40001)
    assert trace.answer in API and trace.answer == trace.backend


@pytest.mark.parametrize("mode", MODES)
def test_exchange_completes_without_a_dropped_frame(mode):
    """Handshake, request, response and both FINs: no frame dropped, both ends closed."""
    net = l4_network(mode)
    trace = net.http_get(client_port=40001)
    assert [h.dropped for h in trace.hops if h.dropped] == []
    assert [h.flags for h in trace.hops if h.at == "client"] == ["S", ".", "P.", ".", "F.", "."]
    assert all(not b.conns for b in net.backends)


def test_nat_reply_passes_the_box_and_leaves_it_from_the_vip():
    """NAT: the reply goes backend -> lb -> client, and reaches the client from VIP:80."""
    trace = l4_network("nat").http_get(client_port=40001)
    assert trace.path(trace.replies()) == [trace.backend, "lb", "client"]
    to_client = [h for h in trace.hops if h.to == "client"]
    assert {(h.at, h.ip.src, h.ip.payload.sport) for h in to_client} == {("lb", VIP, 80)}


@pytest.mark.parametrize("mode", ["dsr", "tunnel"])
def test_dsr_and_tunnel_replies_skip_the_box(mode):
    """DSR and tunnel: the backend replies straight to the client; the box sees no reply."""
    trace = l4_network(mode).http_get(client_port=40001)
    assert trace.path(trace.replies()) == [trace.backend, "client"]
    assert [h for h in trace.hops if h.to == "lb" and h.ip.dst == CLIENT] == []


@pytest.mark.parametrize("mode", ["dsr", "tunnel"])
def test_direct_reply_carries_the_vip_and_the_backends_mac(mode):
    """A direct reply's IP source is the VIP, its Ethernet source the backend's own MAC."""
    trace = l4_network(mode).http_get(client_port=40001)
    reply = next(h for h in trace.hops if h.to == "client")
    assert reply.ip.src == VIP
    assert reply.frame.src == mac_of(API[trace.backend])


def test_nat_box_rewrites_ip_dst_port_checksums_and_ethernet():
    """NAT, client -> backend: the box changes both MACs, IP dst, TCP dport and both checksums."""
    trace = l4_network("nat").http_get(client_port=40001)
    for hop in box_hops_to_backend(trace):
        assert hop.changed == {
            "Ethernet": ["dst", "src"],
            "IP": ["chksum", "dst"],
            "TCP": ["dport", "chksum"],
        }


def test_nat_backend_port_is_the_seeds_3000():
    """NAT forwards to backend port 3000, DSR keeps 80 (only NAT may change the port)."""
    nat = box_hops_to_backend(l4_network("nat").http_get(client_port=40001))
    dsr = box_hops_to_backend(l4_network("dsr").http_get(client_port=40001))
    assert {h.ip.payload.dport for h in nat} == {3000}
    assert {h.ip.payload.dport for h in dsr} == {80}


def test_dsr_box_changes_only_the_ethernet_addresses():
    """DSR: every frame the box sends differs from what it got in Ethernet dst and src only."""
    trace = l4_network("dsr").http_get(client_port=40001)
    assert {str(h.changed) for h in trace.sent_by("lb")} == {"{'Ethernet': ['dst', 'src']}"}


def test_tunnel_box_adds_an_outer_ip_header_and_keeps_the_inner_one():
    """Tunnel: the GET leaves the box inside IP-in-IP, lb -> backend; the inner IP is unchanged."""
    trace = l4_network("tunnel").http_get(client_port=40001)
    get = next(h for h in box_hops_to_backend(trace) if h.payload)
    outer = get.frame[IP]
    assert get.changed == {"Ethernet": ["dst", "src"], "outer IP": [ADDED]}
    assert (outer.proto, outer.src, outer.dst) == (4, BOX, API[trace.backend])
    assert (get.ip.src, get.ip.dst) == (CLIENT, VIP)


def test_tunnel_box_clamps_the_syn_mss_and_backends_advertise_1440():
    """Tunnel: the client's MSS 1460 leaves the box as 1440; the backend's SYN-ACK says 1440."""
    trace = l4_network("tunnel").http_get(client_port=40001)
    syn_in, syn_out = trace.hops[0], box_hops_to_backend(trace)[0]
    synack = next(h for h in trace.hops if h.flags == "S.")
    assert mss_option(syn_in.ip[TCP]) == 1460 and mss_option(syn_out.ip[TCP]) == 1440
    assert syn_out.changed["TCP"] == ["chksum", "options"]
    assert mss_option(synack.ip[TCP]) == 1440


def test_tunnel_with_a_1460_advmss_loses_full_segments_at_the_mtu():
    """Tunnel without advmss 1440: a full client segment plus 20 bytes exceeds the MTU."""
    trace = l4_network("tunnel", advmss=1460).http_post("/echo", b"x" * 5000, client_port=40001)
    assert trace.answer is None
    assert any("exceeds the 1500-byte MTU" in (h.dropped or "") for h in trace.hops)


def test_tunnel_with_the_default_advmss_carries_a_large_post():
    """Tunnel with advmss 1440: the same 5000-byte POST arrives whole."""
    trace = l4_network("tunnel").http_post("/echo", b"x" * 5000, client_port=40001)
    assert '"body_bytes": 5000' in trace.answer


def test_gets_from_different_ports_spread_and_fill_the_conntrack():
    """Twelve GETs from ports 40001-40012 reach all backends; each is one conntrack row."""
    net = l4_network("nat")
    served = [net.http_get(client_port=40000 + i).backend for i in range(1, 13)]
    rows = net.lb.conntrack.rows()
    assert set(served) == set(API)
    assert [r["backend"] for r in rows] == served
    assert [r["client"] for r in rows] == [f"{CLIENT}:{40000 + i}" for i in range(1, 13)]


def test_every_packet_of_a_connection_goes_to_the_backend_of_its_syn():
    """Under round robin, each connection's packets all go to one backend; connections rotate."""
    net = l4_network("nat", algorithm="round_robin")
    backends = []
    for port in (40001, 40002, 40003):
        trace = net.http_get(client_port=port)
        backends.append({h.to for h in box_hops_to_backend(trace)})
    assert backends == [{"api1"}, {"api2"}, {"api3"}]


def test_conntrack_rows_are_the_same_on_every_run():
    """Simulated time and seeded ISNs: two runs give identical conntrack rows, ages included."""

    def run():
        net = l4_network("dsr")
        for port in (40001, 40002, 40003):
            net.http_get(client_port=port)
        return net.lb.conntrack.rows()

    assert run() == run()


@pytest.mark.parametrize("mode", MODES)
def test_udp_echo_comes_back_from_the_backend_that_got_it(mode):
    """A datagram to VIP:7 is echoed as ``NAME: payload`` by the backend it went to."""
    trace = l4_network(mode).send_udp("ping", client_port=50001)
    assert trace.answer == f"{trace.backend}: ping"
    assert trace.hops[-1].to == "client" and trace.hops[-1].ip.src == VIP


def test_a_backend_set_down_gets_no_new_flows():
    """After ``set_state("api2", "down")`` twenty new connections avoid api2."""
    net = l4_network("nat")
    net.lb.set_state("api2", "down")
    served = Counter(net.http_get().backend for _ in range(20))
    assert "api2" not in served and sum(served.values()) == 20


def test_backend_sees_the_clients_own_address():
    """An L4 box keeps the client's IP and port: /echo reports 10.0.1.100:40001."""
    trace = l4_network("nat").http_get("/echo", client_port=40001)
    assert '"client": "10.0.1.100:40001"' in trace.answer


def test_large_response_bypasses_the_box_in_dsr():
    """A 100 kB answer: the NAT box carries all of it, the DSR box under a tenth as many bytes."""
    nat = l4_network("nat").http_get("/bytes/100000", client_port=40001)
    dsr = l4_network("dsr").http_get("/bytes/100000", client_port=40001)
    assert len(nat.answer) == len(dsr.answer) == 100_000
    assert nat.through("lb")[1] > 100_000 > 10 * dsr.through("lb")[1]


def test_trace_from_capture_rebuilds_the_hops_of_a_run():
    """Per-host 'captures' of a run give back the same hops and the same changed fields."""
    trace = l4_network("nat").http_get(client_port=40001)
    captures: dict[str, list] = {h: [] for h in ("client", "lb", "api1", "api2", "api3")}
    for hop in trace.hops:
        frame = hop.frame.copy()
        frame.time = hop.time
        captures[hop.at].append(frame)
        captures[hop.to].append(frame)
    macs = {name: mac_of(ip) for name, ip in {"client": CLIENT, "lb": BOX, **API}.items()}
    rebuilt = trace_from_capture(captures, macs, mode="nat")
    assert [(h.at, h.to, h.changed) for h in rebuilt.hops] == [
        (h.at, h.to, h.changed) for h in trace.hops
    ]
    assert (rebuilt.backend, rebuilt.client_port) == (trace.backend, 40001)


def test_trace_html_shades_exactly_the_cells_the_box_changed():
    """NAT: each box hop shades Ethernet src, dst, one IP address and the ports: 4 cells."""
    trace = l4_network("nat").http_get(client_port=40001)
    html = trace_html(trace)
    assert html.count('class="changed"') == 4 * len(trace.sent_by("lb"))
    assert CHANGED_COLOR in html


def test_trace_table_shows_the_outer_header_only_in_tunnel_mode():
    """The rich table has an 'outer IP' column for a tunnel trace and none for DSR."""
    console = Console(width=250, record=True)
    console.print(trace_table(l4_network("tunnel").http_get(client_port=40001)))
    console.print(trace_table(l4_network("dsr").http_get(client_port=40001)))
    tunnel, dsr = console.export_text().split("dsr: TCP")
    assert "outer IP" in tunnel and "IP-in-IP" in tunnel and "outer IP" not in dsr


def test_compare_modes_html_has_a_column_and_a_sentence_per_mode():
    """The comparison names each mode in its header and explains each return path."""
    traces = {m: l4_network(m).http_get(client_port=40001) for m in MODES}
    html = compare_modes_html(traces)
    assert all(f">{title}</th>" in html for title in ("NAT", "DSR", "tunnel (IP-in-IP)"))
    assert html.count("<li>") == 3
    assert "api3 &gt; lb &gt; client" in html and "api3 &gt; client" in html


def test_interview_checker_accepts_the_right_answer():
    """The L4-or-L7 drill accepts the stored answer, and NLB/ALB as synonyms."""
    right = {k: layer for k, (_text, layer) in L4_OR_L7_SITUATIONS.items()}
    aws = {k: "NLB" if v == "L4" else "ALB" for k, v in right.items()}
    assert check_l4_or_l7(right) and check_l4_or_l7(aws)


def test_interview_checker_counts_mistakes_without_naming_them():
    """A wrong answer gets a hint with the number wrong and no letter."""
    right = {k: layer for k, (_text, layer) in L4_OR_L7_SITUATIONS.items()}
    verdict = check_l4_or_l7({**right, "a": "L7", "b": "L4"})
    assert not verdict and str(verdict).startswith("not yet: 2 not right")


def test_path_does_not_change_the_backend_of_a_five_tuple():
    """Three paths on three connections from one client port all reach one backend."""
    net = l4_network("nat")
    paths = ("/api/v1/cart", "/static/logo.png", "/mobile/home")
    assert len({net.http_get(path, client_port=40001).backend for path in paths}) == 1


def test_with_every_backend_down_the_box_drops_the_syn_and_says_why():
    """No backend up: the SYN stops at the box, the hop names the reason, no answer comes."""
    net = l4_network("nat")
    for name in API:
        net.lb.set_state(name, "down")
    trace = net.http_get(client_port=40001)
    assert trace.answer is None and len(trace.hops) == 1
    assert trace.hops[0].dropped == "lb: drop:no-backend"
