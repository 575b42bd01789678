"""An in-memory network for the L4 chapter: every hop of an exchange, on any OS, without root.

One switch (a dict from MAC address to host) joins a client, an L4 box and
a few backends, with the addresses of the L4 lab (``labs/l4.toml``): client
10.0.1.100, box 10.0.1.2 holding the VIP 10.0.1.200, ``api1``.. at
10.0.1.10... The box runs :meth:`lbkit.l4.L4Balancer.handle`, the same core
the live forwarder runs; the client and backends speak just enough TCP
(:mod:`lbkit.l4.tcpendpoint`) and answer like the lab's backends do
(:func:`lbkit.lab.roles.backend_core.http_answer`: their name, ``/echo``,
``/healthz``). Every host knows every other's MAC up front: no ARP.

Each mode's backends behave as the lab configures them
(:mod:`lbkit.l4.labtopo`):

* ``nat``: a backend owns only its address and listens on port 3000 (the
  seed's upstream port; only NAT can change the port). It sends frames for
  the client to the box's MAC (its route: ``10.0.1.100/32 via 10.0.1.2``), so
  the box sees the reply and rewrites its source back to the VIP.
* ``dsr``: a backend also owns the VIP (on ``lo``, without answering ARP for
  it), listens on 80, and replies straight to the client's MAC from the VIP.
* ``tunnel``: as ``dsr``, but the request arrives wrapped in IP-in-IP; the
  backend strips the outer header (:func:`lbkit.l4.decap.decapsulate`) and
  advertises MSS 1440 (``advmss``), 20 bytes less, so the client's segments
  still fit the 1500-byte MTU with the box's outer header added. The box
  clamps the client's MSS to 1440 as the live one does.

Time is simulated: each hop takes :data:`HOP_SECONDS`, so conntrack ages and
idle times are the same on every run. Links carry IP packets of at most
:data:`MTU` bytes; a bigger frame is dropped, and its hop says so.

>>> net = l4_network("dsr")
>>> trace = net.http_get(client_port=40001)
>>> trace.answer, trace.backend
('api3', 'api3')
>>> [f"{h.at}>{h.to}" for h in trace.hops][:3]
['client>lb', 'lb>api3', 'api3>client']
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import NoPayload, Packet, Padding

from lbkit.algorithms import Backend
from lbkit.lab.roles.backend_core import RoleState, http_answer, udp_reply
from lbkit.lab.roles.http_server import render

from .balancer import MODES, L4Balancer, Service
from .config import TUNNEL_MSS
from .decap import decapsulate
from .labtopo import BOX, CLIENT, VIP
from .tcpendpoint import ACK, DEFAULT_MSS, FIN, RST, SYN, TcpConnection, TcpError

#: Seconds each hop takes on the simulated clock (a frame's time on the wire plus a switch).
HOP_SECONDS = 0.001
#: The largest IP packet a link carries (Ethernet's 1500 bytes).
MTU = 1500
HTTP_PORT, UDP_PORT, NAT_BACKEND_PORT = 80, 7, 3000
#: Where client ports start when ``client_port`` is not given (Linux picks from 32768-60999).
FIRST_CLIENT_PORT = 40001
#: The simulated clock's zero, as a Unix time: 2026-01-01 00:00:00 UTC (for ``Date`` headers).
EPOCH = 1_767_225_600
#: ``Hop.changed`` value for a header the box added (the tunnel's outer IPv4 header).
ADDED = "added"
MAX_HOPS = 100_000
USER_AGENT = "lbkit-netsim"


def mac_of(ip: str) -> str:
    """The lab's MAC for an address: ``02:00``, then the address's bytes (10.0.1.2: ..:01:02)."""
    return "02:00:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


# ------------------------------------------------------------------ what a trace holds
@dataclass
class Hop:
    """One frame on one link: ``at`` sent it, ``to`` owns its destination MAC.

    ``changed`` lists, per layer (``Ethernet``, ``outer IP``, ``IP``,
    ``TCP``/``UDP``, ``payload``), the fields that differ from the frame that
    made the sender send it; it is filled when the sender is the L4 box
    (a header the box added shows as ``[ADDED]``). ``dropped`` says why the
    frame went no further (the link, or the receiver, refused it).
    """

    step: int
    at: str
    to: str
    frame: Packet
    changed: dict[str, list[str]] = field(default_factory=dict)
    time: float = 0.0
    dropped: str | None = None

    @property
    def ip(self) -> Packet:
        """The innermost IP header (a tunnel's inner packet, not its outer header)."""
        ip = self.frame[IP]
        return ip.payload if ip.proto == 4 and isinstance(ip.payload, IP) else ip

    @property
    def encapsulated(self) -> bool:
        return self.frame[IP].proto == 4

    @property
    def payload(self) -> bytes:
        """The TCP or UDP payload (no Ethernet padding)."""
        return l4_payload(self.ip)

    @property
    def flags(self) -> str:
        """TCP flags as tcpdump writes them (``S``, ``S.``, ``P.``, ``F.``); ``""`` for UDP."""
        from lbkit.lab.capture_merge import tcp_flags

        tcp = self.ip.payload
        return tcp_flags(int(tcp.flags)) if isinstance(tcp, TCP) else ""


@dataclass
class Trace:
    """One exchange, hop by hop: what the client got back (``answer``), and from whom."""

    mode: str
    proto: str
    client_port: int
    hops: list[Hop]
    answer: str | None = None
    backend: str | None = None
    box: str = "lb"
    client: str = "client"
    client_ip: str = CLIENT
    #: MAC or IP address -> the name shown for it (``client``, ``lb``, ``VIP``, ``api2``...)
    names: dict[str, str] = field(default_factory=dict)

    def sent_by(self, host: str) -> list[Hop]:
        """The hops whose frame ``host`` sent."""
        return [h for h in self.hops if h.at == host]

    def requests(self) -> list[Hop]:
        """Hops of the client's packets (inner IP source is the client), in order."""
        return [h for h in self.hops if h.ip.src == self.client_ip]

    def replies(self) -> list[Hop]:
        """Hops of the backend's packets (inner IP destination is the client), in order."""
        return [h for h in self.hops if h.ip.dst == self.client_ip]

    def path(self, hops: Iterable[Hop]) -> list[str]:
        """The hosts the first packet of ``hops`` passed: ``['api2', 'lb', 'client']``.

        Follows the packet through the box: the box's next frame with the
        same TCP sequence, acknowledgement and flags (or UDP payload).
        """
        hops = list(hops)
        if not hops:
            return []
        at = hops[0]
        chain = [at.at, at.to]
        while at.to == self.box:
            key = _identity(at.frame)
            at = next((h for h in hops if h.step > at.step and h.at == self.box
                       and _identity(h.frame) == key), None)  # fmt: skip
            if at is None:
                break
            chain.append(at.to)
        return chain

    def backends(self) -> list[str]:
        """Hosts that are neither the client nor the box."""
        return sorted({h.at for h in self.hops} - {self.client, self.box})

    def through(self, host: str) -> tuple[int, int]:
        """``(frames, bytes)`` that ``host`` received in this trace (bytes: whole frames)."""
        got = [h for h in self.hops if h.to == host and not h.dropped]
        return len(got), sum(len(h.frame) for h in got)


def l4_payload(ip: Packet) -> bytes:
    """The bytes after the TCP or UDP header of ``ip``, cut to the IP length (no padding)."""
    l4 = ip.payload
    if not isinstance(l4, TCP | UDP):
        return b""
    data = l4.payload
    if isinstance(data, NoPayload | Padding):
        return b""
    raw = bytes(data)
    if ip.len:
        head = l4.dataofs * 4 if isinstance(l4, TCP) else 8
        raw = raw[: max(ip.len - ip.ihl * 4 - head, 0)]
    return raw


def changes(before: Packet, after: Packet) -> dict[str, list[str]]:
    """Fields that differ between a frame a host received and the one it sent, per layer.

    Layers: ``Ethernet``, ``outer IP`` (``[ADDED]`` when ``after`` is IP-in-IP
    and ``before`` was not), ``IP`` (the inner one), ``TCP`` or ``UDP``,
    ``payload`` (``["bytes"]``). Layers without a change are left out.
    """
    out: dict[str, list[str]] = {}
    _diff(out, "Ethernet", before[Ether], after[Ether])
    b_ip, a_ip = before[IP], after[IP]
    if a_ip.proto == 4 and b_ip.proto != 4 and isinstance(a_ip.payload, IP):
        out["outer IP"] = [ADDED]
        a_ip = a_ip.payload
    elif b_ip.proto == 4 and a_ip.proto != 4 and isinstance(b_ip.payload, IP):
        out["outer IP"] = ["removed"]
        b_ip = b_ip.payload
    _diff(out, "IP", b_ip, a_ip)
    b_l4, a_l4 = b_ip.payload, a_ip.payload
    if type(b_l4) is type(a_l4) and isinstance(a_l4, TCP | UDP):
        _diff(out, type(a_l4).__name__, b_l4, a_l4)
    if l4_payload(b_ip) != l4_payload(a_ip):
        out["payload"] = ["bytes"]
    return out


def _diff(out: dict, name: str, a: Packet, b: Packet) -> None:
    fields = [f.name for f in b.fields_desc if a.getfieldval(f.name) != b.getfieldval(f.name)]
    if fields:
        out[name] = fields


def _checksums_ok(ip: Packet) -> bool:
    """IP and TCP/UDP checksums equal scapy's from-scratch values (a UDP 0 means none)."""
    copy = IP(bytes(ip))
    del copy.chksum
    l4 = copy.payload
    if isinstance(l4, TCP) or (isinstance(l4, UDP) and l4.chksum):
        del l4.chksum
    return bytes(IP(bytes(copy))) == bytes(ip)


# ------------------------------------------------------------------ hosts
class _Host:
    """A machine on the switch: a name, an address (or more), a MAC, its neighbours' MACs."""

    role = "host"

    def __init__(self, name: str, ip: str, neighbors: Mapping[str, str]) -> None:
        self.name = name
        self.ip = ip
        self.mac = mac_of(ip)
        self.addresses = {ip}
        self.neighbors = dict(neighbors)  #: IP -> MAC: what ARP would have told it
        self.routes: dict[str, str] = {}  #: destination IP -> the IP of its next hop
        self.dropped: Counter[str] = Counter()
        self.last_drop: str | None = None

    def receive(self, frame: Packet, now: float) -> list[Packet]:
        raise NotImplementedError

    def _drop(self, reason: str) -> list[Packet]:
        self.dropped[reason] += 1
        self.last_drop = reason
        return []

    def _frame(self, ip: Packet) -> Packet:
        """Put ``ip`` in a frame to its next hop (a route's gateway, or the address itself)."""
        hop = self.routes.get(ip.dst, ip.dst)
        return Ether(src=self.mac, dst=self.neighbors[hop]) / ip

    def _accept(self, frame: Packet) -> Packet | None:
        """The IP packet of a frame for us, checked as a kernel would; None after a drop."""
        why = None
        if frame[Ether].dst != self.mac:
            why = "not my MAC"
        elif IP not in frame:
            why = "not IPv4"
        elif frame[IP].dst not in self.addresses:
            why = f"not my address ({frame[IP].dst})"
        elif not isinstance(frame[IP].payload, TCP | UDP):
            why = "not TCP or UDP"
        elif not _checksums_ok(frame[IP]):
            why = "bad checksum"  # Linux counts it in TcpInCsumErrors / UdpInCsumErrors
        if why is not None:
            self._drop(why)
            return None
        return frame[IP]


@dataclass
class _Exchange:
    """What the client does on one connection: send ``request``, read the response, close."""

    conn: TcpConnection | None
    request: bytes = b""
    sent: bool = False
    answer: str | None = None
    body: bytes = b""


class ClientHost(_Host):
    """The client: opens one connection per request, like ``curl`` does, and reads the answer."""

    role = "client"

    def __init__(self, name: str, ip: str, neighbors: Mapping[str, str], rng: random.Random):
        super().__init__(name, ip, neighbors)
        self.rng = rng
        self.exchanges: dict[tuple[str, int, int], _Exchange] = {}

    def open_http(self, dst: str, dport: int, sport: int, request: bytes) -> Packet:
        """Start one HTTP exchange: the SYN, in a frame."""
        conn = TcpConnection((self.ip, sport), (dst, dport), self.rng.getrandbits(32), DEFAULT_MSS)
        self.exchanges[(dst, dport, sport)] = _Exchange(conn, request)
        return self._frame(conn.connect())

    def send_udp(self, dst: str, dport: int, sport: int, payload: bytes) -> Packet:
        self.exchanges[(dst, dport, sport)] = _Exchange(None)
        return self._frame(IP(src=self.ip, dst=dst) / UDP(sport=sport, dport=dport) / payload)

    def receive(self, frame: Packet, now: float) -> list[Packet]:
        self.last_drop = None
        ip = self._accept(frame)
        if ip is None:
            return []
        l4 = ip.payload
        ex = self.exchanges.get((ip.src, l4.sport, l4.dport))
        if isinstance(l4, UDP):
            if ex is None:
                return self._drop("no socket for this datagram")
            ex.answer = l4_payload(ip).decode("utf-8", "replace")
            return []
        if ex is None or ex.conn is None:  # Linux answers with a reset (RFC 9293 §3.10.7.1)
            if l4.flags & RST:
                return self._drop("reset for no connection")
            self._drop("no connection: reset")
            return [self._frame(_reset(ip))]
        conn = ex.conn
        try:
            conn.receive(ip)
        except TcpError as e:
            self._drop(str(e))
            return [self._frame(conn.ack())]  # RFC 9293 §3.10.7.4: answer with an ACK
        out = []
        if conn.state == "ESTABLISHED" and not ex.sent:
            ex.sent = True
            out += [conn.ack(), *conn.send(ex.request)]
        elif l4_payload(ip) or l4.flags & FIN:
            out.append(conn.ack())  # data and FIN take sequence space: acknowledge them
        if conn.state == "ESTABLISHED" and ex.answer is None:
            body = _complete_body(bytes(conn.received))
            if body is not None:
                ex.body = body
                ex.answer = body.decode("utf-8", "replace").strip()
                out.append(conn.close())  # curl closes once it has the whole body
        return [self._frame(p) for p in out]


class BackendHost(_Host):
    """A backend: answers HTTP on one port and UDP echo on port 7, as the lab's backends do."""

    role = "backend"

    def __init__(
        self,
        name: str,
        ip: str,
        neighbors: Mapping[str, str],
        rng: random.Random,
        *,
        http_port: int,
        advmss: int,
        decap: bool = False,
        vip: str | None = None,
    ) -> None:
        super().__init__(name, ip, neighbors)
        if vip is not None:
            self.addresses.add(vip)  # the VIP on lo: DSR and tunnel
        self.rng = rng
        self.http_port = http_port
        self.advmss = advmss
        self.decap = decap
        self.state = RoleState(name)
        self.conns: dict[tuple[str, int, str, int], TcpConnection] = {}
        self.answered: set[tuple[str, int, str, int]] = set()
        self.served: list[tuple[str, int]] = []  #: (client ip, client port) of each request

    def receive(self, frame: Packet, now: float) -> list[Packet]:
        self.last_drop = None
        if frame[Ether].dst == self.mac and IP in frame and frame[IP].proto == 4:
            if not self.decap:
                return self._drop("IP-in-IP, and no decapsulator")
            inner = decapsulate(bytes(frame), self.ip)
            if inner is None:
                return self._drop("IP-in-IP not for me")
            frame = Ether(src=frame[Ether].src, dst=self.mac) / IP(inner)
        ip = self._accept(frame)
        if ip is None:
            return []
        l4 = ip.payload
        if isinstance(l4, UDP):
            if l4.dport != UDP_PORT:
                return self._drop("UDP port closed")
            reply = udp_reply(self.state, l4_payload(ip))
            self.served.append((ip.src, l4.sport))
            back = IP(src=ip.dst, dst=ip.src) / UDP(sport=l4.dport, dport=l4.sport) / reply
            return [self._frame(back)]
        return [self._frame(p) for p in self._tcp(ip, l4, now)]

    def _tcp(self, ip: Packet, tcp: Packet, now: float) -> list[Packet]:
        key = (ip.src, tcp.sport, ip.dst, tcp.dport)
        conn = self.conns.get(key)
        flags = int(tcp.flags)
        if conn is None:
            if flags & RST:
                return self._drop("reset for no connection")
            if tcp.dport != self.http_port or not flags & SYN or flags & ACK:
                self._drop("no listener or no connection: reset")
                return [_reset(ip)]
            conn = self.conns[key] = TcpConnection(
                (ip.dst, tcp.dport), (ip.src, tcp.sport), self.rng.getrandbits(32), self.advmss
            )
            return [conn.accept(ip)]
        try:
            data = conn.receive(ip)
        except TcpError as e:
            self._drop(str(e))
            return [conn.ack()]  # RFC 9293 §3.10.7.4: answer with an ACK
        out = []
        if data:
            out.append(conn.ack())
            request = _complete_request(bytes(conn.received))
            if request is not None and key not in self.answered:
                self.answered.add(key)
                out += conn.send(self._answer(request, ip, tcp, now))
        if conn.state == "CLOSE-WAIT":
            out.append(conn.close())  # the client closed: close too (FIN, ACK)
        if conn.state == "CLOSED":
            del self.conns[key]
            self.answered.discard(key)
        return out

    def _answer(self, request: tuple[str, str, list, bytes], ip, tcp, now: float) -> bytes:
        method, target, headers, body = request
        self.served.append((ip.src, tcp.sport))
        if method == "GET" and target.startswith("/bytes/") and target[7:].isdigit():
            size = min(int(target[7:]), 10_000_000)  # the in-memory backend's extra: N bytes
            answer = (200, [("Content-Type", "application/octet-stream")], b"x" * size)
        else:
            answer = http_answer(
                self.state, method, target, "1.1", headers, len(body),
                (ip.src, tcp.sport), (ip.dst, tcp.dport),
            )  # fmt: skip
        return render(answer, head=False, keep_alive=True, http10=False, now=EPOCH + now)


class L4Box(_Host):
    """The L4 box: every frame it gets goes through :meth:`L4Balancer.handle`, and nothing else."""

    role = "l4"

    def __init__(self, name: str, ip: str, neighbors: Mapping[str, str], lb: L4Balancer):
        super().__init__(name, ip, neighbors)
        self.lb = lb

    def receive(self, frame: Packet, now: float) -> list[Packet]:
        before = Counter(self.lb.counters)
        out = self.lb.handle(frame, now)
        self.last_drop = None
        if not out:
            reasons = [k for k, v in self.lb.counters.items() if v > before[k] and ":" in k]
            why = next((k for k in reasons if k.startswith(("drop:", "pass:"))), "no output")
            self._drop(why)
        return out


def _reset(ip: Packet) -> Packet:
    """The RST a kernel sends for a segment no socket wants (RFC 9293 §3.10.7.1)."""
    tcp = ip.payload
    n = len(l4_payload(ip)) + (1 if tcp.flags & SYN else 0) + (1 if tcp.flags & FIN else 0)
    if tcp.flags & ACK:
        return IP(src=ip.dst, dst=ip.src) / TCP(
            sport=tcp.dport, dport=tcp.sport, seq=tcp.ack, flags="R"
        )
    return IP(src=ip.dst, dst=ip.src) / TCP(
        sport=tcp.dport, dport=tcp.sport, seq=0, ack=(tcp.seq + n) % (1 << 32), flags="RA"
    )


def _split(data: bytes) -> tuple[bytes, bytes] | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    return (head, rest) if sep else None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _complete_request(data: bytes) -> tuple[str, str, list, bytes] | None:
    """``(method, target, headers, body)`` once a whole HTTP/1.1 request is in ``data``."""
    parts = _split(data)
    if parts is None:
        return None
    head, rest = parts
    n = _content_length(head)
    if len(rest) < n:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    return method, target, headers, rest[:n]


def _complete_body(data: bytes) -> bytes | None:
    """The body of a response once all of it (per ``Content-Length``) is in ``data``."""
    parts = _split(data)
    if parts is None:
        return None
    head, rest = parts
    n = _content_length(head)
    return rest[:n] if len(rest) >= n else None


# ------------------------------------------------------------------ the network
class Network:
    """Hosts on one switch; runs whole exchanges and returns their :class:`Trace`.

    ``lb`` is the box's :class:`~lbkit.l4.L4Balancer` (its ``conntrack``,
    ``stats()``, ``set_state``); ``clock`` the simulated time in seconds.
    """

    def __init__(self, mode: str, hosts: list[_Host], box: L4Box, client: ClientHost) -> None:
        self.mode = mode
        self.hosts = {h.name: h for h in hosts}
        self.box = box
        self.client = client
        self.lb = box.lb
        self.vip = VIP
        self.clock = 0.0
        self._by_mac = {h.mac: h for h in hosts}
        self._next_port = FIRST_CLIENT_PORT
        self.names: dict[str, str] = {VIP: "VIP"}
        for h in hosts:
            self.names[h.mac] = h.name
            self.names[h.ip] = h.name

    @property
    def backends(self) -> list[BackendHost]:
        return [h for h in self.hosts.values() if isinstance(h, BackendHost)]

    def addresses(self) -> list[dict[str, str]]:
        """One row per host: name, role, addresses, MAC (the VIP's owners included)."""
        rows = []
        for h in self.hosts.values():
            extra = sorted(h.addresses - {h.ip})
            shown = h.ip + (f" (+ {', '.join(extra)} on lo)" if extra else "")
            if h is self.box:
                shown = f"{h.ip} (+ VIP {VIP})"
            rows.append({"name": h.name, "role": h.role, "ip": shown, "mac": h.mac})
        return rows

    def advance(self, seconds: float) -> None:
        """Let simulated time pass (conntrack entries age, and may expire on their next lookup)."""
        self.clock += seconds

    def _port(self, client_port: int | None) -> int:
        if client_port is not None:
            return client_port
        port, self._next_port = self._next_port, self._next_port + 1
        return port

    def http_get(self, path: str = "/", client_port: int | None = None) -> Trace:
        """One whole exchange, client -> VIP:80: handshake, GET, response, close from both sides."""
        return self.http_request("GET", path, b"", client_port)

    def http_post(self, path: str = "/echo", body: bytes = b"", client_port: int | None = None):
        """As :meth:`http_get`, with a request body (several segments if larger than the MSS)."""
        return self.http_request("POST", path, body, client_port)

    def http_request(
        self, method: str, path: str, body: bytes, client_port: int | None = None
    ) -> Trace:
        port = self._port(client_port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {VIP}\r\nUser-Agent: {USER_AGENT}\r\n"
        head += "Accept: */*\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        request = head.encode() + b"\r\n" + body
        syn = self.client.open_http(VIP, HTTP_PORT, port, request)
        hops = self._run(self.client, [syn])
        ex = self.client.exchanges.pop((VIP, HTTP_PORT, port))
        return self._trace("tcp", port, hops, ex.answer)

    def send_udp(self, payload: bytes | str, client_port: int | None = None) -> Trace:
        """One datagram to VIP:7 and the backend's echo (``NAME: payload``)."""
        data = payload.encode() if isinstance(payload, str) else payload
        port = self._port(client_port)
        dgram = self.client.send_udp(VIP, UDP_PORT, port, data)
        hops = self._run(self.client, [dgram])
        ex = self.client.exchanges.pop((VIP, UDP_PORT, port))
        return self._trace("udp", port, hops, ex.answer)

    def _trace(self, proto: str, port: int, hops: list[Hop], answer: str | None) -> Trace:
        served = [h.at for h in hops if isinstance(self.hosts.get(h.at), BackendHost)]
        return Trace(
            self.mode, proto, port, hops, answer, served[0] if served else None,
            self.box.name, self.client.name, self.client.ip, dict(self.names),
        )  # fmt: skip

    def _run(self, sender: _Host, frames: list[Packet]) -> list[Hop]:
        """Deliver ``frames`` and everything they cause, depth first: one causal chain at a time."""
        queue: deque[tuple[_Host, Packet, Packet | None]] = deque((sender, f, None) for f in frames)
        hops: list[Hop] = []
        while queue:
            if len(hops) >= MAX_HOPS:
                raise RuntimeError(f"more than {MAX_HOPS} hops: a forwarding loop?")
            at, frame, cause = queue.popleft()
            frame = Ether(bytes(frame))  # as on the wire: lengths and checksums filled in
            to = self._by_mac.get(frame[Ether].dst)
            self.clock = round(self.clock + HOP_SECONDS, 9)
            hop = Hop(len(hops) + 1, at.name, to.name if to else "?", frame, time=self.clock)
            if at is self.box and cause is not None:
                hop.changed = changes(cause, frame)
            hops.append(hop)
            if to is None:
                hop.dropped = "no host has this MAC"
                continue
            if len(frame[IP]) > MTU:
                hop.dropped = f"{len(frame[IP])}-byte packet exceeds the {MTU}-byte MTU"
                continue
            out = to.receive(frame, self.clock)
            if to.last_drop:
                hop.dropped = f"{to.name}: {to.last_drop}"
            queue.extendleft(reversed([(to, o, frame) for o in out]))
        return hops


def l4_network(
    mode: str = "nat",
    backends: int = 3,
    algorithm: str = "maglev",
    *,
    seed: int = 0,
    advmss: int | None = None,
) -> Network:
    """The L4 lab in memory: ``client``, ``lb`` (VIP 10.0.1.200) and ``api1``..``apiN``.

    ``advmss`` is the MSS the backends advertise: by default 1440 in tunnel
    mode (as the lab's ``advmss 1440`` route), 1460 otherwise. ``seed``
    fixes the TCP initial sequence numbers and the balancer's seed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not 1 <= backends <= 89:
        raise ValueError("backends must be 1..89 (api1 at 10.0.1.10 up to 10.0.1.98)")
    rng = random.Random(seed)
    names = [f"api{i}" for i in range(1, backends + 1)]
    ips = {n: f"10.0.1.{9 + i}" for i, n in enumerate(names, 1)}
    neighbors = {CLIENT: mac_of(CLIENT), BOX: mac_of(BOX), VIP: mac_of(BOX)}
    neighbors |= {ip: mac_of(ip) for ip in ips.values()}
    port = NAT_BACKEND_PORT if mode == "nat" else HTTP_PORT
    services = [
        Service(VIP, HTTP_PORT, "tcp", [Backend(n, address=f"{ips[n]}:{port}") for n in names],
                algorithm),
        Service(VIP, UDP_PORT, "udp", [Backend(n, address=f"{ips[n]}:{UDP_PORT}") for n in names],
                algorithm),
    ]  # fmt: skip
    lb = L4Balancer(
        services,
        mode=mode,
        self_ip=BOX,
        self_mac=mac_of(BOX),
        neighbors={ip: mac_of(ip) for ip in ips.values()},
        mss_clamp=TUNNEL_MSS if mode == "tunnel" else None,
        seed=seed,
    )
    box = L4Box("lb", BOX, neighbors, lb)
    client = ClientHost("client", CLIENT, neighbors, rng)
    mss = advmss if advmss is not None else TUNNEL_MSS if mode == "tunnel" else DEFAULT_MSS
    hosts: list[_Host] = [client, box]
    for n in names:
        b = BackendHost(
            n, ips[n], neighbors, rng, http_port=port, advmss=mss,
            decap=mode == "tunnel", vip=None if mode == "nat" else VIP,
        )  # fmt: skip
        if mode == "nat":
            b.routes[CLIENT] = BOX  # replies must pass the box to become VIP:80 again
        hosts.append(b)
    return Network(mode, hosts, box, client)


# ------------------------------------------------------------------ live captures
def trace_from_capture(
    packets: Mapping[str, Iterable[Packet]],
    macs: Mapping[str, str],
    *,
    mode: str = "?",
    box: str = "lb",
    client: str = "client",
    client_ip: str = CLIENT,
    names: Mapping[str, str] | None = None,
) -> Trace:
    """A :class:`Trace` from per-host captures of a live lab (``{host: packets}``).

    Each frame counts once, as it left its sender: on the sender's own
    capture, with the sender's MAC as Ethernet source (``macs``: host ->
    MAC). For a frame the box sent, ``changed`` compares it with the latest
    frame the box received before it that carries the same TCP sequence,
    acknowledgement and flags (or the same UDP payload).
    """
    owner = {mac.lower(): host for host, mac in macs.items()}
    sent: list[tuple[float, str, Packet]] = []
    into_box: list[tuple[float, Packet]] = []
    for host, pkts in packets.items():
        mine = macs[host].lower()
        for p in pkts:
            if Ether not in p or IP not in p:
                continue
            if p[Ether].src.lower() == mine:
                sent.append((float(p.time), host, p))
            elif host == box and p[Ether].dst.lower() == mine:
                into_box.append((float(p.time), p))
    sent.sort(key=lambda x: x[0])
    hops = []
    for i, (t, host, p) in enumerate(sent, 1):
        frame = Ether(bytes(p))
        hop = Hop(i, host, owner.get(frame[Ether].dst.lower(), "?"), frame, time=t)
        if host == box:
            cause = _cause(frame, [q for tq, q in into_box if tq <= t])
            if cause is not None:
                hop.changed = changes(Ether(bytes(cause)), frame)
        hops.append(hop)
    if hops:
        t0 = hops[0].time
        for h in hops:
            h.time = round(h.time - t0, 6)
    shown = dict(names or {})
    shown.setdefault(VIP, "VIP")
    for host, mac in macs.items():
        shown.setdefault(mac.lower(), host)
    trace = Trace(mode, "tcp", 0, hops, None, None, box, client, client_ip, shown)
    served = trace.backends()
    trace.backend = served[0] if served else None
    first = next((h for h in hops if h.ip.src == client_ip), None)
    if first is not None:
        trace.client_port = first.ip.payload.sport
        trace.proto = "udp" if isinstance(first.ip.payload, UDP) else "tcp"
    return trace


def _identity(frame: Packet) -> tuple | None:
    ip = frame[IP]
    if ip.proto == 4 and isinstance(ip.payload, IP):
        ip = ip.payload
    l4 = ip.payload
    if isinstance(l4, TCP):
        return ("tcp", l4.seq, l4.ack, int(l4.flags), len(l4_payload(ip)))
    if isinstance(l4, UDP):
        return ("udp", l4_payload(ip))
    return None


def _cause(frame: Packet, received: list[Packet]) -> Packet | None:
    key = _identity(frame)
    if key is None:
        return None
    return next((q for q in reversed(received) if _identity(Ether(bytes(q))) == key), None)
