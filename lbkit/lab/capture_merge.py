"""Captures from several hosts read into rows and merged into one timeline.

Pure: reads pcap files with scapy, runs no process. :mod:`lbkit.lab.capture`
records the files; this module turns them into :class:`PacketRow` objects, one
per frame, that a table, a notebook or JSON can show. Rows from all hosts are
merged by capture time, so a learner can follow one packet from the client
through each tier to a backend and back.

Hosts of one lab share the machine's clock (namespaces) or a synchronised one
(containers), so their timestamps compare directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import LabError

#: tcpdump's order and letters for TCP flags (``tcp_flag_values`` in
#: tcpdump's ``print-tcp.c``); ACK alone prints as ``.``, no flag as ``none``.
TCP_FLAG_LETTERS = (
    (0x01, "F"),
    (0x02, "S"),
    (0x04, "R"),
    (0x08, "P"),
    (0x10, "."),
    (0x20, "U"),
    (0x40, "E"),
    (0x80, "W"),
)
#: RFC 9112 §3: request-line = method SP request-target SP HTTP-version.
HTTP_REQUEST_RE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/\d\.\d\r?\n")
#: RFC 9112 §4: status-line = HTTP-version SP status-code SP [reason-phrase].
HTTP_STATUS_RE = re.compile(rb"^HTTP/\d\.\d (\d{3})[ \r\n]")
#: Link header bytes of Linux cooked captures (SLL: 16, SLL2: 20) and the
#: ARPHRD types whose real frames carry a 14-byte Ethernet header instead.
COOKED_HEADER = {"CookedLinux": 16, "CookedLinuxV2": 20}
ETHERNET_LIKE_HATYPES = {1, 772}  # ARPHRD_ETHER, ARPHRD_LOOPBACK


@dataclass(frozen=True)
class PacketRow:
    """One captured frame, as seen on one host."""

    time: float
    host: str
    src: str
    dst: str
    proto: str
    sport: int | None = None
    dport: int | None = None
    flags: str = ""
    seq: int | None = None
    ack: int | None = None
    length: int = 0
    payload_len: int = 0
    summary: str = ""


def tcp_flags(bits: int) -> str:
    """TCP flag bits written as tcpdump writes them: ``S``, ``S.``, ``P.``, ``F.``, ``R``."""
    text = "".join(letter for bit, letter in TCP_FLAG_LETTERS if bits & bit)
    return text or "none"


def http_summary(payload: bytes) -> str | None:
    """``HTTP GET /echo`` for a request line, ``HTTP 200`` for a status line, else None."""
    if m := HTTP_REQUEST_RE.match(payload):
        return f"HTTP {m.group(1).decode('ascii')} {m.group(2).decode('ascii', 'replace')}"
    if m := HTTP_STATUS_RE.match(payload):
        return f"HTTP {m.group(1).decode('ascii')}"
    return None


def read_pcap(path: str | Path, host: str) -> list[PacketRow]:
    """Rows of every frame in the pcap/pcapng file ``path``, labelled ``host``.

    Ethernet and Linux cooked (SLL, SLL2: ``tcpdump -i any``) captures are read;
    IPv4 TCP/UDP/ICMP and ARP are decoded, IPv6 gives a row with proto ``IPv6``,
    anything else a row named after its layer. An empty file (a capture stopped
    before its header was flushed) gives no rows.
    """
    from scapy.error import Scapy_Exception
    from scapy.layers import inet, inet6, l2  # noqa: F401  (registers the link types)
    from scapy.utils import PcapReader

    p = Path(path)
    try:
        if p.stat().st_size == 0:
            return []
        with PcapReader(str(p)) as reader:
            return [packet_row(pkt, host) for pkt in reader]
    except FileNotFoundError:
        raise LabError(f"{p}: no such capture file") from None
    except Scapy_Exception as e:
        raise LabError(f"{p}: not a pcap file ({e})") from None


def packet_row(pkt, host: str) -> PacketRow:
    """One scapy packet (with its capture ``time``) as a :class:`PacketRow`."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Ether

    time = float(pkt.time)
    length = _wire_length(pkt)
    if IP in pkt:
        ip = pkt[IP]
        body = max(ip.len - ip.ihl * 4, 0) if ip.len else len(ip.payload)
        l4 = ip.payload  # not `TCP in ip`: that would also find a TCP header quoted in ICMP
        if type(l4) is TCP:
            return _tcp_row(time, host, ip, l4, length, body)
        if type(l4) is UDP:
            udp = l4
            n = max(udp.len - 8, 0)
            summary = f"{ip.src}:{udp.sport} > {ip.dst}:{udp.dport} UDP len={n}"
            return PacketRow(
                time, host, ip.src, ip.dst, "UDP", udp.sport, udp.dport,
                length=length, payload_len=n, summary=summary,
            )  # fmt: skip
        if type(l4) is ICMP:
            icmp = l4
            kind = icmp.sprintf("%ICMP.type%")
            ids = f" id={icmp.id} seq={icmp.seq}" if icmp.type in (0, 8) else ""
            summary = f"{ip.src} > {ip.dst} ICMP {kind}{ids}"
            return PacketRow(
                time, host, ip.src, ip.dst, "ICMP",
                length=length, payload_len=max(body - 8, 0), summary=summary,
            )  # fmt: skip
        proto = ip.sprintf("%IP.proto%")
        summary = f"{ip.src} > {ip.dst} {proto}"
        return PacketRow(time, host, ip.src, ip.dst, proto, length=length, summary=summary)
    if ARP in pkt:
        arp = pkt[ARP]
        if arp.op == 1:
            summary = f"ARP who-has {arp.pdst} tell {arp.psrc}"
        elif arp.op == 2:
            summary = f"ARP {arp.psrc} is-at {arp.hwsrc}"
        else:
            summary = f"ARP op {arp.op} {arp.psrc} > {arp.pdst}"
        return PacketRow(time, host, arp.psrc, arp.pdst, "ARP", length=length, summary=summary)
    if IPv6 in pkt:
        ip6 = pkt[IPv6]
        summary = f"{ip6.src} > {ip6.dst} IPv6 nh={ip6.nh}"
        return PacketRow(time, host, ip6.src, ip6.dst, "IPv6", length=length, summary=summary)
    src, dst = (pkt[Ether].src, pkt[Ether].dst) if Ether in pkt else ("", "")
    name = _network_layer(pkt).__class__.__name__
    return PacketRow(time, host, src, dst, name, length=length, summary=f"{name} {pkt.summary()}")


def _tcp_row(time: float, host: str, ip, tcp, length: int, body: int) -> PacketRow:
    flags = tcp_flags(int(tcp.flags))
    n = max(body - tcp.dataofs * 4, 0)
    payload = bytes(tcp.payload)[:n]
    text = f"{ip.src}:{tcp.sport} > {ip.dst}:{tcp.dport} [{flags}] seq={tcp.seq}"
    if tcp.flags & 0x10:
        text += f" ack={tcp.ack}"
    if n:
        text += f" len={n}"
    return PacketRow(
        time, host, ip.src, ip.dst, "TCP", tcp.sport, tcp.dport, flags,
        tcp.seq, tcp.ack if tcp.flags & 0x10 else None,
        length, n, http_summary(payload) or text,
    )  # fmt: skip


def _network_layer(pkt):
    """The layer above the link header (Ethernet, SLL or SLL2)."""
    return pkt.payload if pkt.__class__.__name__ in ("Ether", *COOKED_HEADER) else pkt


def _wire_length(pkt) -> int:
    """Bytes of the frame on the wire: pcap's original length.

    Cooked captures replace the link header by their own (16 or 20 bytes);
    for Ethernet-like devices we count the 14-byte Ethernet header in its
    place, so one packet shows one length on every host.
    """
    original = pkt.wirelen if pkt.wirelen is not None else len(pkt)
    cooked = COOKED_HEADER.get(pkt.__class__.__name__)
    if cooked is None:
        return original
    return original - cooked + (14 if pkt.lladdrtype in ETHERNET_LIKE_HATYPES else 0)


def merge(rows_by_host: dict[str, list[PacketRow]]) -> list[PacketRow]:
    """All rows in one list, by time then host; ties keep their capture order."""
    rows = [row for rows in rows_by_host.values() for row in rows]
    return sorted(rows, key=lambda r: (r.time, r.host))


def merge_pcaps(paths: dict[str, Path]) -> list[PacketRow]:
    """Read one pcap per host (``{host: path}``) and :func:`merge` them."""
    return merge({host: read_pcap(path, host) for host, path in paths.items()})


def _hosts(rows: Iterable[PacketRow]) -> list[str]:
    return list(dict.fromkeys(r.host for r in rows))


def handshake(rows: list[PacketRow], client: str, server: str, port: int) -> dict[str, list[str]]:
    """Per host, the flags of the first 3-way handshake ``client -> server:port`` seen there.

    The connection is the 4-tuple of the first SYN (without ACK) from
    ``client`` to ``server:port`` in ``rows``; its client port names it on
    every host. Each host's list holds, in order, the flags of that SYN, of
    the server's first SYN-ACK after it and of the client's first ACK after
    that (``["S", "S.", "."]`` when complete; shorter where the host saw
    less). Every host of ``rows`` has a list, empty if it saw none of it.
    """
    syn = next(
        (r for r in rows if _is_tcp_to(r, client, server, port) and _syn_only(r)),
        None,
    )
    result: dict[str, list[str]] = {host: [] for host in _hosts(rows)}
    if syn is None:
        return result
    conn = follow(rows, client, server, syn.sport, port)
    for host, steps in result.items():
        for r in (r for r in conn if r.host == host):
            if _is_next_step(len(steps), r.src == client, r.flags):
                steps.append(r.flags)
            if len(steps) == 3:
                break
    return result


def _is_next_step(done: int, outbound: bool, flags: str) -> bool:
    """Whether a packet is step ``done + 1`` of the handshake: SYN out, SYN-ACK back, ACK out."""
    syn, ack = "S" in flags, "." in flags
    if done == 0:
        return outbound and syn and not ack
    if done == 1:
        return not outbound and syn and ack
    return done == 2 and outbound and ack and not syn


def _is_tcp_to(r: PacketRow, src: str, dst: str, dport: int) -> bool:
    return r.proto == "TCP" and r.src == src and r.dst == dst and r.dport == dport


def _syn_only(r: PacketRow) -> bool:
    return "S" in r.flags and "." not in r.flags


def follow(rows: list[PacketRow], src: str, dst: str, sport: int, dport: int) -> list[PacketRow]:
    """Rows of one TCP or UDP connection, both directions, on every host, in ``rows``' order."""
    there, back = (src, sport, dst, dport), (dst, dport, src, sport)
    return [
        r
        for r in rows
        if r.proto in ("TCP", "UDP") and (r.src, r.sport, r.dst, r.dport) in (there, back)
    ]


def _endpoint(ip: str, port: int | None) -> str:
    return ip if port is None else f"{ip}:{port}"


def timeline_records(rows: list[PacketRow]) -> list[dict]:
    """Rows as plain dicts (every field plus ``t``, seconds since the first row) for JSON."""
    t0 = rows[0].time if rows else 0.0
    return [{"t": round(r.time - t0, 6), **asdict(r)} for r in rows]


def _info(r: PacketRow) -> str:
    if r.proto != "TCP" or r.summary.startswith("HTTP"):
        return r.summary
    return f"seq={r.seq} ack={r.ack}" if "." in r.flags else f"seq={r.seq}"


def timeline_table(rows: list[PacketRow], *, max_rows: int | None = None):
    """A rich Table: t (s since the first row), host, src, dst, proto, flags, len, info.

    ``info`` is what the other columns do not already say: the HTTP line,
    TCP sequence numbers, the ARP question.

    With ``max_rows``, only the first ``max_rows`` rows are shown and the
    caption says how many were left out.
    """
    from rich.table import Table

    shown = rows if max_rows is None else rows[:max_rows]
    table = Table(title="capture timeline")
    for name in ("t", "host", "src", "dst", "proto", "flags", "len", "info"):
        table.add_column(name, justify="right" if name in ("t", "len") else "left")
    t0 = rows[0].time if rows else 0.0
    for r in shown:
        table.add_row(
            f"{r.time - t0:.6f}", r.host, _endpoint(r.src, r.sport), _endpoint(r.dst, r.dport),
            r.proto, r.flags, str(r.length), _info(r),
        )  # fmt: skip
    if len(shown) < len(rows):
        table.caption = f"{len(rows) - len(shown)} more rows not shown"
    return table
