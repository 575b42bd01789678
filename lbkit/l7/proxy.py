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
from http import HTTPStatus
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from . import accesslog
from .admin import start_admin
from .healthrun import EventSink, HealthRunner
from .model import Limits
from .router import RequestHead
from .tls import count_handshakes, sni_of
from .upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger(__name__)

KEEP_BODY = 64 * 1024  # a request body up to this size is kept for a retry; larger never retried
BUFFER_HIGH = 256 * 1024  # body bytes waiting for an upstream before the client is paused
MAX_PIPELINE = 16  # requests waiting behind the active one before the client is paused
LINGER_SECONDS = 2.0  # after a last answer, read and discard for this long (nginx lingering_close)
RETRY_STATUSES = frozenset({403, 404, 429, 500, 502, 503, 504})  # proxy_next_upstream http_*
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2

_EMPTY: frozenset[str] = frozenset()
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP = b"Connection: keep-alive\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
#: host, expect, connection, content-length, transfer-encoding
_REQ_SPECIAL_LENGTHS = frozenset({4, 6, 10, 14, 17})

# client parser states
P_IDLE, P_HEAD, P_BODY = 0, 1, 2
# reasons to pause reading a client
PAUSE_UPSTREAM, PAUSE_PIPELINE, PAUSE_BUFFER = 1, 2, 4
# how a request body goes upstream (decision.request_framing)
F_NONE, F_LENGTH, F_CHUNKED = 0, 1, 2
_FRAMINGS = {"none": F_NONE, "length": F_LENGTH, "chunked": F_CHUNKED}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
_REJECTED = object()  # a route() result without return_answer: a Reject
_NO_BYTES: list[bytes] = []  # shared empty default, never appended to


def _status_line(status: int, reason: bytes = b"") -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = reason
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {s.value: _status_line(s.value) for s in HTTPStatus if s.value >= 200}

_date_cache = [0, b""]


def http_date(now: float | None = None) -> bytes:
    """The ``Date`` field value (RFC 9110 §5.6.7), recomputed once per second."""
    from email.utils import formatdate

    second = int(time.time() if now is None else now)
    if _date_cache[0] != second:
        _date_cache[0], _date_cache[1] = second, formatdate(second, usegmt=True).encode()
    return _date_cache[1]  # type: ignore[return-value]


def render_local(
    status: int,
    text: str,
    extra: Sequence[tuple[str, str]] = (),
    *,
    head: bool = False,
    keep_alive: bool = True,
    http10: bool = False,
) -> bytes:
    """A small ``text/plain`` answer made here (errors, rejects, ``return``)."""
    body = text.encode()
    parts = [
        _STATUS_LINES.get(status) or _status_line(status),
        b"Server: lbkit\r\nDate: %s\r\n" % http_date(),
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
    ]
    parts.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in extra)
    if not keep_alive:
        parts.append(_CLOSE)
    elif http10:
        parts.append(_KEEP)
    parts.append(_CRLF)
    if not head:
        parts.append(body)
    return b"".join(parts)


#: Local answers' texts, by status (nginx's error pages say as little).
TEXTS = {
    400: "400 bad request",
    408: "408 request timeout: the request was not received in time",
    413: "413 content too large",
    414: "414 URI too long",
    431: "431 request header fields too large",
    500: "500 internal error",
    502: "502 bad gateway",
    503: "503 service unavailable: no backend available",
    504: "504 gateway timeout: the backend did not answer in time",
}
#: What to answer when the router has no backend to pick (its ``no_backend_status``):
#: nginx says "no live upstreams" in its error log.
NO_BACKEND = {
    502: "502 bad gateway: no live upstreams",
    503: TEXTS[503],
}


class _Reject(Exception):
    """Raised in a parser callback: refuse the request with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Counters:
    """The proxy's counters (plain attributes: an increment is one store)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.retries = 0
        self.bytes_out = 0
        self.status: dict[int, int] = {}
        self.failures: dict[str, int] = {}  # upstream outcomes: error, timeout, invalid_header
        self.client_aborts = 0
        self.tls_handshakes = 0  # counted by lbkit.l7.tls.ServerSSLObject
        self.tls_handshake_failures = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections_total": self.connections,
            "requests": self.requests,
            "retries": self.retries,
            "bytes_out": self.bytes_out,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "upstream_failures": dict(sorted(self.failures.items())),
            "client_aborts": self.client_aborts,
            "tls_handshakes": self.tls_handshakes,
            "tls_handshake_failures": self.tls_handshake_failures,
        }


class Exchange:
    """One request and its answer: routing decision, attempts, body both ways.

    It is the sink of the upstream connection it is attached to (see
    :class:`lbkit.l7.upstream.ResponseSink`). ``started`` becomes true when
    the answer's head is committed to the client: from then on no retry and
    no local answer, only completion or an abort.
    """

    __slots__ = (
        "attempt",
        "backend",
        "body_done",
        "body_total",
        "conn",
        "connect_at",
        "connect_task",
        "decision",
        "expect",
        "finished",
        "framing",
        "http10",
        "in_attempt",
        "is_head",
        "keep_alive",
        "kept",
        "kept_bytes",
        "local",
        "method",
        "out",
        "pending",
        "pending_bytes",
        "proxy",
        "rechunk",
        "replayable",
        "resp_bytes",
        "retries",
        "stale_retried",
        "started",
        "status",
        "t0",
        "t_up",
        "target",
        "tried",
        "up",
        "up_time",
    )

    def __init__(self, conn: ClientConnection, method: str, target: str, keep_alive: bool) -> None:
        self.conn = conn
        self.proxy = conn.proxy
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.is_head = method == "HEAD"
        self.http10 = False
        self.expect = False
        self.decision: Any = None
        self.local: tuple[int, str, Sequence[tuple[str, str]]] | None = None
        self.framing = F_NONE
        self.body_done = False
        self.body_total = 0
        self.pending: list[bytes] = _NO_BYTES  # replaced by a list when body waits
        self.pending_bytes = 0
        self.kept: list[bytes] | None = None
        self.kept_bytes = 0
        self.replayable = True
        self.backend: Any = None
        self.attempt = 0
        self.retries = 0
        self.tried: list[str] = []
        self.in_attempt = False
        self.stale_retried = False
        self.up: UpstreamConnection | None = None
        self.connect_task: asyncio.Task | None = None
        self.connect_at = 0.0
        self.started = False
        self.finished = False
        self.status = 0
        self.out: list[bytes] = _NO_BYTES  # set by upstream_head
        self.rechunk = False
        self.resp_bytes = 0
        self.t0 = 0.0
        self.t_up = 0.0
        self.up_time = 0.0

    # ------------------------------------------------------------ request body
    def body_data(self, data: bytes) -> None:
        """A piece of the (decoded) request body from the client."""
        n = len(data)
        self.body_total += n
        limit = self.proxy.limits.client_max_body_size
        if limit and self.body_total > limit:
            raise _Reject(413, f"request body over client_max_body_size ({limit} bytes)")
        if self.finished:
            return  # answered already: the rest is read and dropped
        if self.replayable:
            if self.kept_bytes + n <= KEEP_BODY:
                if self.kept is None:
                    self.kept = []
                self.kept.append(data)
                self.kept_bytes += n
            else:
                self.replayable = False
                self.kept = None
        up = self.up
        if up is not None:
            if self.framing == F_CHUNKED:
                up.transport.writelines((b"%x\r\n" % n, data, _CRLF))  # type: ignore[union-attr]
            elif self.framing == F_LENGTH:
                up.transport.write(data)  # type: ignore[union-attr]
            up.rx = True
        elif self.decision is not None:
            if self.pending is _NO_BYTES:
                self.pending = []
            self.pending.append(data)
            self.pending_bytes += n
            if self.pending_bytes > BUFFER_HIGH:
                self.conn.pause(PAUSE_BUFFER)

    def body_end(self) -> None:
        self.body_done = True
        up = self.up
        if up is not None and self.framing == F_CHUNKED and not self.finished:
            up.transport.write(_LAST_CHUNK)  # type: ignore[union-attr]

    # ------------------------------------------------------------ attempts
    def start(self, now: float) -> None:
        """Become the connection's active exchange: answer locally or make the first attempt."""
        if self.local is not None:
            self.conn.send_local(self)
            return
        if self.expect and not self.body_done and not self.body_total:
            self.conn.transport.write(_CONTINUE)  # type: ignore[union-attr]
        backend = self.decision.pick(now, _EMPTY)
        if backend is None:
            self.no_backend()
        else:
            self.launch(backend, now)

    def no_backend(self) -> None:
        """Nothing to pick: the router's ``no_backend_status`` (nginx 502, lbkit TOML 503)."""
        status = getattr(self.decision, "no_backend_status", 503)
        self.answer_locally(status, NO_BACKEND.get(status, TEXTS[503]))

    def next_attempt(self, now: float) -> bool:
        """Pick a backend (not one tried) and send; False when there is none."""
        backend = self.decision.pick(now, frozenset(self.tried) if self.tried else _EMPTY)
        if backend is None:
            return False
        self.launch(backend, now)
        return True

    def launch(self, backend: Any, now: float) -> None:
        """Start an attempt on ``backend``: a pooled connection, else a new one."""
        self.backend = backend
        self.attempt += 1
        self.tried.append(backend.name)
        if self.proxy.access_log:
            self.t_up = time.perf_counter()
        self.decision.on_start(backend, now)
        self.in_attempt = True
        if self.attempt > 1:
            self.pending = list(self.kept or ())
            self.pending_bytes = self.kept_bytes
        up = self.proxy.pool.acquire(backend.address)
        if up is None:
            self.connect()
        else:
            self.send(up)

    def connect(self) -> None:
        self.connect_at = self.proxy.now
        task = self.proxy.loop.create_task(self.proxy.pool.connect(self.backend.address))
        self.connect_task = task
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        if task is not self.connect_task:  # given up on (time-out, client gone)
            if not task.cancelled() and task.exception() is None:
                self.proxy.pool.release(task.result())
            return
        self.connect_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self.failed(None, "error", f"connect to {self.backend.address}: {detail}")
        else:
            self.send(task.result())

    def send(self, up: UpstreamConnection) -> None:
        """The request head and the body received so far, in one write."""
        decision, backend = self.decision, self.backend
        line = decision.request_line(backend)
        headers = decision.upstream_headers(backend)
        if not line.endswith(_CRLF):
            line += _CRLF
        head = line + "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1")
        framing = self.framing
        if framing == F_NONE:
            data = head + _CRLF
        else:
            parts = [head]
            if framing == F_CHUNKED and not any(
                k.lower() == "transfer-encoding" for k, _ in headers
            ):
                parts.append(_CHUNKED)  # the router leaves the body's framing to us
            parts.append(_CRLF)
            if self.pending:
                if framing == F_CHUNKED:
                    for chunk in self.pending:
                        parts += (b"%x\r\n" % len(chunk), chunk, _CRLF)
                else:
                    parts += self.pending
                self.pending = _NO_BYTES
                self.pending_bytes = 0
                self.conn.resume(PAUSE_BUFFER)
            if self.body_done and framing == F_CHUNKED:
                parts.append(_LAST_CHUNK)
            data = b"".join(parts)
        self.up = up
        up.start(self, data, no_body=self.is_head)
        if self.conn.wpaused:
            up.pause_reading()

    def end_attempt(self, now: float, ok: bool, status: int | None) -> None:
        if self.in_attempt:
            self.in_attempt = False
            if self.proxy.access_log:
                self.up_time += time.perf_counter() - self.t_up
            self.decision.on_finish(self.backend, now, ok, status)

    def drop_upstream(self) -> None:
        """Forget the current connection or connection attempt (closing what is open)."""
        task = self.connect_task
        if task is not None:
            self.connect_task = None
            task.cancel()
        up = self.up
        if up is not None:
            self.up = None
            up.close()
        self.conn.resume(PAUSE_UPSTREAM)

    def should_retry(self, outcome: str, now: float, sent: bool = True) -> bool:
        """``decision.should_retry``; told when the request never left (a failed connect),
        which makes even a non-idempotent request safe to retry (nginx)."""
        if not sent:
            with contextlib.suppress(TypeError):  # a router without the keyword
                return self.decision.should_retry(self.attempt, outcome, now, request_sent=False)
        return self.decision.should_retry(self.attempt, outcome, now)

    def failed(self, conn: UpstreamConnection | None, outcome: str, detail: str) -> None:
        """The attempt broke (``error``, ``invalid_header``) or timed out: retry, or answer."""
        proxy = self.proxy
        proxy.counters.failures[outcome] = proxy.counters.failures.get(outcome, 0) + 1
        self.drop_upstream()
        now = proxy.loop.time()
        if self.started:
            self.end_attempt(now, False, self.status)
            self.conn.abort(self)
            return
        self.end_attempt(now, False, None)
        if self.finished:
            return
        log.debug("%s %s: %s via %s: %s", self.method, self.target, outcome, self.tried, detail)
        if (
            outcome == "error"
            and conn is not None
            and conn.reused
            and not conn.got_bytes
            and not self.stale_retried
            and self.replayable
            and self.method in IDEMPOTENT
        ):
            # A pooled connection the backend closed as we wrote: one fresh try, not counted
            # (the request never reached the application).
            self.stale_retried = True
            if proxy.access_log:
                self.t_up = time.perf_counter()
            self.decision.on_start(self.backend, now)
            self.in_attempt = True
            self.pending = list(self.kept or ())
            self.pending_bytes = self.kept_bytes
            self.connect()
            return
        if (
            self.replayable
            and self.should_retry(outcome, now, sent=conn is not None)
            and self.next_attempt(now)
        ):
            self.retries += 1
            self.proxy.counters.retries += 1
            return
        status = 504 if outcome == "timeout" else 502
        self.answer_locally(status, TEXTS[status])

    def answer_locally(self, status: int, text: str) -> None:
        self.local = (status, text, ())
        self.conn.send_local(self)

    def tick(self, now: float, limits: Limits) -> None:
        """Time-outs of the current attempt (called by the sweep)."""
        task = self.connect_task
        if task is not None:
            if now - self.connect_at > limits.proxy_connect_timeout:
                self.connect_task = None
                task.cancel()
                self.failed(None, "timeout", f"connect to {self.backend.address} timed out")
            return
        up = self.up
        if up is None:
            return
        if up.rx:
            up.rx = False
            up.rx_at = now
        elif now - up.rx_at > limits.proxy_read_timeout:
            if up.read_paused:  # the client does not read what the backend sends
                self.end_attempt(now, True, self.status)
                self.drop_upstream()
                self.conn.abort(self)
            else:
                self.failed(up, "timeout", "proxy_read_timeout")

    # ------------------------------------------------------------ the sink of an upstream
    def upstream_head(self, up: UpstreamConnection) -> None:
        status = up.status
        if status in RETRY_STATUSES and self.replayable and not self.started:
            decision = self.decision
            now = self.proxy.loop.time()
            if self.should_retry(f"http_{status}", now):
                # With no other backend this answer goes to the client, as nginx does.
                backend = decision.pick(now, frozenset(self.tried))
                if backend is not None:
                    self.end_attempt(now, False, status)
                    self.up = None
                    up.close()
                    self.retries += 1
                    self.proxy.counters.retries += 1
                    self.launch(backend, now)
                    return
        self.status = status
        self.started = True
        conn = self.conn
        parts = [_STATUS_LINES.get(status) or _status_line(status), *up.headers]
        extra = self.decision.response_headers(self.backend)
        if extra:
            parts.append("".join([f"{k}: {v}\r\n" for k, v in extra]).encode("latin-1"))
        if up.length is None and not self.is_head and status not in (204, 304):
            if self.http10:
                self.keep_alive = False  # delimited by the close (RFC 9112 §6.3)
            else:
                parts.append(_CHUNKED)
                self.rechunk = True
        if not self.keep_alive or not self.body_done or self.proxy.draining:
            self.keep_alive = False
            parts.append(_CLOSE)
        elif self.http10:
            parts.append(_KEEP)
        parts.append(_CRLF)
        head = b"".join(parts)
        self.resp_bytes = len(head)
        self.out = [head]
        if conn.wpaused:
            up.pause_reading()

    def upstream_body(self, data: bytes) -> None:
        n = len(data)
        if self.rechunk:
            self.out += (b"%x\r\n" % n, data, _CRLF)
        else:
            self.out.append(data)
        self.resp_bytes += n

    def upstream_flush(self) -> None:
        out = self.out
        if out:
            self.conn.transport.write(b"".join(out))  # type: ignore[union-attr]
            out.clear()

    def upstream_done(self, up: UpstreamConnection, keep_alive: bool) -> None:
        out = self.out
        if self.rechunk:
            out.append(_LAST_CHUNK)
            self.resp_bytes += 5
        self.conn.transport.write(b"".join(out))  # type: ignore[union-attr]
        out.clear()
        self.up = None
        if keep_alive and self.body_done:
            self.proxy.pool.release(up)
        else:
            up.close()
            self.conn.resume(PAUSE_UPSTREAM)
        self.in_attempt = False
        proxy = self.proxy
        now = proxy.loop.time()
        if proxy.access_log:
            self.up_time += time.perf_counter() - self.t_up
        self.decision.on_finish(self.backend, now, True, self.status)
        self.conn.finish(self)

    def upstream_failed(self, up: UpstreamConnection, outcome: str, detail: str) -> None:
        if self.up is up:
            self.up = None
        self.failed(up, outcome, detail)

    def upstream_pause(self) -> None:
        self.conn.pause(PAUSE_UPSTREAM)

    def upstream_resume(self) -> None:
        self.conn.resume(PAUSE_UPSTREAM)

    # ------------------------------------------------------------ the client went away
    def client_gone(self) -> None:
        self.drop_upstream()
        self.end_attempt(self.proxy.loop.time(), True, self.status or None)
        if not self.started:
            self.status = 499  # nginx's code for "client closed request"


class ClientConnection(asyncio.Protocol):
    """One client connection: parse requests, run their exchanges in order, answer.

    (``__slots__`` names every attribute: a little faster, and a typo fails loudly.)
    """

    __slots__ = (
        "_linger",
        "active",
        "clen",
        "client",
        "closing",
        "connection",
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
        "te",
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
        self.clen: bytes | None = None
        self.te: bytes | None = None
        self.expect: bytes | None = None
        self.hosts = 0
        self.connection = False

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
        if ln in _REQ_SPECIAL_LENGTHS:
            lower = name.lower()
            if lower == b"host":
                self.hosts += 1
            elif lower == b"content-length":
                self.clen = value
            elif lower == b"transfer-encoding":
                self.te = value
            elif lower == b"expect":
                self.expect = value
            elif lower == b"connection":
                self.connection = True
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        proxy = self.proxy
        keep = parser.should_keep_alive()
        # get_http_version() formats a string each time; without a Connection field llhttp
        # keeps alive exactly the HTTP/1.1 requests, so that case needs no call.
        version = "1.1" if keep and not self.connection else parser.get_http_version()
        if self.hosts != 1 and version == "1.1":
            # RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request, or 400.
            raise _Reject(400, f"{TEXTS[400]}: an HTTP/1.1 request needs exactly one Host")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        keep = keep and proxy.keepalive and not parser.should_upgrade()
        self.keep = keep
        length = 0
        chunked = self.te is not None
        if not chunked and self.clen is not None:
            length = int(self.clen)
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
        # RequestHead(method, target, version, headers, client, server, scheme, sni)
        head = proxy.head_type(
            method, target, version, self.headers, self.client, self.server, self.scheme, self.sni
        )
        self.headers = []  # the next request's (the router may keep this list)
        self.url = b""
        self.hbytes = self.hosts = self.head_rx = 0
        self.clen = self.te = None
        self.connection = False
        try:
            result = proxy.router.route(head, now)
            answer = getattr(result, "return_answer", _REJECTED)
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
                        (
                            (lambda: ClientConnection(self))
                            if context is None
                            else (lambda: ClientConnection(self, "https"))
                        ),
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
                self.addresses.append(server.sockets[0].getsockname()[:2])
            if admin is not None:
                self._admin = await start_admin(self, admin)
                self.admin_address = self._admin.sockets[0].getsockname()[:2]
        except BaseException:
            await self.close()
            raise
        self._sweeper = self.loop.create_task(self._sweep())
        self.health.start()

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
