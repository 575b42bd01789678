"""The three forwarding methods as rewrites of scapy packets: the readable reference.

Each function changes the fields its method changes and nothing else, then
lets scapy recompute what depends on them by deleting ``chksum`` (and an
outer ``len``) so the next build fills them in, as scapy's own
``fragment()`` does. :mod:`lbkit.l4.fastpath` does the same on bytes, and a
property test holds the two to byte-identical output.

* NAT (LVS-NAT, IPVS ``ip_vs_nat_xmit`` after ``tcp_dnat_handler`` /
  ``udp_dnat_handler``): destination IP and port become the backend's; the
  reply's source becomes the VIP's again (``tcp_snat_handler``).
* DR (LVS-DR, ``ip_vs_dr_xmit``): only the Ethernet header changes; the
  backend holds the VIP on a loopback and answers the client directly.
* Tunnel (LVS-TUN ``ip_vs_tunnel_xmit``, Katran ``encap_v4``): the whole IP
  packet travels inside a new IPv4 header, IP-in-IP (RFC 2003 §3.1).

The functions take a private copy (the balancer dissects one from the
frame's bytes) and mutate it; ``set_l2`` is applied to every output.
ICMP errors about a flow have their own rewrites in :mod:`lbkit.l4.icmp`.
"""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from .flow import IPIP, TUNNEL_TTL


def set_l2(pkt: Packet, src: str, dst: str) -> Packet:
    """Address the frame to the next hop: source our MAC, destination theirs."""
    pkt[Ether].src = src
    pkt[Ether].dst = dst
    return pkt


def refresh_l4_checksum(pkt: Packet) -> None:
    """Have scapy recompute the TCP/UDP checksum; a UDP checksum of 0 (none) stays 0 (RFC 768).

    Also completes a partial (offloaded) checksum: scapy sums from scratch.
    """
    ip = pkt.getlayer(IP)
    l4 = ip.payload if ip is not None else None
    if isinstance(l4, TCP) or (isinstance(l4, UDP) and l4.chksum != 0):
        del l4.chksum


def nat_to_backend(pkt: Packet, backend_ip: str, backend_port: int) -> Packet:
    """LVS-NAT inbound: client -> VIP:vport becomes client -> backend ip:port."""
    ip = pkt[IP]
    ip.dst = backend_ip
    ip.payload.dport = backend_port
    del ip.chksum
    refresh_l4_checksum(pkt)
    return pkt


def nat_to_client(pkt: Packet, vip: str, vport: int) -> Packet:
    """LVS-NAT reply: backend ip:port -> client becomes VIP:vport -> client."""
    ip = pkt[IP]
    ip.src = vip
    ip.payload.sport = vport
    del ip.chksum
    refresh_l4_checksum(pkt)
    return pkt


def clamp_mss(pkt: Packet, mss: int) -> bool:
    """Lower the TCP MSS option to ``mss`` if it is larger; True if it changed (RFC 6691 §2)."""
    tcp = pkt[TCP]
    options = list(tcp.options)
    for i, (kind, value) in enumerate(options):
        if kind == "MSS":
            if isinstance(value, int) and value > mss:
                options[i] = ("MSS", mss)
                tcp.options = options
                del tcp.chksum
                return True
            return False
    return False


def encapsulate(pkt: Packet, outer_src: str, outer_dst: str) -> Packet:
    """IP-in-IP (RFC 2003 §3.1): a new outer IPv4 header in front of the whole packet.

    Outer fields: protocol 4, TTL 64, TOS copied from the inner header
    (§3.1: "the TOS is copied"), identification 0 and DF clear (so the outer
    packet could still be fragmented on the way, RFC 2003 §5.1), source the
    encapsulator, destination the backend. Length and checksum are scapy's.
    """
    inner = pkt[IP]
    outer = IP(
        version=4,
        ihl=5,
        tos=inner.tos,
        id=0,
        flags=0,
        frag=0,
        ttl=TUNNEL_TTL,
        proto=IPIP,
        src=outer_src,
        dst=outer_dst,
    )
    return Ether(src=pkt[Ether].src, dst=pkt[Ether].dst) / outer / inner
