"""The backend role's I/O: HTTP, line and UDP listeners and the control channel.

A thin adapter over :mod:`lbkit.lab.roles.backend_core`, which decides every
answer. This module owns the sockets: it opens them, feeds bytes to the
core, writes what the core says, and closes or re-opens the listeners when
the mode becomes or stops being ``refuse``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from ..control import control_server
from ..errors import LabError
from .backend_core import (
    ANSWER,
    CLOSE,
    HttpAnswer,
    RoleState,
    bad_request_answer,
    check_mode,
    check_slow_delay,
    handle_control,
    http_answer,
    line_reply,
    udp_reply,
)
from .http_server import HttpServerProtocol, Request

MAX_LINE = 64 * 1024  # a longer line is answered in pieces of this size
CLOSE_TIMEOUT = 5.0  # seconds to wait for a listener to report itself closed


class LineProtocol(asyncio.Protocol):
    """The line service: each ``\\n``-terminated line comes back as ``NAME: line``.

    Answers keep the order of the lines, each after its delay (``slow``).
    """

    def __init__(self, state: RoleState, connections: set[asyncio.BaseTransport]) -> None:
        self._state = state
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._pending: deque[tuple[float, bytes]] = deque()
        self._writer: asyncio.Task | None = None
        self._transport: asyncio.Transport | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self._transport)  # type: ignore[arg-type]
        if self._writer is not None:
            self._writer.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._line(line[:-1] if line.endswith(b"\r") else line)
        while len(self._buf) > MAX_LINE:
            self._line(bytes(self._buf[:MAX_LINE]))
            del self._buf[:MAX_LINE]

    def eof_received(self) -> bool:
        if self._buf:
            self._line(bytes(self._buf))
            self._buf.clear()
        self._eof = True
        return self._writer is not None  # keep the transport open until answers are out

    def _line(self, line: bytes) -> None:
        self._state.requests["line"] += 1
        action, reply, delay = line_reply(self._state, line)
        if action == CLOSE:
            self._transport.abort()  # type: ignore[union-attr]
        elif action == ANSWER and self._transport is not None and not self._transport.is_closing():
            if delay <= 0 and self._writer is None:
                self._transport.write(reply)
            else:
                self._pending.append((self._loop.time() + delay, reply))
                if self._writer is None:
                    self._writer = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            ready_at, reply = self._pending[0]
            if (wait := ready_at - self._loop.time()) > 0:
                await asyncio.sleep(wait)
            self._pending.popleft()
            self._transport.write(reply)  # type: ignore[union-attr]
        self._writer = None
        if self._eof:
            self._transport.close()  # type: ignore[union-attr]


class EchoProtocol(asyncio.DatagramProtocol):
    """UDP echo (RFC 862): each datagram comes back prefixed with ``NAME: ``."""

    def __init__(self, state: RoleState) -> None:
        self._state = state
        self._transport: asyncio.DatagramTransport | None = None
        #: done once the socket is really closed (asyncio closes it a loop turn after close())
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._state.requests["udp"] += 1
        reply = udp_reply(self._state, data)
        if reply is not None:
            self._transport.sendto(reply, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: UDP does not care


class Listeners:
    """The role's listening sockets, closed and re-opened as a group (``refuse``)."""

    def __init__(
        self,
        state: RoleState,
        tcp: list[tuple[tuple[str, int], Callable[[], asyncio.Protocol]]],
        udp: list[tuple[tuple[str, int], Callable[[], asyncio.DatagramProtocol]]],
        connections: set[asyncio.BaseTransport],
    ) -> None:
        self.state = state
        self._tcp = tcp
        self._udp = udp
        self._connections = connections
        self._servers: list[asyncio.AbstractServer] = []
        self._datagrams: list[asyncio.BaseTransport] = []

    async def open(self) -> None:
        """Bind everything; LabError naming the address when one cannot be bound."""
        loop = asyncio.get_running_loop()
        try:
            for (ip, port), factory in self._tcp:
                try:
                    server = await loop.create_server(factory, ip, port, reuse_address=True)
                except OSError as e:
                    raise LabError(
                        f"{self.state.name}: cannot listen on tcp {ip}:{port}: {e.strerror or e}"
                    ) from None
                self._servers.append(server)
                self._record("tcp", server.sockets[0].getsockname())
            for (ip, port), factory in self._udp:
                try:
                    transport, _ = await loop.create_datagram_endpoint(
                        factory, local_addr=(ip, port)
                    )
                except OSError as e:
                    raise LabError(
                        f"{self.state.name}: cannot bind udp {ip}:{port}: {e.strerror or e}"
                    ) from None
                self._datagrams.append(transport)
                self._record("udp", transport.get_extra_info("sockname"))
        except BaseException:
            await self.close()
            raise

    def _record(self, proto: str, sockname: Any) -> None:
        self.state.listening.append((proto, sockname[0], sockname[1]))

    async def close(self) -> None:
        """Close listeners and drop open connections, as a crashed server would."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for transport in list(self._connections):
            transport.abort()
        datagrams, self._datagrams = self._datagrams, []
        for datagram in datagrams:
            datagram.close()
        self.state.listening.clear()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)
        for datagram in datagrams:  # so a caller told "closed" finds the port closed
            closed = getattr(datagram.get_protocol(), "closed", None)
            if closed is not None:
                await closed


async def serve_backend(
    name: str,
    http: list[tuple[str, int]],
    line: tuple[str, int],
    udp: tuple[str, int] | list[tuple[str, int]],
    control_path: str,
    *,
    mode: str = "healthy",
    slow_delay: float = 1.0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``name``'s backend services until cancelled, then close all of them.

    ``on_ready`` is called once every listener and the control socket are up.
    ValueError for an unknown ``mode`` or bad ``slow_delay``; LabError when
    an address cannot be bound or the control socket is taken.
    """
    state = RoleState(name, mode=check_mode(mode), slow_delay=check_slow_delay(slow_delay))
    connections: set[asyncio.BaseTransport] = set()

    def on_request(req: Request) -> HttpAnswer:
        state.requests["http"] += 1
        return http_answer(
            state,
            req.method,
            req.target,
            req.http_version,
            req.headers,
            req.body_bytes,
            req.client,
            req.server,
        )

    def http_factory() -> asyncio.Protocol:
        return HttpServerProtocol(
            on_request,
            partial(bad_request_answer, state),
            may_continue=lambda: state.mode not in ("accept-no-answer", "refuse"),
            connections=connections,
        )

    tcp = [(addr, http_factory) for addr in http]
    tcp.append((line, partial(LineProtocol, state, connections)))
    # A UDP reply leaves from the address the socket is bound to; bound to 0.0.0.0 the
    # kernel picks the interface's primary address. A DSR backend must answer from the
    # VIP the datagram was sent to, so it binds each of its addresses separately.
    udp_addrs = udp if isinstance(udp, list) else [udp]
    listeners = Listeners(
        state, tcp, [(a, partial(EchoProtocol, state)) for a in udp_addrs], connections
    )

    async def on_control(request: Any) -> dict[str, Any]:
        was_refusing = state.mode == "refuse"
        reply = handle_control(state, request)
        refusing = state.mode == "refuse"
        if not reply["ok"] or was_refusing == refusing:
            return reply
        if refusing:
            await listeners.close()
        else:
            try:
                await listeners.open()
            except LabError as e:
                state.mode = "refuse"
                return {"ok": False, "error": f"{e} (still refusing)"}
        return state.status()

    try:
        if state.mode != "refuse":
            await listeners.open()
        async with control_server(control_path, on_control):
            if on_ready is not None:
                on_ready()
            await asyncio.Event().wait()
    finally:
        await listeners.close()
