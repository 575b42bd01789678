"""One packet dissected per OSI layer: canned scapy packets, no network."""

from __future__ import annotations

import pytest
from rich.console import Console
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, Ether
from scapy.utils import wrpcap

from lbkit.viz.exercises import check_l4_fields, l4_field_truth
from lbkit.viz.packets import (
    L2,
    L3,
    L4,
    L4_FIELDS,
    L7,
    describe,
    example_http_packet,
    find_http,
    layer_frame_html,
    layer_rows,
    layer_table,
    read_packets,
)

CLIENT, API = "10.0.1.2", "10.0.1.10"
REQUEST = (
    b"GET /api/v1/cart HTTP/1.1\r\nHost: api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (iPhone)\r\nCookie: session=alice\r\n\r\n"
)
ETH = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:10")


def http_request() -> object:
    return ETH / IP(src=CLIENT, dst=API) / TCP(sport=51000, dport=80, flags="PA") / REQUEST


def by_field(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["layer"], r["field"]): r for r in rows}


def test_rows_walk_the_osi_layers_in_order():
    """An HTTP request gives L2, L3, L4 and L7 rows, in that order."""
    osi = [r["osi"] for r in layer_rows(http_request())]
    assert list(dict.fromkeys(osi)) == [L2, L3, L4, L7]
    assert osi == sorted(osi, key=[L2, L3, L4, L7].index)


def test_rows_name_each_protocol_and_its_fields():
    """Ethernet, IP and TCP rows carry their fields; computed ones (len) have values."""
    rows = by_field(layer_rows(http_request()))
    assert rows[("Ethernet", "src")]["value"] == "02:00:00:00:00:02"
    assert rows[("IP", "src")]["value"] == CLIENT
    assert rows[("IP", "len")]["value"] == str(20 + 20 + len(REQUEST))
    assert rows[("TCP", "dport")]["value"] == "80 (http)"
    assert rows[("TCP", "sport")]["value"] == "51000"


def test_l4_visible_marks_exactly_addresses_protocol_ports_and_flags():
    """Only IP src/dst/proto and TCP sport/dport/flags are l4_visible."""
    visible = {(r["layer"], r["field"]) for r in layer_rows(http_request()) if r["l4_visible"]}
    assert visible == {
        ("IP", "src"), ("IP", "dst"), ("IP", "proto"),
        ("TCP", "sport"), ("TCP", "dport"), ("TCP", "flags"),
    }  # fmt: skip
    assert visible <= L4_FIELDS


def test_tcp_flags_are_named_and_written_like_tcpdump():
    """PSH+ACK reads 'PSH ACK (P.)', the letters the capture timeline uses."""
    assert by_field(layer_rows(http_request()))[("TCP", "flags")]["value"] == "PSH ACK (P.)"


def test_http_headers_are_l7_rows_that_l4_does_not_see():
    """Request line, Host, User-Agent and Cookie are L7 rows, none l4_visible."""
    rows = layer_rows(http_request())
    app = [r for r in rows if r["osi"] == L7]
    assert [(r["field"], r["value"]) for r in app] == [
        ("request line", "GET /api/v1/cart HTTP/1.1"),
        ("Host", "api.example.com"),
        ("User-Agent", "Mozilla/5.0 (iPhone)"),
        ("Cookie", "session=alice"),
        ("body", "0 bytes"),
    ]
    assert all(r["layer"] == "HTTP" and not r["l4_visible"] for r in app)


def test_http_response_has_a_status_line():
    """A response's first L7 row is its status line."""
    ok = ETH / IP(src=API, dst=CLIENT) / TCP(sport=80, dport=51000, flags="PA")
    ok = ok / b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
    app = [r for r in layer_rows(ok) if r["osi"] == L7]
    assert (app[0]["field"], app[0]["value"]) == ("status line", "HTTP/1.1 502 Bad Gateway")


def test_udp_packet_has_ports_visible_and_payload_as_l7():
    """UDP: ports are l4_visible, its length is not, the datagram's bytes are one L7 row."""
    pkt = ETH / IP(src=CLIENT, dst=API) / UDP(sport=40000, dport=7) / b"hello"
    rows = by_field(layer_rows(pkt))
    assert rows[("UDP", "sport")]["l4_visible"] and rows[("UDP", "dport")]["l4_visible"]
    assert not rows[("UDP", "len")]["l4_visible"]
    assert rows[("IP", "proto")]["value"] == "17 (udp)"
    payload = rows[("Raw", "payload")]
    assert payload["osi"] == L7 and payload["value"] == "5 bytes: hello"


def test_ipv6_addresses_and_next_header_are_l4_visible():
    """IPv6: src, dst and the next header (the protocol) are what L4 decides on."""
    pkt = ETH / IPv6(src="2001:db8::2", dst="2001:db8::10") / TCP(sport=51000, dport=443)
    visible = {(r["layer"], r["field"]) for r in layer_rows(pkt) if r["l4_visible"]}
    assert visible == {
        ("IPv6", "src"), ("IPv6", "dst"), ("IPv6", "nh"),
        ("TCP", "sport"), ("TCP", "dport"), ("TCP", "flags"),
    }  # fmt: skip


def test_arp_packet_has_only_l2_and_l3_rows():
    """ARP: Ethernet (L2) and ARP (L3) rows, nothing an L4 balancer decides on."""
    rows = layer_rows(ETH / ARP(op=1, psrc=CLIENT, pdst=API))
    assert {r["osi"] for r in rows} == {L2, L3}
    assert {r["layer"] for r in rows} == {"Ethernet", "ARP"}
    assert not any(r["l4_visible"] for r in rows)
    assert by_field(rows)[("ARP", "pdst")]["value"] == API


def test_icmp_rows_show_only_the_fields_of_its_type():
    """An echo request shows id and seq, not the fields of other ICMP types."""
    fields = {
        r["field"] for r in layer_rows(ETH / IP() / ICMP(id=7, seq=1)) if r["layer"] == "ICMP"
    }
    assert {"type", "code", "id", "seq"} <= fields
    assert "gw" not in fields and "ts_ori" not in fields


@pytest.mark.parametrize("cut", [20, 40, 60])
def test_truncated_packet_does_not_crash(cut):
    """A frame cut short (a small snaplen) still gives rows, ending where the bytes end."""
    pkt = Ether(bytes(http_request())[:cut])
    rows = layer_rows(pkt)
    assert rows[0]["layer"] == "Ethernet"
    assert describe(pkt).startswith(f"{cut} bytes")
    assert "</table>" in layer_frame_html(pkt)


def test_truncated_http_line_is_marked():
    """An HTTP line cut by the capture is shown as far as it goes, marked (truncated)."""
    rows = layer_rows(Ether(bytes(http_request())[:60]))
    assert rows[-1]["value"] == "GET /a (truncated)"


def test_cooked_capture_is_read_as_l2():
    """A `tcpdump -i any` frame (Linux cooked) gives L2 rows, then the same IP and TCP rows."""
    pkt = CookedLinux(pkttype=4, lladdrtype=1) / IP(src=CLIENT, dst=API) / TCP(dport=80)
    rows = layer_rows(pkt)
    assert rows[0]["osi"] == L2 and rows[0]["layer"] == "Linux cooked (SLL)"
    assert by_field(rows)[("IP", "dst")]["value"] == API


def test_payload_excludes_ethernet_padding():
    """A SYN padded to 60 bytes has no L7 rows: padding is not application data."""
    syn = Ether(bytes(ETH / IP(src=CLIENT, dst=API) / TCP(flags="S")) + b"\x00" * 6)
    assert not [r for r in layer_rows(syn) if r["osi"] == L7]


def test_html_highlights_l4_fields_and_has_a_legend():
    """The HTML shades l4_visible rows, bolds their values and explains the colours."""
    text = layer_frame_html(http_request())
    assert text.count('<tr class="l4">') == 6
    assert text.count('<tr class="l7">') == 5
    assert "background-color:#ffd8a8" in text
    assert "<b>10.0.1.2</b>" in text
    assert "only an L7 balancer reads" in text
    assert "Cookie" in text and "session=alice" in text


def test_html_escapes_packet_text():
    """Bytes that look like markup are shown as text."""
    pkt = ETH / IP() / TCP(dport=80) / b"GET /<script> HTTP/1.1\r\nX-A: <b>\r\n\r\n"
    text = layer_frame_html(pkt)
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_rich_table_has_a_row_per_field():
    """The rich table has one row per layer row and renders."""
    pkt = http_request()
    table = layer_table(pkt)
    assert table.row_count == len(layer_rows(pkt))
    console = Console(width=200, record=True)
    console.print(table)
    assert "request line" in console.export_text()


def test_describe_counts_header_and_payload_bytes():
    """describe() splits the frame into each header's size and the application's bytes."""
    text = describe(http_request())
    total = 14 + 20 + 20 + len(REQUEST)
    assert text == (
        f"{total} bytes: headers Ethernet 14 + IP 20 + TCP 20, "
        f"then {len(REQUEST)} bytes of HTTP (GET /api/v1/cart HTTP/1.1)"
    )


def test_read_packets_and_find_http(tmp_path):
    """A pcap reads back as packets; find_http picks the request, then the response."""
    syn = ETH / IP(src=CLIENT, dst=API) / TCP(sport=51000, dport=80, flags="S")
    reply = ETH / IP(src=API, dst=CLIENT) / TCP(sport=80, dport=51000, flags="PA")
    reply = reply / b"HTTP/1.1 200 OK\r\n\r\n"
    path = tmp_path / "c.pcap"
    wrpcap(str(path), [syn, http_request(), reply])
    pkts = read_packets(path)
    assert len(pkts) == 3
    assert find_http(pkts)[TCP].flags == "PA" and find_http(pkts)[IP].src == CLIENT
    assert find_http(pkts, response=True)[IP].src == API
    assert find_http(pkts[:1]) is None


def test_read_packets_of_an_empty_file(tmp_path):
    """A capture stopped before its header was written reads as no packets."""
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    assert read_packets(path) == []


def test_l4_exercise_truth_comes_from_the_rows():
    """The exercise's answer is the choices whose rows are l4_visible: a, c, e, g, i."""
    assert l4_field_truth() == "acegi"
    assert l4_field_truth(example_http_packet()) == l4_field_truth(http_request())


def test_l4_exercise_accepts_the_right_answer():
    """Letters in any order and with separators are accepted."""
    assert check_l4_fields("i, g, e, c, a")
    assert str(check_l4_fields("acegi")) == "correct"


@pytest.mark.parametrize("answer", ["abcegi", "aceg", "acegiz", "", None])
def test_l4_exercise_rejects_wrong_answers_without_giving_them_away(answer):
    """Wrong, incomplete, unknown or empty answers get a hint that names no right letter."""
    verdict = check_l4_fields(answer)
    assert not verdict
    assert str(verdict).startswith("not yet")
    assert "acegi" not in str(verdict)
