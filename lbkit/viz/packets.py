"""One packet read layer by layer: which fields an L4 balancer uses, which only L7 reads.

The seed's claim, made checkable: "L4 only sees IPs, ports, and TCP flags. It
doesn't read the bytes inside." :func:`layer_rows` turns one scapy packet into
one row per header field, grouped by OSI layer; ``l4_visible`` marks the
fields an L4 balancer decides on (:data:`L4_FIELDS`: the addresses, the
protocol, the ports and TCP's flags). Everything after the TCP or UDP header
is application data: shown as ``L7 application`` rows (an HTTP message is
split into its start line and header lines, for display only), never
``l4_visible``.

:func:`layer_table` (rich, for terminals) and :func:`layer_frame_html` (for
notebooks; readable on a code host that strips colours, thanks to its
"decides on it" column) draw the rows. Pure: nothing here opens a socket;
:func:`read_packets` only reads a pcap file.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

L2 = "L2 data link"
L3 = "L3 network"
L4 = "L4 transport"
L7 = "L7 application"
OSI_ORDER = (L2, L3, L4, L7)

#: ``(layer, field)`` pairs an L4 balancer decides on: the 5-tuple that names
#: a flow (addresses, protocol, ports) and TCP's flags (SYN opens a flow, so
#: a backend is picked; FIN or RST closes it, so its conntrack entry can go).
L4_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("IP", "src"),
        ("IP", "dst"),
        ("IP", "proto"),
        ("IPv6", "src"),
        ("IPv6", "dst"),
        ("IPv6", "nh"),
        ("TCP", "sport"),
        ("TCP", "dport"),
        ("TCP", "flags"),
        ("UDP", "sport"),
        ("UDP", "dport"),
    }
)

#: Why a field matters to a balancer, for the table's last column.
NOTES: dict[tuple[str, str], str] = {
    ("Ethernet", "dst"): "next hop's MAC; a DSR balancer rewrites only this",
    ("Ethernet", "src"): "changes at every hop",
    ("IP", "src"): "who: the client (flow key; IP hash)",
    ("IP", "dst"): "the address the client asked for (the VIP)",
    ("IP", "proto"): "TCP or UDP (flow key)",
    ("IP", "ttl"): "hops left; each router takes one",
    ("IPv6", "src"): "who: the client (flow key; IP hash)",
    ("IPv6", "dst"): "the address the client asked for (the VIP)",
    ("IPv6", "nh"): "TCP or UDP (flow key)",
    ("TCP", "sport"): "the client's port: tells its connections apart",
    ("TCP", "dport"): "which service: picks the listener and pool",
    ("TCP", "flags"): "SYN: new flow, pick a backend; FIN/RST: flow ends",
    ("TCP", "seq"): "byte counting; forwarded as is",
    ("UDP", "sport"): "the client's port (flow key)",
    ("UDP", "dport"): "which service: picks the listener and pool",
    ("ARP", "pdst"): "who has this IP? (a VIP must be answered once)",
}
HTTP_NOTES: dict[str, str] = {
    "request line": "path routing: /api/* to one pool, /static/* to another",
    "status line": "an L7 box can retry a 502 on another backend",
    "host": "host routing: api.example.com vs app.example.com",
    "user-agent": "header routing: phones to the mobile pool",
    "cookie": "sticky sessions: the same user, the same backend",
    "set-cookie": "where a sticky-session cookie is handed out",
    "x-forwarded-for": "added by an L7 proxy: the original client",
    "body": "the message body",
}
HTTP_DEFAULT_NOTE = "a header: routing, rewrites"

#: Colours of the two kinds of rows (the l4 and l7 role colours, lightened).
L4_COLOR = "#ffd8a8"
L7_COLOR = "#f8c9c9"

_LINK_LAYERS = {
    "Ether": "Ethernet",
    "CookedLinux": "Linux cooked (SLL)",
    "CookedLinuxV2": "Linux cooked (SLL2)",
    "Dot1Q": "802.1Q VLAN",
    "Dot3": "802.3",
    "LLC": "LLC",
    "SNAP": "SNAP",
    "Loopback": "Loopback",
}
_NETWORK_LAYERS = {"IP", "IPv6", "ARP", "ICMP"}
_HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE")
#: TCP flag bits, lowest first (RFC 9293 §3.1; ECE and CWR: RFC 3168 §6.1).
_TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
_MAX_VALUE = 60


def _row(osi: str, layer: str, field: str, value: str, note: str = "") -> dict[str, Any]:
    return {
        "osi": osi,
        "layer": layer,
        "field": field,
        "value": value,
        "l4_visible": (layer, field) in L4_FIELDS,
        "note": note or NOTES.get((layer, field), ""),
    }


def _short(text: str, limit: int = _MAX_VALUE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rebuilt(pkt):
    """``pkt`` dissected from its bytes, so computed fields (len, chksum) have values."""
    try:
        return type(pkt)(bytes(pkt))
    except Exception:  # a packet scapy cannot rebuild: show it as it is
        return pkt


def _flag_text(bits: int) -> str:
    """``PSH ACK (P.)``: the flags by name, then as tcpdump and the timeline print them."""
    from lbkit.lab.capture_merge import tcp_flags

    names = [name for i, name in enumerate(_TCP_FLAG_NAMES) if bits & (1 << i)]
    return f"{' '.join(names) or 'none'} ({tcp_flags(bits)})"


def _option_text(option: object) -> str:
    """A TCP option as ``MSS=1460``, ``NOP`` or ``Timestamp=(1, 2)``."""
    if isinstance(option, tuple) and len(option) == 2:
        name, value = option
        return str(name) if value in (None, b"") else f"{name}={value}"
    return str(option)


def _field_value(layer, fld) -> str:
    """A field as people read it: ``80 (http)``, ``6 (tcp)``, ``0x0800 (IPv4)``."""
    raw = layer.getfieldval(fld.name)
    if type(layer).__name__ in ("TCP", "TCPerror") and fld.name == "flags":
        return _flag_text(int(raw))
    if type(layer).__name__ == "TCP" and fld.name == "options" and isinstance(raw, list):
        return _short(", ".join(_option_text(opt) for opt in raw))
    try:
        shown = str(fld.i2repr(layer, raw))
    except Exception:
        shown = repr(raw)
    if type(layer).__name__ in _LINK_LAYERS and fld.name == "type" and isinstance(raw, int):
        return f"0x{raw:04x} ({shown})" if shown != str(raw) else f"0x{raw:04x}"
    named = shown not in (str(raw), "") and not shown.startswith("0x")
    if type(raw) is int and named:  # an enum (80 -> http), not a flags value or a bool
        return f"{raw} ({shown})"
    return _short(shown)


def _header_rows(layer, osi: str, name: str) -> list[dict[str, Any]]:
    from scapy.fields import ConditionalField

    rows = []
    for fld in layer.fields_desc:
        if isinstance(fld, ConditionalField) and not fld._evalcond(layer):
            continue  # a field this kind of message does not have (ICMP's, by type)
        raw = layer.getfieldval(fld.name)
        if fld.name == "options" and not raw:
            continue  # no options: nothing to show
        rows.append(_row(osi, name, fld.name, _field_value(layer, fld) or "(none)"))
    return rows


def _payload_len(l4, header_len: int) -> int | None:
    """Application bytes the IP header promises after the transport header (None: unknown)."""
    ip = l4.underlayer
    if ip is None:
        return None
    name = type(ip).__name__
    if name == "IP" and ip.len:
        return max(ip.len - ip.ihl * 4 - header_len, 0)
    if name == "IPv6" and ip.plen:
        return max(ip.plen - header_len, 0)
    return None


def _app_bytes(l4) -> bytes:
    """The bytes after a TCP or UDP header, cut to the length the headers promise (no padding)."""
    from scapy.packet import NoPayload, Padding

    payload = l4.payload
    data = b"" if isinstance(payload, NoPayload | Padding) else bytes(payload)
    if type(l4).__name__ == "UDP":
        n = max(l4.len - 8, 0) if l4.len else _payload_len(l4, 8)
    else:
        n = _payload_len(l4, l4.dataofs * 4)
    return data if n is None else data[:n]


def is_http(data: bytes) -> bool:
    """Whether ``data`` starts like an HTTP/1.x request or response (RFC 9112 §2.1)."""
    if data.startswith(b"HTTP/1."):
        return True
    method, _, rest = data.partition(b" ")
    return method in _HTTP_METHODS and bool(rest)


def http_rows(data: bytes) -> list[dict[str, Any]]:
    """An HTTP/1.x message as L7 rows: its start line, one row per header line, the body size.

    For display only: lines are split on CRLF (RFC 9112 §2.1), headers at
    their first colon; nothing is validated. A line cut off by the capture
    is shown as it is, marked ``(truncated)``.
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    rows = []
    for i, line in enumerate(lines):
        text = line.decode("latin-1")
        cut = not sep and i == len(lines) - 1
        shown = _short(text + (" (truncated)" if cut else ""))
        if i == 0:
            field = "status line" if line.startswith(b"HTTP/") else "request line"
            rows.append(_row(L7, "HTTP", field, shown, HTTP_NOTES[field]))
            continue
        name, colon, value = text.partition(":")
        if not colon:
            rows.append(_row(L7, "HTTP", "(line)", shown, HTTP_DEFAULT_NOTE))
            continue
        value = _short(value.strip() + (" (truncated)" if cut else ""))
        note = HTTP_NOTES.get(name.strip().lower(), HTTP_DEFAULT_NOTE)
        rows.append(_row(L7, "HTTP", name.strip(), value, note))
    if sep:
        rows.append(_row(L7, "HTTP", "body", f"{len(body)} bytes", HTTP_NOTES["body"]))
    return rows


def _data_rows(data: bytes, osi: str, what: str) -> list[dict[str, Any]]:
    if osi == L7 and is_http(data):
        return http_rows(data)
    preview = _short(repr(data[:32])[2:-1] + ("…" if len(data) > 32 else ""), _MAX_VALUE)
    note = "bytes an L4 box never reads" if osi == L7 else "cut short by the capture, or unknown"
    return [_row(osi, "Raw", what, f"{len(data)} bytes: {preview}", note)]


def _osi_of(layer, previous: str | None) -> str:
    name = type(layer).__name__
    if name in _LINK_LAYERS:
        return L2
    if name in _NETWORK_LAYERS or name.startswith(("IPv6Ext", "ICMPv6")):
        return L3
    if name in ("TCP", "UDP"):
        return L4
    if previous is None:
        return L2
    return OSI_ORDER[min(OSI_ORDER.index(previous) + 1, len(OSI_ORDER) - 1)]


def layer_rows(pkt) -> list[dict[str, Any]]:
    """One row per field of ``pkt``, from the link layer up to the application's bytes.

    Each row is ``{"osi", "layer", "field", "value", "l4_visible", "note"}``:
    ``osi`` is one of :data:`L2`, :data:`L3`, :data:`L4`, :data:`L7`;
    ``layer`` the protocol (``Ethernet``, ``IP``, ``TCP``, ``UDP``, ``ARP``,
    ``HTTP`` or ``Raw``); ``value`` the field as text; ``l4_visible`` true
    for :data:`L4_FIELDS`; ``note`` why a balancer cares (may be empty).
    The bytes after a TCP or UDP header are ``L7 application`` rows. Bytes
    scapy could not decode (a truncated capture) become one ``Raw`` row on
    the layer above the last decoded one.
    """
    from scapy.packet import NoPayload, Padding, Raw

    pkt = _rebuilt(pkt)
    rows: list[dict[str, Any]] = []
    layer, osi = pkt, None
    while layer is not None and not isinstance(layer, NoPayload):
        if isinstance(layer, Padding):
            break
        if isinstance(layer, Raw):
            where = _osi_of(layer, osi)
            rows += _data_rows(bytes(layer), where, "undecoded" if where != L7 else "payload")
            break
        kind = type(layer).__name__
        osi = _osi_of(layer, osi)
        name = _LINK_LAYERS.get(kind, kind)
        rows += _header_rows(layer, osi, name)
        if kind in ("TCP", "UDP"):
            data = _app_bytes(layer)
            if data:
                rows += _data_rows(data, L7, "payload")
            break
        if kind.startswith("ICMP"):  # the rest is a quoted packet or echo data
            quoted = bytes(layer.payload)
            if quoted:
                rows.append(_row(L3, name, "data", f"{len(quoted)} bytes"))
            break
        layer = layer.payload
    return rows


def _groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: list[list[dict[str, Any]]] = []
    for row in rows:
        if groups and (groups[-1][0]["osi"], groups[-1][0]["layer"]) == (row["osi"], row["layer"]):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _who(row: dict[str, Any]) -> str:
    if row["l4_visible"]:
        return "L4 (and L7)"
    return "L7 only" if row["osi"] == L7 else ""


def describe(pkt) -> str:
    """One line: the packet's size, its headers layer by layer, and what follows them.

    ``170 bytes: headers Ethernet 14 + IP 20 + TCP 20, then 116 bytes of HTTP
    (GET /api/v1/cart HTTP/1.1)``.
    """
    from scapy.packet import NoPayload, Padding, Raw

    pkt = _rebuilt(pkt)
    parts, layer = [], pkt
    while not isinstance(layer, NoPayload | Padding | Raw):
        kind = type(layer).__name__
        parts.append(f"{_LINK_LAYERS.get(kind, kind)} {len(layer) - len(layer.payload)}")
        if kind in ("TCP", "UDP") or kind.startswith("ICMP"):
            break
        layer = layer.payload
    text = f"{len(pkt)} bytes: headers {' + '.join(parts) or '(none decoded)'}"
    if isinstance(layer, Raw):
        return text + f", then {len(layer)} bytes scapy could not decode"
    data = _app_bytes(layer) if type(layer).__name__ in ("TCP", "UDP") else b""
    if data:
        rows = _data_rows(data, L7, "payload")
        kind = rows[0]["layer"] if rows else "Raw"
        text += f", then {len(data)} bytes of {'HTTP' if kind == 'HTTP' else 'data'}"
        if kind == "HTTP":
            text += f" ({rows[0]['value']})"
    return text


def layer_table(pkt, title: str | None = None):
    """A rich Table of :func:`layer_rows`: L4-visible rows bold on orange, L7 rows on pink."""
    from rich.table import Table

    table = Table(title=title or "one packet, layer by layer", caption=LEGEND_TEXT)
    for name in ("OSI layer", "protocol", "field", "value", "decides on it", "why it matters"):
        table.add_column(name)
    l4_style, l7_style = f"bold black on {L4_COLOR}", f"black on {L7_COLOR}"
    for group in _groups(layer_rows(pkt)):
        for i, row in enumerate(group):
            style = l4_style if row["l4_visible"] else l7_style if row["osi"] == L7 else None
            table.add_row(
                row["osi"] if i == 0 else "",
                row["layer"] if i == 0 else "",
                row["field"],
                row["value"],
                _who(row),
                row["note"],
                style=style,
            )
        table.add_section()
    return table


LEGEND_TEXT = (
    "orange: what an L4 balancer decides on (IPs, protocol, ports, TCP flags); "
    "pink: the bytes inside, which only an L7 balancer reads; "
    "unshaded: carried along, not used to pick a backend"
)


def layer_frame_html(pkt, title: str | None = None) -> str:
    """An HTML table of :func:`layer_rows` for a notebook, with a legend line.

    The cells of L4-visible rows are shaded orange and bold (their ``<tr>``
    has class ``l4``), L7 rows pink (class ``l7``); the column
    "decides on it" says the same in words, so the table still reads where
    a renderer drops the colours.
    """
    esc = html.escape
    head = "".join(
        f'<th style="text-align:left">{esc(h)}</th>'
        for h in ("OSI layer", "protocol", "field", "value", "decides on it", "why it matters")
    )
    shade = {
        "l4": f"background-color:{L4_COLOR};color:#000;",
        "l7": f"background-color:{L7_COLOR};color:#000;",
    }
    body = []
    for group in _groups(layer_rows(pkt)):
        for i, row in enumerate(group):
            kind = "l4" if row["l4_visible"] else "l7" if row["osi"] == L7 else ""
            cell = f'style="text-align:left;{shade.get(kind, "")}"'
            value, field = esc(row["value"]), esc(row["field"])
            if kind == "l4":
                value, field = f"<b>{value}</b>", f"<b>{field}</b>"
            cells = []
            if i == 0:  # the layer's name spans its rows, unshaded
                span = f' rowspan="{len(group)}"' if len(group) > 1 else ""
                top = ' style="vertical-align:top;text-align:left"'
                cells.append(f"<td{span}{top}>{esc(row['osi'])}</td>")
                cells.append(f"<td{span}{top}>{esc(row['layer'])}</td>")
            cells += [
                f"<td {cell}>{field}</td>",
                f'<td style="text-align:left;font-family:monospace;{shade.get(kind, "")}">'
                f"{value}</td>",
                f"<td {cell}>{esc(_who(row))}</td>",
                f"<td {cell}>{esc(row['note'])}</td>",
            ]
            tr = f'<tr class="{kind}">' if kind else "<tr>"
            body.append(f"{tr}{''.join(cells)}</tr>")
    caption = esc(title or describe(pkt))
    swatch = '<span style="background-color:{};color:#000">&nbsp;{}&nbsp;</span>'
    legend = (
        f"<p>{swatch.format(L4_COLOR, '<b>orange, bold</b>')} what an L4 balancer decides on: "
        "IP addresses, protocol, ports, TCP flags. "
        f"{swatch.format(L7_COLOR, 'pink')} the bytes inside, which only an L7 balancer reads. "
        "Unshaded: carried along, not used to pick a backend.</p>"
    )
    return (
        f'<table style="border-collapse:collapse;font-size:90%">'
        f'<caption style="caption-side:top;text-align:left">{caption}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{legend}"
    )


def read_packets(path: str | Path) -> list:
    """Every frame of the pcap or pcapng file ``path`` as scapy packets (an empty file: ``[]``)."""
    from scapy.layers import inet, inet6, l2  # noqa: F401  (registers the link types)
    from scapy.utils import PcapReader

    p = Path(path)
    if p.stat().st_size == 0:
        return []
    with PcapReader(str(p)) as reader:
        return list(reader)


def find_http(packets: Iterable, response: bool = False):
    """The first packet whose TCP payload starts an HTTP request (or response); None if none."""
    from scapy.layers.inet import TCP

    for pkt in packets:
        if TCP not in pkt:
            continue
        data = _app_bytes(pkt[TCP])
        if data and is_http(data) and data.startswith(b"HTTP/") == response:
            return pkt
    return None


def example_http_packet():
    """A canned HTTP request, client 10.0.1.2 to api1 (10.0.1.10), as the basic lab sends it.

    For tests, and for notebooks that cannot capture (the local provider).
    """
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    request = (
        b"GET /api/v1/cart HTTP/1.1\r\nHost: 10.0.1.10\r\n"
        b"User-Agent: Mozilla/5.0 (iPhone)\r\nAccept: */*\r\nCookie: session=alice\r\n\r\n"
    )
    pkt = (
        Ether(src="02:00:0a:00:01:02", dst="02:00:0a:00:01:0a")
        / IP(src="10.0.1.2", dst="10.0.1.10", id=1, flags="DF")
        / TCP(sport=51000, dport=80, flags="PA", seq=1001, ack=5001, window=502)
        / request
    )
    return _rebuilt(pkt)
