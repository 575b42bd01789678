"""A blind TCP relay on uvloop: the floor under any Python proxy in ``bench_l7_proxy.py``.

It is an L4 proxy at the socket level: each client connection gets its own
backend connection (round robin per connection, as an L4 balancer pins a
flow) and bytes are copied both ways unread. No HTTP parsing, no routing,
no header work: what is left is uvloop, two reads and two writes per
request, and the kernel. Whatever lbkit's L7 proxy costs above this is the
price of reading the request (the seed's "L4 is fast but blind").
Usage: ``python bench/relay_proxy.py LISTEN_PORT BACKEND_ADDR [BACKEND_ADDR ...]``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import uvloop


class BackendSide(asyncio.Protocol):
    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()  # type: ignore[union-attr]


class ClientSide(asyncio.Protocol):
    def __init__(self, backends: itertools.cycle) -> None:
        self.backends = backends
        self.transport: asyncio.Transport | None = None
        self.backend: BackendSide | None = None
        self.early: list[bytes] = []  # bytes that came before the backend connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, _, port = next(self.backends).rpartition(":")
        asyncio.get_running_loop().create_task(self.connect(host, int(port)))

    async def connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, backend = await loop.create_connection(lambda: BackendSide(self), host, port)
        except OSError:
            self.transport.close()  # type: ignore[union-attr]
            return
        self.backend = backend
        for data in self.early:
            backend.transport.write(data)  # type: ignore[union-attr]
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.early.append(data)
        else:
            self.backend.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.transport.close()  # type: ignore[union-attr]


async def serve(port: int, backends: list[str]) -> None:
    ring = itertools.cycle(backends)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientSide(ring), "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2:]))
