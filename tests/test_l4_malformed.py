"""Malformed and foreign frames: each counted under its reason, none forwarded, none raising."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from lbkit.algorithms import Backend
from lbkit.l4 import L4Balancer, Service

VIP, CLIENT, BACKEND = "10.0.1.200", "203.0.113.7", "10.0.1.10"
SELF_MAC, ROUTER_MAC, BACKEND_MAC = "02:00:00:00:00:02", "02:00:00:00:00:fe", "02:00:00:00:00:10"
TO_US = Ether(src=ROUTER_MAC, dst=SELF_MAC)


def make_lb(neighbors=None) -> L4Balancer:
    web = Service(VIP, 80, "tcp", [Backend("api1", address=f"{BACKEND}:8080")])
    dns = Service(VIP, 53, "udp", [Backend("dns1", address=f"{BACKEND}:53")])
    return L4Balancer(
        [web, dns],
        mode="nat",
        self_mac=SELF_MAC,
        neighbors={BACKEND: BACKEND_MAC} if neighbors is None else neighbors,
    )


def tcp(ip=None, **tcp_fields) -> bytes:
    ip = ip or {}
    fields = {"sport": 40000, "dport": 80, "flags": "S", **tcp_fields}
    return bytes(TO_US / IP(**{"src": CLIENT, "dst": VIP, **ip}) / TCP(**fields))


def patch(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value) :]


def icmp_error(quoted: bytes) -> bytes:
    return bytes(TO_US / IP(src="198.51.100.1", dst=VIP) / ICMP(type=3, code=4) / quoted)


UNKNOWN_FLOW_QUOTE = bytes(IP(src=VIP, dst=CLIENT) / TCP(sport=80, dport=41234))[:28]

CASES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "drop:truncated"),
    ("short-ethernet", b"\x02" * 10, "drop:truncated"),
    ("own-frame", bytes(Ether(src=SELF_MAC, dst=SELF_MAC) / IP(dst=VIP) / TCP()), "pass:own-frame"),
    (
        "other-mac",
        bytes(Ether(src=ROUTER_MAC, dst="02:00:00:00:00:99") / IP(dst=VIP)),
        "pass:not-for-us",
    ),
    ("arp", bytes(Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP)), "pass:non-ip"),
    ("ipv6", bytes(TO_US / IPv6(dst="2001:db8::1") / TCP()), "pass:non-ip"),
    ("short-ip", tcp()[:24], "drop:truncated"),
    ("ip-version-6", patch(tcp(), 14, b"\x65"), "drop:bad-version"),
    ("ihl-4", patch(tcp(), 14, b"\x44"), "drop:bad-ihl"),
    ("ihl-past-total-length", patch(tcp(), 14, b"\x4f"), "drop:bad-ihl"),
    ("total-length-past-frame", tcp(ip={"len": 1000}), "drop:truncated"),
    ("bad-ip-checksum", tcp(ip={"chksum": 0x1234}), "drop:bad-checksum"),
    ("fragment-more-follow", tcp(ip={"flags": "MF"}), "drop:fragment"),
    ("fragment-offset", tcp(ip={"frag": 100}), "drop:fragment"),
    ("tcp-truncated", tcp(ip={"len": 30}), "drop:truncated"),
    ("udp-truncated", bytes(TO_US / IP(dst=VIP, len=24) / UDP(dport=53)), "drop:truncated"),
    ("tcp-data-offset-3", tcp(dataofs=3), "drop:bad-tcp-offset"),
    ("tcp-data-offset-past-end", tcp(dataofs=15), "drop:bad-tcp-offset"),
    ("other-port", tcp(dport=81), "pass:not-for-vip"),
    ("udp-to-tcp-port", bytes(TO_US / IP(dst=VIP) / UDP(dport=80)), "pass:not-for-vip"),
    ("not-a-vip", tcp(ip={"dst": "10.0.1.99"}), "pass:not-for-vip"),
    ("gre-to-vip", bytes(TO_US / IP(dst=VIP, proto=47) / (b"\0" * 8)), "pass:not-for-vip"),
    ("icmp-echo-to-vip", bytes(TO_US / IP(dst=VIP) / ICMP(type=8)), "pass:not-for-vip"),
    ("icmp-error-unknown-flow", icmp_error(UNKNOWN_FLOW_QUOTE), "pass:icmp-unknown"),
    ("icmp-error-short-quote", icmp_error(UNKNOWN_FLOW_QUOTE[:10]), "drop:truncated"),
    ("icmp-error-quoted-ihl-3", icmp_error(b"\x43" + UNKNOWN_FLOW_QUOTE[1:]), "drop:bad-ihl"),
    (
        "icmp-error-short-header",
        bytes(TO_US / IP(dst=VIP, proto=1) / b"\x03\x04"),
        "drop:truncated",
    ),
    ("ttl-1", tcp(ip={"ttl": 1}), "drop:ttl"),
    ("ttl-0", tcp(ip={"ttl": 0}), "drop:ttl"),
    (
        "reply-of-unknown-flow",
        bytes(
            Ether(src=BACKEND_MAC, dst=SELF_MAC)
            / IP(src=BACKEND, dst=CLIENT)
            / TCP(sport=8080, dport=40000, flags="SA")
        ),
        "pass:not-for-vip",
    ),
    (
        "fragment-from-backend",
        bytes(Ether(src=BACKEND_MAC, dst=SELF_MAC) / IP(src=BACKEND, dst=CLIENT, frag=10) / b"x"),
        "drop:fragment",
    ),
]


def run(lb: L4Balancer, frame: bytes, path: str) -> list:
    if path == "bytes":
        return lb.handle_bytes(frame, 0.0)
    # scapy's Ether() itself raises on 1..13 bytes: hand those over as Raw
    return lb.handle(Ether(frame) if len(frame) >= 14 else Raw(frame), 0.0)


@pytest.mark.parametrize("path", ["bytes", "scapy"])
@pytest.mark.parametrize(("frame", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_frame_is_counted_under_its_reason(frame, reason, path):
    """Each malformed or foreign frame is counted under its reason and not forwarded."""
    lb = make_lb()
    assert run(lb, frame, path) == []
    assert lb.counters[reason] == 1
    assert lb.counters["drop:error"] == 0 and lb.counters["tx"] == 0


@pytest.mark.parametrize("path", ["bytes", "scapy"])
def test_no_backend_up_drops(path):
    """A new flow when every backend is down is dropped as no-backend."""
    lb = make_lb()
    lb.set_state("api1", "down")
    assert run(lb, tcp(), path) == [] and lb.counters["drop:no-backend"] == 1


@pytest.mark.parametrize("path", ["bytes", "scapy"])
def test_unknown_backend_mac_drops_as_unresolved(path):
    """A backend whose MAC is unknown: dropped as unresolved, its IP listed for ARP."""
    lb = make_lb(neighbors={})
    assert run(lb, tcp(), path) == [] and lb.counters["drop:unresolved"] == 1
    assert lb.unresolved == {BACKEND}


@pytest.mark.parametrize("path", ["bytes", "scapy"])
def test_internal_error_is_counted_not_raised(path, monkeypatch):
    """An unexpected exception inside is caught and counted as drop:error."""
    lb = make_lb()

    def boom(*_args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(lb, "_decide", boom)
    assert run(lb, tcp(), path) == []
    assert lb.counters["drop:error"] == 1 and "a bug" in lb.last_error


#: Random bytes, half of them behind an Ethernet header that reaches the IPv4 parser.
GARBAGE = st.one_of(
    st.binary(max_size=200), st.binary(max_size=200).map(lambda b: bytes(TO_US / IP())[:14] + b)
)


@settings(max_examples=300, deadline=None)
@given(GARBAGE)
def test_random_bytes_never_raise(garbage):
    """handle_bytes on arbitrary bytes returns a list and hits no internal error."""
    lb = make_lb()
    assert lb.handle_bytes(garbage, 0.0) == [] or lb.counters["tx"] == 1
    assert lb.counters["drop:error"] == 0


@settings(max_examples=150, deadline=None)
@given(GARBAGE.filter(lambda b: len(b) >= 14))
def test_random_ether_packets_never_raise(garbage):
    """handle on Ether(garbage) hits no internal error."""
    lb = make_lb()
    lb.handle(Ether(garbage), 0.0)
    assert lb.counters["drop:error"] == 0


def ports(sport: int, dport: int) -> bytes:
    return sport.to_bytes(2, "big") + dport.to_bytes(2, "big")


def deep_frames(proto: int, icmp_type: int, rest: bytes) -> list[bytes]:
    """Frames with valid Ethernet and IPv4 headers, tracked ports, and random bytes after."""
    vport, bport = (80, 8080) if proto != 17 else (53, 53)
    from_backend = Ether(src=BACKEND_MAC, dst=SELF_MAC) / IP(src=BACKEND, dst=CLIENT, proto=proto)
    if proto == 1:
        to_client = bytes(IP(src=VIP, dst=CLIENT, proto=6)) + ports(80, 40000) + rest
        to_backend = bytes(IP(src=CLIENT, dst=BACKEND, proto=17)) + ports(40000, 53) + rest
        head = bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0])
        return [
            bytes(TO_US / IP(src="198.51.100.1", dst=VIP, proto=1) / (head + to_client)),
            bytes(from_backend / (head + to_backend)),
            bytes(TO_US / IP(src="198.51.100.1", dst=VIP, proto=1) / (head + rest)),
        ]
    return [
        bytes(TO_US / IP(src=CLIENT, dst=VIP, proto=proto) / (ports(40000, vport) + rest)),
        bytes(from_backend / (ports(bport, 40000) + rest)),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 6, 17]), st.sampled_from([0, 3, 4, 8, 11, 12]), st.binary(max_size=120))
def test_random_transport_bytes_never_raise(proto, icmp_type, rest):
    """Valid IPv4 over random transport bytes, on tracked flows: no internal error, either path.

    The random bytes reach the transport parsers (data offset, TCP options,
    ICMP quotes) and every rewriter: client -> VIP, NAT replies, ICMP errors.
    """
    setup = [tcp(sport=40000), bytes(TO_US / IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=53))]
    for frame in deep_frames(proto, icmp_type, rest):
        for path in ("bytes", "scapy"):
            lb = make_lb()
            for f in setup:
                lb.handle_bytes(f, 0.0)
            run(lb, frame, path)
            assert lb.counters["drop:error"] == 0, lb.last_error
