"""A trace of the in-memory L4 network, hop by hop, with what the L4 box changed marked.

:func:`trace_rows` turns a :class:`lbkit.l4.netsim.Trace` into one plain
dict per hop; :func:`trace_table` (rich, for terminals) and
:func:`trace_html` (notebooks) draw them. A cell is shaded when the L4 box
changed that field in that hop (``Hop.changed``), and the last column says
the same in words, so the table still reads where a renderer drops colours.
:func:`compare_modes_html` puts NAT, DSR and tunnel side by side: the HTTP
request as the box sends it on, the response as the client gets it, and a
sentence per mode on the way back.

Addresses are shown with the name of their owner (``lb``, ``api2``, ``VIP``)
from ``Trace.names``; sequence numbers are relative to each side's SYN, as
Wireshark shows them, so ``seq=1`` is the first byte of data.
"""

from __future__ import annotations

import html
from typing import Any

from scapy.layers.inet import IP

from lbkit.l4.netsim import ADDED, Hop, Trace

#: Shading of a field the L4 box changed (a yellow apart from chapter 1's orange and pink).
CHANGED_COLOR = "#ffe98a"
_SEQ = 1 << 32
_COLUMNS = (
    "step", "hop", "Ethernet src", "Ethernet dst", "outer IP", "IP src", "IP dst",
    "ports", "flags", "seq / ack", "payload", "changed by the L4 box",
)  # fmt: skip

#: What each mode does on the way back, for :func:`compare_modes_html`.
RETURN_PATH: dict[str, str] = {
    "nat": (
        "The backend answers from its own address, {backend}, to the client; its route sends "
        "the answer to the L4 box, which puts the VIP back as the source. The box sees both "
        "directions, and has to: the client opened a connection to {vip}, and an answer from "
        "{backend} would be a stranger's, which it would reset."
    ),
    "dsr": (
        "The box changed only the destination MAC. The backend holds the VIP itself, so it "
        "answers from the VIP straight to the client's MAC, and the box never sees the reply. "
        "Replies carry most of the bytes, so the box's work stays small however big the "
        "responses get: one box can front far more traffic than it could carry."
    ),
    "tunnel": (
        "The box wrapped the client's packet, unchanged, in a new IP header addressed to the "
        "backend, so the backend may sit on another subnet, behind routers. The backend "
        "unwraps it and, holding the VIP like a DSR backend, answers the client directly. "
        "The cost: 20 more bytes on every packet to the backend, so the client's segments must "
        "shrink by 20 bytes (MSS 1440, not 1460) to fit the 1500-byte MTU."
    ),
}
_MODE_TITLES = {"nat": "NAT", "dsr": "DSR", "tunnel": "tunnel (IP-in-IP)"}


# ------------------------------------------------------------------ plain data
def _name(trace: Trace, addr: str) -> str:
    return trace.names.get(addr.lower(), trace.names.get(addr, ""))


def _isns(trace: Trace) -> tuple[int | None, int | None]:
    """The client's and the server's initial sequence numbers, from the handshake."""
    client = server = None
    for h in trace.hops:
        tcp = h.ip.payload
        if type(tcp).__name__ != "TCP" or not tcp.flags & 0x02:
            continue
        if tcp.flags & 0x10:
            server = tcp.seq if server is None else server
        else:
            client = tcp.seq if client is None else client
    return client, server


def payload_summary(data: bytes) -> str:
    """``HTTP GET /`` for an HTTP start line, else the size and the first bytes."""
    from lbkit.lab.capture_merge import http_summary

    if not data:
        return ""
    summary = http_summary(data)
    if summary:
        return f"{summary} ({len(data)} B)"
    text = data[:24].decode("utf-8", "replace")
    return f"{text!r}{'…' if len(data) > 24 else ''} ({len(data)} B)"


def trace_rows(trace: Trace) -> list[dict[str, Any]]:
    """One dict per hop: addresses with their owners' names, ports, flags, what changed.

    Keys: ``step``, ``at``, ``to``, ``eth_src``, ``eth_dst``, ``outer`` (``""``
    or ``"src > dst"`` of a tunnel's outer header), ``ip_src``, ``ip_dst``,
    ``proto``, ``sport``, ``dport``, ``flags``, ``seq``/``ack`` (relative,
    None for UDP or when the handshake is not in the trace), ``payload``
    (a summary), ``size`` (frame bytes), ``changed``, ``dropped``, and
    ``names`` (address -> owner).
    """
    c_isn, s_isn = _isns(trace)
    rows = []
    for h in trace.hops:
        eth, outer, ip = h.frame, h.frame[IP], h.ip
        l4 = ip.payload
        tcp = type(l4).__name__ == "TCP"
        seq = ack = None
        if tcp and c_isn is not None and s_isn is not None:
            mine, theirs = (c_isn, s_isn) if ip.src == trace.client_ip else (s_isn, c_isn)
            seq = (l4.seq - mine) % _SEQ
            ack = (l4.ack - theirs) % _SEQ if l4.flags & 0x10 else None
        rows.append(
            {
                "step": h.step,
                "at": h.at,
                "to": h.to,
                "eth_src": eth.src,
                "eth_dst": eth.dst,
                "outer": f"{outer.src} > {outer.dst}" if h.encapsulated else "",
                "ip_src": ip.src,
                "ip_dst": ip.dst,
                "proto": type(l4).__name__,
                "sport": getattr(l4, "sport", None),
                "dport": getattr(l4, "dport", None),
                "flags": h.flags,
                "seq": seq,
                "ack": ack,
                "payload": payload_summary(h.payload),
                "size": len(h.frame),
                "changed": h.changed,
                "dropped": h.dropped,
                "names": {a: _name(trace, a) for a in (eth.src, eth.dst, ip.src, ip.dst)},
            }
        )
    return rows


def changed_text(changed: dict[str, list[str]]) -> str:
    """``Ethernet: dst, src · IP: chksum, dst``; an added header reads ``outer IP: added``."""
    return " · ".join(f"{layer}: {', '.join(fields)}" for layer, fields in changed.items())


def _cells(row: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Per column: (main text, small text under it, changed by the box)."""
    ch = row["changed"]
    eth, ip, l4 = ch.get("Ethernet", []), ch.get("IP", []), ch.get(row["proto"], [])
    names = row["names"]
    ports = "" if row["sport"] is None else f"{row['sport']} > {row['dport']}"
    seq = ""
    if row["seq"] is not None:
        seq = f"seq={row['seq']}" + ("" if row["ack"] is None else f" ack={row['ack']}")
    note = changed_text(ch)
    if row["dropped"]:
        note = (note + " · " if note else "") + f"dropped: {row['dropped']}"
    return [
        (str(row["step"]), "", False),
        (f"{row['at']} > {row['to']}", "", False),
        (names[row["eth_src"]], row["eth_src"], "src" in eth),
        (names[row["eth_dst"]], row["eth_dst"], "dst" in eth),
        (row["outer"], "IP-in-IP" if row["outer"] else "", "outer IP" in ch),
        (row["ip_src"], names[row["ip_src"]], "src" in ip),
        (row["ip_dst"], names[row["ip_dst"]], "dst" in ip),
        (ports, row["proto"], "sport" in l4 or "dport" in l4),
        (row["flags"], "", "flags" in l4),
        (seq, "", "seq" in l4 or "ack" in l4),
        (row["payload"], "", "payload" in ch),
        (note, "", False),
    ]


def _has_outer(rows: list[dict[str, Any]]) -> bool:
    return any(r["outer"] for r in rows)


# ------------------------------------------------------------------ terminal
def trace_table(trace: Trace, title: str | None = None):
    """A rich Table of :func:`trace_rows`; fields the L4 box changed are shaded yellow."""
    from rich.table import Table

    rows = trace_rows(trace)
    keep = [i for i, c in enumerate(_COLUMNS) if c != "outer IP" or _has_outer(rows)]
    table = Table(title=title or _title(trace), caption=LEGEND_TEXT)
    for i in keep:
        table.add_column(_COLUMNS[i], justify="right" if i == 0 else "left")
    style = f"bold black on {CHANGED_COLOR}"
    for row in rows:
        cells = _cells(row)
        shown = []
        for i in keep:
            text, small, changed = cells[i]
            value = f"{text}\n{small}" if small and text else text or small
            shown.append(f"[{style}]{value}[/]" if changed else value)
        table.add_row(*shown, style="dim" if row["dropped"] else None)
    return table


LEGEND_TEXT = (
    "yellow: a field the L4 box changed on that hop (compared with the frame it received); "
    "sequence numbers are relative to each side's SYN"
)


def conntrack_table(rows: list[dict[str, Any]], title: str = "conntrack"):
    """A rich Table of :meth:`lbkit.l4.Conntrack.rows`: one flow per row, most recent last."""
    from rich.table import Table

    table = Table(title=title)
    numbers = ("packets", "age s", "idle s")
    for name in ("proto", "client", "VIP", "backend", "state", *numbers):
        table.add_column(name, justify="right" if name in numbers else "left")
    for r in rows:
        table.add_row(
            r["proto"], r["client"], r["vip"], f"{r['backend']} ({r['backend_address']})",
            r["state"], str(r["packets"]), f"{r['age']:.3f}", f"{r['idle']:.3f}",
        )  # fmt: skip
    return table


def _title(trace: Trace) -> str:
    answer = f"answer {trace.answer!r} from {trace.backend}" if trace.answer else "no answer"
    return (
        f"{trace.mode}: {trace.proto.upper()} from client port {trace.client_port}, "
        f"{len(trace.hops)} hops, {answer}"
    )


# ------------------------------------------------------------------ notebooks
def _td(text: str, small: str, changed: bool, mono: bool = False) -> str:
    esc = html.escape
    style = "text-align:left;vertical-align:top;"
    if changed:
        style += f"background-color:{CHANGED_COLOR};color:#000;font-weight:bold;"
    body = esc(text)
    if mono:
        body = f'<span style="font-family:monospace">{body}</span>'
    if small:
        body += f'<br><span style="font-size:80%;opacity:0.75">{esc(small)}</span>'
    return f'<td style="{style}">{body}</td>'


def trace_html(trace: Trace, title: str | None = None, steps: range | None = None) -> str:
    """An HTML table of :func:`trace_rows` for a notebook (``steps``: only those hop numbers).

    Cells of fields the L4 box changed are shaded yellow and bold (class
    ``changed``); the last column lists them by layer and field.
    """
    esc = html.escape
    rows = trace_rows(trace)
    if steps is not None:
        rows = [r for r in rows if r["step"] in steps]
    keep = [i for i, c in enumerate(_COLUMNS) if c != "outer IP" or _has_outer(rows)]
    head = "".join(f'<th style="text-align:left">{esc(_COLUMNS[i])}</th>' for i in keep)
    body = []
    for row in rows:
        cells = _cells(row)
        tds = [_td(*cells[i], mono=_COLUMNS[i] in ("seq / ack", "payload")) for i in keep]
        tds = [td.replace("<td ", '<td class="changed" ', 1) if cells[i][2] else td
               for td, i in zip(tds, keep, strict=True)]  # fmt: skip
        attrs = ' style="opacity:0.55;text-decoration:line-through"' if row["dropped"] else ""
        body.append(f"<tr{attrs}>{''.join(tds)}</tr>")
    legend = (
        f'<p><span style="background-color:{CHANGED_COLOR};color:#000">&nbsp;<b>yellow, '
        "bold</b>&nbsp;</span> a field the L4 box changed on that hop, compared with the frame "
        "it received; the last column lists them. Sequence numbers are relative to each "
        "side's SYN.</p>"
    )
    return (
        '<table style="border-collapse:collapse;font-size:85%">'
        f'<caption style="caption-side:top;text-align:left">{esc(title or _title(trace))}'
        f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{legend}"
    )


def _request_hop(trace: Trace) -> Hop | None:
    """The first packet with data that the box sends on towards a backend."""
    out = [h for h in trace.sent_by(trace.box) if h.ip.src == trace.client_ip]
    return next((h for h in out if h.payload), out[0] if out else None)


def _reply_hop(trace: Trace) -> Hop | None:
    """The first packet with data that reaches the client."""
    back = [h for h in trace.hops if h.to == trace.client and not h.dropped]
    return next((h for h in back if h.payload), back[0] if back else None)


def _fields(trace: Trace, hop: Hop | None) -> list[tuple[str, str, str, bool]]:
    """(label, text, small text, changed) for the comparison's rows."""
    if hop is None:
        return [(label, "—", "", False) for label in _COMPARE_LABELS]
    row = next(r for r in trace_rows(trace) if r["step"] == hop.step)
    c = _cells(row)
    return [
        ("Ethernet src", *c[2][:2], c[2][2]),
        ("Ethernet dst", *c[3][:2], c[3][2]),
        ("outer IP", c[4][0] or "—", c[4][1], c[4][2]),
        ("IP src", *c[5][:2], c[5][2]),
        ("IP dst", *c[6][:2], c[6][2]),
        ("ports", *c[7][:2], c[7][2]),
        ("payload", *c[10][:2], c[10][2]),
        ("changed by the box", c[11][0] or "nothing: it never saw this packet", "", False),
    ]


_COMPARE_LABELS = (
    "Ethernet src", "Ethernet dst", "outer IP", "IP src", "IP dst", "ports", "payload",
    "changed by the box",
)  # fmt: skip


def _sentence(trace: Trace) -> str:
    text = RETURN_PATH.get(trace.mode, "")
    hop = _request_hop(trace)
    backend = f"{hop.ip.dst}:{hop.ip.payload.dport}" if hop is not None else "the backend"
    return text.format(backend=backend, vip=_vip(trace))


def _vip(trace: Trace) -> str:
    vip = next((a for a, n in trace.names.items() if n == "VIP"), "the VIP")
    first = trace.requests()
    port = first[0].ip.payload.dport if first else 80
    return f"{vip}:{port}"


def compare_modes_html(traces: dict[str, Trace]) -> str:
    """NAT, DSR and tunnel side by side, one column per mode, then a sentence per mode.

    Rows: the HTTP request as the L4 box sends it on to the backend (the
    first packet with data that leaves the box), the response as the client
    receives it (the first packet with data that reaches the client), the
    path each took, and how many frames of the whole exchange the box handled.
    """
    esc = html.escape
    modes = list(traces)
    head = '<th style="text-align:left"></th>' + "".join(
        f'<th style="text-align:left">{esc(_MODE_TITLES.get(m, m))}</th>' for m in modes
    )
    body = []

    def section(title: str) -> None:
        body.append(
            f'<tr><td colspan="{len(modes) + 1}" style="text-align:left;'
            f'border-top:2px solid #888"><b>{esc(title)}</b></td></tr>'
        )

    def field_rows(pick) -> None:
        per_mode = [_fields(traces[m], pick(traces[m])) for m in modes]
        for i, label in enumerate(_COMPARE_LABELS):
            tds = [_td(*per_mode[j][i][1:], mono=label == "payload") for j in range(len(modes))]
            body.append(
                f'<tr><td style="text-align:left"><i>{esc(label)}</i></td>{"".join(tds)}</tr>'
            )

    def plain_row(label: str, values: list[str]) -> None:
        tds = "".join(_td(v, "", False) for v in values)
        body.append(f'<tr><td style="text-align:left"><i>{esc(label)}</i></td>{tds}</tr>')

    section("the request, as the L4 box sends it on")
    field_rows(_request_hop)
    plain_row("its path", [" > ".join(traces[m].path(traces[m].requests())) for m in modes])
    section("the response, as the client receives it")
    field_rows(_reply_hop)
    plain_row("its path", [" > ".join(traces[m].path(traces[m].replies())) for m in modes])
    section("the whole exchange")
    plain_row(
        "frames through the box",
        [
            f"{traces[m].through(traces[m].box)[0]} of the {_sent(traces[m])} that client "
            "and backend sent"
            for m in modes
        ],
    )
    plain_row("answer", [f"{traces[m].answer!r} from {traces[m].backend}" for m in modes])
    sentences = "".join(
        f"<li><b>{esc(_MODE_TITLES.get(m, m))}</b>: {esc(_sentence(traces[m]))}</li>" for m in modes
    )
    legend = (
        f'<p><span style="background-color:{CHANGED_COLOR};color:#000">&nbsp;<b>yellow, '
        "bold</b>&nbsp;</span> changed by the L4 box.</p>"
    )
    return (
        '<table style="border-collapse:collapse;font-size:85%">'
        '<caption style="caption-side:top;text-align:left">the same GET in each mode</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{legend}"
        f"<p>On the way back:</p><ul>{sentences}</ul>"
    )


def _sent(trace: Trace) -> int:
    return len({h.step for h in trace.hops if h.at != trace.box})


__all__ = [
    "ADDED",
    "CHANGED_COLOR",
    "RETURN_PATH",
    "changed_text",
    "compare_modes_html",
    "conntrack_table",
    "payload_summary",
    "trace_html",
    "trace_rows",
    "trace_table",
]
