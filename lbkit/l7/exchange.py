"""One request and its answer, on the proxy's side (:class:`Exchange`).

An exchange carries the router's decision through its attempts: it sends the
request to a backend (a pooled keep-alive connection or a new one), streams
the body both ways, retries while nothing of the answer has reached the
client, and answers locally when it must. See :mod:`lbkit.l7.proxy` for the
rules and their sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .headers import field_lines
from .model import Limits
from .retry import idempotent
from .wire import (
    _CHUNKED,
    _CLOSE,
    _CONTINUE,
    _CRLF,
    _EMPTY,
    _KEEP,
    _LAST_CHUNK,
    _NO_BYTES,
    _STATUS_LINES,
    BUFFER_HIGH,
    F_CHUNKED,
    F_LENGTH,
    F_NONE,
    KEEP_BODY,
    NO_BACKEND,
    PAUSE_BUFFER,
    PAUSE_UPSTREAM,
    RETRY_STATUSES,
    TEXTS,
    _Reject,
    _status_line,
)

if TYPE_CHECKING:
    from .proxy import ClientConnection
    from .upstream import UpstreamConnection

log = logging.getLogger("lbkit.l7.proxy")


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
        head = self.decision.upstream_head(self.backend)  # request line and fields, as bytes
        framing = self.framing
        if framing == F_NONE:
            data = head + _CRLF
        else:
            parts = [head]
            if framing == F_CHUNKED and b"\ntransfer-encoding:" not in head.lower():
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
            and idempotent(self.method)
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
            parts.append(field_lines(extra))
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
        self.out = parts  # joined with the body that follows, at the first write
        if conn.wpaused:
            up.pause_reading()

    def upstream_body(self, data: bytes) -> None:
        if self.rechunk:
            self.out += (b"%x\r\n" % len(data), data, _CRLF)
        else:
            self.out.append(data)

    def upstream_flush(self) -> None:
        """Write what came of the answer so far (``resp_bytes`` counts what is written, as
        nginx's ``$bytes_sent``: head, body and chunk framing)."""
        out = self.out
        if out:
            data = b"".join(out)
            self.resp_bytes += len(data)
            self.conn.transport.write(data)  # type: ignore[union-attr]
            out.clear()

    def upstream_done(self, up: UpstreamConnection, keep_alive: bool) -> None:
        out = self.out
        if self.rechunk:
            out.append(_LAST_CHUNK)
        data = b"".join(out)
        self.resp_bytes += len(data)
        self.conn.transport.write(data)  # type: ignore[union-attr]
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
