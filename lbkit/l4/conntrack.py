"""Connection tracking: which backend each flow went to, bounded, with IPVS-like timeouts.

An L4 balancer must send every packet of a connection to the backend its
first packet went to, even after the pool changes: the table here remembers
that choice (IPVS ``struct ip_vs_conn``, Katran's ``lru_mapping``).

* Key: :class:`~lbkit.l4.flow.FlowKey` ``(proto, client_ip, client_port,
  vip, vport)``; a reverse index finds NAT replies by ``(proto, backend_ip,
  backend_port, client_ip, client_port)`` (IPVS ``ip_vs_conn_out_get``).
  Two flows that differ only by VIP but reach the same backend address have
  the same reply key; the newer one wins it, as it would in any NAT.
* Bounded: at ``size`` entries the least recently used is evicted
  (``OrderedDict``, as Katran bounds its LRU map), counted in ``evicted``.
* Timeouts by state, from IPVS ``tcp_timeouts[]`` / ``udp_timeouts[]``
  (``net/netfilter/ipvs/ip_vs_proto_tcp.c``, ``ip_vs_proto_udp.c``; the
  ``ipvsadm --set tcp tcpfin udp`` defaults are ``900 120 300``):

  * ``new``, 60 s: a client SYN seen (IPVS ``SYN_RECV``, ``1*60*HZ``);
  * ``established``, 900 s: a packet without SYN from the client
    (``ESTABLISHED``, ``15*60*HZ``);
  * ``closing``, 120 s: FIN or RST seen in a direction we see (``FIN_WAIT``,
    ``2*60*HZ``; IPVS puts a RST in ``CLOSE``, 10 s: we fold it into closing);
  * ``udp``, 300 s: any UDP packet (``IP_VS_UDP_S_NORMAL``, ``5*60*HZ``).

  Every packet restarts its entry's timer. Expiry is lazy (a lookup with
  ``now`` finds an entry idle for its timeout or longer gone) plus
  :meth:`Conntrack.expire` to sweep. Time is whatever clock the caller
  passes as ``now``; nothing here reads one.
* ``on_remove(entry, now, reason)`` is called for every entry that leaves
  (``expired``, ``evicted``, or a reason the caller gives :meth:`Conntrack.remove`):
  the balancer uses it for ``on_finish``, so least-connections counts stay true.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from lbkit.algorithms import Backend, Balancer

from .checksum import ones_sum
from .flow import ACK, FIN, RST, SYN, FlowKey, ReplyKey, ip_bytes

#: Seconds an idle entry lives in each state (see the module docstring for the sources).
TIMEOUTS: dict[str, float] = {"new": 60.0, "established": 900.0, "closing": 120.0, "udp": 300.0}
TCP_STATES = ("new", "established", "closing")


@dataclass(eq=False, slots=True)
class Target:
    """One backend of one service, and what a rewrite to or from it needs, precomputed.

    ``d_ip`` and ``d_l4`` are the RFC 1624 checksum deltas of the NAT rewrite
    VIP:vport -> backend ip:port (see :func:`lbkit.l4.checksum.update`);
    replies use their negation. ``state`` mirrors the balancer's view of the
    backend and is kept in step by :meth:`L4Balancer.set_state`.
    """

    proto: str
    vip: str
    vport: int
    backend: Backend
    ip: str
    port: int
    balancer: Balancer
    state: str = "up"
    vip4: bytes = field(init=False)
    ip4: bytes = field(init=False)
    counter: str = field(init=False)
    d_ip: int = field(init=False)
    d_l4: int = field(init=False)

    def __post_init__(self) -> None:
        self.vip4, self.ip4 = ip_bytes(self.vip), ip_bytes(self.ip)
        self.counter = f"backend:{self.backend.name}"
        self.d_ip = ones_sum(self.vip4) - ones_sum(self.ip4)
        self.d_l4 = self.d_ip + self.vport - self.port


@dataclass(eq=False, slots=True)
class Entry:
    """One tracked flow: where it goes and what we have seen of it."""

    key: FlowKey
    target: Target
    client_mac: bytes  #: L2 source of the client's frames: where NAT replies go
    state: str
    created: float
    last_seen: float
    packets: int = 0

    @property
    def reply_key(self) -> ReplyKey:
        k, t = self.key, self.target
        return (k.proto, t.ip, t.port, k.client_ip, k.client_port)


def tcp_next(state: str | None, flags: int, from_client: bool = True) -> str:
    """The TCP state after a packet with ``flags`` (``state`` None: a flow not seen yet).

    FIN or RST -> closing, from either side. A client packet without SYN moves
    new -> established; a flow first seen without SYN (midstream) starts
    established. Closing never goes back: a new SYN there is a new connection
    reusing the port, which the balancer handles (IPVS ``conn_reuse_mode``).
    """
    if flags & (FIN | RST):
        return "closing"
    if state is None:
        return "new" if flags & SYN and not flags & ACK else "established"
    if state == "new" and from_client and not flags & SYN:
        return "established"
    return state


class Conntrack:
    """The flow table: bounded LRU, lazy per-state timeouts, a reverse index for NAT replies."""

    def __init__(
        self,
        size: int = 65536,
        timeouts: Mapping[str, float] | None = None,
        on_remove: Callable[[Entry, float, str], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"conntrack size must be >= 1, got {size}")
        self.size = size
        self.timeouts: dict[str, float] = {**TIMEOUTS, **(timeouts or {})}
        self.on_remove = on_remove
        self.evicted = 0
        self.expired = 0
        self.now = 0.0  #: the latest ``now`` seen: the clock rows() uses by default
        self._table: OrderedDict[FlowKey, Entry] = OrderedDict()
        self._reply: dict[ReplyKey, Entry] = {}

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._table.values()))

    # ----------------------------------------------------------------- lookups
    def get(self, key: FlowKey | tuple, now: float) -> Entry | None:
        """The live entry for ``key``; an entry past its timeout is removed and None returned."""
        e = self._table.get(key)
        if e is not None and now - e.last_seen >= self.timeouts[e.state]:
            self.expired += 1
            self._drop(e, now, "expired")
            return None
        return e

    def get_reply(self, rkey: ReplyKey | tuple, now: float) -> Entry | None:
        """The live entry whose backend sends ``rkey``, or None (lazy expiry, as :meth:`get`)."""
        e = self._reply.get(rkey)
        return None if e is None else self.get(e.key, now)

    # ----------------------------------------------------------------- updates
    def add(self, key: FlowKey, target: Target, client_mac: bytes, state: str, now: float) -> Entry:
        """Track a new flow; at ``size`` entries the least recently used one is evicted first."""
        old = self._table.get(key)
        if old is not None:
            self._drop(old, now, "replaced")
        while len(self._table) >= self.size:
            oldest = next(iter(self._table.values()))
            if now - oldest.last_seen >= self.timeouts[oldest.state]:
                self.expired += 1
                self._drop(oldest, now, "expired")
            else:
                self.evicted += 1
                self._drop(oldest, now, "evicted")
        e = Entry(key, target, client_mac, state, now, now, 0)
        self._table[key] = e
        self._reply[e.reply_key] = e
        self.now = max(self.now, now)
        return e

    def touch(self, e: Entry, now: float, state: str) -> None:
        """A packet of ``e`` passed at ``now``: restart its timer, set ``state``, mark it recent."""
        e.last_seen = now
        e.state = state
        e.packets += 1
        self._table.move_to_end(e.key)
        if now > self.now:
            self.now = now

    def remove(self, e: Entry, now: float, reason: str = "removed") -> None:
        """Forget ``e`` (``on_remove`` is told ``reason``)."""
        if self._table.get(e.key) is e:
            self._drop(e, now, reason)

    def expire(self, now: float) -> list[Entry]:
        """Remove and return every entry idle for its timeout or longer at ``now``.

        Walks from the least recently used entry and stops at the first one
        younger than the shortest timeout: everything after it is younger still.
        """
        shortest = min(self.timeouts.values())
        gone = []
        for e in list(self._table.values()):
            idle = now - e.last_seen
            if idle < shortest:
                break
            if idle >= self.timeouts[e.state]:
                gone.append(e)
        for e in gone:
            self.expired += 1
            self._drop(e, now, "expired")
        self.now = max(self.now, now)
        return gone

    def clear(self, now: float) -> None:
        """Forget every flow (each one reported to ``on_remove`` as ``cleared``)."""
        for e in list(self._table.values()):
            self._drop(e, now, "cleared")

    def _drop(self, e: Entry, now: float, reason: str) -> None:
        del self._table[e.key]
        rk = e.reply_key
        if self._reply.get(rk) is e:
            del self._reply[rk]
        if self.on_remove is not None:
            self.on_remove(e, now, reason)

    # ----------------------------------------------------------------- display
    def rows(self, now: float | None = None) -> list[dict[str, object]]:
        """One JSON-able dict per flow, most recent last (``now`` defaults to the latest seen)."""
        t = self.now if now is None else now
        return [
            {
                "proto": e.key.proto,
                "client": f"{e.key.client_ip}:{e.key.client_port}",
                "vip": f"{e.key.vip}:{e.key.vport}",
                "backend": e.target.backend.name,
                "backend_address": f"{e.target.ip}:{e.target.port}",
                "state": e.state,
                "packets": e.packets,
                "age": round(t - e.created, 3),
                "idle": round(t - e.last_seen, 3),
            }
            for e in self._table.values()
        ]
