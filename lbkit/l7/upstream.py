"""Backend-side HTTP/1.1 connections for the L7 proxy, and their idle pool.

An :class:`UpstreamConnection` sends one request at a time and parses the
answer with llhttp (``httptools.HttpResponseParser``). It hands what it reads
to a *sink* (the proxy's exchange, see :class:`ResponseSink`), which decides
what reaches the client. Headers arrive already filtered: the hop-by-hop
fields of RFC 9110 §7.6.1 are dropped here, because they describe this
connection, not the message (nginx's ``ngx_http_proxy_process_header`` hides
the same ones).

:class:`UpstreamPool` keeps idle keep-alive connections per backend address,
bounded like nginx's ``keepalive N`` (the most idle connections kept per
worker), and reuses the most recently used one first (LIFO: warm in caches,
and the older ones can time out and go).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Final, Protocol, cast

from httptools import HttpParserError, HttpResponseParser

log = logging.getLogger(__name__)

#: RFC 9110 §7.6.1 (and the obsolete Proxy-Connection, RFC 9112 §C.2.2): fields
#: for one hop only, never forwarded.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
MAX_HEAD: Final = 64 * 1024  # a response head longer than this is refused (nginx proxy_buffer_size)
_SPECIAL_LENGTHS: Final = frozenset(len(n) for n in [*HOP_BY_HOP, b"content-length"])
_COLON: Final = b": "
_CRLF: Final = b"\r\n"


class ResponseSink(Protocol):
    """What an :class:`UpstreamConnection` reports to (the proxy's exchange)."""

    def upstream_head(self, conn: UpstreamConnection) -> None:
        """The status line and headers are complete (``conn.status``, ``conn.headers``...)."""

    def upstream_body(self, data: bytes) -> None:
        """A piece of the (de-chunked) response body."""

    def upstream_done(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        """The response is complete; the connection is detached from the sink."""

    def upstream_failed(self, conn: UpstreamConnection, outcome: str, detail: str) -> None:
        """The connection broke (``error``) or sent an unparseable answer (``invalid_header``)."""

    def upstream_flush(self) -> None:
        """Called after each received segment that did not complete the response."""

    def upstream_pause(self) -> None:
        """The connection's write buffer is full: stop feeding it the request body."""

    def upstream_resume(self) -> None:
        """The write buffer drained."""


class UpstreamConnection:
    """One keep-alive connection to a backend; parses the answers to what it is sent.

    An asyncio protocol by its methods, not by subclassing ``asyncio.Protocol``
    (as :class:`lbkit.l7.proxy.ClientConnection`, so that mypyc can compile it to a
    native class).

    ``rx`` is set on every read (the proxy's timer sweep turns it into a
    time stamp, so the hot path never reads a clock). ``no_body`` must be
    set while the request is a HEAD: llhttp cannot know that a response with
    a Content-Length carries no body, so the head alone completes it.
    """

    __slots__ = (
        "_interim",
        "address",
        "chunked",
        "closed",
        "got_bytes",
        "head_done",
        "head_rx",
        "headers",
        "idle_since",
        "length",
        "no_body",
        "parser",
        "pool",
        "read_paused",
        "requests",
        "reused",
        "rx",
        "rx_at",
        "sink",
        "status",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, address: str) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.closed = False
        self.reused = False  # handed out from the idle pool (may have been closed by the peer)
        self.got_bytes = False  # any byte of the current answer received
        self.no_body = False
        self.rx = False
        self.rx_at = 0.0
        self.idle_since = 0.0
        self.read_paused = False
        self.requests = 0
        self._interim = False
        self.status = 0
        self.headers: list[bytes] = []  # name, ": ", value, CRLF, ... (hop-by-hop removed)
        self.length: bytes | None = None  # Content-Length as sent
        self.chunked = False
        self.head_done = False
        self.head_rx = 0

    # ------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop sets TCP_NODELAY)

    def data_received(self, data: bytes) -> None:
        self.rx = True
        sink = self.sink
        if sink is None:
            self.close()  # bytes on an idle connection: nothing was asked, nothing is valid
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except HttpParserError as e:
            sink = self.sink
            if sink is not None:
                self.sink = None
                outcome = "error" if self.head_done else "invalid_header"
                cause = e.__context__
                if cause is not None and not isinstance(cause, HttpParserError):
                    log.error("proxy bug while reading %s", self.address, exc_info=cause)
                sink.upstream_failed(self, outcome, f"invalid response: {e}")
            self.close()
            return
        sink = self.sink
        if sink is None:
            return
        if self.head_done:
            sink.upstream_flush()
            return
        self.head_rx += len(data)  # all of it head: llhttp holds no body before the head ends
        if self.head_rx > MAX_HEAD:  # nginx: "upstream sent too big header"
            self.sink = None
            sink.upstream_failed(self, "invalid_header", f"response head over {MAX_HEAD} bytes")
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        sink = self.sink
        if sink is None:
            return
        self.sink = None
        if self.head_done and self.length is None and not self.chunked and not self.no_body:
            sink.upstream_done(self, False)  # a body delimited by the close (RFC 9112 §6.3 p8)
        else:
            what = "reset" if exc is not None else "closed"
            sink.upstream_failed(self, "error", f"the backend {what} the connection")

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume()

    # ------------------------------------------------------------ llhttp callbacks
    # (no on_message_begin: start() resets, as one answer follows each request)
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in _SPECIAL_LENGTHS:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                if lower == b"transfer-encoding":
                    # chunked when it is the final coding; else the close ends the body
                    self.chunked = value.rstrip().lower().endswith(b"chunked")
                return
            if lower == b"content-length":
                self.length = value
        self.headers += (name, _COLON, value, _CRLF)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.status = status
        if status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: not forwarded (as nginx)
            self.headers = []
            self.length = None
            self.chunked = False
            return
        sink = self.sink
        if sink is None:
            return
        self.head_done = True
        sink.upstream_head(self)
        if self.no_body and self.sink is sink:
            # The answer to HEAD ends with its head; llhttp would wait for a body.
            keep = self.parser.should_keep_alive()
            self.parser = HttpResponseParser(self)
            self.sink = None
            sink.upstream_done(self, keep)

    def on_body(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None and not self._interim:
            sink.upstream_body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.upstream_done(self, self.parser.should_keep_alive())

    # ------------------------------------------------------------ control
    def start(self, sink: ResponseSink, data: bytes, *, no_body: bool) -> None:
        """Send a request (head and the body known so far); answers go to ``sink``."""
        self.sink = sink
        self.no_body = no_body
        self.got_bytes = False
        self.head_done = False
        self.head_rx = 0
        self.status = 0
        self.headers = []
        self.length = None
        self.chunked = False
        self.rx = True
        self.requests += 1
        self.transport.write(data)  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.rx = True
            self.transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        """Drop the connection (abort: nothing we could still send matters)."""
        self.sink = None
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
            if self.transport is not None:
                self.transport.abort()


def split_address(address: str) -> tuple[str, int]:
    """``"10.0.1.10:3000"`` -> ``("10.0.1.10", 3000)``; ``"[::1]:80"`` too; default port 80."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 80
    host, sep, port = address.rpartition(":")
    if not sep or ":" in host:
        return address, 80
    return host, int(port)


class UpstreamPool:
    """Idle keep-alive connections per backend address, at most ``max_idle`` each.

    ``acquire`` returns a live idle connection or None (then ``connect``);
    ``release`` keeps a connection for the next request or closes it when
    the pool for that address is full. ``sweep(now)`` closes connections
    idle longer than ``idle_timeout`` (nginx ``keepalive_timeout`` in an
    upstream block, default 60 s).
    """

    def __init__(self, max_idle: int = 32, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[str, deque[UpstreamConnection]] = {}
        self._addresses: dict[str, tuple[str, int]] = {}
        self.now = 0.0  # set by the owner's timer sweep
        self.connects = 0
        self.connect_errors = 0
        self.reuses = 0

    def acquire(self, address: str) -> UpstreamConnection | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                self.reuses += 1
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        idle = self._idle.get(conn.address)
        if idle is None:
            idle = self._idle[conn.address] = deque()
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.sink = None
        conn.idle_since = self.now
        if conn.read_paused:
            conn.resume_reading()
        idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.address)
        if idle:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

    async def connect(self, address: str) -> UpstreamConnection:
        """A new connection to ``address`` (OSError when refused or unreachable)."""
        hostport = self._addresses.get(address)
        if hostport is None:
            hostport = self._addresses[address] = split_address(address)
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                lambda: cast(asyncio.Protocol, UpstreamConnection(self, address)), *hostport
            )
        except OSError:
            self.connect_errors += 1
            raise
        self.connects += 1
        return cast(UpstreamConnection, protocol)

    def sweep(self, now: float) -> None:
        self.now = now
        for idle in self._idle.values():
            while idle and now - idle[0].idle_since > self.idle_timeout:
                idle.popleft().close()

    def close_all(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    def stats(self) -> dict[str, object]:
        return {
            "idle": {addr: len(q) for addr, q in self._idle.items() if q},
            "connects": self.connects,
            "connect_errors": self.connect_errors,
            "reuses": self.reuses,
        }
