"""A stand-in for the L7 router core (``lbkit.l7.router``), for the proxy's tests and bench.

Same API as the real router (``route(head, now) -> Decision | Reject``,
``stats()``), over a fixed list of backends: round robin, nginx's default
retry rules (``proxy_next_upstream error timeout``, not for non-idempotent
methods), no rewrites but dropping the hop-by-hop fields (nginx with
``proxy_set_header Connection ""``) and adding what it is told to. Paths
under ``reject_prefix`` get a 404 ``Reject``; names in ``down`` are never
picked.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from lbkit.l7.headers import field_lines
from lbkit.l7.router import RequestHead

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NO_BODY = ("none", 0)
_CHUNKED = ("chunked", None)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass
class Reject:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Backend:
    name: str
    address: str


class Decision:
    """One request's routing decision (what the proxy asks while it works)."""

    __slots__ = ("_head", "_router", "request_framing")

    return_answer = None
    route_name = "stub"

    def __init__(self, router: StubRouter, head: RequestHead) -> None:
        self._router = router
        self._head = head
        framing: tuple[str, int | None] = _NO_BODY
        for name, value in head.headers:
            if len(name) in (14, 17):
                lower = name.lower()
                if lower == "transfer-encoding":
                    framing = _CHUNKED
                    break
                if lower == "content-length":
                    framing = ("length", int(value))
        self.request_framing = framing

    def request_line(self, backend: Backend) -> bytes:
        return f"{self._head.method} {self._head.target} HTTP/1.1\r\n".encode("latin-1")

    def upstream_headers(self, backend: Backend) -> list[tuple[str, str]]:
        """The client's fields minus hop-by-hop ones (nginx with ``Connection ""``), plus extras.

        Content-Length stays (framing "length"); Transfer-Encoding goes: the proxy adds it.
        """
        out = [h for h in self._head.headers if h[0].lower() not in HOP_BY_HOP]
        if self._head.version == "1.0" and not any(k.lower() == "host" for k, _ in out):
            out.append(("Host", backend.address))  # nginx: Host $proxy_host
        if self._router.add_request_headers:
            out += self._router.add_request_headers
        return out

    def upstream_head(self, backend: Backend) -> bytes:
        return self.request_line(backend) + field_lines(self.upstream_headers(backend))

    def pick(self, now: float, exclude: frozenset[str]) -> Backend | None:
        return self._router.pick(exclude)

    def on_start(self, backend: Backend, now: float) -> None:
        self._router.active[backend.name] += 1

    def on_finish(self, backend: Backend, now: float, ok: bool, status: int | None = None) -> None:
        r = self._router
        r.active[backend.name] -= 1
        r.finished.append((backend.name, ok, status))

    def should_retry(
        self, attempt: int, outcome: str, now: float, *, request_sent: bool = True
    ) -> bool:
        """nginx: listed outcomes, at most one try per backend, and a non-idempotent request
        only if it was never sent (or ``non_idempotent`` is listed)."""
        r = self._router
        if outcome not in r.next_upstream or attempt >= len(r.backends):
            return False
        if not request_sent:
            return True
        return self._head.method in IDEMPOTENT or "non_idempotent" in r.next_upstream

    def response_headers(self, backend: Backend) -> list[tuple[str, str]]:
        return self._router.add_response_headers


class StubRouter:
    """Round robin over ``addresses`` ("ip:port"; named ``b1``, ``b2``... in order)."""

    def __init__(
        self,
        addresses: list[str],
        *,
        next_upstream: tuple[str, ...] = ("error", "timeout"),
        reject_prefix: str = "/blocked",
        add_response_headers: list[tuple[str, str]] | None = None,
        add_request_headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.backends = [Backend(f"b{i + 1}", a) for i, a in enumerate(addresses)]
        self.next_upstream = frozenset(next_upstream)
        self.reject_prefix = reject_prefix
        self.add_response_headers = add_response_headers or []
        self.add_request_headers = add_request_headers or []
        self.down: set[str] = set()  # names pick() never returns (a health check's verdict)
        self.active = {b.name: 0 for b in self.backends}
        self.finished: deque[tuple[str, bool, int | None]] = deque(maxlen=1000)
        self.routed = 0
        self._next = 0

    def route(self, head: RequestHead, now: float) -> Decision | Reject:
        self.routed += 1
        if self.reject_prefix and head.target.startswith(self.reject_prefix):
            return Reject(404, "404 not found: no route")
        return Decision(self, head)

    def pick(self, exclude: frozenset[str]) -> Backend | None:
        n = len(self.backends)
        if self.down:
            exclude = exclude | self.down
        if not exclude:
            b = self.backends[self._next % n]
            self._next += 1
            return b
        for _ in range(n):
            b = self.backends[self._next % n]
            self._next += 1
            if b.name not in exclude:
                return b
        return None

    def stats(self) -> dict:
        return {"routed": self.routed, "active": dict(self.active)}


class FakeTransport(asyncio.Transport):
    """A transport with no socket, for driving the proxy's protocols directly.

    ``last`` is the latest write and ``writes`` their count; with ``keep=True``,
    ``sent`` holds everything written. Closing does nothing.
    """

    def __init__(
        self,
        peer: tuple[str, int] = ("127.0.0.1", 40000),
        sock: tuple[str, int] = ("127.0.0.1", 8080),
        *,
        keep: bool = False,
    ) -> None:
        super().__init__()
        self.last = self.sent = b""
        self.writes = 0
        self.keep = keep
        self._extra = {"peername": peer, "sockname": sock}

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def write(self, data) -> None:
        self.last = data
        self.writes += 1
        if self.keep:
            self.sent += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False
