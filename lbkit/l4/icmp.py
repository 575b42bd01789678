"""ICMP errors about a tracked flow: read the quoted packet, forward the error to the backend.

When a router cannot deliver a packet (destination unreachable, "fragmentation
needed" for path MTU discovery, time exceeded...) it sends an ICMP error to
the packet's source and quotes the packet's IP header plus at least its first
8 bytes (RFC 792; RFC 1812 §4.3.2.3). For a load-balanced flow that source
is the VIP, so the error reaches the balancer, which must pass it to the
backend that owns the flow or the backend never learns the path MTU.

IPVS does this in ``ip_vs_in_icmp`` (errors to the VIP) and ``ip_vs_out_icmp``
(errors a NAT backend sends about a client's packet): find the connection
from the quoted header, then in NAT mode rewrite the outer address and the
quoted addresses and ports (``ip_vs_nat_icmp``); in DR and tunnel modes send
the error with the flow's own method. IPVS handles types 3, 4 and 11; we add
12 (parameter problem), which quotes the datagram the same way.

This module reads quotes for both paths and holds both NAT rewrites: on scapy
packets (readable) and on bytes (fast, byte-identical).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from scapy.layers.inet import ICMP, IP, IPerror, UDPerror
from scapy.packet import Packet, Raw

from .checksum import checksum, update
from .conntrack import Target
from .flow import IPv4, ip_str

#: Destination unreachable, source quench, time exceeded, parameter problem (RFC 792).
ERROR_TYPES = frozenset({3, 4, 11, 12})

_H = struct.Struct("!H")
_PORTS = struct.Struct("!HH")


class Quote(NamedTuple):
    """The packet an ICMP error quotes; ``ip_at``/``l4_at`` are offsets in the frame."""

    type: int
    code: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    ip_at: int
    l4_at: int


def parse_quote(frame: bytes, ip: IPv4) -> Quote | str | None:
    """Read the quoted header of an ICMP error (None: not an error type).

    Reasons: ``drop:truncated`` (no room for the ICMP header, the quoted IP
    header or the 8 quoted transport bytes), ``drop:bad-ihl`` (quoted IHL < 5).
    """
    at = ip.l4
    if at + 8 > ip.end:
        return "drop:truncated"
    typ = frame[at]
    if typ not in ERROR_TYPES:
        return None
    q = at + 8
    if q + 20 > ip.end:
        return "drop:truncated"
    hlen = (frame[q] & 0x0F) * 4
    if hlen < 20:
        return "drop:bad-ihl"
    l4 = q + hlen
    if l4 + 8 > ip.end:
        return "drop:truncated"
    sport, dport = _PORTS.unpack_from(frame, l4)
    return Quote(
        typ,
        frame[at + 1],
        frame[q + 9],
        ip_str(frame[q + 12 : q + 16]),
        ip_str(frame[q + 16 : q + 20]),
        sport,
        dport,
        q,
        l4,
    )


# ----------------------------------------------------------------- scapy rewrites
def nat_to_backend(pkt: Packet, backend_ip: str, backend_port: int) -> Packet:
    """An error about a NAT flow, sent to the VIP, goes on to the backend.

    ``ip_vs_nat_icmp(..., inout=0)``: the outer destination and the quoted
    packet's source (the VIP:vport the backend's reply carried after our
    rewrite) become the backend's own address, so its TCP stack recognises
    the connection. The quoted IP checksum and the ICMP checksum are
    recomputed; the quoted TCP/UDP checksum is left as it is, as IPVS does.
    """
    ip = pkt[IP]
    ip.dst = backend_ip
    del ip.chksum
    quoted = pkt[IPerror]
    quoted.src = backend_ip
    del quoted.chksum
    _set_quoted_port(quoted, "sport", backend_port)
    del pkt[ICMP].chksum
    return pkt


def nat_to_client(pkt: Packet, vip: str, vport: int) -> Packet:
    """An error a NAT backend sends about a client's packet goes to the client as from the VIP.

    ``ip_vs_nat_icmp(..., inout=1)``: outer source and the quoted destination
    (the backend address the client never knew) become VIP:vport again.
    """
    ip = pkt[IP]
    ip.src = vip
    del ip.chksum
    quoted = pkt[IPerror]
    quoted.dst = vip
    del quoted.chksum
    _set_quoted_port(quoted, "dport", vport)
    del pkt[ICMP].chksum
    return pkt


def _set_quoted_port(quoted: Packet, name: str, port: int) -> None:
    # The quote may cut the transport header anywhere from byte 8 on; scapy
    # dissects a cut TCP header as Raw, or as a TCPerror it would rebuild at
    # 20 bytes. The ports are the first 4 bytes of TCP and UDP alike (RFC 793
    # §3.1, RFC 768), so they are rewritten through an exact 8-byte UDPerror.
    raw = bytes(quoted.payload)
    head = UDPerror(raw[:8])
    setattr(head, name, port)
    quoted.remove_payload()
    quoted.add_payload(Raw(bytes(head) + raw[8:]))


# ----------------------------------------------------------------- bytes rewrites
def nat_to_backend_bytes(frame: bytes, ip: IPv4, q: Quote, t: Target, l2: bytes) -> bytes:
    """:func:`nat_to_backend` on bytes; ``l2`` is the new destination + source MAC."""
    buf = bytearray(frame[: ip.end])
    buf[0:12] = l2
    buf[30:34] = t.ip4
    _H.pack_into(buf, 24, update(ip.csum, t.d_ip))
    buf[q.ip_at + 12 : q.ip_at + 16] = t.ip4
    _H.pack_into(buf, q.l4_at, t.port)
    _fix_quote_and_icmp(buf, ip, q)
    return bytes(buf)


def nat_to_client_bytes(frame: bytes, ip: IPv4, q: Quote, t: Target, l2: bytes) -> bytes:
    """:func:`nat_to_client` on bytes."""
    buf = bytearray(frame[: ip.end])
    buf[0:12] = l2
    buf[26:30] = t.vip4
    _H.pack_into(buf, 24, update(ip.csum, -t.d_ip))
    buf[q.ip_at + 16 : q.ip_at + 20] = t.vip4
    _H.pack_into(buf, q.l4_at + 2, t.vport)
    _fix_quote_and_icmp(buf, ip, q)
    return bytes(buf)


def _fix_quote_and_icmp(buf: bytearray, ip: IPv4, q: Quote) -> None:
    # Full sums, as IPVS (ip_send_check, ip_vs_checksum_complete): the quoted
    # header's checksum may not have been right to begin with.
    buf[q.ip_at + 10 : q.ip_at + 12] = b"\0\0"
    _H.pack_into(buf, q.ip_at + 10, checksum(buf[q.ip_at : q.l4_at]))
    buf[ip.l4 + 2 : ip.l4 + 4] = b"\0\0"
    _H.pack_into(buf, ip.l4 + 2, checksum(buf[ip.l4 : ip.end]))
