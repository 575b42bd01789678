"""The L4 balancer per forwarding mode: canned scapy frames in, header fields out."""

from __future__ import annotations

import json

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether

from lbkit.algorithms import Backend
from lbkit.l4 import L4Balancer, Service

VIP, SELF_IP = "10.0.1.200", "10.0.1.2"
SELF_MAC, ROUTER_MAC = "02:00:00:00:00:02", "02:00:00:00:00:fe"
CLIENT = "203.0.113.7"  # routed: its frames arrive from the router's MAC
API = {"api1": "10.0.1.10", "api2": "10.0.1.11", "api3": "10.0.1.12"}
MACS = {ip: f"02:00:00:00:01:{ip.rsplit('.', 1)[1]}" for ip in API.values()}


def make_lb(mode: str = "nat", names=("api1", "api2"), port: int | None = None, **kw) -> L4Balancer:
    bport = port if port is not None else (8080 if mode == "nat" else 80)
    backends = [Backend(n, address=f"{API[n]}:{bport}") for n in names]
    kw.setdefault("neighbors", MACS)
    return L4Balancer(
        [Service(VIP, 80, "tcp", backends)], mode=mode, self_ip=SELF_IP, self_mac=SELF_MAC, **kw
    )


def from_client(flags="S", sport=40000, payload=b"", client=CLIENT, **ip_fields) -> Ether:
    return (
        Ether(src=ROUTER_MAC, dst=SELF_MAC)
        / IP(src=client, dst=VIP, **ip_fields)
        / TCP(sport=sport, dport=80, flags=flags, seq=1000)
        / payload
    )


def udp_from_client(sport=5353, dport=53, payload=b"query", chksum=None) -> Ether:
    return (
        Ether(src=ROUTER_MAC, dst=SELF_MAC)
        / IP(src=CLIENT, dst=VIP)
        / UDP(sport=sport, dport=dport, chksum=chksum)
        / payload
    )


def backend_of(out: list) -> str:
    """Which backend a forwarded frame went to, by its destination MAC."""
    mac = out[0][Ether].dst
    return next(name for name, ip in API.items() if MACS[ip] == mac)


def checksums_ok(frame: bytes) -> bool:
    """Every IP/TCP/UDP/ICMP checksum in ``frame`` equals scapy's from-scratch value."""
    copy = Ether(frame)
    layer = copy
    while layer:
        quoted = isinstance(layer, (TCPerror, UDPerror))  # often cut to 8 bytes: not checkable
        unsummed = isinstance(layer, UDP) and layer.chksum == 0
        if isinstance(layer, (IP, ICMP, TCP, UDP)) and not quoted and not unsummed:
            del layer.chksum
        layer = layer.payload
    return bytes(copy) == frame


def partial(frame: bytes) -> bytes:
    """``frame`` as a veth with TX checksum offload hands it over: L4 field = pseudo-header sum."""
    ip = Ether(frame)[IP]
    seg = ip.len - ip.ihl * 4
    words = [int(x) for x in ip.src.split(".") + ip.dst.split(".")]
    total = sum(words[0::2]) * 256 + sum(words[1::2]) + ip.proto + seg
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    at = 14 + ip.ihl * 4 + (16 if ip.proto == 6 else 6)
    return frame[:at] + total.to_bytes(2, "big") + frame[at + 2 :]


def l4_checksum_field(frame: bytes) -> int:
    pkt = Ether(frame)
    inner = pkt[IP].payload if pkt[IP].proto == 4 else pkt[IP]
    return inner.payload.chksum


# ------------------------------------------------------------------------- NAT
def test_nat_syn_goes_to_backend_address():
    """NAT: a SYN to VIP:80 leaves addressed to a backend's ip:port, client IP kept."""
    out = make_lb("nat").handle(from_client(), now=0.0)
    ip, tcp = out[0][IP], out[0][TCP]
    assert (ip.src, ip.dst, tcp.sport, tcp.dport) == (CLIENT, API[backend_of(out)], 40000, 8080)
    assert out[0][Ether].src == SELF_MAC


def test_nat_reply_comes_from_vip_to_client_mac():
    """NAT: a backend's reply leaves from VIP:80 to the MAC the client's frames came from."""
    lb = make_lb("nat")
    name = backend_of(lb.handle(from_client(), now=0.0))
    reply = (
        Ether(src=MACS[API[name]], dst=SELF_MAC)
        / IP(src=API[name], dst=CLIENT)
        / TCP(sport=8080, dport=40000, flags="SA")
    )
    out = lb.handle(reply, now=0.1)
    assert (out[0][IP].src, out[0][TCP].sport, out[0][IP].dst) == (VIP, 80, CLIENT)
    assert (out[0][Ether].src, out[0][Ether].dst) == (SELF_MAC, ROUTER_MAC)


@pytest.mark.parametrize("mode", ["nat", "dsr", "tunnel"])
def test_forwarded_checksums_are_valid(mode):
    """Every checksum of a forwarded TCP frame is correct, in each mode."""
    out = make_lb(mode).handle(from_client("PA", payload=b"GET / HTTP/1.1\r\n\r\n"), now=0.0)
    assert checksums_ok(bytes(out[0]))


def test_nat_udp_rewrites_and_checksums():
    """NAT of UDP: destination rewritten, UDP checksum valid."""
    backends = [Backend("dns1", address="10.0.1.10:5300")]
    lb = L4Balancer(
        [Service(VIP, 53, "udp", backends)], mode="nat", self_mac=SELF_MAC, neighbors=MACS
    )
    out = lb.handle(udp_from_client(), now=0.0)
    assert (out[0][IP].dst, out[0][UDP].dport) == ("10.0.1.10", 5300)
    assert checksums_ok(bytes(out[0]))


# ------------------------------------------------------------------------- DSR
def test_dsr_keeps_ip_bytes():
    """DSR: the IP packet leaves byte for byte as it came."""
    frame = bytes(from_client("PA", payload=b"hello"))
    out = make_lb("dsr").handle(Ether(frame), now=0.0)
    assert bytes(out[0])[14:] == frame[14:]


def test_dsr_rewrites_ethernet_to_backend():
    """DSR: the Ethernet header goes from our MAC to the chosen backend's MAC."""
    out = make_lb("dsr").handle(from_client(), now=0.0)
    assert out[0][Ether].src == SELF_MAC
    assert out[0][Ether].dst in {MACS[API["api1"]], MACS[API["api2"]]}


def test_dsr_rejects_a_backend_port_change():
    """DSR cannot rewrite ports: a backend on another port is a configuration error."""
    with pytest.raises(ValueError, match="cannot change ports"):
        make_lb("dsr", port=8080)


# ---------------------------------------------------------------------- tunnel
def test_tunnel_outer_header_fields():
    """Tunnel: outer IPv4 is proto 4, self_ip -> backend, TTL 64, TOS copied, id 0, no DF."""
    out = make_lb("tunnel").handle(from_client(tos=0x28), now=0.0)
    outer = out[0][IP]
    assert (outer.proto, outer.src, outer.dst) == (4, SELF_IP, API[backend_of(out)])
    assert (outer.ttl, outer.tos, outer.id, int(outer.flags), outer.frag) == (64, 0x28, 0, 0, 0)
    assert outer.len == 20 + len(bytes(from_client(tos=0x28))) - 14


def test_tunnel_inner_packet_intact():
    """Tunnel: the inner packet is the client's IP packet, unchanged."""
    frame = bytes(from_client("PA", payload=b"x" * 300, ttl=33))
    out = make_lb("tunnel").handle(Ether(frame), now=0.0)
    assert bytes(out[0])[34:] == frame[14:]


# -------------------------------------------------------------- checksum offload
@pytest.mark.parametrize("mode", ["nat", "dsr", "tunnel"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_partial_checksum_is_completed(mode, proto):
    """A frame with a partial (offloaded) L4 checksum leaves with a full one, in every mode."""
    if proto == "tcp":
        lb, frame = make_lb(mode), bytes(from_client("PA", payload=b"data"))
    else:
        backends = [Backend("dns1", address="10.0.1.10:53")]
        svc = Service(VIP, 53, "udp", backends)
        lb = L4Balancer([svc], mode=mode, self_ip=SELF_IP, self_mac=SELF_MAC, neighbors=MACS)
        frame = bytes(udp_from_client())
    assert not checksums_ok(partial(frame))
    out = lb.handle_bytes(partial(frame), now=0.0, csum_partial=True)
    assert checksums_ok(out[0])


@pytest.mark.parametrize("mode", ["nat", "dsr", "tunnel"])
def test_udp_without_checksum_stays_without(mode):
    """A UDP checksum of 0 (none, RFC 768) stays 0, offloaded or not."""
    backends = [Backend("dns1", address="10.0.1.10:53")]
    svc = Service(VIP, 53, "udp", backends)
    lb = L4Balancer([svc], mode=mode, self_ip=SELF_IP, self_mac=SELF_MAC, neighbors=MACS)
    frame = bytes(udp_from_client(chksum=0))
    assert l4_checksum_field(lb.handle_bytes(frame, 0.0)[0]) == 0
    assert l4_checksum_field(lb.handle_bytes(frame, 1.0, csum_partial=True)[0]) == 0


# ------------------------------------------------------------------- MSS clamp
@pytest.mark.parametrize("mode", ["nat", "dsr", "tunnel"])
def test_mss_clamp_lowers_syn_mss(mode):
    """With mss_clamp=1440 a SYN's MSS 1460 leaves as 1440, checksum still valid."""
    syn = from_client("S")
    syn[TCP].options = [("NOP", None), ("MSS", 1460), ("WScale", 7)]
    out = make_lb(mode, mss_clamp=1440).handle(syn, now=0.0)
    inner = out[0][IP].payload if mode == "tunnel" else out[0][IP]
    assert dict(inner[TCP].options)["MSS"] == 1440
    assert checksums_ok(bytes(out[0]))


def test_mss_clamp_keeps_a_smaller_mss():
    """An MSS already below the clamp is left alone."""
    syn = from_client("S")
    syn[TCP].options = [("MSS", 1200)]
    out = make_lb("nat", mss_clamp=1440).handle(syn, now=0.0)
    assert dict(out[0][TCP].options)["MSS"] == 1200


# ------------------------------------------------------------------- services
def test_services_are_routed_by_port_and_protocol():
    """Each VIP:port/proto has its own pool."""
    web = Service(VIP, 80, "tcp", [Backend("web", address="10.0.1.10:80")])
    tls = Service(VIP, 443, "tcp", [Backend("tls", address="10.0.1.11:443")])
    dns = Service(VIP, 53, "udp", [Backend("dns", address="10.0.1.12:53")])
    lb = L4Balancer([web, tls, dns], mode="dsr", self_mac=SELF_MAC, neighbors=MACS)
    base = Ether(src=ROUTER_MAC, dst=SELF_MAC) / IP(src=CLIENT, dst=VIP)
    got = [
        lb.handle(base / TCP(sport=1000, dport=80, flags="S"), 0.0)[0][Ether].dst,
        lb.handle(base / TCP(sport=1001, dport=443, flags="S"), 0.0)[0][Ether].dst,
        lb.handle(base / UDP(sport=1002, dport=53), 0.0)[0][Ether].dst,
    ]
    assert got == [MACS["10.0.1.10"], MACS["10.0.1.11"], MACS["10.0.1.12"]]


def test_packets_of_a_flow_stick_to_one_backend():
    """All packets of one connection reach the backend its SYN reached."""
    lb = make_lb("nat", names=("api1", "api2", "api3"))
    for sport in range(40000, 40020):
        first = backend_of(lb.handle(from_client("S", sport=sport), 0.0))
        rest = {backend_of(lb.handle(from_client("A", sport=sport), t)) for t in (1.0, 2.0)}
        assert rest == {first}


# -------------------------------------------------------------- backend state
def test_down_backend_gets_no_new_flows():
    """After set_state(down), new flows avoid that backend."""
    lb = make_lb("nat", names=("api1", "api2"))
    lb.set_state("api2", "down")
    assert {backend_of(lb.handle(from_client(sport=s), 0.0)) for s in range(1000, 1050)} == {"api1"}


def test_flow_of_down_backend_is_repicked():
    """An established flow whose backend goes down moves to another on its next packet."""
    lb = make_lb("nat", names=("api1", "api2"))
    sport = next(
        s for s in range(1000, 2000) if backend_of(lb.handle(from_client(sport=s), 0)) == "api2"
    )
    lb.set_state("api2", "down")
    assert backend_of(lb.handle(from_client("A", sport=sport), 1.0)) == "api1"
    assert lb.counters["conntrack:repicked"] == 1


def test_drained_backend_keeps_its_flows():
    """Flows of a draining backend continue to it."""
    lb = make_lb("nat", names=("api1", "api2"))
    sport = next(
        s for s in range(1000, 2000) if backend_of(lb.handle(from_client(sport=s), 0)) == "api2"
    )
    lb.set_state("api2", "drain")
    assert backend_of(lb.handle(from_client("A", sport=sport), 1.0)) == "api2"


def test_drained_backend_gets_no_new_flows():
    """A draining backend receives no new flow."""
    lb = make_lb("nat", names=("api1", "api2"))
    lb.set_state("api2", "drain")
    assert {backend_of(lb.handle(from_client(sport=s), 0.0)) for s in range(1000, 1050)} == {"api1"}


def test_set_weight_changes_new_flow_share():
    """set_weight is passed to the balancer: weight 3 of 4 takes most new flows."""
    lb = make_lb("nat", names=("api1", "api2"))
    lb.set_weight("api1", 3)
    picks = [backend_of(lb.handle(from_client(sport=s), 0.0)) for s in range(1000, 1400)]
    assert 0.65 < picks.count("api1") / len(picks) < 0.85


# ------------------------------------------------------------------ conntrack
def test_conntrack_size_evicts_least_recently_used():
    """At conntrack_size flows, the least recently used flow is evicted and counted."""
    lb = make_lb("nat", conntrack_size=2)
    for t, sport in enumerate((1001, 1002, 1001, 1003)):
        lb.handle(from_client("S", sport=sport), float(t))
    clients = sorted(row["client"] for row in lb.conntrack.rows())
    assert clients == [f"{CLIENT}:1001", f"{CLIENT}:1003"]
    assert lb.counters["conntrack:evicted"] == 1


def test_idle_flows_expire_and_free_the_balancer():
    """expire(now) removes flows idle past their timeout and counts them finished."""
    lb = make_lb("nat")
    lb.handle(from_client("S"), 0.0)
    lb.handle(from_client("A"), 1.0)  # established: 900 s
    assert lb.expire(900.0) == [] and len(lb.conntrack) == 1
    assert len(lb.expire(901.0)) == 1
    assert sum(b["active"] for b in lb.stats()["services"][0]["backends"]) == 0


def test_midstream_pick_is_consistent_across_balancers():
    """A non-SYN packet of an unknown flow goes where another balancer sent the SYN (Maglev)."""
    names = ("api1", "api2", "api3")
    first, second = make_lb("nat", names=names), make_lb("nat", names=names)
    for sport in range(2000, 2030):
        assert backend_of(first.handle(from_client("S", sport=sport), 0.0)) == backend_of(
            second.handle(from_client("A", sport=sport), 5.0)
        )
    assert second.counters["conntrack:midstream"] == 30
    assert {r["state"] for r in second.conntrack.rows()} == {"established"}


def test_fin_moves_flow_to_closing():
    """A FIN from the client puts the flow in state closing."""
    lb = make_lb("nat")
    lb.handle(from_client("S"), 0.0)
    lb.handle(from_client("FA"), 1.0)
    assert lb.conntrack.rows()[0]["state"] == "closing"


# ----------------------------------------------------------------------- ICMP
def icmp_about_reply(sport=40000, code=4) -> Ether:
    """A router's "fragmentation needed" about the VIP's reply to the client."""
    quoted = bytes(IP(src=VIP, dst=CLIENT) / TCP(sport=80, dport=sport, flags="A") / (b"y" * 50))
    return (
        Ether(src=ROUTER_MAC, dst=SELF_MAC)
        / IP(src="198.51.100.1", dst=VIP)
        / ICMP(type=3, code=code, nexthopmtu=1400)
        / quoted[:28]
    )


def test_icmp_error_reaches_nat_backend_with_its_own_address():
    """NAT: an ICMP error about a flow goes to its backend, quoted source = backend ip:port."""
    lb = make_lb("nat")
    name = backend_of(lb.handle(from_client(), 0.0))
    out = lb.handle(icmp_about_reply(), 1.0)
    assert backend_of(out) == name
    assert (out[0][IP].dst, out[0][IPerror].src, out[0][IPerror].dst) == (
        API[name],
        API[name],
        CLIENT,
    )
    assert bytes(out[0][IPerror].payload)[:4] == (8080).to_bytes(2, "big") + (40000).to_bytes(
        2, "big"
    )
    assert checksums_ok(bytes(out[0]))


def test_icmp_error_in_dsr_changes_only_ethernet():
    """DSR: an ICMP error about a flow is forwarded to its backend, IP bytes unchanged."""
    lb = make_lb("dsr")
    name = backend_of(lb.handle(from_client(), 0.0))
    frame = bytes(icmp_about_reply())
    out = lb.handle_bytes(frame, 1.0)
    assert Ether(out[0]).dst == MACS[API[name]] and out[0][14:] == frame[14:]


def test_icmp_error_in_tunnel_is_encapsulated():
    """Tunnel: an ICMP error about a flow travels IP-in-IP to its backend."""
    lb = make_lb("tunnel")
    name = backend_of(lb.handle(from_client(), 0.0))
    frame = bytes(icmp_about_reply())
    out = lb.handle_bytes(frame, 1.0)
    assert Ether(out[0])[IP].dst == API[name] and out[0][34:] == frame[14:]


def test_icmp_from_nat_backend_reaches_client_as_from_vip():
    """NAT: a backend's port-unreachable about a client's datagram is rewritten to the VIP."""
    backends = [Backend("dns1", address="10.0.1.10:5300")]
    lb = L4Balancer(
        [Service(VIP, 53, "udp", backends)], mode="nat", self_mac=SELF_MAC, neighbors=MACS
    )
    lb.handle(udp_from_client(), 0.0)
    quoted = bytes(IP(src=CLIENT, dst="10.0.1.10") / UDP(sport=5353, dport=5300) / b"query")
    err = (
        Ether(src=MACS["10.0.1.10"], dst=SELF_MAC)
        / IP(src="10.0.1.10", dst=CLIENT)
        / ICMP(type=3, code=3)
        / quoted
    )
    out = lb.handle(err, 1.0)
    assert (out[0][IP].src, out[0][IPerror].dst, out[0][UDPerror].dport) == (VIP, VIP, 53)
    assert out[0][Ether].dst == ROUTER_MAC and checksums_ok(bytes(out[0]))


# ------------------------------------------------------------ neighbours, stats
def test_unknown_backend_mac_is_reported_then_learned():
    """A backend without a known MAC is listed in unresolved; after learn() frames flow."""
    lb = make_lb("dsr", names=("api1",), neighbors={})
    assert lb.handle(from_client(), 0.0) == [] and lb.unresolved == {API["api1"]}
    lb.learn(API["api1"], MACS[API["api1"]].upper())
    assert backend_of(lb.handle(from_client(), 1.0)) == "api1" and not lb.unresolved


def test_stats_are_json_serialisable():
    """stats() holds counters, conntrack size and per-backend state, and dumps as JSON."""
    lb = make_lb("nat")
    lb.handle(from_client(), 0.0)
    lb.set_state("api2", "drain")
    stats = json.loads(json.dumps(lb.stats()))
    assert stats["conntrack"]["size"] == 1 and stats["counters"]["rx"] == 1
    assert {b["name"]: b["state"] for b in stats["services"][0]["backends"]} == {
        "api1": "up",
        "api2": "drain",
    }


def test_handle_leaves_the_callers_packet_alone():
    """handle() rewrites a private copy: the caller's packet is unchanged."""
    pkt = from_client()
    before = bytes(pkt)
    make_lb("nat").handle(pkt, 0.0)
    assert bytes(pkt) == before
