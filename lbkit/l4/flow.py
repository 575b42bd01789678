"""Flow keys and the header parsers every path shares (scapy's and the fast path's).

An L4 balancer reads a handful of fields and nothing else: Ethernet
addresses, the IPv4 header (RFC 791 §3.1), the two ports of TCP (RFC 793
§3.1) or UDP (RFC 768) and TCP's flags. The parsers here read exactly those
from the frame's bytes with precompiled ``struct.Struct`` objects and return
small records, or a reason string (``"drop:truncated"``...) when the bytes
cannot be what they claim. They never raise on any input, and never look at
payload.

Addresses are cached both ways (``ip_str``/``ip_bytes``, ``mac_str``/``mac_bytes``):
the same few clients and backends recur on every packet.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from lbkit.algorithms import Flow

ETH_LEN = 14
ETH_IPV4 = b"\x08\x00"
BROADCAST = b"\xff" * 6

#: TCP flag bits (RFC 793 §3.1, RFC 3168 for ECE/CWR).
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

#: IP protocol numbers (IANA) and the names the balancer uses.
TCP, UDP, ICMP, IPIP = 6, 17, 1, 4
#: RFC 2003 §3.1 leaves the outer TTL to the encapsulator; 64 is Linux's ip_default_ttl.
TUNNEL_TTL = 64
PROTO_NAMES: dict[int, str] = {TCP: "tcp", UDP: "udp"}
PROTO_NUMBERS: dict[str, int] = {"tcp": TCP, "udp": UDP}

_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # RFC 791 §3.1, the fixed 20 bytes
_PORTS = struct.Struct("!HH")
_new = tuple.__new__


class FlowKey(NamedTuple):
    """A connection as the client opened it: the conntrack key (IPVS ``ip_vs_conn_in_get``)."""

    proto: str
    client_ip: str
    client_port: int
    vip: str
    vport: int

    def flow(self) -> Flow:
        """The :class:`~lbkit.algorithms.Flow` a balancer hashes for this connection."""
        return Flow(self.client_ip, self.client_port, self.vip, self.vport, self.proto)

    def __str__(self) -> str:
        return f"{self.proto} {self.client_ip}:{self.client_port} -> {self.vip}:{self.vport}"


#: The key of a reply in NAT mode: (proto, backend_ip, backend_port, client_ip, client_port),
#: what the backend puts in its packets (IPVS ``ip_vs_conn_out_get``).
ReplyKey = tuple[str, str, int, str, int]


class IPv4(NamedTuple):
    """The IPv4 header fields an L4 balancer reads; ``l4`` and ``end`` are frame offsets."""

    tos: int
    ttl: int
    proto: int
    fragment: bool  #: MF set or fragment offset > 0 (RFC 791 §3.2)
    csum: int
    src: str
    dst: str
    src4: bytes
    dst4: bytes
    l4: int  #: where the transport header starts (14 + IHL * 4)
    end: int  #: where the IP packet ends (14 + total length); bytes after it are link padding


class Ports(NamedTuple):
    """TCP or UDP ports, TCP flags (0 for UDP) and the checksum field's offset in the frame."""

    sport: int
    dport: int
    flags: int
    csum_at: int


def parse_ipv4(frame: bytes) -> IPv4 | str:
    """Read the IPv4 header after a 14-byte Ethernet header, or say why not.

    Reasons: ``drop:truncated`` (fewer than 20 bytes, or fewer than the total
    length claims), ``drop:bad-version`` (not 4), ``drop:bad-ihl`` (IHL < 5,
    or a header longer than the total length), ``drop:bad-checksum`` (the
    header checksum fails, RFC 1122 §3.2.1.2: "silently discard").
    """
    n = len(frame)
    if n < ETH_LEN + 20:
        return "drop:truncated"
    vihl, tos, total, _ident, frag, ttl, proto, csum, src4, dst4 = _IPV4.unpack_from(frame, 14)
    if vihl >> 4 != 4:
        return "drop:bad-version"
    hlen = (vihl & 0x0F) * 4
    if hlen < 20 or hlen > total:
        return "drop:bad-ihl"
    end = 14 + total
    if end > n:
        return "drop:truncated"
    if int.from_bytes(frame[14 : 14 + hlen], "big") % 0xFFFF:
        return "drop:bad-checksum"  # a correct header sums to 0xFFFF (== 0 mod 0xFFFF)
    src, dst = _IP_STR.get(src4) or ip_str(src4), _IP_STR.get(dst4) or ip_str(dst4)
    # tuple.__new__ skips NamedTuple's Python-level __new__: this runs per packet.
    return _new(
        IPv4, (tos, ttl, proto, bool(frag & 0x3FFF), csum, src, dst, src4, dst4, 14 + hlen, end)
    )


def parse_ports(frame: bytes, ip: IPv4) -> Ports | str:
    """Read the ports (and TCP flags) of a TCP or UDP packet, or say why not.

    Reasons: ``drop:truncated`` (the transport header does not fit in the
    IP packet), ``drop:bad-tcp-offset`` (TCP data offset < 5 or past the end).
    """
    at = ip.l4
    if ip.proto == TCP:
        if at + 20 > ip.end:
            return "drop:truncated"
        doff = frame[at + 12] >> 4
        if doff < 5 or at + doff * 4 > ip.end:
            return "drop:bad-tcp-offset"
        sport, dport = _PORTS.unpack_from(frame, at)
        return _new(Ports, (sport, dport, frame[at + 13], at + 16))
    if at + 8 > ip.end:
        return "drop:truncated"
    sport, dport = _PORTS.unpack_from(frame, at)
    return _new(Ports, (sport, dport, 0, at + 6))


# ------------------------------------------------------------------ address caches
_IP_STR: dict[bytes, str] = {}
_IP_BYTES: dict[str, bytes] = {}
_MAC_STR: dict[bytes, str] = {}
_MAC_BYTES: dict[str, bytes] = {}
_CACHE_MAX = 1 << 16  # cleared when full: a cache, not a leak under a million clients


def ip_str(b: bytes) -> str:
    """``b"\\x0a\\x00\\x01\\x02"`` -> ``"10.0.1.2"`` (cached)."""
    s = _IP_STR.get(b)
    if s is None:
        if len(_IP_STR) >= _CACHE_MAX:
            _IP_STR.clear()
        s = _IP_STR[b] = socket.inet_ntoa(b)
    return s


def ip_bytes(s: str) -> bytes:
    """``"10.0.1.2"`` -> 4 bytes (cached); raises ``OSError`` on a bad address."""
    b = _IP_BYTES.get(s)
    if b is None:
        if s.count(".") != 3:  # inet_aton takes "10.1" too; a balancer config should not
            raise OSError(f"not a dotted-quad IPv4 address: {s!r}")
        b = socket.inet_aton(s)
        if len(_IP_BYTES) >= _CACHE_MAX:
            _IP_BYTES.clear()
        _IP_BYTES[s] = b
    return b


def mac_str(b: bytes) -> str:
    """6 bytes -> ``"02:00:00:00:00:02"`` (cached)."""
    s = _MAC_STR.get(b)
    if s is None:
        if len(_MAC_STR) >= _CACHE_MAX:
            _MAC_STR.clear()
        s = _MAC_STR[b] = b.hex(":")
    return s


def mac_bytes(s: str) -> bytes:
    """``"02:00:00:00:00:02"`` (or with dashes, any case) -> 6 bytes (cached)."""
    b = _MAC_BYTES.get(s)
    if b is None:
        b = bytes.fromhex(s.replace(":", "").replace("-", ""))
        if len(b) != 6:
            raise ValueError(f"not a MAC address: {s!r}")
        if len(_MAC_BYTES) >= _CACHE_MAX:
            _MAC_BYTES.clear()
        _MAC_BYTES[s] = b
    return b
