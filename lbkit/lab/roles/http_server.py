"""An HTTP/1.1 server connection for asyncio, parsing with httptools (llhttp).

The protocol only moves bytes. llhttp (Node.js's parser) turns them into
requests; a callback - a pure function of a role's core - decides each
answer; the protocol writes the answers back in request order (RFC 9112
§9.3.2: a server answers pipelined requests in the order received), each
after its ``delay``, or hangs, or drops the connection, as the answer says.

Connection management follows RFC 9112 §9.3 and §9.6: HTTP/1.1 is persistent
unless ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``
(llhttp's ``should_keep_alive``). After the last answer the server half-
closes and reads until the client closes, for at most :data:`LINGER_SECONDS`,
so unread pipelined bytes cannot make the kernel reset the connection and
destroy the answer in flight (nginx's ``lingering_close``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import httptools

log = logging.getLogger(__name__)

#: ``(status, headers, body, delay, action)``; ``action`` is answer | hang | close
#: (a :class:`lbkit.lab.roles.backend_core.HttpAnswer` is one).
Answer = tuple[int, list[tuple[str, str]], bytes, float, str]

MAX_HEADER_BYTES = 64 * 1024  # request line + headers; nginx's large_client_header_buffers 4 8k
MAX_PIPELINE = 64  # answers waiting before we stop reading from the client
LINGER_SECONDS = 5.0  # nginx lingering_timeout


@dataclass(frozen=True)
class Request:
    """One complete request as received (the body is counted, not kept)."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    body_bytes: int
    keep_alive: bool
    client: tuple[str, int]
    server: tuple[str, int]


OnRequest = Callable[[Request], Answer]
OnBadRequest = Callable[[int, str], Answer]  # (status, reason) -> answer


def plain_answer(status: int, text: str, extra: Sequence[tuple[str, str]] = ()) -> Answer:
    """A ``text/plain`` answer with Content-Type and Content-Length set."""
    body = text.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return status, [*headers, *extra], body, 0.0, "answer"


def default_bad_request(status: int, reason: str) -> Answer:
    """400 (or 431) with the parser's reason; the connection closes after it."""
    return plain_answer(status, f"bad request: {reason}\n")


_date = [0, ""]


def http_date(now: float) -> str:
    """IMF-fixdate for the ``Date`` header (RFC 9110 §5.6.7, §6.6.1), cached per second."""
    second = int(now)
    if _date[0] != second:
        _date[0], _date[1] = second, formatdate(second, usegmt=True)
    return _date[1]  # type: ignore[return-value]


def render(answer: Answer, *, head: bool, keep_alive: bool, http10: bool, now: float) -> bytes:
    """The bytes of a response: status line, headers (plus Date, Connection), body.

    HEAD gets the headers GET would get and no body (RFC 9110 §9.3.2). The
    status line says HTTP/1.1 whatever the request's minor version (RFC 9110
    §6.2). ``Content-Length`` is added when the answer lacks it.
    """
    status, headers, body = answer[0], answer[1], answer[2]
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    names = set()
    for name, value in headers:
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if "date" not in names:
        lines.append(f"Date: {http_date(now)}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return data if head else data + body


class _Reject(Exception):
    """Raised inside a parser callback to refuse the request with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Pending:
    ready_at: float
    answer: Answer
    head: bool
    keep_alive: bool
    http10: bool


class HttpServerProtocol(asyncio.Protocol):
    """One server-side HTTP/1.1 connection.

    ``on_request`` decides the answer to each complete request;
    ``on_bad_request`` to one llhttp rejects (the connection closes after it).
    ``may_continue()`` says whether to send ``100 Continue`` to a request
    that expects it (RFC 9110 §10.1.1). ``connections``, when given, holds the
    transports of open connections, so an owner can drop them all.
    """

    def __init__(
        self,
        on_request: OnRequest,
        on_bad_request: OnBadRequest = default_bad_request,
        *,
        may_continue: Callable[[], bool] = lambda: True,
        connections: set[asyncio.BaseTransport] | None = None,
    ) -> None:
        self._on_request = on_request
        self._on_bad_request = on_bad_request
        self._may_continue = may_continue
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] = ("", 0)
        self._server: tuple[str, int] = ("", 0)
        self._queue: deque[_Pending] = deque()
        self._writer: asyncio.Task | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._reading_paused = False
        self._parse_done = False  # no more requests will be read (error, upgrade, EOF)
        self._closing = False
        self._eof = False
        self._hung = False
        self._linger: asyncio.TimerHandle | None = None
        self._start_message()

    # ------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._client = tuple(transport.get_extra_info("peername")[:2])  # type: ignore[assignment]
        self._server = tuple(transport.get_extra_info("sockname")[:2])  # type: ignore[assignment]
        if self._connections is not None:
            self._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._connections is not None:
            self._connections.discard(self._transport)  # type: ignore[arg-type]
        if self._writer is not None:
            self._writer.cancel()
        if self._linger is not None:
            self._linger.cancel()

    def data_received(self, data: bytes) -> None:
        if self._parse_done or self._closing:
            return  # lingering, hung after an error, or an upgrade we do not follow
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._parse_done = True  # answered as plain HTTP (keep_alive False); we do not switch
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.reason)
            else:
                self._reject(400, str(e) or type(e).__name__)

    def eof_received(self) -> bool:
        self._eof = True
        self._parse_done = True
        # Still owing answers: keep the transport open; _maybe_finish closes it.
        # Otherwise (or hung) returning False lets the transport close.
        return not self._hung and (bool(self._queue) or self._writer is not None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # ------------------------------------------------------------ llhttp callbacks
    def _start_message(self) -> None:
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body_bytes = 0
        self._in_headers = True

    def on_message_begin(self) -> None:
        self._start_message()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_headers:
            return  # a chunked body's trailer fields: read, not reported
        self._count_header_bytes(len(name) + len(value) + 4)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._parser.get_http_version() == "1.1":
            hosts = sum(1 for k, _ in self._headers if k.lower() == "host")
            if hosts != 1:
                # RFC 9112 §3.2: a 1.1 request without exactly one Host gets 400.
                raise _Reject(400, "an HTTP/1.1 request needs exactly one Host header")
            expects = [v.lower() for k, v in self._headers if k.lower() == "expect"]
            if "100-continue" in expects and self._idle() and self._may_continue():
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        version = self._parser.get_http_version()
        keep_alive = self._parser.should_keep_alive() and not self._parser.should_upgrade()
        request = Request(
            method=self._parser.get_method().decode("ascii"),
            target=b"".join(self._url).decode("latin-1"),
            http_version=version,
            headers=self._headers,
            body_bytes=self._body_bytes,
            keep_alive=keep_alive,
            client=self._client,
            server=self._server,
        )
        try:
            answer = self._on_request(request)
        except Exception:
            log.exception("request handler failed for %s %s", request.method, request.target)
            answer = plain_answer(500, "internal error\n")
        self._enqueue(
            _Pending(
                self._loop.time() + answer[3],
                answer,
                request.method == "HEAD",
                keep_alive,
                version == "1.0",
            )
        )
        if not keep_alive:
            self._parse_done = True

    # ------------------------------------------------------------ answering
    def _reject(self, status: int, reason: str) -> None:
        self._parse_done = True
        try:
            answer = self._on_bad_request(status, reason)
        except Exception:
            log.exception("bad-request handler failed")
            answer = default_bad_request(status, reason)
        self._enqueue(_Pending(self._loop.time() + answer[3], answer, False, False, False))

    def _idle(self) -> bool:
        return not self._queue and self._writer is None and not self._hung and not self._closing

    def _enqueue(self, item: _Pending) -> None:
        if self._hung or self._closing:
            return
        if self._idle() and item.ready_at <= self._loop.time() and self._can_write.is_set():
            self._emit(item)  # the common case: answer at once, no task
            self._maybe_finish()
            return
        self._queue.append(item)
        if self._writer is None:
            self._writer = self._loop.create_task(self._drain())
        if len(self._queue) >= MAX_PIPELINE and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    async def _drain(self) -> None:
        while self._queue:
            wait = self._queue[0].ready_at - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._can_write.wait()
            item = self._queue.popleft()
            if self._reading_paused and len(self._queue) < MAX_PIPELINE // 2:
                self._reading_paused = False
                self._transport.resume_reading()  # type: ignore[union-attr]
            if not self._emit(item):
                break
        self._writer = None
        self._maybe_finish()

    def _emit(self, item: _Pending) -> bool:
        """Act on one answer; False when the connection will carry no more."""
        action = item.answer[4]
        if action == "hang":
            self._hung = True
            self._queue.clear()
            return False
        if action == "close":
            self._closing = True
            self._queue.clear()
            self._transport.abort()  # type: ignore[union-attr]
            return False
        data = render(
            item.answer,
            head=item.head,
            keep_alive=item.keep_alive,
            http10=item.http10,
            now=time.time(),
        )
        self._transport.write(data)  # type: ignore[union-attr]
        if not item.keep_alive:
            self._queue.clear()
            self._finish()
            return False
        return True

    def _maybe_finish(self) -> None:
        if self._parse_done and not self._queue and self._writer is None and not self._hung:
            self._finish()

    def _finish(self) -> None:
        """Half-close after the last answer, then close when the client does (or on a timer)."""
        if self._closing:
            return
        self._closing = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger = self._loop.call_later(LINGER_SECONDS, transport.close)
