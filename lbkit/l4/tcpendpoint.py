"""Just enough TCP for the in-memory network: one connection's sequence numbers and states.

Sans-I/O: :class:`TcpConnection` takes received segments (scapy ``IP/TCP``
packets) and makes the segments to send; the host that owns it decides
when (the client sends its request once the handshake is done, the server
answers once the request is whole). What it covers is what one HTTP
exchange over a lossless, in-order network needs (RFC 9293):

* the three-way handshake (§3.5), with the MSS option in both SYNs (§3.7.1);
* data in order: a segment's ``seq`` must be the next byte expected, and
  every segment after the SYN carries ``ACK`` with the next byte we expect;
* closing from both sides with FIN (§3.6): SYN and FIN each take one
  sequence number, as a byte of data would.

No retransmission, no window management, no reordering: a segment that is
not the next one expected raises :class:`TcpError` and changes nothing. Its
owner counts it and answers with a bare ACK of what it has (RFC 9293
§3.10.7.4), which is all a receiver can do after a segment was lost on the
way (the in-memory network drops frames larger than the MTU). The state
names are RFC 9293's (§3.3.2).
"""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.packet import Packet

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
#: What a host on a 1500-byte Ethernet advertises: 1500 - 20 (IP) - 20 (TCP) (RFC 9293 §3.7.1).
DEFAULT_MSS = 1460
_SEQ = 1 << 32


class TcpError(Exception):
    """A segment that a correct peer over a lossless network could not have sent."""


def mss_option(tcp: TCP) -> int | None:
    """The MSS option of a SYN or SYN-ACK, or None if it carries none."""
    for kind, value in tcp.options:
        if kind == "MSS":
            return int(value)
    return None


class TcpConnection:
    """One end of one TCP connection.

    ``iss`` is our initial sequence number, ``mss`` what we advertise in our
    SYN. ``peer_mss`` is what the other end advertised (the largest segment
    we may send it). ``received`` collects the peer's bytes in order.
    """

    def __init__(
        self,
        local: tuple[str, int],
        remote: tuple[str, int],
        iss: int,
        mss: int = DEFAULT_MSS,
    ) -> None:
        self.local = local
        self.remote = remote
        self.iss = iss % _SEQ
        self.mss = mss
        self.peer_mss = 536  # RFC 9293 §3.7.1: the default when no MSS option is seen
        self.state = "CLOSED"
        self.snd_nxt = self.iss  # the next sequence number we send
        self.snd_una = self.iss  # the oldest byte of ours not yet acknowledged
        self.irs: int | None = None  # the peer's initial sequence number
        self.rcv_nxt = 0  # the next sequence number we expect
        self.received = bytearray()
        self.fin_received = False

    # ----------------------------------------------------------------- making segments
    def _segment(self, flags: int, data: bytes = b"", options: list | None = None) -> Packet:
        (src, sport), (dst, dport) = self.local, self.remote
        ack = self.rcv_nxt if flags & ACK else 0
        tcp = TCP(sport=sport, dport=dport, seq=self.snd_nxt, ack=ack, flags=flags, window=64240)
        if options:
            tcp.options = options
        pkt = IP(src=src, dst=dst, flags="DF", ttl=64) / tcp
        if data:
            pkt = pkt / data
        self.snd_nxt = (self.snd_nxt + len(data) + (1 if flags & (SYN | FIN) else 0)) % _SEQ
        return pkt

    def connect(self) -> Packet:
        """Open actively: the SYN (CLOSED -> SYN-SENT)."""
        if self.state != "CLOSED":
            raise TcpError(f"connect in state {self.state}")
        self.state = "SYN-SENT"
        return self._segment(SYN, options=[("MSS", self.mss)])

    def accept(self, syn: Packet) -> Packet:
        """Answer a received SYN with the SYN-ACK (LISTEN -> SYN-RECEIVED)."""
        tcp = syn[TCP]
        if self.state != "CLOSED" or not tcp.flags & SYN or tcp.flags & ACK:
            raise TcpError("accept needs a fresh connection and a SYN")
        self.irs = tcp.seq
        self.rcv_nxt = (tcp.seq + 1) % _SEQ
        self.peer_mss = mss_option(tcp) or self.peer_mss
        self.state = "SYN-RECEIVED"
        return self._segment(SYN | ACK, options=[("MSS", self.mss)])

    def ack(self) -> Packet:
        """A bare ACK of everything received so far."""
        return self._segment(ACK)

    def send(self, data: bytes) -> list[Packet]:
        """``data`` as segments of at most ``peer_mss`` bytes, the last one with PSH."""
        if self.state not in ("ESTABLISHED", "CLOSE-WAIT"):
            raise TcpError(f"send in state {self.state}")
        chunks = [data[i : i + self.peer_mss] for i in range(0, len(data), self.peer_mss)]
        return [
            self._segment(ACK | (PSH if i == len(chunks) - 1 else 0), chunk)
            for i, chunk in enumerate(chunks)
        ]

    def close(self) -> Packet:
        """Our FIN, with ACK (ESTABLISHED -> FIN-WAIT-1, CLOSE-WAIT -> LAST-ACK)."""
        nxt = {"ESTABLISHED": "FIN-WAIT-1", "CLOSE-WAIT": "LAST-ACK"}.get(self.state)
        if nxt is None:
            raise TcpError(f"close in state {self.state}")
        self.state = nxt
        return self._segment(FIN | ACK)

    # ----------------------------------------------------------------- receiving
    def receive(self, pkt: Packet) -> bytes:
        """Take one received segment; return the new bytes it delivered (maybe ``b""``).

        Updates the state and the acknowledgement we owe; the owner decides
        what to send back (:meth:`ack`, :meth:`send`, :meth:`close`).
        """
        tcp = pkt[TCP]
        flags = int(tcp.flags)
        if flags & RST:
            self.state = "CLOSED"
            return b""
        if self.state == "SYN-SENT":
            if flags & (SYN | ACK) != SYN | ACK or tcp.ack != self.snd_nxt:
                raise TcpError(f"expected a SYN-ACK acknowledging {self.snd_nxt}")
            self.irs, self.rcv_nxt = tcp.seq, (tcp.seq + 1) % _SEQ
            self.snd_una = tcp.ack
            self.peer_mss = mss_option(tcp) or self.peer_mss
            self.state = "ESTABLISHED"
            return b""
        if not flags & ACK:
            raise TcpError("every segment after the SYN carries ACK")
        if tcp.seq != self.rcv_nxt:
            gap = (tcp.seq - self.rcv_nxt) % _SEQ
            if gap < _SEQ // 2:
                raise TcpError(f"out of order: the {gap} bytes before this segment never arrived")
            raise TcpError(f"a duplicate: {_SEQ - gap} bytes of it arrived already")
        if (self.snd_nxt - tcp.ack) % _SEQ > (self.snd_nxt - self.snd_una) % _SEQ:
            raise TcpError(f"ack {tcp.ack} outside {self.snd_una}..{self.snd_nxt}")
        self.snd_una = tcp.ack
        data = _payload(pkt)
        self.received += data
        self.rcv_nxt = (self.rcv_nxt + len(data)) % _SEQ
        all_acked = tcp.ack == self.snd_nxt
        if self.state == "SYN-RECEIVED" and all_acked:
            self.state = "ESTABLISHED"
        if flags & FIN:
            self.fin_received = True
            self.rcv_nxt = (self.rcv_nxt + 1) % _SEQ
            self.state = {
                "ESTABLISHED": "CLOSE-WAIT",
                "FIN-WAIT-1": "TIME-WAIT" if all_acked else "CLOSING",
                "FIN-WAIT-2": "TIME-WAIT",
            }.get(self.state, self.state)
        elif all_acked:
            self.state = {
                "FIN-WAIT-1": "FIN-WAIT-2",
                "CLOSING": "TIME-WAIT",
                "LAST-ACK": "CLOSED",
            }.get(self.state, self.state)
        return bytes(data)


def _payload(pkt: Packet) -> bytes:
    """The TCP payload, cut to the length the IP header gives (no Ethernet padding)."""
    ip, tcp = pkt[IP], pkt[TCP]
    data = bytes(tcp.payload)
    if ip.len:
        data = data[: max(ip.len - ip.ihl * 4 - tcp.dataofs * 4, 0)]
    return data
