"""Health probes: the I/O edge of health checking (asyncio), and the loop that drives them.

Two probes, as the course contrasts them:

* :func:`tcp_probe`: can a connection be opened (HAProxy ``check`` with no
  ``option httpchk``; Envoy ``tcp_health_check`` with no payload)? A
  backend that accepts connections and answers every request with 500
  passes it.
* :func:`http_probe`: ``GET path`` must answer a status in ``expect``
  (default 200-399, HAProxy ``option httpchk``'s "2xx and 3xx are
  valid") and, if ``body_match`` is given, contain that text (HAProxy
  ``http-check expect string``). The answer is parsed by llhttp
  (``httptools.HttpResponseParser``), never by hand.

Either runs over TLS when given an ``ssl.SSLContext`` (HAProxy
``check-ssl``). Each returns a :class:`ProbeResult` whose ``reason`` is
the text a :class:`~lbkit.health.checker.Transition` message carries:
``HTTP 500 on /healthz``, ``connection refused``, ``timeout after 1.0 s``,
``body did not match 'ok'``. A probe never raises for a network failure.

:func:`run_checks` drives a :class:`~lbkit.health.checker.HealthChecker`
with real probes until a deadline or until cancelled; the L4 box and the
L7 router run it beside their traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from dataclasses import dataclass

from httptools import HttpParserError, HttpResponseParser

from .checker import HealthChecker, Transition, timeout_reason

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # body bytes read for body_match (HAProxy tune.chksize is 16 KiB)
CLOSE_GRACE = 1.0  # seconds a closing connection may take before it is aborted

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's verdict: passed or not, why, and how long it took (seconds)."""

    ok: bool
    reason: str
    elapsed: float


#: A probe as :func:`run_checks` calls it: given the timeout, returns the result.
Probe = Callable[[float], Awaitable[ProbeResult]]


def parse_expect(expect: str | int | range | Iterable[int]) -> Container[int]:
    """The accepted statuses: ``"200-399"``, ``"200,204"``, ``200``, a range or a set."""
    if isinstance(expect, range):
        return expect
    if isinstance(expect, int):
        return range(expect, expect + 1)
    if isinstance(expect, str):
        statuses: set[int] = set()
        for part in expect.replace(" ", "").split(","):
            low, dash, high = part.partition("-")
            try:
                first, last = int(low), int(high if dash else low)
            except ValueError:
                raise ValueError(f"bad status list {expect!r}: use e.g. '200-399,404'") from None
            if not 100 <= first <= last <= 599:
                raise ValueError(f"bad status range {part!r} in {expect!r}")
            statuses.update(range(first, last + 1))
        return frozenset(statuses)
    return frozenset(expect)


def describe_error(exc: BaseException, timeout: float) -> str:
    """The reason text for a failed connection or exchange."""
    if isinstance(exc, TimeoutError):
        return timeout_reason(timeout)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, HttpParserError):
        return f"bad HTTP response: {exc}"
    if isinstance(exc, OSError):
        return f"connect failed: {exc.strerror or exc}"
    return f"probe failed: {exc!r}"


async def _close(writer: asyncio.StreamWriter | None) -> None:
    """Close politely, bounded by CLOSE_GRACE (a TLS peer may never answer close_notify)."""
    if writer is None:
        return
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except (OSError, ssl.SSLError, TimeoutError):
        writer.transport.abort()


async def _connect(
    host: str, port: int, tls: ssl.SSLContext | None, server_hostname: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if tls is None:
        return await asyncio.open_connection(host, port)
    return await asyncio.open_connection(
        host, port, ssl=tls, server_hostname=server_hostname or host
    )


async def tcp_probe(
    host: str,
    port: int,
    timeout: float = 1.0,
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    clock: Clock = time.monotonic,
) -> ProbeResult:
    """Open a TCP connection (and the TLS handshake, with ``tls``), then close it."""
    start = clock()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await _connect(host, port, tls, server_hostname)
    except Exception as e:  # every failure is a verdict, not an error of ours
        return ProbeResult(False, describe_error(e, timeout), clock() - start)
    finally:
        elapsed = clock() - start
        await _close(writer)
    return ProbeResult(True, "TLS handshake ok" if tls else "TCP connect ok", elapsed)


class _Answer:
    """llhttp callbacks for one response: status, body, and where it ends."""

    def __init__(self) -> None:
        self.parser = HttpResponseParser(self)
        self.status = 0
        self.head_done = False
        self.complete = False
        self.delimited = False  # Content-Length or chunked: the close does not end it
        self.body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (
            name == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked")
        ):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = self.status >= 200  # a 1xx is interim: the real answer follows

    def on_body(self, body: bytes) -> None:
        if len(self.body) < MAX_BODY:
            self.body += body[: MAX_BODY - len(self.body)]

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
        else:
            self.delimited = False


async def http_probe(
    host: str,
    port: int,
    path: str = "/healthz",
    *,
    expect: str | int | range | Iterable[int] = "200-399",
    body_match: str | None = None,
    timeout: float = 1.0,
    host_header: str | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    clock: Clock = time.monotonic,
) -> ProbeResult:
    """``GET path`` over a new connection; passes on an expected status (and body text).

    Sends HTTP/1.1 with ``Connection: close`` and ``Host: host_header``
    (default ``host:port``). ``timeout`` bounds the whole exchange, connect
    to last byte. The body is read only as far as needed (at most
    :data:`MAX_BODY` bytes). With ``tls``, the certificate is checked
    against ``server_hostname`` (default ``host_header``'s host, else ``host``).
    """
    accepted = parse_expect(expect)
    authority = host_header or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    sni = server_hostname or (host_header.rsplit(":", 1)[0] if host_header else None)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lbkit-health\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()
    start = clock()
    writer = None
    answer = _Answer()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _connect(host, port, tls, sni)
            writer.write(request)
            await writer.drain()
            while not answer.complete and len(answer.body) < MAX_BODY:
                data = await reader.read(65536)
                if not data:
                    break
                answer.parser.feed_data(data)
    except Exception as e:
        reason = describe_error(e, timeout)
        return ProbeResult(False, reason, clock() - start)
    finally:
        elapsed = clock() - start
        await _close(writer)
    if not answer.head_done:
        return ProbeResult(False, "connection closed before a response", elapsed)
    if not answer.complete and answer.delimited and len(answer.body) < MAX_BODY:
        return ProbeResult(False, f"HTTP {answer.status} on {path}: body cut short", elapsed)
    if answer.status not in accepted:
        return ProbeResult(False, f"HTTP {answer.status} on {path}", elapsed)
    if body_match is not None and body_match.encode() not in answer.body:
        return ProbeResult(False, f"body did not match {body_match!r}", elapsed)
    return ProbeResult(True, f"HTTP {answer.status} on {path}", elapsed)


def tcp_check(host: str, port: int, **options: object) -> Probe:
    """A :data:`Probe` for :func:`run_checks`: :func:`tcp_probe` with these arguments."""

    def probe(timeout: float) -> Awaitable[ProbeResult]:
        return tcp_probe(host, port, timeout, **options)  # type: ignore[arg-type]

    return probe


def http_check(host: str, port: int, path: str = "/healthz", **options: object) -> Probe:
    """A :data:`Probe` for :func:`run_checks`: :func:`http_probe` with these arguments."""

    def probe(timeout: float) -> Awaitable[ProbeResult]:
        return http_probe(host, port, path, timeout=timeout, **options)  # type: ignore[arg-type]

    return probe


async def _bounded(probe: Probe, timeout: float, clock: Clock) -> ProbeResult:
    """Run one probe; a probe that overruns its timeout or raises is a failure."""
    start = clock()
    try:
        async with asyncio.timeout(timeout):
            return await probe(timeout)
    except TimeoutError:
        return ProbeResult(False, timeout_reason(timeout), clock() - start)
    except Exception as e:
        log.exception("health probe raised")
        return ProbeResult(False, f"probe error: {e!r}", clock() - start)


async def run_checks(
    checker: HealthChecker,
    probes: Mapping[str, Probe],
    *,
    until: float,
    clock: Clock = time.monotonic,
) -> list[Transition]:
    """Probe every backend of ``checker`` on its schedule until ``clock() >= until``.

    ``probes`` maps each checked backend to its :data:`Probe` (a missing
    one is a ``KeyError`` before anything starts; a backend added to the
    checker while the loop runs needs its probe in the mapping first).
    Probes run concurrently, one at most per backend, each bounded by its
    backend's ``timeout``;
    results go to :meth:`HealthChecker.record` at ``clock()``, so the
    checker's ``on_change`` fires from here. ``until`` may be ``math.inf``:
    the loop then runs until cancelled. Either way, probes still running
    when it ends are cancelled and awaited, and handed back to the checker
    with :meth:`HealthChecker.abandon`. Returns the transitions it caused.
    ``clock`` must advance with real time (``time.monotonic``, the loop's
    ``time``): the loop sleeps real seconds until the next check is due.
    """
    missing = [name for name in checker.names if name not in probes]
    if missing:
        raise KeyError(f"no probe for {', '.join(missing)}")
    transitions: list[Transition] = []
    running: dict[asyncio.Task[ProbeResult], str] = {}
    try:
        while (now := clock()) < until:
            for name in checker.due(now):
                timeout = checker.machines[name].config.timeout
                task = asyncio.ensure_future(_bounded(probes[name], timeout, clock))
                running[task] = name
            wake = min(checker.next_due(clock()), until)
            delay = max(0.0, wake - clock()) if math.isfinite(wake) else None
            if running:
                done, _ = await asyncio.wait(
                    running, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await asyncio.sleep(delay if delay is not None else 3600.0)
                done = set()
            for task in done:
                name = running.pop(task)
                result = task.result()
                if name in checker.machines:
                    transition = checker.record(name, result.ok, result.reason, clock())
                    if transition is not None:
                        transitions.append(transition)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for name in running.values():
            if name in checker.machines:
                checker.abandon(name, clock())
    return transitions
