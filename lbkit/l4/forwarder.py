"""The live L4 forwarder: the sans-I/O :class:`~lbkit.l4.L4Balancer` on a real interface.

A thin adapter. It

* holds the VIP on its interface, so its kernel answers ARP for it, and adds an
  nftables input rule so that same kernel never answers the VIP's TCP/UDP
  itself (a SYN to the VIP would otherwise get a RST from the box);
* reads frames with an AF_PACKET socket, which sees them before the IP layer.
  Frames the box sends itself come back as ``PACKET_OUTGOING`` and are
  skipped: re-forwarding them would flood the segment;
* asks for ``PACKET_AUXDATA``: frames from a veth whose sender offloads
  checksums carry only a partial TCP/UDP checksum (``TP_STATUS_CSUMNOTREADY``),
  and the core must complete it, or the receiver drops the packet;
* keeps its own kernel from forwarding (``ip_forward=0``): only lbkit forwards;
* learns backend MAC addresses from the kernel's neighbour table, after
  prodding the kernel to ARP for them;
* serves counters and the backend-state API on an admin address inside its
  host (JSON, Prometheus text), and cleans everything up on SIGTERM;
* runs the health checks (:class:`~lbkit.l4.health.L4Health`, when the
  config has some) as one more task of the same event loop: probes leave
  from the box's own address to each backend's real address, and every
  change of a backend's state goes to the balancer. The frame handler is
  untouched; the checks cost a few packets per backend per interval.

The ``nftables`` engine instead programs the kernel (DNAT) and only serves the
admin API: the production reference the lbkit engines are measured against.
A backend's state change there re-renders the whole NAT table and loads it
with one ``nft -f`` (one netlink transaction: the numgen/jhash maps are
never seen half-written). Rule counters restart with a new table, so the
forwarder carries their totals across reloads.

A backend going ``down``, and the flows it already has:

* lbkit engines: the core re-picks a tracked flow whose backend is down on
  its next packet (IPVS with ``expire_nodest_conn=1``): a TCP client then
  gets a reset from the new backend and reconnects at once, and a UDP
  "flow", which never ends by itself, moves on instead of being sent to a
  dead backend for as long as the client keeps talking. The checks said
  the backend cannot serve, so holding its flows (IPVS's default) would
  only make them wait for a timeout. ``drain`` (operator) keeps them.
* nftables: the map rewrite changes new connections only; the kernel's
  conntrack keeps the old ones on their backend until they end or expire
  (IPVS's default ``expire_nodest_conn=0``). Ending them needs
  ``conntrack -D`` (conntrack-tools), not installed here.

New flows with no backend up are dropped and counted: ``no_backend_drops``
in /stats and ``lbkit_l4_no_backend_drops_total`` in /metrics (the lbkit
core's ``drop:no-backend``; for nftables the rule that replaces the DNAT
of a service without backends, which drops).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lbkit.algorithms import Backend
from lbkit.lab.errors import LabError
from lbkit.lab.hostsetup import set_sysctl

from . import nft
from .config import L4Config
from .health import Check, L4Health, print_event

ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_HOST = 0
TP_STATUS_CSUMNOTREADY = 0x8
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata (linux/if_packet.h)
SIOCGIFADDR = 0x8915
BATCH = 256  # frames handled per wake-up before yielding to the loop
GUARD_TABLE = "lbkit_l4_guard"
NAT_TABLE = "lbkit_l4"


def iface_mac(iface: str) -> str:
    try:
        return Path(f"/sys/class/net/{iface}/address").read_text().strip()
    except OSError:
        raise LabError(f"interface {iface} not found") from None


def iface_ip(iface: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", iface.encode()[:15]))
        except OSError:
            raise LabError(f"interface {iface} has no IPv4 address") from None
    return socket.inet_ntoa(req[20:24])


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def _sysctl(key: str, value: str | None = None, strict: bool = True) -> str:
    if value is None:
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()
    return set_sysctl(key, value, strict=strict)


def neighbour(ip: str) -> str | None:
    """The MAC the kernel knows for ``ip`` (``ip neigh``), or None."""
    out = _ip("-j", "neigh", "show", "to", ip)
    with contextlib.suppress(ValueError):
        for entry in json.loads(out.stdout or "[]"):
            if entry.get("lladdr") and "FAILED" not in entry.get("state", []):
                return entry["lladdr"]
    return None


def prod_arp(ip: str) -> None:
    """Make the kernel ARP for ``ip`` (a datagram to its discard port, RFC 863)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.sendto(b"", (ip, 9))


class Forwarder:
    """One L4 box: the balancer core plus its interface, rules and admin API."""

    def __init__(self, cfg: L4Config) -> None:
        self.cfg = cfg
        self.lb = None
        self._sock: socket.socket | None = None
        self._undo: list[Callable[[], None]] = []
        self.backends = sorted({(b.name, b.ip) for s in cfg.services for b in s.backends})
        self.health = L4Health(cfg.services, cfg.health, self._apply_health, on_event=print_event)
        self._nft_loaded = False
        self._nft_error: str | None = None
        self._nft_unserved: set[str] = set()  # service keys whose rule drops (no backend)
        self._nft_carry: dict[str, dict[str, int]] = {}  # counters of the tables replaced
        self._nft_no_backend = 0  # no-backend drops counted by tables replaced

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        """Take the VIP, install rules, resolve backends, open the socket."""
        cfg = self.cfg
        mac, ip = iface_mac(cfg.iface), iface_ip(cfg.iface)
        if (
            cfg.vip != ip
            and cfg.vip not in _ip("-4", "-o", "addr", "show", "dev", cfg.iface).stdout
        ):
            done = _ip("addr", "add", f"{cfg.vip}/32", "dev", cfg.iface)
            if done.returncode != 0:
                raise LabError(f"cannot add VIP {cfg.vip} to {cfg.iface}: {done.stderr.strip()}")
            self._undo.append(lambda: _ip("addr", "del", f"{cfg.vip}/32", "dev", cfg.iface))
        if cfg.engine == "nftables":
            self._setup_nftables()
            return
        old = _sysctl("net.ipv4.ip_forward", "0")
        self._undo.append(lambda: _sysctl("net.ipv4.ip_forward", old, strict=False))
        guard = nft.render_vip_guard(
            GUARD_TABLE, [(cfg.vip, s.port, s.proto) for s in cfg.services]
        )
        nft.apply(guard)
        self._undo.append(lambda: nft.delete_table(GUARD_TABLE))
        self.lb = self._make_balancer(ip, mac)
        self.resolve([b_ip for _, b_ip in self.backends], deadline=3.0)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        sock.bind((cfg.iface, 0))
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setblocking(False)
        self._sock = sock

    def _make_balancer(self, ip: str, mac: str):
        from . import L4Balancer, Service

        services = [
            Service(
                vip=self.cfg.vip,
                port=s.port,
                proto=s.proto,
                backends=[Backend(b.name, address=f"{b.ip}:{b.port}") for b in s.backends],
                algorithm=self.cfg.algorithm,
            )
            for s in self.cfg.services
        ]
        return L4Balancer(
            services,
            mode=self.cfg.mode,
            self_ip=ip,
            self_mac=mac,
            neighbors={},
            mss_clamp=self.cfg.mss_clamp,
        )

    def _setup_nftables(self) -> None:
        wanted = nft.nat_sysctls(self.cfg.iface)
        olds = {key: _sysctl(key) for key in wanted}
        for key, value in wanted.items():
            _sysctl(key, value, strict=key.endswith("ip_forward"))  # redirects: all=0 suffices
        self._undo.append(lambda: [_sysctl(k, v, strict=False) for k, v in olds.items()])
        self._apply_nat()
        self._undo.append(lambda: nft.delete_table(NAT_TABLE))

    def _apply_nat(self) -> None:
        """Render the NAT table for the backends up now and load it (one transaction)."""
        algo = {"round_robin": "round_robin", "random": "random"}.get(self.cfg.algorithm, "hash")
        state = self.health.state
        services = [
            nft.NftService(
                self.cfg.vip,
                s.port,
                s.proto,
                [(b.ip, b.port) for b in s.backends if state(b.name, s.proto, s.port) == "up"],
                algo,
            )
            for s in self.cfg.services
        ]
        script = nft.render_nat(NAT_TABLE, services, drop_unserved=True)
        if self._nft_loaded:
            self._carry_nft_counters()
        nft.apply(script)
        self._nft_loaded = True
        self._nft_unserved = {s.key for s in services if not s.backends}

    def _carry_nft_counters(self) -> None:
        """Add the counters of the table about to be replaced to the running totals."""
        try:
            current = nft.counters(NAT_TABLE)
        except LabError:
            return
        for key, value in current.items():
            total = self._nft_carry.setdefault(key, {"packets": 0, "bytes": 0})
            total["packets"] += value["packets"]
            total["bytes"] += value["bytes"]
        self._nft_no_backend += sum(
            current[k]["packets"] for k in self._nft_unserved if k in current
        )

    def _apply_health(self, check: Check, state: str) -> None:
        """A backend's effective state changed (checks or operator): tell the engine."""
        if self.lb is not None:
            self.lb.set_state(check.backend, state, check.services)
        elif self._nft_loaded:
            try:
                self._apply_nat()
            except LabError as e:
                self._nft_error = str(e)
                print(f"health: nft reload failed: {e}", file=sys.stderr, flush=True)

    def resolve(self, ips: list[str], deadline: float = 1.0) -> None:
        """Learn MACs for ``ips`` from the kernel, prodding it to ARP first."""
        for ip in ips:
            prod_arp(ip)
        waiting = set(ips)
        end = time.monotonic() + deadline
        while waiting and time.monotonic() < end:
            for ip in list(waiting):
                mac = neighbour(ip)
                if mac:
                    self.lb.learn(ip, mac)
                    waiting.discard(ip)
            if waiting:
                time.sleep(0.02)

    def teardown(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        while self._undo:
            with contextlib.suppress(Exception):
                self._undo.pop()()

    # --------------------------------------------------------------- serving
    def on_readable(self) -> None:
        """Drain up to BATCH frames: handle each, transmit what comes out."""
        sock, lb = self._sock, self.lb
        fast = self.cfg.engine == "fast"
        now = time.monotonic()
        space = socket.CMSG_SPACE(AUXDATA.size)
        for _ in range(BATCH):
            try:
                data, anc, _flags, addr = sock.recvmsg(65536, space)
            except (BlockingIOError, InterruptedError):
                break
            if addr[2] != PACKET_HOST:
                continue  # our own transmissions (OUTGOING), broadcasts, other hosts' frames
            partial = False
            for level, kind, cdata in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    partial = bool(AUXDATA.unpack_from(cdata)[0] & TP_STATUS_CSUMNOTREADY)
            if fast:
                out = lb.handle_bytes(data, now, partial)
            else:
                from scapy.layers.l2 import Ether

                out = [bytes(p) for p in lb.handle(Ether(data), now, partial)]
            for frame in out:
                with contextlib.suppress(OSError):
                    sock.send(frame)
        if lb.unresolved:
            missing = list(lb.unresolved)
            lb.unresolved.clear()
            asyncio.get_running_loop().run_in_executor(None, self.resolve, missing, 1.0)

    def set_backend(self, name: str, state: str) -> dict:
        """The backend-state API: ``up``, ``down`` or ``drain`` for one backend."""
        if name not in {n for n, _ in self.backends}:
            raise LabError(
                f"no backend named {name!r} (backends: {', '.join(n for n, _ in self.backends)})"
            )
        if state not in ("up", "down", "drain"):
            raise LabError(f"state must be up, down or drain; got {state!r}")
        self._nft_error = None
        self.health.set_operator(name, state)  # admin ready/drain/maint; checks still count
        if self._nft_error:
            raise LabError(self._nft_error)
        return self.stats()

    def stats(self) -> dict:
        base = {
            "vip": self.cfg.vip,
            "mode": self.cfg.mode,
            "engine": self.cfg.engine,
            "algorithm": self.cfg.algorithm,
        }
        health = self.health.report()
        if self.lb is not None:
            drops = self.lb.counters["drop:no-backend"]
            return {**base, **self.lb.stats(), "no_backend_drops": drops, "health": health}
        current = nft.counters(NAT_TABLE)
        totals = {k: dict(v) for k, v in self._nft_carry.items()}
        for key, value in current.items():
            total = totals.setdefault(key, {"packets": 0, "bytes": 0})
            total["packets"] += value["packets"]
            total["bytes"] += value["bytes"]
        drops = self._nft_no_backend + sum(
            current[k]["packets"] for k in self._nft_unserved if k in current
        )
        down = sorted(
            {self.health.checks[k].backend for k, v in self.health.states().items() if v != "up"}
        )
        return {**base, "down": down, "nft": totals, "no_backend_drops": drops, "health": health}

    def health_report(self) -> dict:
        """The ``health`` control op's answer: backends' states and the latest transitions."""
        return self.health.report()

    async def serve(
        self, on_ready: Callable[[], None] | None = None, control_path: str | None = None
    ) -> None:
        """Set up, serve until cancelled, then undo everything set up."""
        from .admin import serve_admin

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.setup)
        try:
            if self._sock is not None:
                loop.add_reader(self._sock.fileno(), self.on_readable)
            async with serve_admin(self, control_path), self.health.running():
                if on_ready is not None:
                    on_ready()
                while True:
                    await asyncio.sleep(1.0)
                    if self.lb is not None:
                        self.lb.expire(time.monotonic())
        finally:
            if self._sock is not None:
                loop.remove_reader(self._sock.fileno())
            self.teardown()
