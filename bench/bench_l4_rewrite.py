"""Benchmark: packets per second through the L4 balancer's two paths, per mode.

Run: .venv/bin/python bench/bench_l4_rewrite.py [--packets 200000] [--payload 100]

Every packet belongs to an established flow (the SYN and first ACK are sent
before timing), so each one costs what a live forwarder pays per packet:
parse, a conntrack hit, the rewrite, the checksums. ``handle_bytes`` is the
fast path (bytes in, bytes out); ``handle`` is the scapy path (an Ether
packet in, Ether packets out). "partial" rows hand in frames whose L4
checksum was left to offload (as captured on a veth), which costs a full
checksum over the segment. Numbers, not pass/fail: one process, one core.
"""

from __future__ import annotations

import argparse
import platform
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lbkit.algorithms import Backend
from lbkit.l4 import MODES, L4Balancer, Service

VIP, SELF_MAC, CLIENT_MAC = "10.0.1.200", "02:00:00:00:00:02", "02:00:00:00:00:01"
BACKENDS = {f"api{i}": f"10.0.1.{10 + i}" for i in range(1, 4)}
NEIGHBORS = {ip: f"02:00:00:00:01:{10 + i:02x}" for i, ip in enumerate(BACKENDS.values())}


def make_lb(mode: str) -> L4Balancer:
    port = 8080 if mode == "nat" else 80
    backends = [Backend(n, address=f"{ip}:{port}") for n, ip in BACKENDS.items()]
    return L4Balancer(
        [Service(VIP, 80, "tcp", backends)],
        mode=mode,
        self_ip="10.0.1.2",
        self_mac=SELF_MAC,
        neighbors=NEIGHBORS,
    )


def client(flags: str, payload: bytes = b"") -> bytes:
    ip = IP(src="203.0.113.7", dst=VIP)
    tcp = TCP(sport=40000, dport=80, flags=flags)
    return bytes(Ether(src=CLIENT_MAC, dst=SELF_MAC) / ip / tcp / payload)


def established(mode: str) -> L4Balancer:
    lb = make_lb(mode)
    lb.handle_bytes(client("S"), 0.0)
    lb.handle_bytes(client("A"), 0.0)
    return lb


def reply_frame(lb: L4Balancer, payload: bytes) -> bytes:
    entry = next(iter(lb.conntrack))
    t = entry.target
    ip = IP(src=t.ip, dst="203.0.113.7")
    tcp = TCP(sport=t.port, dport=40000, flags="PA")
    return bytes(Ether(src=NEIGHBORS[t.ip], dst=SELF_MAC) / ip / tcp / payload)


def as_partial(frame: bytes) -> bytes:
    """Put the folded pseudo-header sum in the TCP checksum field (TX offload's leftover)."""
    words = [int.from_bytes(frame[i : i + 2], "big") for i in range(26, 34, 2)]
    total = sum(words) + 6 + len(frame) - 34
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return frame[:50] + total.to_bytes(2, "big") + frame[52:]


def rate(fn, frame, n: int, partial: bool) -> float:
    """Packets per second of ``fn(frame, now, partial)`` over ``n`` calls (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(frame, 1.0, partial)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packets", type=int, default=200_000, help="per fast-path row")
    parser.add_argument("--payload", type=int, default=100, help="TCP payload bytes")
    args = parser.parse_args()
    payload = bytes(range(256)) * (args.payload // 256 + 1)
    payload = payload[: args.payload]
    slow_n = max(args.packets // 200, 200)
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"established TCP flow, {args.payload}-byte payload; best of 3 runs\n")
    print(f"{'mode':<14} {'path':<14} {'checksum':<9} {'packets/s':>12} {'us/packet':>10}")
    rows = [(mode, client("PA", payload)) for mode in MODES]
    rows.append(("nat (reply)", None))
    for mode, frame in rows:
        lb = established(mode.split()[0])
        frame = frame or reply_frame(lb, payload)
        for partial in (False, True):
            data = as_partial(frame) if partial else frame
            assert lb.handle_bytes(data, 1.0, partial), f"{mode}: not forwarded"
            label = "partial" if partial else "full"
            fast = rate(lb.handle_bytes, data, args.packets, partial)
            print(f"{mode:<14} {'handle_bytes':<14} {label:<9} {fast:>12,.0f} {1e6 / fast:>10.2f}")
            pkt = Ether(data)
            slow = rate(lb.handle, pkt, slow_n, partial)
            print(f"{mode:<14} {'handle':<14} {label:<9} {slow:>12,.0f} {1e6 / slow:>10.2f}")
    assert lb.counters["drop:error"] == 0, lb.last_error


if __name__ == "__main__":
    main()
