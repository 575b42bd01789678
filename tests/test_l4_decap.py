"""IP-in-IP decapsulation: the pure unwrap on canned frames, then a tunnel backend end to end.

The end-to-end test needs root (CI is root): two namespaces on one veth
pair, nothing in the root namespace, every process stopped by pid and both
namespaces deleted whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from lbkit._proc import stop_group
from lbkit.l4.decap import decapsulate

ME = "10.99.1.2"
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="network namespaces need root"
)


def inner_packet() -> IP:
    return IP(bytes(IP(src="10.99.1.1", dst="10.99.9.9") / UDP(sport=5555, dport=7) / b"hi"))


def tunnel_frame(dst: str = ME, proto: int = 4, **outer: object) -> bytes:
    """An Ethernet frame carrying ``inner_packet()`` in an outer IPv4 header."""
    return bytes(
        Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
        / IP(src="10.99.1.1", dst=dst, proto=proto, **outer)
        / inner_packet()
    )


# ------------------------------------------------------------------ pure


def test_ipip_to_me_gives_the_inner_packet():
    """A protocol-4 frame to my address yields the inner IPv4 packet, byte for byte."""
    assert decapsulate(tunnel_frame(), ME) == bytes(inner_packet())


def test_other_protocol_is_ignored():
    """An outer header that is not protocol 4 (here UDP, 17) is not a tunnel packet."""
    assert decapsulate(tunnel_frame(proto=17), ME) is None


def test_ipip_to_another_address_is_ignored():
    """A tunnel packet for another backend is not ours to unwrap."""
    assert decapsulate(tunnel_frame(dst="10.99.1.3"), ME) is None


def test_truncated_frames_are_ignored():
    """Cut anywhere (Ethernet, outer header, inner packet), the frame yields None."""
    frame = tunnel_frame()
    for size in (0, 13, 14 + 19, 14 + 20 + 10, len(frame) - 1):
        assert decapsulate(frame[:size], ME) is None


def test_not_ipv4_ethertype_is_ignored():
    """An ARP frame (EtherType 0x0806) is not looked at."""
    frame = bytearray(tunnel_frame())
    frame[12:14] = b"\x08\x06"
    assert decapsulate(bytes(frame), ME) is None


def test_bad_outer_checksum_is_ignored():
    """An outer header whose checksum does not hold is dropped, as the kernel would."""
    frame = bytearray(tunnel_frame())
    frame[14 + 10] ^= 0xFF
    assert decapsulate(bytes(frame), ME) is None


def test_outer_fragment_is_ignored():
    """A fragment (MF set) is not reassembled here."""
    assert decapsulate(tunnel_frame(flags="MF"), ME) is None


def test_ethernet_padding_is_cut():
    """Bytes after the outer total length (Ethernet padding) are not part of the result."""
    assert decapsulate(tunnel_frame() + b"\x00" * 12, ME) == bytes(inner_packet())


def test_inner_that_is_not_ipv4_is_ignored():
    """A protocol-4 payload that is not a whole IPv4 packet yields None."""
    frame = bytes(Ether() / IP(src="10.99.1.1", dst=ME, proto=4) / (b"\x60" + b"\x00" * 39))
    assert decapsulate(frame, ME) is None


# ----------------------------------------------------------- end to end

SENDER = r"""
import json, sys
from scapy.all import Ether, IP, UDP, ICMP, Raw, conf, sendp, sniff
conf.verb = 0
mac, payload = sys.argv[1], sys.argv[2].encode()
frame = (Ether(dst=mac) / IP(src="10.99.1.1", dst="10.99.1.2", proto=4)
         / IP(src="10.99.1.1", dst="10.99.9.9") / UDP(sport=5555, dport=7) / payload)
seen = sniff(iface="eth0", timeout=3,
             lfilter=lambda p: IP in p and p[IP].dst == "10.99.1.1",
             started_callback=lambda: sendp(frame, iface="eth0"))
print(json.dumps([
    {"src": p[IP].src, "proto": p[IP].proto,
     "payload": bytes(p[UDP].payload).decode(errors="replace") if UDP in p else "",
     "icmp": [p[ICMP].type, p[ICMP].code] if ICMP in p else None}
    for p in seen]))
"""

ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.99.9.9", 7))
s.settimeout(20)
print("ready", flush=True)
for _ in range(5):
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def two_namespaces() -> Iterator[tuple[str, str]]:
    """a (10.99.1.1) and b (10.99.1.2, VIP 10.99.9.9 on lo) on one veth pair; deleted after."""
    a, b = f"lbkdec{os.getpid()}a", f"lbkdec{os.getpid()}b"
    made: list[str] = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
        ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, addr in ((a, "10.99.1.1/24"), (b, "10.99.1.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", "eth0")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", b, "addr", "add", "10.99.9.9/32", "dev", "lo")
        for key in ("arp_ignore=1", "arp_announce=2"):
            ip("netns", "exec", b, "sysctl", "-qw", f"net.ipv4.conf.all.{key}")
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)


def start(ns: str, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 15.0) -> str:
    """The first line of ``proc``'s output, which must start with ``prefix``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    assert line.startswith(prefix), f"{proc.args}: {line!r}"
    return line


def mac_of(ns: str, ifname: str) -> str:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", ifname], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)[0]["address"]


@needs_root
def test_tunnel_backend_answers_the_client_directly():
    """IP-in-IP to b reaches b's VIP service; the echo comes back from the VIP, unwrapped."""
    procs: list[subprocess.Popen] = []
    with two_namespaces() as (a, b):
        try:
            decap = start(b, sys.executable, "-m", "lbkit.l4.decap", "eth0", ME)
            procs.append(decap)
            wait_line(decap, "ready decap eth0 10.99.1.2")
            echo = start(b, sys.executable, "-c", ECHO)
            procs.append(echo)
            wait_line(echo, "ready")
            sent = subprocess.run(
                ["ip", "netns", "exec", a, sys.executable, "-c", SENDER, mac_of(b, "eth0"), "hi"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            replies = json.loads(sent.stdout)
            assert {"src": "10.99.9.9", "proto": 17, "payload": "hi", "icmp": None} in replies
            assert all(r["icmp"] is None for r in replies)  # no "protocol unreachable" from b
            decap.send_signal(signal.SIGTERM)
            out, _ = decap.communicate(timeout=10)
            assert decap.returncode == 0
            assert "stopped: 1 decapsulated" in out
        finally:
            for proc in procs:
                stop_group(proc.pid, grace=3.0)
                if proc.stdout:
                    proc.stdout.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert a not in listed and b not in listed
