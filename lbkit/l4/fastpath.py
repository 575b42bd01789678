"""The same rewrites as :mod:`lbkit.l4.rewrite`, on bytes: what the live forwarder runs.

No scapy here. Each function copies the frame once into a ``bytearray``,
writes the changed fields at fixed offsets with precompiled ``struct``
objects, and updates checksums incrementally (RFC 1624: a rewrite of
VIP:vport to backend ip:port adds a constant precomputed per backend,
:attr:`Target.d_ip` / :attr:`Target.d_l4`), so the cost does not grow with
the payload. A frame that came with a partial checksum (``csum_partial``:
captured on a veth whose TX checksum offload left only the pseudo-header
sum in the field) gets a full checksum instead (RFC 1071), in every mode:
forwarded as it is, the receiver would drop it.

``l2`` is the 12-byte destination + source MAC prefix of the output frame.
The output of each function equals, byte for byte, what the scapy
rewrites produce for a valid input packet (``tests/test_l4_fastpath.py``).
"""

from __future__ import annotations

import struct

from .checksum import checksum, l4_checksum
from .conntrack import Target
from .flow import IPIP, TUNNEL_TTL, UDP, IPv4, Ports

_H = struct.Struct("!H")
_OUTER = struct.Struct("!BBHHHBBH4s4s")
_ETH_IPV4 = b"\x08\x00"


def nat_to_backend(
    frame: bytes, ip: IPv4, ports: Ports, t: Target, l2: bytes, csum_partial: bool, mss: int
) -> bytes:
    """LVS-NAT inbound: destination VIP:vport -> backend ip:port; ``mss`` > 0 clamps a SYN."""
    buf = bytearray(frame[: ip.end]) if len(frame) != ip.end else bytearray(frame)
    buf[0:12] = l2
    buf[30:34] = t.ip4
    _H.pack_into(buf, 24, (ip.csum + t.d_ip) % 0xFFFF)  # checksum.update, inlined
    _H.pack_into(buf, ip.l4 + 2, t.port)
    delta = t.d_l4
    if mss:
        delta += clamp_mss(buf, ip.l4, mss)
    _finish_l4(buf, ip, ports, delta, True, csum_partial)
    return bytes(buf)


def nat_to_client(
    frame: bytes, ip: IPv4, ports: Ports, t: Target, l2: bytes, csum_partial: bool
) -> bytes:
    """LVS-NAT reply: source backend ip:port -> VIP:vport (``tcp_snat_handler``)."""
    buf = bytearray(frame[: ip.end]) if len(frame) != ip.end else bytearray(frame)
    buf[0:12] = l2
    buf[26:30] = t.vip4
    _H.pack_into(buf, 24, (ip.csum - t.d_ip) % 0xFFFF)
    _H.pack_into(buf, ip.l4, t.vport)
    _finish_l4(buf, ip, ports, -t.d_l4, True, csum_partial)
    return bytes(buf)


def direct(
    frame: bytes, ip: IPv4, ports: Ports | None, l2: bytes, csum_partial: bool, mss: int
) -> bytes:
    """LVS-DR: a new Ethernet header, the IP packet as it came (checksum completed, MSS clamped)."""
    if ports is None or not (csum_partial or mss):
        return b"".join((l2, frame[12 : ip.end]))
    buf = bytearray(frame[: ip.end])
    buf[0:12] = l2
    delta = clamp_mss(buf, ip.l4, mss) if mss else 0
    _finish_l4(buf, ip, ports, delta, bool(delta), csum_partial)
    return bytes(buf)


def tunnel(
    frame: bytes,
    ip: IPv4,
    ports: Ports | None,
    t: Target,
    l2: bytes,
    outer_src4: bytes,
    csum_partial: bool,
    mss: int,
) -> bytes:
    """IP-in-IP (RFC 2003 §3.1): outer header src ``outer_src4``, dst the backend, TTL 64,
    TOS copied, id 0, DF clear; the inner packet as it came (checksum completed, MSS clamped)."""
    if ports is None or not (csum_partial or mss):
        inner: bytes | bytearray = frame[14 : ip.end]
    else:
        buf = bytearray(frame[: ip.end])
        delta = clamp_mss(buf, ip.l4, mss) if mss else 0
        _finish_l4(buf, ip, ports, delta, bool(delta), csum_partial)
        inner = buf[14:]
    total = 20 + len(inner)
    hdr = _OUTER.pack(0x45, ip.tos, total, 0, 0, TUNNEL_TTL, IPIP, 0, outer_src4, t.ip4)
    hdr = hdr[:10] + _H.pack(checksum(hdr)) + hdr[12:]
    return b"".join((l2, _ETH_IPV4, hdr, inner))


def clamp_mss(buf: bytearray, at: int, mss: int) -> int:
    """Lower the MSS option of the TCP header at ``at`` to ``mss`` if larger (RFC 6691 §2).

    Walks the options (RFC 793 §3.1: kind 0 ends them, kind 1 is one byte,
    the others carry a length). Returns the checksum delta of the change
    (0 if none), minding that an option may start at an odd offset, so the
    MSS value's bytes can sit in two different 16-bit words. Only SYNs carry
    MSS; the caller checks the flag.
    """
    if not buf[at + 13] & 0x02:
        return 0
    end = at + (buf[at + 12] >> 4) * 4
    i = at + 20
    while i < end:
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2:
            break
        if kind == 2 and buf[i + 1] == 4 and i + 4 <= end:
            hi, lo = buf[i + 2], buf[i + 3]
            if (hi << 8 | lo) <= mss:
                return 0
            buf[i + 2], buf[i + 3] = mss >> 8, mss & 0xFF
            dh, dl = hi - (mss >> 8), lo - (mss & 0xFF)
            return (dh << 8) + dl if (i + 2 - at) % 2 == 0 else dh + (dl << 8)
        i += buf[i + 1]
    return 0


def _finish_l4(
    buf: bytearray, ip: IPv4, ports: Ports, delta: int, changed: bool, csum_partial: bool
) -> None:
    """Bring the TCP/UDP checksum up to date: a full sum if partial, else RFC 1624 if changed.

    A UDP checksum of 0 means "none" (RFC 768) and stays 0; a computed 0 is sent as 0xFFFF.
    """
    at = ports.csum_at
    old = buf[at] << 8 | buf[at + 1]
    proto = ip.proto
    if proto == UDP and old == 0:
        return
    if csum_partial:
        seg = memoryview(buf)[ip.l4 : ip.end]
        new = l4_checksum(bytes(buf[26:30]), bytes(buf[30:34]), proto, seg, at - ip.l4)
        seg.release()
    elif changed:
        new = (old + delta) % 0xFFFF
        if proto == UDP and new == 0:
            new = 0xFFFF
    else:
        return
    buf[at] = new >> 8
    buf[at + 1] = new & 0xFF
