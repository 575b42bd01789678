"""The L4 balancer: one decision per frame, then a rewrite on scapy packets or on bytes.

Sans-I/O (h11's shape): frames in, frames out, ``now`` passed in. The
AF_PACKET forwarder, the in-memory lab network and the tests all drive the
same object::

    lb = L4Balancer([Service("10.0.1.200", 80, "tcp", backends)], mode="nat",
                    self_ip="10.0.1.2", self_mac="02:00:00:00:00:02", neighbors={...})
    out = lb.handle_bytes(frame, now)      # list[bytes]: frames to transmit

Both :meth:`L4Balancer.handle` (scapy, readable) and
:meth:`L4Balancer.handle_bytes` (the fast path) parse the frame's bytes with
the same parsers (:mod:`lbkit.l4.flow`) and call the same decision
function, which owns the conntrack and the per-service balancers
(:mod:`lbkit.algorithms`); only the rewrite differs
(:mod:`lbkit.l4.rewrite` vs :mod:`lbkit.l4.fastpath`).

What happens to a frame, in the order checked (every case bumps
``counters[reason]``; "pass" and "drop" both return ``[]``: a pass is
traffic that is not ours, left to the host's own stack, a drop is traffic
that is ours and cannot be forwarded):

==================== ===========================================================
reason               when
==================== ===========================================================
drop:truncated       shorter than an Ethernet header, an IPv4 header, the IP total
                     length, the TCP/UDP header, or an ICMP error's quote
pass:own-frame       Ethernet source is ``self_mac`` (AF_PACKET shows us our own sends)
pass:not-for-us      Ethernet destination is neither ``self_mac`` nor broadcast
pass:non-ip          EtherType is not IPv4 (ARP, IPv6, VLAN tags...)
drop:bad-version     EtherType IPv4 but version field not 4
drop:bad-ihl         IHL < 5, or a header longer than the total length
drop:bad-checksum    IPv4 header checksum wrong (RFC 1122 §3.2.1.2)
drop:fragment        a fragment (MF or offset > 0) to a VIP, or from a NAT backend:
                     ports cannot be read from later fragments, and IPVS
                     defragments first (``ip_vs_gather_frags``); we do not
drop:bad-tcp-offset  TCP data offset < 5 or past the packet's end
pass:not-for-vip     not TCP/UDP to a configured VIP:port, not ICMP to a VIP, and
                     not a reply (or ICMP error) from a backend of a tracked NAT flow
pass:icmp-unknown    an ICMP error to a VIP (or from a NAT backend) quoting a flow
                     we do not track
drop:ttl             TTL <= 1 on a packet we would forward (RFC 1812 §5.3.1; IPVS
                     ``decrement_ttl()`` in ``ip_vs_xmit.c``). Unlike IPVS we do not
                     then decrement TTL, so DR and tunnel hand the backend the
                     client's IP header byte for byte; no ICMP time-exceeded is sent
drop:no-backend      a new flow and no backend up (:class:`NoBackendAvailable`)
drop:unresolved      the backend's MAC is unknown; its IP is added to ``unresolved``
                     for the adapter to ARP, then :meth:`L4Balancer.learn`
drop:error           an unexpected exception (a bug): caught, counted, never raised;
                     ``last_error`` holds its repr
==================== ===========================================================

Forwarded frames count ``tx`` and ``backend:<name>`` (client -> backend);
conntrack events count ``conntrack:new``, ``conntrack:midstream`` (a TCP
packet without SYN of an unknown flow: picked afresh, which Maglev maps to
the same backend another balancer would pick), ``conntrack:repicked`` (the
flow's backend is down: IPVS ``expire_nodest_conn``), ``conntrack:reused``
(a SYN on a closing flow), ``conntrack:expired``, ``conntrack:evicted``;
ICMP errors forwarded count ``icmp:to-backend`` or ``icmp:to-client``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from scapy.layers.l2 import Ether
from scapy.packet import Packet

from lbkit.algorithms import Backend, Balancer, NoBackendAvailable, make_balancer

from . import fastpath, icmp, rewrite
from .conntrack import Conntrack, Entry, Target, tcp_next
from .flow import (
    ACK,
    BROADCAST,
    ETH_IPV4,
    ICMP,
    PROTO_NAMES,
    PROTO_NUMBERS,
    SYN,
    TCP,
    UDP,
    FlowKey,
    IPv4,
    Ports,
    ip_bytes,
    mac_bytes,
    mac_str,
    parse_ipv4,
    parse_ports,
)

#: Forwarding methods: LVS-NAT, LVS-DR (direct server return), LVS-TUN / Katran (IP-in-IP).
MODES = ("nat", "dsr", "tunnel")

# What a decision asks the rewriter to do.
FORWARD, REPLY, ICMP_FORWARD, ICMP_REPLY = "forward", "reply", "icmp-forward", "icmp-reply"


@dataclass
class Service:
    """A virtual service: VIP:port/proto and its pool (``ipvsadm -A -t vip:port -s ...``).

    Each backend needs ``address="ip:port"`` (or ``"ip"``: the service port).
    """

    vip: str
    port: int
    proto: str = "tcp"
    backends: list[Backend] = field(default_factory=list)
    algorithm: str = "maglev"

    def __post_init__(self) -> None:
        if self.proto not in PROTO_NUMBERS:
            raise ValueError(f"service proto must be 'tcp' or 'udp', got {self.proto!r}")
        ip_bytes(self.vip)
        if not 0 < self.port < 65536:
            raise ValueError(f"service port out of range: {self.port}")
        if not self.backends:
            raise ValueError(f"service {self.vip}:{self.port}/{self.proto} has no backends")
        for b in self.backends:
            backend_address(b, self.port)

    def __str__(self) -> str:
        return f"{self.proto} {self.vip}:{self.port}"


def backend_address(backend: Backend, default_port: int) -> tuple[str, int]:
    """``Backend.address`` as ``(ip, port)``; ValueError if missing or malformed."""
    if not backend.address:
        raise ValueError(f"backend {backend.name!r} needs address='ip:port'")
    ip, _, port = backend.address.partition(":")
    try:
        ip_bytes(ip)
        p = int(port) if port else default_port
    except (OSError, ValueError):
        raise ValueError(f"backend {backend.name!r}: bad address {backend.address!r}") from None
    if not 0 < p < 65536:
        raise ValueError(f"backend {backend.name!r}: port out of range in {backend.address!r}")
    return ip, p


@dataclass(eq=False)
class _Pool:
    service: Service
    balancer: Balancer
    targets: dict[Backend, Target]


class L4Balancer:
    """A sans-I/O L4 load balancer over several services, in one forwarding mode.

    ``neighbors`` maps IP -> MAC for the backends (it is the dict the
    balancer reads: mutate ``lb.neighbors`` or call :meth:`learn`).
    ``timeouts`` overrides :data:`lbkit.l4.conntrack.TIMEOUTS` per state.
    ``seed`` seeds every service's balancer.

    ``mss_clamp``: lower the MSS option of client SYNs to the VIP to this
    value when larger, in every mode (RFC 6691 §2; iptables ``TCPMSS``).
    IP-in-IP adds a 20-byte header (RFC 2003 §3.1), so on a 1500-byte MTU
    the adapter passes 1440 = 1500 - 20 (outer IP) - 20 (IP) - 20 (TCP).
    Mind the direction: the MSS in the client's SYN caps the segments the
    backend sends to the client; the client's own segments, the ones the
    tunnel wraps, are capped by the MSS of the backend's SYN-ACK, which in
    DSR and tunnel mode never passes here. The backend has to advertise
    the lower MSS itself for those (``ip route ... advmss 1440``).
    """

    def __init__(
        self,
        services: Iterable[Service],
        mode: str = "nat",
        self_ip: str | None = None,
        self_mac: str | None = None,
        neighbors: Mapping[str, str] | None = None,
        conntrack_size: int = 65536,
        mss_clamp: int | None = None,
        seed: int = 0,
        timeouts: Mapping[str, float] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if self_mac is None:
            raise ValueError("self_mac is required: the MAC frames to the balancer arrive at")
        if mode == "tunnel" and self_ip is None:
            raise ValueError("tunnel mode needs self_ip: the outer source address")
        if mss_clamp and not 88 <= mss_clamp <= 65535:
            raise ValueError(f"mss_clamp must be in 88..65535, or None for off; got {mss_clamp}")
        self.mode = mode
        self.self_mac = mac_str(mac_bytes(self_mac))
        self.self_ip = self_ip
        self.mss_clamp = mss_clamp
        self.neighbors: dict[str, str] = dict(neighbors or {})
        self.unresolved: set[str] = set()
        self.counters: Counter[str] = Counter(rx=0, tx=0)
        self.last_error: str | None = None
        self.conntrack = Conntrack(conntrack_size, timeouts, on_remove=self._on_remove)
        self._mac = mac_bytes(self_mac)
        self._self_ip4 = ip_bytes(self_ip) if self_ip else b""
        self._mss = mss_clamp or 0
        self._l2: dict[str, bytes] = {}
        self._pools: dict[tuple[int, str, int], _Pool] = {}
        self._by_name: dict[str, list[tuple[_Pool, Target]]] = {}
        for svc in services:
            self._add_service(svc, seed)
        if not self._pools:
            raise ValueError("L4Balancer needs at least one service")
        self._vips = frozenset(k[1] for k in self._pools)
        self._backend_ips = frozenset(t.ip for pairs in self._by_name.values() for _, t in pairs)

    def _add_service(self, svc: Service, seed: int) -> None:
        key = (PROTO_NUMBERS[svc.proto], svc.vip, svc.port)
        if key in self._pools:
            raise ValueError(f"duplicate service {svc}")
        balancer = make_balancer(svc.algorithm, svc.backends, seed=seed)
        pool = _Pool(svc, balancer, {})
        for b in svc.backends:
            ip, port = backend_address(b, svc.port)
            if self.mode != "nat" and port != svc.port:
                raise ValueError(
                    f"{self.mode} mode cannot change ports: backend {b.name!r} listens on "
                    f"{port}, service {svc} (only NAT rewrites the port)"
                )
            t = Target(svc.proto, svc.vip, svc.port, b, ip, port, balancer)
            pool.targets[b] = t
            self._by_name.setdefault(b.name, []).append((pool, t))
        self._pools[key] = pool

    # ------------------------------------------------------------------ public API
    def handle(self, frame: Packet, now: float, csum_partial: bool = False) -> list[Packet]:
        """Process one received frame (scapy); return the frames to transmit (scapy).

        The readable path: the decision is shared with :meth:`handle_bytes`,
        the rewrite is done on a scapy packet dissected from the frame's bytes
        (the caller's packet is never modified). Never raises.
        """
        self.counters["rx"] += 1
        try:
            data = frame if isinstance(frame, bytes) else bytes(frame)
            v = self._decide(data, now)
            if v is None:
                return []
            out = self._rewrite_scapy(v, data, csum_partial)
            self.counters["tx"] += 1
            return [out]
        except Exception as exc:  # the contract: count, never raise
            return self._error(exc)

    def handle_bytes(self, frame: bytes, now: float, csum_partial: bool = False) -> list[bytes]:
        """Process one received frame (bytes); return the frames to transmit. The fast path.

        Byte-identical to ``[bytes(p) for p in handle(Ether(frame), ...)]`` on
        valid frames. Never raises.
        """
        self.counters["rx"] += 1
        try:
            if type(frame) is not bytes:
                frame = bytes(frame)
            v = self._decide(frame, now)
            if v is None:
                return []
            kind, e, l2, ip, l4 = v
            t = e.target
            mode = self.mode
            if kind is FORWARD:
                mss = self._mss if ip.proto == TCP else 0
                if mode == "nat":
                    out = fastpath.nat_to_backend(frame, ip, l4, t, l2, csum_partial, mss)
                elif mode == "dsr":
                    out = fastpath.direct(frame, ip, l4, l2, csum_partial, mss)
                else:
                    out = fastpath.tunnel(frame, ip, l4, t, l2, self._self_ip4, csum_partial, mss)
            elif kind is REPLY:
                out = fastpath.nat_to_client(frame, ip, l4, t, l2, csum_partial)
            elif kind is ICMP_REPLY:
                out = icmp.nat_to_client_bytes(frame, ip, l4, t, l2)
            elif mode == "nat":
                out = icmp.nat_to_backend_bytes(frame, ip, l4, t, l2)
            elif mode == "dsr":
                out = fastpath.direct(frame, ip, None, l2, False, 0)
            else:
                out = fastpath.tunnel(frame, ip, None, t, l2, self._self_ip4, False, 0)
            self.counters["tx"] += 1
            return [out]
        except Exception as exc:
            return self._error(exc)

    def set_state(
        self,
        backend: Backend | str,
        state: str,
        services: Collection[tuple[str, int]] | None = None,
    ) -> None:
        """Set a backend ``up``, ``down`` or ``drain`` in every service that has it.

        ``services``: only in these, as ``(proto, port)`` (a health check of
        one backend port decides for the services it covers).
        ``drain``: no new flows, existing ones continue. ``down``: no new
        flows, and each existing flow is re-picked on its next packet.
        """
        for pool, t in self._targets(backend):
            if services is None or (pool.service.proto, pool.service.port) in services:
                pool.balancer.set_state(t.backend, state)
                t.state = state

    def set_weight(self, backend: Backend | str, weight: int) -> None:
        """Change a backend's weight in every service that has it (new flows only)."""
        for pool, t in self._targets(backend):
            pool.balancer.set_weight(t.backend, weight)

    def learn(self, ip: str, mac: str) -> None:
        """Record ``ip`` is at ``mac`` (an ARP reply the adapter saw)."""
        self.neighbors[ip] = mac_str(mac_bytes(mac))
        self.unresolved.discard(ip)

    def expire(self, now: float) -> list[Entry]:
        """Sweep the conntrack: remove (and return) the flows idle past their timeout."""
        return self.conntrack.expire(now)

    @property
    def services(self) -> list[Service]:
        return [p.service for p in self._pools.values()]

    def stats(self) -> dict[str, object]:
        """Counters, conntrack occupancy and every service's backends, JSON-able."""
        ct = self.conntrack
        return {
            "mode": self.mode,
            "counters": dict(sorted(self.counters.items())),
            "conntrack": {
                "size": len(ct),
                "max": ct.size,
                "evicted": ct.evicted,
                "expired": ct.expired,
            },
            "unresolved": sorted(self.unresolved),
            "services": [
                {
                    "vip": p.service.vip,
                    "port": p.service.port,
                    "proto": p.service.proto,
                    "algorithm": p.service.algorithm,
                    "backends": [
                        {
                            "name": row["name"],
                            "address": f"{t.ip}:{t.port}",
                            "state": row["state"],
                            "weight": row["weight"],
                            "active": row["active"],
                            "packets": self.counters[t.counter],
                        }
                        for row, t in zip(p.balancer.stats(), p.targets.values(), strict=True)
                    ],
                }
                for p in self._pools.values()
            ],
        }

    # ------------------------------------------------------------------ the decision
    def _decide(self, frame: bytes, now: float) -> tuple | None:
        """Parse, classify, consult conntrack and the balancer: ``(kind, entry, l2, ip, l4)``.

        Returns None after counting why the frame is not forwarded.
        """
        c = self.counters
        if len(frame) < 14:
            c["drop:truncated"] += 1
            return None
        mac = self._mac
        if frame.startswith(mac, 6):
            c["pass:own-frame"] += 1
            return None
        if not frame.startswith(mac) and not frame.startswith(BROADCAST):
            c["pass:not-for-us"] += 1
            return None
        if not frame.startswith(ETH_IPV4, 12):
            c["pass:non-ip"] += 1
            return None
        ip = parse_ipv4(frame)
        if type(ip) is str:
            c[ip] += 1
            return None
        proto = ip.proto
        if ip.dst in self._vips:
            if ip.fragment:
                c["drop:fragment"] += 1
                return None
            if proto in (TCP, UDP):
                ports = parse_ports(frame, ip)
                if type(ports) is str:
                    c[ports] += 1
                    return None
                pool = self._pools.get((proto, ip.dst, ports.dport))
                if pool is not None:
                    return self._inbound(frame, ip, ports, pool, now)
            elif proto == ICMP:
                return self._icmp_inbound(frame, ip, now)
        elif self.mode == "nat" and ip.src in self._backend_ips:
            if ip.fragment:
                c["drop:fragment"] += 1
                return None
            if proto in (TCP, UDP):
                return self._reply(frame, ip, now)
            if proto == ICMP:
                return self._icmp_reply(frame, ip, now)
        c["pass:not-for-vip"] += 1
        return None

    def _inbound(self, frame: bytes, ip: IPv4, ports: Ports, pool: _Pool, now: float):
        if ip.ttl <= 1:
            self.counters["drop:ttl"] += 1
            return None
        ct = self.conntrack
        key = (pool.service.proto, ip.src, ports.sport, ip.dst, ports.dport)
        flags = ports.flags
        tcp = ip.proto == TCP
        e = ct.get(key, now)
        repicked = False
        if e is not None:
            if e.target.state == "down":  # IPVS expire_nodest_conn: pick again
                ct.remove(e, now, "repicked")
                e, repicked = None, True
            elif tcp and e.state == "closing" and flags & SYN and not flags & ACK:
                ct.remove(e, now, "reused")  # IPVS conn_reuse_mode: a new connection
                e = None
        if e is None:
            state = tcp_next(None, flags) if tcp else "udp"
            e = self._new_flow(FlowKey(*key), pool, frame[6:12], state, now)
            if e is None:
                return None
            self.counters["conntrack:new"] += 1
            if tcp and not repicked and not (flags & SYN and not flags & ACK):
                self.counters["conntrack:midstream"] += 1
        else:
            e.client_mac = frame[6:12]
            ct.touch(e, now, tcp_next(e.state, flags) if tcp else "udp")
        t = e.target
        l2 = self._l2_to(t.ip)
        if l2 is None:
            return None
        self.counters[t.counter] += 1
        return (FORWARD, e, l2, ip, ports)

    def _new_flow(self, key: FlowKey, pool: _Pool, client_mac: bytes, state: str, now: float):
        try:
            backend = pool.balancer.pick(key.flow(), now)
        except NoBackendAvailable:
            self.counters["drop:no-backend"] += 1
            return None
        e = self.conntrack.add(key, pool.targets[backend], client_mac, state, now)
        pool.balancer.on_start(backend, now)
        self.conntrack.touch(e, now, state)
        return e

    def _reply(self, frame: bytes, ip: IPv4, now: float):
        ports = parse_ports(frame, ip)
        if type(ports) is str:
            self.counters[ports] += 1
            return None
        proto = PROTO_NAMES[ip.proto]
        e = self.conntrack.get_reply((proto, ip.src, ports.sport, ip.dst, ports.dport), now)
        if e is None:
            self.counters["pass:not-for-vip"] += 1
            return None
        if ip.ttl <= 1:
            self.counters["drop:ttl"] += 1
            return None
        state = tcp_next(e.state, ports.flags, from_client=False) if proto == "tcp" else "udp"
        self.conntrack.touch(e, now, state)
        return (REPLY, e, e.client_mac + self._mac, ip, ports)

    def _quote(self, frame: bytes, ip: IPv4):
        """The packet an ICMP error quotes, or None (counted: not ours, or malformed)."""
        q = icmp.parse_quote(frame, ip)
        if q is None:
            self.counters["pass:not-for-vip"] += 1
            return None
        if type(q) is str:
            self.counters[q] += 1
            return None
        return q

    def _icmp_inbound(self, frame: bytes, ip: IPv4, now: float):
        q = self._quote(frame, ip)
        if q is None:
            return None
        proto = PROTO_NAMES.get(q.proto)
        # The quoted packet is one the VIP sent: VIP:vport -> client.
        e = (
            None
            if proto is None
            else self.conntrack.get((proto, q.dst, q.dport, q.src, q.sport), now)
        )
        if e is None:
            self.counters["pass:icmp-unknown"] += 1
            return None
        if ip.ttl <= 1:
            self.counters["drop:ttl"] += 1
            return None
        t = e.target
        l2 = self._l2_to(t.ip)
        if l2 is None:
            return None
        self.counters["icmp:to-backend"] += 1
        self.counters[t.counter] += 1
        return (ICMP_FORWARD, e, l2, ip, q)

    def _icmp_reply(self, frame: bytes, ip: IPv4, now: float):
        q = self._quote(frame, ip)
        if q is None:
            return None
        proto = PROTO_NAMES.get(q.proto)
        # The quoted packet is one the backend received: client -> backend ip:port.
        rkey = (proto, q.dst, q.dport, q.src, q.sport)
        e = None if proto is None else self.conntrack.get_reply(rkey, now)
        if e is None:
            self.counters["pass:icmp-unknown"] += 1
            return None
        if ip.ttl <= 1:
            self.counters["drop:ttl"] += 1
            return None
        self.counters["icmp:to-client"] += 1
        return (ICMP_REPLY, e, e.client_mac + self._mac, ip, q)

    # ------------------------------------------------------------------ helpers
    def _l2_to(self, ip: str) -> bytes | None:
        """Destination + source MAC for a frame to ``ip``, or None (counted) if unknown."""
        mac = self.neighbors.get(ip)
        if mac is None:
            self.unresolved.add(ip)
            self.counters["drop:unresolved"] += 1
            return None
        l2 = self._l2.get(mac)
        if l2 is None:
            l2 = self._l2[mac] = mac_bytes(mac) + self._mac
        return l2

    def _rewrite_scapy(self, v: tuple, data: bytes, csum_partial: bool) -> Packet:
        kind, e, l2, ip, l4 = v
        t = e.target
        pkt = Ether(data[: ip.end])
        if kind is FORWARD:
            if self._mss and ip.proto == TCP and l4.flags & SYN:
                rewrite.clamp_mss(pkt, self._mss)
            if self.mode == "nat":
                rewrite.nat_to_backend(pkt, t.ip, t.port)
            elif csum_partial:
                rewrite.refresh_l4_checksum(pkt)
        elif kind is REPLY:
            rewrite.nat_to_client(pkt, t.vip, t.vport)
        elif kind is ICMP_REPLY:
            icmp.nat_to_client(pkt, t.vip, t.vport)
        elif self.mode == "nat":
            icmp.nat_to_backend(pkt, t.ip, t.port)
        if self.mode == "tunnel" and kind in (FORWARD, ICMP_FORWARD):
            pkt = rewrite.encapsulate(pkt, self.self_ip, t.ip)
        rewrite.set_l2(pkt, self.self_mac, mac_str(l2[:6]))
        return Ether(bytes(pkt))  # re-dissected: checksums and lengths as sent

    def _targets(self, backend: Backend | str) -> list[tuple[_Pool, Target]]:
        name = backend if isinstance(backend, str) else backend.name
        pairs = self._by_name.get(name)
        if not pairs:
            raise KeyError(f"no backend named {name!r} in any service")
        return pairs

    def _on_remove(self, e: Entry, now: float, reason: str) -> None:
        t = e.target
        t.balancer.on_finish(t.backend, now)
        self.counters[f"conntrack:{reason}"] += 1

    def _error(self, exc: Exception) -> list:
        self.counters["drop:error"] += 1
        self.last_error = repr(exc)
        return []
