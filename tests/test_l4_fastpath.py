"""The fast path equals the scapy path byte for byte; the checksum arithmetic under it."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.l2 import Ether

from lbkit.algorithms import Backend
from lbkit.l4 import MODES, L4Balancer, Service
from lbkit.l4.checksum import checksum, l4_checksum, ones_sum, update
from lbkit.l4.fastpath import clamp_mss

VIP, SELF_IP = "10.0.1.200", "10.0.1.2"
SELF_MAC, ROUTER_MAC = "02:00:00:00:00:02", "02:00:00:00:00:fe"
BACKENDS = {"api1": "10.0.1.10", "api2": "10.0.1.11", "api3": "10.0.1.12"}
MACS = {ip: f"02:00:00:00:01:{ip.rsplit('.', 1)[1]}" for ip in BACKENDS.values()}
CLIENTS = ["203.0.113.7", "198.51.100.20", "192.0.2.33", "10.0.1.50"]
SPORTS = [40000, 40001, 55555]
TCP_OPTIONS = [
    [],
    [("MSS", 1460)],
    [("NOP", None), ("MSS", 1460), ("WScale", 7)],  # MSS value at an odd offset
    [("MSS", 1300), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None), ("WScale", 7)],
    [("NOP", None), ("NOP", None), ("Timestamp", (1, 2)), ("MSS", 9000)],
]


def make_lb(mode: str, mss_clamp: int | None = None) -> L4Balancer:
    nat = mode == "nat"
    web = Service(
        VIP,
        80,
        "tcp",
        [Backend(n, address=f"{ip}:{8080 if nat else 80}") for n, ip in BACKENDS.items()],
    )
    dns = Service(
        VIP,
        53,
        "udp",
        [Backend(n, address=f"{ip}:{5353 if nat else 53}") for n, ip in BACKENDS.items()],
    )
    return L4Balancer(
        [web, dns],
        mode=mode,
        self_ip=SELF_IP,
        self_mac=SELF_MAC,
        neighbors=MACS,
        conntrack_size=4,
        mss_clamp=mss_clamp,
    )


def partial(frame: bytes) -> bytes:
    """The L4 checksum field as TX offload leaves it: the folded pseudo-header sum only."""
    ip = Ether(frame)[IP]
    if ip.proto not in (6, 17):
        return frame
    at = 14 + ip.ihl * 4 + (16 if ip.proto == 6 else 6)
    if ip.proto == 17 and frame[at : at + 2] == b"\0\0":
        return frame  # no checksum at all: nothing to offload
    words = struct.unpack("!4H", frame[26:34])
    total = sum(words) + ip.proto + ip.len - ip.ihl * 4
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return frame[:at] + total.to_bytes(2, "big") + frame[at + 2 :]


# ------------------------------------------------------------------ events
flags = st.one_of(st.sampled_from(["S", "A", "PA", "FA", "R", "SA", "RA"]), st.integers(0, 0x3F))
client_event = st.fixed_dictionaries(
    {
        "kind": st.just("client"),
        "client": st.integers(0, len(CLIENTS) - 1),
        "sport": st.sampled_from(SPORTS),
        "proto": st.sampled_from(["tcp", "tcp", "udp"]),
        "flags": flags,
        "options": st.sampled_from(TCP_OPTIONS),
        "ttl": st.one_of(st.just(64), st.integers(0, 255)),
        "tos": st.integers(0, 255),
        "size": st.integers(0, 1400),
        "seed": st.integers(0, 1 << 16),
        "udp_no_checksum": st.booleans(),
        "dt": st.floats(0, 400),
    }
)
flow_event = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["reply", "icmp-to-vip", "icmp-from-backend"]),
        "flow": st.integers(0, 10),
        "flags": flags,
        "size": st.integers(0, 1400),
        "seed": st.integers(0, 1 << 16),
        "dt": st.floats(0, 5),
    }
)
state_event = st.fixed_dictionaries(
    {
        "kind": st.just("state"),
        "backend": st.sampled_from(list(BACKENDS)),
        "state": st.sampled_from(["up", "up", "down", "drain"]),
    }
)


def client_frame(ev: dict) -> bytes:
    ip = IP(src=CLIENTS[ev["client"]], dst=VIP, ttl=ev["ttl"], tos=ev["tos"])
    payload = random.Random(ev["seed"]).randbytes(ev["size"])
    if ev["proto"] == "tcp":
        l4 = TCP(sport=ev["sport"], dport=80, flags=ev["flags"], seq=7, options=ev["options"])
    else:
        l4 = UDP(sport=ev["sport"], dport=53, chksum=0 if ev["udp_no_checksum"] else None)
    return bytes(Ether(src=ROUTER_MAC, dst=SELF_MAC) / ip / l4 / payload)


def flow_frame(ev: dict, lb: L4Balancer) -> bytes | None:
    """A frame about one of ``lb``'s tracked flows: a NAT reply or an ICMP error."""
    entries = list(lb.conntrack)
    if not entries:
        return None
    e = entries[ev["flow"] % len(entries)]
    k, t = e.key, e.target
    payload = random.Random(ev["seed"]).randbytes(ev["size"])
    l4 = TCP if k.proto == "tcp" else UDP
    extra = {"flags": ev["flags"]} if k.proto == "tcp" else {}
    from_backend = Ether(src=MACS[t.ip], dst=SELF_MAC) / IP(src=t.ip, dst=k.client_ip)
    if ev["kind"] == "reply":
        return bytes(from_backend / l4(sport=t.port, dport=k.client_port, **extra) / payload)
    if ev["kind"] == "icmp-to-vip":
        sent = IP(src=k.vip, dst=k.client_ip) / l4(sport=k.vport, dport=k.client_port) / payload
        quote = bytes(sent)[: 28 + ev["size"] % 64]
        router = Ether(src=ROUTER_MAC, dst=SELF_MAC) / IP(src="198.51.100.1", dst=VIP)
        return bytes(router / ICMP(type=3, code=4, nexthopmtu=1400) / quote)
    got = IP(src=k.client_ip, dst=t.ip) / l4(sport=k.client_port, dport=t.port) / payload
    return bytes(from_backend / ICMP(type=3, code=3) / bytes(got)[: 28 + ev["size"] % 64])


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(MODES),
    st.booleans(),
    st.sampled_from([None, 1400]),
    st.lists(
        st.one_of(client_event, client_event, flow_event, state_event), min_size=3, max_size=16
    ),
)
def test_fast_path_equals_scapy_path(mode, csum_partial, mss_clamp, events):
    """handle_bytes(frame) == [bytes(p) for p in handle(Ether(frame))], packet after packet."""
    slow, fast = make_lb(mode, mss_clamp), make_lb(mode, mss_clamp)
    now = 0.0
    for ev in events:
        if ev["kind"] == "state":
            slow.set_state(ev["backend"], ev["state"])
            fast.set_state(ev["backend"], ev["state"])
            continue
        now += ev["dt"]
        frame = client_frame(ev) if ev["kind"] == "client" else flow_frame(ev, slow)
        if frame is None:
            continue
        if csum_partial:
            frame = partial(frame)
        expected = [bytes(p) for p in slow.handle(Ether(frame), now, csum_partial)]
        assert fast.handle_bytes(frame, now, csum_partial) == expected
    assert slow.counters == fast.counters
    assert slow.counters["drop:error"] == 0, slow.last_error
    assert slow.conntrack.rows() == fast.conntrack.rows()


@pytest.mark.parametrize("csum_partial", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_established_flow_is_identical_in_both_paths(mode, csum_partial):
    """A handshake, data and FIN come out the same from both paths."""
    slow, fast = make_lb(mode, 1400), make_lb(mode, 1400)
    for t, fl in enumerate(["S", "A", "PA", "FA"]):
        ev = {"client": 0, "sport": 40000, "proto": "tcp", "flags": fl, "ttl": 64, "tos": 0}
        frame = client_frame({**ev, "options": TCP_OPTIONS[2], "size": 100, "seed": t})
        frame = partial(frame) if csum_partial else frame
        expected = [bytes(p) for p in slow.handle(Ether(frame), float(t), csum_partial)]
        assert len(expected) == 1
        assert fast.handle_bytes(frame, float(t), csum_partial) == expected


# ------------------------------------------------------------------ checksums
def test_rfc1071_numerical_example():
    """RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is 220d."""
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert (ones_sum(data), checksum(data)) == (0xDDF2, 0x220D)


def test_rfc1624_example_gives_zero_not_minus_zero():
    """RFC 1624 §4: m 0x5555 -> 0x3285 under HC 0xDD2F gives 0x0000 (eqn. 3), not 0xFFFF."""
    assert update(0xDD2F, 0x5555 - 0x3285) == 0x0000


def test_valid_ip_header_checksums_to_zero():
    """Over a header holding its correct checksum, the checksum is 0 (RFC 1071 §1)."""
    assert checksum(bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=[]))) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=300), st.integers(0, 3), st.integers(0, 0xFFFF))
def test_incremental_update_equals_recomputation(data, word, value):
    """RFC 1624: rewriting one 16-bit word and updating equals a full recomputation."""
    data = b"\x45" + data[1:10] + b"\0\0" + data[12:]  # not all zero; checksum at 10..11
    hc = checksum(data)
    with_sum = data[:10] + hc.to_bytes(2, "big") + data[12:]
    at = 12 + 2 * word
    old = int.from_bytes(with_sum[at : at + 2], "big")
    rewritten = with_sum[:at] + value.to_bytes(2, "big") + with_sum[at + 2 :]
    zeroed = rewritten[:10] + b"\0\0" + rewritten[12:]
    assert update(hc, old - value) == checksum(zeroed)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["tcp", "udp"]), st.binary(max_size=301), st.integers(0, 0xFFFF))
def test_l4_checksum_matches_scapy_whatever_the_field_holds(proto, payload, junk):
    """l4_checksum equals scapy's TCP/UDP checksum, ignoring the field's current value."""
    l4 = TCP(sport=1, dport=2) if proto == "tcp" else UDP(sport=1, dport=2)
    pkt = IP(bytes(IP(src="192.0.2.1", dst="198.51.100.2") / l4 / payload))
    at = 16 if proto == "tcp" else 6
    seg = bytearray(bytes(pkt)[20:])
    expected = int.from_bytes(seg[at : at + 2], "big")
    seg[at : at + 2] = junk.to_bytes(2, "big")
    got = l4_checksum(bytes(pkt)[12:16], bytes(pkt)[16:20], pkt.proto, seg, at)
    assert got == expected


def test_clamp_mss_at_odd_offset_keeps_checksum_right():
    """An MSS option after one NOP (value at an odd offset) clamps with a correct checksum."""
    frame = bytes(IP(dst="10.0.0.2") / TCP(flags="S", options=[("NOP", None), ("MSS", 1460)]))
    buf = bytearray(frame)
    delta = clamp_mss(buf, 20, 1400)
    hc = int.from_bytes(buf[36:38], "big")
    buf[36:38] = update(hc, delta).to_bytes(2, "big")
    assert IP(bytes(buf))[TCP].options[1] == ("MSS", 1400)
    fresh = IP(bytes(buf))
    del fresh[TCP].chksum
    assert bytes(fresh) == bytes(buf)


@pytest.mark.parametrize("mode", MODES)
def test_ethernet_padding_is_dropped_in_both_paths(mode):
    """A SYN padded to the 60-byte Ethernet minimum leaves without the padding, in both paths."""
    ev = {"client": 0, "sport": 40000, "proto": "tcp", "flags": "S", "ttl": 64, "tos": 0}
    frame = client_frame({**ev, "options": [], "size": 0, "seed": 0})
    padded = frame + b"\0" * (60 - len(frame))
    expected = [bytes(p) for p in make_lb(mode).handle(Ether(padded), 0.0)]
    assert make_lb(mode).handle_bytes(padded, 0.0) == expected
    assert len(expected[0]) == len(frame) + (20 if mode == "tunnel" else 0)


@pytest.mark.parametrize("mode", MODES)
def test_ip_options_are_carried_in_both_paths(mode):
    """A packet with an IP option (Router Alert, RFC 2113) is rewritten alike by both paths."""
    ip = IP(src=CLIENTS[0], dst=VIP, options=[IPOption_Router_Alert()])
    frame = bytes(Ether(src=ROUTER_MAC, dst=SELF_MAC) / ip / TCP(sport=40000, dport=80) / b"hi")
    expected = [bytes(p) for p in make_lb(mode).handle(Ether(frame), 0.0)]
    assert make_lb(mode).handle_bytes(frame, 0.0) == expected
    assert IPOption_Router_Alert in Ether(expected[0])
