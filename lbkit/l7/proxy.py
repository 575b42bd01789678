"""The L7 reverse proxy's I/O adapter: HTTP/1.1 on asyncio protocols (uvloop), llhttp parsing.

The router (:mod:`lbkit.l7.router`, sans-I/O) decides; this module only
moves bytes. Per client connection (:class:`ClientConnection`) llhttp
parses requests; at the end of each request head the router is asked
(``router.route(head, now)``) and an :class:`Exchange` carries the answer:
a local one (a ``Reject``, a ``return``) or a proxied one, tried on the
backends ``decision.pick`` gives, one attempt at a time.

Shape of the hot path (what keeps it near nginx's cost): protocol callbacks,
no task per request; the upstream request is built as bytes and sent with
one write; upstream connections are kept alive in a pool
(:mod:`lbkit.l7.upstream`); a response that arrives in one segment leaves in
one write; time-outs are not timers per request but one sweep over all
connections a few times per time-out (nginx also checks its timers at a
coarse, cached time: ``ngx_current_msec``).

Rules and their sources:

* bodies are streamed both ways, never held whole: Content-Length as is,
  chunked re-chunked (llhttp hands over the decoded data); back-pressure by
  ``pause_reading`` on the other side when a write buffer is high;
* pipelined requests are answered in order (RFC 9112 §9.3.2), one exchange
  at a time per connection; later ones wait, their bodies buffered, reading
  paused when too much waits;
* retries (``decision.should_retry``) only while nothing of the answer has
  reached the client, and only when the request body could be kept to be
  sent again (<= :data:`KEEP_BODY`), as nginx's ``proxy_next_upstream``
  with ``proxy_request_buffering off``;
* local answers: 400 unparseable, 408 header or body time-out, 413 body over
  ``client_max_body_size``, 414 URI over ``large_client_header_buffers``,
  431 a header line or all headers too large (nginx says 400 there; RFC 6585
  §5 has the precise code), 502 the backend broke, 503 no backend, 504 the
  backend timed out (nginx ``ngx_http_upstream_next``);
* hop-by-hop fields never cross (RFC 9110 §7.6.1; the router rewrites the
  request's, :mod:`lbkit.l7.upstream` drops the response's);
* a client that closes its side abandons what it asked (nginx logs 499 and
  closes the upstream request, ``proxy_ignore_client_abort off``); after a
  last answer the proxy half-closes and reads until the client closes, for
  at most :data:`LINGER_SECONDS` (nginx ``lingering_close``).

The admin API (``GET /stats`` JSON, ``GET /metrics`` Prometheus) listens on
its own address, never on the public one.

Active health checks of the router's pools run beside the traffic, on the
same loop (:class:`lbkit.l7.healthrun.HealthRunner`, ``Proxy.health``): started
by :meth:`Proxy.start`, restarted with the new router by :meth:`Proxy.set_router`
(the state of backends that stay is carried over), stopped by :meth:`Proxy.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from . import accesslog
from .admin import start_admin
from .exchange import Exchange
from .healthrun import EventSink, HealthRunner
from .model import Limits
from .router import HeadScan, RequestHead
from .tls import count_handshakes, sni_of
from .upstream import UpstreamPool
from .wire import (
    _EMPTY,
    _FRAMINGS,
    _METHODS,
    _REJECTED,
    _REQ_SPECIAL_LENGTHS,
    LINGER_SECONDS,
    MAX_PIPELINE,
    P_BODY,
    P_HEAD,
    P_IDLE,
    PAUSE_PIPELINE,
    TEXTS,
    Counters,
    _Reject,
    _status_line,
    render_local,
)

log = logging.getLogger(__name__)


class ClientConnection:
    """One client connection: parse requests, run their exchanges in order, answer.

    It is an asyncio protocol (``connection_made``, ``data_received``...) without
    subclassing ``asyncio.Protocol``: the event loop calls the methods by name, and
    a class with no Python base compiles to a native class under mypyc
    (``make fast``, :mod:`lbkit.compiled`). ``__slots__`` names every attribute: a little
    faster, and a typo fails loudly.
    """

    __slots__ = (
        "_linger",
        "active",
        "client",
        "closing",
        "cls",
        "connection",
        "cookie",
        "cur",
        "expect",
        "hbytes",
        "head_rx",
        "head_since",
        "headers",
        "hosts",
        "idle_since",
        "keep",
        "loop",
        "max_headers",
        "max_line",
        "parse_done",
        "parser",
        "pause_mask",
        "proxy",
        "pstate",
        "queue",
        "rx",
        "rx_at",
        "scheme",
        "served",
        "server",
        "sni",
        "tes",
        "transport",
        "url",
        "wpaused",
    )

    def __init__(self, proxy: Proxy, scheme: str = "http") -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] = ("", 0)
        self.server: tuple[str, int] = ("", 0)
        self.scheme = scheme  # "https" on a TLS listener (the handshake is done by then)
        self.sni: str | None = None  # the TLS server name the client sent (RFC 6066 §3)
        self.pstate = P_IDLE
        self.cur: Exchange | None = None  # the exchange whose request body is being read
        self.active: Exchange | None = None  # the exchange being answered
        self.queue: deque[Exchange] = deque()
        self.pause_mask = 0
        self.wpaused = False
        self.closing = False
        self.parse_done = False
        self.served = 0
        self.rx = False
        self.rx_at = self.idle_since = self.head_since = proxy.now
        self.head_rx = 0
        self._linger: asyncio.TimerHandle | None = None
        limits = proxy.limits
        self.max_line = limits.large_client_header_buffers
        self.max_headers = limits.max_headers_bytes
        self.keep = True
        # the request head being parsed (reset at the end of each head)
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.hbytes = 0
        # what the router's HeadScan would find (llhttp has checked the fields' syntax)
        self.hosts: tuple[str, ...] = ()
        self.cls: tuple[str, ...] = ()  # Content-Length values
        self.tes: tuple[str, ...] = ()  # Transfer-Encoding values
        self.cookie = False
        self.connection = False
        self.expect: bytes | None = None

    # ------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (peer[0], peer[1]) if peer else ("", 0)
        self.server = (sock[0], sock[1]) if sock else ("", 0)
        if self.scheme == "https":
            self.sni = sni_of(transport.get_extra_info("ssl_object"))
        self.proxy.conns.add(self)
        self.proxy.counters.connections += 1
        if self.proxy.draining:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.parse_done = True
        self.proxy.conns.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        ex = self.active
        if ex is not None and not ex.finished:
            ex.client_gone()
            self.proxy.counters.client_aborts += 1
            self.finish(ex)
        for queued in self.queue:
            queued.drop_upstream()
        self.queue.clear()
        if self.proxy.draining and not self.proxy.conns:
            self.proxy.idle.set()

    def data_received(self, data: bytes) -> None:
        self.rx = True
        if self.parse_done:
            return  # lingering after the last answer, or after an upgrade we do not follow
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self.parse_done = True  # answered as plain HTTP with Connection: close
            return
        except HttpParserError as e:
            if self.parse_done:
                return  # stopped on purpose (answered with close, or data after Connection: close)
            cause = e.__context__
            if isinstance(cause, _Reject):
                self.reject(cause.status, cause.reason)
            elif cause is not None:
                log.error("proxy bug on %s", self.client, exc_info=cause)
                self.reject(500, TEXTS[500])
            else:
                self.reject(400, f"{TEXTS[400]}: {e}")
            return
        if self.pstate == P_HEAD:
            self.head_rx += len(data)
            if self.head_rx > self.max_headers + self.max_line:
                self.reject(431, TEXTS[431])

    def eof_received(self) -> bool:
        """The client closed its side: whatever it asked is abandoned (nginx: 499, with
        ``proxy_ignore_client_abort off``), and our side closes too."""
        self.parse_done = True
        return False

    def pause_writing(self) -> None:
        self.wpaused = True
        ex = self.active
        if ex is not None and ex.up is not None and ex.started:
            ex.up.pause_reading()

    def resume_writing(self) -> None:
        self.wpaused = False
        ex = self.active
        if ex is not None and ex.up is not None:
            ex.up.resume_reading()

    def pause(self, reason: int) -> None:
        if not self.pause_mask and not self.closing:
            self.transport.pause_reading()  # type: ignore[union-attr]
        self.pause_mask |= reason

    def resume(self, reason: int) -> None:
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if not self.pause_mask and not self.closing:
                self.transport.resume_reading()  # type: ignore[union-attr]

    # ------------------------------------------------------------ llhttp callbacks
    # (no on_message_begin: one callback less per request; the first on_url starts a head,
    # and on_headers_complete resets the per-request fields for the next one)
    def on_url(self, url: bytes) -> None:
        if self.pstate != P_HEAD:
            if self.parse_done:
                raise _Reject(400, "no more requests on this connection")  # stops llhttp
            self.pstate = P_HEAD
            self.head_since = self.proxy.now
        else:
            url = self.url + url
        self.url = url
        if len(url) > self.max_line:
            raise _Reject(414, f"{TEXTS[414]} (over {self.max_line} bytes)")

    def on_header(self, name: bytes, value: bytes) -> None:
        ln = len(name)
        n = ln + len(value) + 4
        self.hbytes += n
        if n > self.max_line or self.hbytes > self.max_headers:
            raise _Reject(431, TEXTS[431])
        field = (name.decode("latin-1"), value.decode("latin-1"))
        if ln in _REQ_SPECIAL_LENGTHS:
            lower = name.lower()
            if lower == b"host":
                self.hosts += (field[1],)
            elif lower == b"cookie":
                self.cookie = True
            elif lower == b"content-length":
                self.cls += (field[1],)
            elif lower == b"transfer-encoding":
                self.tes += (field[1],)
            elif lower == b"expect":
                self.expect = value
            elif lower == b"connection":
                self.connection = True
        self.headers.append(field)

    def on_headers_complete(self) -> None:
        parser = self.parser
        proxy = self.proxy
        keep = parser.should_keep_alive()
        # get_http_version() formats a string each time; without a Connection field llhttp
        # keeps alive exactly the HTTP/1.1 requests, so that case needs no call.
        version = "1.1" if keep and not self.connection else parser.get_http_version()
        hosts = self.hosts
        if len(hosts) != 1 and version == "1.1":
            # RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request, or 400.
            raise _Reject(400, f"{TEXTS[400]}: an HTTP/1.1 request needs exactly one Host")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        keep = keep and proxy.keepalive and not parser.should_upgrade()
        self.keep = keep
        length = 0
        chunked = bool(self.tes)
        if not chunked and self.cls:
            length = int(self.cls[-1])
            limit = proxy.limits.client_max_body_size
            if limit and length > limit:
                raise _Reject(413, f"{TEXTS[413]} (over {limit} bytes)")
        target = self.url.decode("latin-1")
        ex = Exchange(self, method, target, keep)
        if version == "1.0":
            ex.http10 = True
        if self.expect is not None:
            ex.expect = self.expect.lower() == b"100-continue"
            self.expect = None
        now = self.loop.time()
        if proxy.access_log:
            ex.t0 = time.perf_counter()  # loop.time() counts milliseconds (libuv)
        proxy.counters.requests += 1
        # RequestHead(method, target, version, headers, client, server, scheme, sni, scan)
        head = proxy.head_type(
            method,
            target,
            version,
            self.headers,
            self.client,
            self.server,
            self.scheme,
            self.sni,
            HeadScan(hosts, self.cookie, self.connection, self.cls, self.tes),
        )
        self.headers = []  # the next request's (the router may keep this list)
        self.url = b""
        self.hbytes = self.head_rx = 0
        self.hosts = self.cls = self.tes = ()
        self.cookie = self.connection = False
        try:
            result = proxy.router.route(head, now)
            answer: Any = getattr(result, "return_answer", _REJECTED)
            if answer is not _REJECTED:
                if answer is None:
                    ex.decision = result
                    ex.framing = _FRAMINGS[result.request_framing[0]]
                else:  # nginx ``return``: Location, Allow... come from response_headers
                    ex.decision = result
                    status, text = answer
                    extra = list(result.response_headers(None))
                    if 300 <= status < 400 and any(k.lower() == "location" for k, _ in extra):
                        text = _status_line(status)[9:-2].decode()
                    ex.local = (status, text, extra)
            else:
                ex.local = (result.status, result.reason, list(result.headers or ()))
        except Exception:
            log.exception("router failed on %s %s", method, target)
            ex.local = (500, TEXTS[500], ())
        if chunked or length:
            self.pstate = P_BODY
            self.cur = ex
        else:
            ex.body_done = True
            self.pstate = P_IDLE
        if self.active is not None:
            self.queue.append(ex)
            if len(self.queue) >= MAX_PIPELINE:
                self.pause(PAUSE_PIPELINE)
            return
        self.active = ex
        if ex.local is None and not ex.expect:  # the common case of ex.start(now), inlined
            backend = ex.decision.pick(now, _EMPTY)
            if backend is not None:
                ex.launch(backend, now)
            else:
                ex.no_backend()
        else:
            ex.start(now)

    def on_body(self, body: bytes) -> None:
        self.cur.body_data(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        ex = self.cur
        if ex is not None:
            self.cur = None
            ex.body_end()
        self.pstate = P_IDLE
        if not self.keep:
            self.parse_done = True

    # ------------------------------------------------------------ answers
    def send_local(self, ex: Exchange) -> None:
        """Write ``ex``'s local answer and finish it."""
        status, text, extra = ex.local  # type: ignore[misc]
        if not ex.body_done or self.proxy.draining:
            ex.keep_alive = False
        data = render_local(
            status,
            text + "\n" if text and not text.endswith("\n") else text,
            extra,
            head=ex.is_head,
            keep_alive=ex.keep_alive,
            http10=ex.http10,
        )
        ex.status = status
        ex.started = True
        ex.resp_bytes = len(data)
        if not self.closing:
            self.transport.write(data)  # type: ignore[union-attr]
        self.finish(ex)

    def finish(self, ex: Exchange) -> None:
        """``ex`` is answered (or abandoned): count, log, go on with the next one or close."""
        if ex.finished:
            return
        ex.finished = True
        proxy = self.proxy
        counters = proxy.counters
        counters.status[ex.status] = counters.status.get(ex.status, 0) + 1
        counters.bytes_out += ex.resp_bytes
        if proxy.access_log:
            proxy.log_exchange(ex, self)
        if self.active is ex:
            self.active = None
        self.served += 1
        if self.closing:
            return
        if not ex.keep_alive or not ex.body_done or proxy.draining:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if self.pause_mask & PAUSE_PIPELINE and len(self.queue) < MAX_PIPELINE // 2:
                self.resume(PAUSE_PIPELINE)
            self.active = nxt
            nxt.start(self.loop.time())
        else:
            self.idle_since = proxy.now
            if self.parse_done and self.pstate == P_IDLE:
                self.close()

    def reject(self, status: int, reason: str) -> None:
        """The client broke a rule (or timed out): answer ``status`` in order and close."""
        self.parse_done = True
        ex = self.cur
        self.cur = None
        if ex is not None and (ex.finished or ex.started):
            if not ex.finished:
                self.abort(ex)
            return
        if ex is not None:  # error inside the body (too large, bad chunk): answer instead
            ex.drop_upstream()
            ex.end_attempt(self.loop.time(), True, None)
            ex.keep_alive = False
            ex.local = (status, reason, ())
            if ex is self.active:
                self.send_local(ex)
            return
        ex = Exchange(self, "-", self.url.decode("latin-1"), False)
        ex.body_done = True
        ex.local = (status, reason, ())
        self.pstate = P_IDLE
        if self.active is None:
            self.active = ex
            ex.start(0.0)
        else:
            self.queue.append(ex)

    def abort(self, ex: Exchange | None = None) -> None:
        """Drop the connection now (an answer already started cannot be finished)."""
        if ex is not None and ex is self.active and not ex.finished:
            ex.keep_alive = False
            self.finish(ex)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self, linger: bool = True) -> None:
        """Close after what is written: half-close, read and discard until the client closes."""
        if self.closing:
            return
        self.closing = True
        self.parse_done = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.pause_mask:
            self.pause_mask = 0
            transport.resume_reading()
        if not linger or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)

    def drain(self) -> None:
        """Shutting down: close now if idle, else after the answer in progress."""
        if self.active is None and not self.queue and self.pstate == P_IDLE:
            self.close(linger=False)

    def tick(self, now: float) -> None:
        """Check this connection's time-outs (the sweep calls this a few times per time-out)."""
        if self.closing:
            return
        if self.rx:
            self.rx = False
            self.rx_at = now
        limits = self.proxy.limits
        ex = self.active
        if ex is not None:
            ex.tick(now, limits)
            if (
                self.pstate == P_BODY
                and not self.pause_mask
                and not self.closing
                and now - self.rx_at > limits.client_body_timeout
            ):
                self.reject(408, TEXTS[408])
            return
        if self.pstate == P_HEAD:
            if now - self.head_since > limits.client_header_timeout:
                self.reject(408, TEXTS[408])
        elif self.pstate == P_IDLE and not self.queue:
            limit = limits.keepalive_timeout if self.served else limits.client_header_timeout
            if now - self.idle_since > limit:
                self.close(linger=False)


class Proxy:
    """The proxy: listeners, the shared upstream pool, counters, the time-out sweep.

    ``router`` may be replaced at any time (:meth:`set_router`, on SIGHUP):
    exchanges already routed finish with the old decision. ``health_events``
    hears each health transition of the router's pools, ``(pool, transition)``.
    """

    def __init__(
        self,
        router: Any,
        limits: Limits | None = None,
        *,
        access_log: bool | None = None,
        max_idle: int = 32,
        worker: int | None = None,
        health_events: EventSink | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.router = router
        self.limits = limits or Limits()
        self.keepalive = self.limits.keepalive_timeout > 0
        self.head_type = RequestHead
        self.access_log = accesslog.enabled() if access_log is None else access_log
        self.pool = UpstreamPool(max_idle=max_idle)
        self.counters = Counters()
        self.conns: set[ClientConnection] = set()
        self.now = self.loop.time()
        self.pool.now = self.now
        self.draining = False
        self.idle = asyncio.Event()
        self.worker = worker
        self.reloads = 0
        self.started_at = time.time()
        self.addresses: list[tuple[str, int]] = []
        self.admin_address: tuple[str, int] | None = None
        self.tls: dict[tuple[str, int], ssl.SSLContext] = {}  # listen address -> its context
        self._servers: list[asyncio.AbstractServer] = []
        self._admin: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None
        self.health = HealthRunner(router, clock=self.loop.time, on_event=health_events)

    # ------------------------------------------------------------ life cycle
    async def start(
        self,
        listen: Sequence[tuple[str, int]],
        admin: tuple[str, int] | None = None,
        *,
        reuse_port: bool = False,
        tls: Mapping[tuple[str, int], ssl.SSLContext] | None = None,
    ) -> None:
        """Listen on every address (and the admin one); OSError naming the address if taken.

        ``tls`` maps an address of ``listen`` to the server context it terminates TLS
        with (:func:`lbkit.l7.tls.server_contexts`); its connections are ``https``.
        The context then counts handshakes in :attr:`counters` (its ``sslobject_class``
        is replaced). The handshake must end within ``client_header_timeout``, as in
        nginx (``ngx_http_init_connection`` arms that timer before the handshake).
        """
        try:
            for host, port in listen:
                context = tls.get((host, port)) if tls else None
                if context is not None:
                    count_handshakes(context, self.counters)
                    self.tls[(host, port)] = context
                try:
                    server = await self.loop.create_server(
                        self._protocol_factory("http" if context is None else "https"),
                        host,
                        port,
                        reuse_address=True,
                        reuse_port=reuse_port,
                        backlog=1024,
                        ssl=context,
                        ssl_handshake_timeout=(
                            self.limits.client_header_timeout if context is not None else None
                        ),
                    )
                except OSError as e:
                    raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from e
                self._servers.append(server)
                self.addresses.append(_bound(server))
            if admin is not None:
                self._admin = await start_admin(self, admin)
                self.admin_address = _bound(self._admin)
        except BaseException:
            await self.close()
            raise
        self._sweeper = self.loop.create_task(self._sweep())
        self.health.start()

    def _protocol_factory(self, scheme: str) -> Callable[[], asyncio.Protocol]:
        """What the listener calls per accepted connection (a ClientConnection is a protocol
        by its methods, not by its base class)."""
        return lambda: cast(asyncio.Protocol, ClientConnection(self, scheme))

    def set_tls(self, tls: Mapping[tuple[str, int], ssl.SSLContext]) -> None:
        """New certificates (a reload): new handshakes on each TLS address use ``tls``'s
        certificates and SNI choices; the listening addresses stay (as for plain HTTP)."""
        for address, context in self.tls.items():
            new = tls.get(address)
            if new is not None and new.sni_callback is not None:
                context.sni_callback = new.sni_callback

    def set_router(self, router: Any, limits: Limits | None = None) -> None:
        """Use ``router`` for requests from now on (a reload); its pools' checks start, with
        the state of the backends that stay."""
        self.router = router
        self.health.replace(router)
        if limits is not None:
            self.limits = limits
            self.keepalive = limits.keepalive_timeout > 0
        self.access_log = accesslog.enabled()
        self.reloads += 1

    def tick_seconds(self) -> float:
        lim = self.limits
        shortest = min(
            lim.client_header_timeout,
            lim.client_body_timeout,
            lim.proxy_connect_timeout,
            lim.proxy_read_timeout,
            lim.keepalive_timeout if lim.keepalive_timeout > 0 else 3600,
        )
        return max(0.01, min(0.5, shortest / 5))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds())
            now = self.now = self.loop.time()
            try:
                self.pool.sweep(now)
                for conn in list(self.conns):
                    conn.tick(now)
            except Exception:
                log.exception("time-out sweep failed")

    async def drain(self, grace: float) -> bool:
        """Stop accepting, finish what is in flight for at most ``grace`` s; True if all did."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.conns):
            conn.drain()
        if self.conns:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), grace)
        clean = not self.conns
        for conn in list(self.conns):
            conn.abort()
        return clean

    async def close(self) -> None:
        """Close listeners, connections and the pool; stop the health checks."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self.health.stop()
        servers = [*self._servers, *([self._admin] if self._admin else [])]
        self._servers, self._admin = [], None
        for server in servers:
            server.close()
        for conn in list(self.conns):
            conn.abort()
        self.pool.close_all()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    # ------------------------------------------------------------ reporting
    def log_exchange(self, ex: Exchange, conn: ClientConnection) -> None:
        now = time.perf_counter()
        decision = ex.decision
        accesslog.log_access(
            accesslog.access_line(
                client=conn.client,
                method=ex.method,
                target=ex.target,
                route=getattr(decision, "route_name", None) if decision is not None else None,
                backend=ex.backend.name if ex.backend is not None else None,
                status=ex.status,
                nbytes=ex.resp_bytes,
                upstream_time=ex.up_time if ex.attempt else None,
                total_time=now - ex.t0,
                retries=ex.retries,
            )
        )

    def stats(self) -> dict[str, Any]:
        try:
            router_stats = self.router.stats()
        except Exception as e:  # the admin page must not die with the router
            router_stats = {"error": f"router.stats() failed: {e}"}
        return {
            "pid": os.getpid(),
            "worker": self.worker,
            "uptime_s": round(time.time() - self.started_at, 3),
            "listen": [f"{h}:{p}" for h, p in self.addresses],
            "draining": self.draining,
            "reloads": self.reloads,
            "connections": len(self.conns),
            "proxy": self.counters.as_dict(),
            "upstream_pool": self.pool.stats(),
            "router": router_stats,
            "health": self.health_report(),
        }

    def health_report(self) -> dict[str, Any]:
        """The ``health`` control op's answer: each backend's state, the latest transitions."""
        try:
            return self.health.report()
        except Exception as e:  # the admin page must not die with the report
            return {"error": f"health report failed: {e}"}


def _bound(server: Any) -> tuple[str, int]:
    """The address a server listens on (its first socket's; uvloop's ``Server.sockets`` is a
    list where typeshed's ``asyncio.Server`` has a tuple, hence ``Any``)."""
    host, port = server.sockets[0].getsockname()[:2]
    return host, port


async def serve_proxy(
    router: Any,
    listen: Sequence[tuple[str, int]],
    *,
    admin: tuple[str, int] | None,
    limits: Limits | None,
    on_ready: Callable[[], None] | None = None,
    access_log: bool | None = None,
    reuse_port: bool = False,
    tls: Mapping[tuple[str, int], ssl.SSLContext] | None = None,
) -> None:
    """Proxy requests arriving on ``listen`` through ``router`` until cancelled.

    ``tls``: the addresses of ``listen`` that terminate TLS, with their contexts
    (:func:`lbkit.l7.tls.server_contexts`). ``admin``: where the admin API listens
    (None: nowhere). ``on_ready`` is called once everything listens.
    ``access_log``: None follows the ``lbkit.l7.access`` logger's level. For
    reloads and draining, use :class:`Proxy` directly (as ``lbkit l7`` does).
    """
    proxy = Proxy(router, limits, access_log=access_log)
    await proxy.start(listen, admin, reuse_port=reuse_port, tls=tls)
    try:
        if on_ready is not None:
            on_ready()
        await asyncio.Event().wait()
    finally:
        await proxy.close()
