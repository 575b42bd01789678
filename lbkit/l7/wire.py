"""What the L7 proxy's parts share: limits, flags, byte constants, local answers, counters.

Local answers (:func:`render_local`) are the proxy's own small ``text/plain``
responses (errors, rejects, nginx ``return``), with the status texts in
:data:`TEXTS`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from .headers import field_lines
from .retry import OUTCOMES

#: A request body up to this size is kept for a retry; a larger one is never retried.
KEEP_BODY: Final = 64 * 1024
BUFFER_HIGH: Final = 256 * 1024  # body bytes waiting for an upstream before the client is paused
MAX_PIPELINE: Final = 16  # requests waiting behind the active one before the client is paused
#: After a last answer, read and discard for this long (nginx lingering_close).
LINGER_SECONDS: Final = 2.0
#: The statuses proxy_next_upstream can name (``http_*`` outcomes of lbkit.l7.retry).
RETRY_STATUSES: Final = frozenset(int(o[5:]) for o in OUTCOMES if o.startswith("http_"))

_EMPTY: Final[frozenset[str]] = frozenset()
_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE: Final = b"Connection: close\r\n"
_KEEP: Final = b"Connection: keep-alive\r\n"
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
#: host, cookie, expect, connection, content-length, transfer-encoding
_REQ_SPECIAL_LENGTHS: Final = frozenset({4, 6, 10, 14, 17})

# client parser states
P_IDLE: Final = 0
P_HEAD: Final = 1
P_BODY: Final = 2
# reasons to pause reading a client
PAUSE_UPSTREAM: Final = 1
PAUSE_PIPELINE: Final = 2
PAUSE_BUFFER: Final = 4
# how a request body goes upstream (decision.request_framing)
F_NONE: Final = 0
F_LENGTH: Final = 1
F_CHUNKED: Final = 2
_FRAMINGS: Final = {"none": F_NONE, "length": F_LENGTH, "chunked": F_CHUNKED}
_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
}
_REJECTED: Final = object()  # a route() result without return_answer: a Reject
_NO_BYTES: Final[list[bytes]] = []  # shared empty default, never appended to


def _status_line(status: int, reason: bytes = b"") -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = reason
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {s.value: _status_line(s.value) for s in HTTPStatus if s.value >= 200}

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
    parts.append(field_lines(extra))
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
