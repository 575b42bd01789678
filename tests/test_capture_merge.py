"""Captures read into rows and merged across hosts: canned packets, no processes."""

from __future__ import annotations

import json

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Ether
from scapy.utils import wrpcap

from lbkit.lab.capture_merge import (
    PacketRow,
    follow,
    handshake,
    merge,
    merge_pcaps,
    read_pcap,
    tcp_flags,
    timeline_records,
    timeline_table,
)
from lbkit.lab.errors import LabError

CLIENT, API = "10.0.1.2", "10.0.1.10"
GET = b"GET /echo HTTP/1.1\r\nHost: api1\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def exchange(t0: float, sport: int = 51000) -> list:
    """One HTTP exchange client -> api1:80, 1 ms apart, starting at ``t0``."""
    eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:10")
    up, down = IP(src=CLIENT, dst=API), IP(src=API, dst=CLIENT)
    pkts = [
        eth / up / TCP(sport=sport, dport=80, flags="S", seq=1000),
        eth / down / TCP(sport=80, dport=sport, flags="SA", seq=5000, ack=1001),
        eth / up / TCP(sport=sport, dport=80, flags="A", seq=1001, ack=5001),
        eth / up / TCP(sport=sport, dport=80, flags="PA", seq=1001, ack=5001) / GET,
        eth / down / TCP(sport=80, dport=sport, flags="PA", seq=5001, ack=1001 + len(GET)) / OK,
    ]
    for i, pkt in enumerate(pkts):
        pkt.time = t0 + i * 0.001
    return pkts


def write(tmp_path, name: str, pkts: list):
    path = tmp_path / f"{name}.pcap"
    wrpcap(str(path), pkts)
    return path


@pytest.fixture
def two_hosts(tmp_path):
    """The same exchange captured on the client and, 0.5 ms later, on api1."""
    return {
        "client": write(tmp_path, "client", exchange(100.0)),
        "api1": write(tmp_path, "api1", exchange(100.0005)),
    }


def test_read_pcap_decodes_a_syn(tmp_path):
    """A SYN gives addresses, ports, flags 'S', seq, no ack, 54 bytes and no payload."""
    row = read_pcap(write(tmp_path, "c", exchange(100.0)[:1]), "client")[0]
    assert row == PacketRow(
        time=100.0, host="client", src=CLIENT, dst=API, proto="TCP", sport=51000, dport=80,
        flags="S", seq=1000, ack=None, length=54, payload_len=0, summary=row.summary,
    )  # fmt: skip
    assert row.summary == f"{CLIENT}:51000 > {API}:80 [S] seq=1000"


def test_tcp_flags_are_written_like_tcpdump():
    """Flags follow tcpdump's order F S R P . U E W; none set prints 'none'."""
    assert [tcp_flags(b) for b in (0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0xC2, 0)] == [
        "S", "S.", ".", "P.", "F.", "R", "R.", "SEW", "none",
    ]  # fmt: skip


def test_merge_orders_rows_of_all_hosts_by_time(two_hosts):
    """Merged rows alternate client, api1 as their times interleave."""
    rows = merge_pcaps(two_hosts)
    assert [r.time for r in rows] == sorted(r.time for r in rows)
    assert [r.host for r in rows[:4]] == ["client", "api1", "client", "api1"]


def test_merge_breaks_time_ties_by_host_and_keeps_capture_order():
    """Rows at the same instant sort by host name; one host's tied rows keep their order."""
    a1, a2 = PacketRow(1.0, "b", "x", "y", "UDP"), PacketRow(1.0, "b", "y", "x", "UDP")
    c = PacketRow(1.0, "a", "x", "y", "UDP")
    assert merge({"b": [a1, a2], "a": [c]}) == [c, a1, a2]


def test_handshake_is_seen_on_both_hosts(two_hosts):
    """Both hosts see the same client port's S, S., . in order."""
    rows = merge_pcaps(two_hosts)
    assert handshake(rows, CLIENT, API, 80) == {
        "client": ["S", "S.", "."],
        "api1": ["S", "S.", "."],
    }


def test_handshake_lists_a_host_that_saw_no_syn_ack_as_partial(tmp_path):
    """A host that saw only the SYN (the SYN-ACK went elsewhere, as with DSR) shows ['S']."""
    pkts = exchange(100.0)
    rows = merge_pcaps(
        {"client": write(tmp_path, "c", pkts), "l4": write(tmp_path, "l4", [pkts[0]])}
    )
    assert handshake(rows, CLIENT, API, 80)["l4"] == ["S"]


def test_http_request_and_status_lines_are_summarised(two_hosts):
    """A request line reads 'HTTP GET /echo', a status line 'HTTP 200'."""
    rows = read_pcap(two_hosts["client"], "client")
    assert [r.summary for r in rows[3:]] == ["HTTP GET /echo", "HTTP 200"]
    assert rows[3].payload_len == len(GET) and rows[3].flags == "P."


def test_arp_request_row(tmp_path):
    """An ARP request reads 'ARP who-has TARGET tell SENDER' with the two IPs as src and dst."""
    pkt = Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc=CLIENT, pdst=API)
    row = read_pcap(write(tmp_path, "arp", [pkt]), "client")[0]
    assert (row.proto, row.src, row.dst) == ("ARP", CLIENT, API)
    assert row.summary == f"ARP who-has {API} tell {CLIENT}"


def test_udp_row_has_ports_and_payload_length(tmp_path):
    """A UDP datagram gives its ports and payload length; no flags, seq or ack."""
    pkt = Ether() / IP(src=CLIENT, dst=API) / UDP(sport=4000, dport=7) / b"hello"
    row = read_pcap(write(tmp_path, "udp", [pkt]), "client")[0]
    assert (row.proto, row.sport, row.dport, row.payload_len) == ("UDP", 4000, 7, 5)
    assert (row.flags, row.seq, row.ack) == ("", None, None)


def test_ipv6_is_a_row_named_ipv6(tmp_path):
    """IPv6 frames are not decoded further but still listed, as proto 'IPv6'."""
    pkt = Ether() / IPv6(src="fe80::1", dst="ff02::2") / b"x"
    row = read_pcap(write(tmp_path, "v6", [pkt]), "client")[0]
    assert (row.proto, row.src, row.dst) == ("IPv6", "fe80::1", "ff02::2")


def test_follow_keeps_one_connection_both_ways_on_every_host(tmp_path):
    """follow() returns the 5 packets of each host's copy and none of another connection."""
    rows = merge_pcaps(
        {
            "client": write(tmp_path, "c", exchange(100.0) + exchange(101.0, sport=52000)),
            "api1": write(tmp_path, "a", exchange(100.0005)),
        }
    )
    conn = follow(rows, CLIENT, API, 51000, 80)
    assert len(conn) == 10
    assert {r.sport for r in conn} == {51000, 80}


@pytest.mark.parametrize(
    "cooked", [CookedLinux(lladdrtype=1, proto=0x0800), CookedLinuxV2(lladdrtype=1, proto=0x0800)]
)
def test_cooked_captures_read_like_ethernet(tmp_path, cooked):
    """SLL and SLL2 (tcpdump -i any) frames give the same row as the Ethernet frame."""
    eth = exchange(100.0)[0]
    sll = cooked / eth[IP]
    sll.time = eth.time
    ref = read_pcap(write(tmp_path, "eth", [eth]), "h")[0]
    assert read_pcap(write(tmp_path, "sll", [sll]), "h")[0] == ref


def test_timeline_table_has_one_row_per_packet(two_hosts):
    """The table shows every row and the eight documented columns."""
    table = timeline_table(merge_pcaps(two_hosts))
    assert table.row_count == 10
    assert [c.header for c in table.columns] == [
        "t", "host", "src", "dst", "proto", "flags", "len", "info",
    ]  # fmt: skip


def test_timeline_table_max_rows_cuts_and_says_so(two_hosts):
    """max_rows=3 shows 3 rows and a caption counting the 7 left out."""
    table = timeline_table(merge_pcaps(two_hosts), max_rows=3)
    assert table.row_count == 3 and "7 more" in str(table.caption)


def test_timeline_records_are_json_with_relative_time(two_hosts):
    """Records serialise to JSON; t counts seconds from the first row."""
    records = json.loads(json.dumps(timeline_records(merge_pcaps(two_hosts))))
    assert records[0]["t"] == 0 and records[1]["t"] == pytest.approx(0.0005)
    assert records[1]["host"] == "api1"


def test_empty_capture_file_gives_no_rows(tmp_path):
    """A capture stopped before its header was written is empty, not an error."""
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    assert read_pcap(path, "client") == []


def test_missing_capture_file_is_a_lab_error(tmp_path):
    """A missing file raises LabError naming the path."""
    with pytest.raises(LabError, match="no such capture file"):
        read_pcap(tmp_path / "nope.pcap", "client")
