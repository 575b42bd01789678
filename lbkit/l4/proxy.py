"""L4 without raw packets: a TCP/UDP proxy, for the ``local`` provider (no root).

A packet-level L4 box needs AF_PACKET and a VIP, so root on Linux. Without
them the lab still balances at L4 the way HAProxy's ``mode tcp`` does: accept
the client's connection, pick a backend with the same algorithm, open a second
connection to it and copy bytes both ways, never reading them. The learner
sees the same spread and the same stickiness per connection; what changes is
that the backend sees the proxy's address, not the client's (NAT mode keeps
the client IP; a proxy cannot). UDP: one upstream socket per client address.

Health (:func:`proxy_health`): the same checks as the packet forwarder, aimed
at each backend's loopback address; a backend marked down gets no new
connection. Connections already relayed to it stay: a byte stream cannot
move to another backend, and the proxy does not cut it. With no backend up
a new TCP connection is closed at once (the kernel has already accepted it:
a proxy cannot drop a SYN) and a UDP datagram is dropped, both counted as
``drop:no-backend``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from lbkit.algorithms import Backend, Flow, NoBackendAvailable, make_balancer
from lbkit.health import Transition
from lbkit.lab.errors import LabError

from .config import L4Config
from .health import Check, L4Health, print_event

NOTICE = (
    "L4 proxy mode (local provider, no root): connections are relayed, not packets "
    "rewritten; backends see the proxy's address. The netns provider runs the real "
    "packet-level forwarder."
)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


class L4Proxy:
    """One VIP port relayed to a pool, chosen per connection (TCP) or client (UDP)."""

    def __init__(
        self,
        vip: str,
        port: int,
        proto: str,
        backends: list[tuple[str, str, int]],
        algorithm: str = "maglev",
    ) -> None:
        self.vip, self.port, self.proto = vip, port, proto
        self.targets = {name: (ip, p) for name, ip, p in backends}
        self.balancer = make_balancer(algorithm, [Backend(name) for name, _, _ in backends])
        self.counters: dict[str, int] = {}

    def _pick(self, client: tuple[str, int]) -> Backend:
        return self.balancer.pick(
            Flow(
                client_ip=client[0],
                client_port=client[1],
                vip=self.vip,
                vport=self.port,
                protocol=self.proto,
            ),
            time.monotonic(),
        )

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[:2]
        try:
            backend = self._pick(client)
        except NoBackendAvailable:
            self._count("drop:no-backend")
            writer.close()
            return
        self.balancer.on_start(backend, time.monotonic())
        self._count(f"backend:{backend.name}")
        try:
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(*self.targets[backend.name]), 5
            )
        except (TimeoutError, OSError):
            self._count("drop:connect-failed")
            self.balancer.on_finish(backend, time.monotonic(), ok=False)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        self.balancer.on_finish(backend, time.monotonic())


class _UdpRelay(asyncio.DatagramProtocol):
    def __init__(self, proxy: L4Proxy) -> None:
        self.proxy = proxy
        self.upstreams: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self.waiting: dict[tuple[str, int], list[bytes]] = {}  # datagrams while opening
        self.tasks: set[asyncio.Task] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, client: tuple[str, int]) -> None:
        up = self.upstreams.get(client)
        if up is not None:
            up.sendto(data)
        elif client in self.waiting:
            self.waiting[client].append(data)
        else:
            self.waiting[client] = [data]
            task = asyncio.get_running_loop().create_task(self._open(client))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _open(self, client: tuple[str, int]) -> None:
        try:
            backend = self.proxy._pick(client)
        except NoBackendAvailable:
            self.proxy._count("drop:no-backend")
            self.waiting.pop(client, None)
            return
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, _addr) -> None:
                if relay.transport is not None:
                    relay.transport.sendto(data, client)

        loop = asyncio.get_running_loop()
        up, _ = await loop.create_datagram_endpoint(
            Back, remote_addr=self.proxy.targets[backend.name]
        )
        self.upstreams[client] = up
        self.proxy._count(f"backend:{backend.name}")
        for data in self.waiting.pop(client, []):
            up.sendto(data)


def proxy_health(
    cfg: L4Config,
    proxies: list[L4Proxy],
    endpoints: Mapping[tuple[str, int], tuple[str, int]],
    on_event: Callable[[Transition], object] | None = print_event,
) -> L4Health:
    """Health for the proxies of ``cfg``: each change goes to every proxy's balancer.

    ``endpoints`` maps a backend's native ``(ip, port)`` to where it listens
    under this provider (:func:`lbkit.lab.services.endpoint_map`). LabError
    if a check's port has no service there to probe.
    """

    def apply(check: Check, state: str) -> None:
        for proxy in proxies:
            if (proxy.proto, proxy.port) in check.services and check.backend in proxy.targets:
                proxy.balancer.set_state(check.backend, state)

    health = L4Health(cfg.services, cfg.health, apply, endpoints=endpoints, on_event=on_event)
    if health.enabled:
        for check in health.checks.values():
            if (check.ip, check.port) not in endpoints:
                raise LabError(
                    f"health.port: {check.backend} has no TCP service on port {check.port} "
                    "to check under this provider"
                )
    return health


async def serve_proxies(
    proxies: list[tuple[L4Proxy, tuple[str, int]]], on_ready: Callable[[], None] | None = None
) -> None:
    """Listen for every ``(proxy, bind address)`` until cancelled."""
    loop = asyncio.get_running_loop()
    servers, transports = [], []
    try:
        for proxy, (ip, port) in proxies:
            if proxy.proto == "tcp":
                servers.append(
                    await asyncio.start_server(proxy.handle_tcp, ip, port, reuse_address=True)
                )
            else:
                t, _ = await loop.create_datagram_endpoint(
                    lambda p=proxy: _UdpRelay(p), local_addr=(ip, port)
                )
                transports.append(t)
        if on_ready is not None:
            on_ready()
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()
        for t in transports:
            t.close()
