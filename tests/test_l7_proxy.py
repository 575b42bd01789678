"""The L7 proxy's I/O adapter over real sockets on 127.0.0.1.

Backends are small h11 servers and the proxy runs with the stand-in router
(``tests/_l7_stub.py``), all on one event loop in a background thread. Tests
talk to the proxy with blocking sockets and check every answer with h11, a
strict HTTP/1.1 parser independent of llhttp. They wait on events and
conditions with deadlines, never with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import pytest

from lbkit.l7.accesslog import FIELDS
from lbkit.l7.model import Limits
from lbkit.l7.proxy import Proxy
from lbkit.lab.roles.runner import loop_factory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _l7_stub import StubRouter

DEADLINE = 5.0  # seconds any expected event may take
IP = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


# ------------------------------------------------------------------ an event loop in a thread


class LoopThread:
    """A uvloop event loop in a daemon thread; ``run(coro)`` waits for its result."""

    def __init__(self) -> None:
        self.loop = (loop_factory() or asyncio.new_event_loop)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = DEADLINE) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


# ------------------------------------------------------------------ h11 backends


@dataclass
class Seen:
    conn: int
    method: str
    target: str
    headers: dict[str, str]
    body_bytes: int
    sha256: str


@dataclass
class Backend:
    """An h11 server. Paths: /echo (JSON of what arrived), /chunked?n=&size= (a chunked
    answer; /chunked?gate=1 waits for ``gate`` after the first chunk), /big?n= (Content-Length),
    /slow (never answers), /hold (answers once ``release`` is set), /status/CODE, /garbage
    (not HTTP), /bighead (a 100 kB head), /cut (a body cut short by a reset); else 404.
    ``mode`` "reset" aborts each connection when a request arrives; "502" answers 502 to
    everything."""

    name: str
    mode: str = "ok"
    port: int = 0
    connections: int = 0
    seen: list[Seen] = field(default_factory=list)
    got: threading.Event = field(default_factory=threading.Event)
    gate: asyncio.Event | None = None
    release: asyncio.Event | None = None
    server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"{IP}:{self.port}"


class H11Server(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.conn = h11.Connection(h11.SERVER)
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.b.connections += 1
        self.id = self.b.connections
        self.req: h11.Request | None = None
        self.body = hashlib.sha256()
        self.n = 0

    def data_received(self, data: bytes) -> None:
        if self.b.mode == "reset":
            self.t.abort()  # type: ignore[attr-defined]
            return
        self.conn.receive_data(data)
        self.pump()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        return None

    def pump(self) -> None:
        while not self.busy:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.t.abort()  # type: ignore[attr-defined]
                return
            if (
                event is h11.NEED_DATA
                or event is h11.PAUSED
                or isinstance(event, h11.ConnectionClosed)
            ):
                return
            if isinstance(event, h11.Request):
                self.req, self.body, self.n = event, hashlib.sha256(), 0
            elif isinstance(event, h11.Data):
                self.body.update(event.data)
                self.n += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.busy = True
                asyncio.get_running_loop().create_task(self.answer())

    def send(self, *events: Any) -> None:
        for event in events:
            if isinstance(event, h11.Data) and self.req and self.req.method == b"HEAD":
                continue
            data = self.conn.send(event)
            if data:
                self.t.write(data)  # type: ignore[attr-defined]

    async def answer(self) -> None:
        req = self.req
        assert req is not None
        target = req.target.decode()
        url = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        seen = Seen(self.id, req.method.decode(), target, headers, self.n, self.body.hexdigest())
        self.b.seen.append(seen)
        self.b.got.set()
        path = url.path
        if self.b.mode == "502":
            path = "/status/502"
        if path == "/slow":
            return  # never answers
        if path == "/bighead":  # a response head of 100 kB
            self.t.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n")  # type: ignore[attr-defined]
            return
        if path == "/garbage":
            self.t.write(b"NOT HTTP AT ALL\r\n\r\n")  # type: ignore[attr-defined]
            self.t.close()  # type: ignore[attr-defined]
            return
        if path == "/cut":  # promises 100000 bytes, sends 10, resets
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")  # type: ignore[attr-defined]
            await asyncio.sleep(0)
            self.t.abort()  # type: ignore[attr-defined]
            return
        if path == "/hold":
            await self.b.release.wait()  # type: ignore[union-attr]
        if path == "/chunked":
            n, size = int(q.get("n", 4)), int(q.get("size", 1000))
            self.send(h11.Response(status_code=200, headers=[("Content-Type", "x/bytes")]))
            for i in range(n):
                self.send(h11.Data(data=bytes([65 + i % 26]) * size))
                if i == 0 and q.get("gate"):
                    await self.b.gate.wait()  # type: ignore[union-attr]
                await asyncio.sleep(0)  # each piece in its own write
            self.send(h11.EndOfMessage())
        elif path == "/big":
            body = b"x" * int(q.get("n", MiB))
            self.send(
                h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        elif path in ("/echo", "/hold"):
            doc = {
                "backend": self.b.name,
                "conn": self.id,
                "method": seen.method,
                "target": target,
                "headers": headers,
                "body_bytes": self.n,
                "sha256": seen.sha256,
            }
            body = json.dumps(doc).encode()
            self.send(
                h11.Response(
                    status_code=200,
                    headers=[
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(body))),
                    ],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        elif path.startswith("/status/"):
            body = f"{self.b.name} says {path[8:]}\n".encode()
            self.send(
                h11.Response(
                    status_code=int(path[8:]), headers=[("Content-Length", str(len(body)))]
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        else:
            self.send(
                h11.Response(status_code=404, headers=[("Content-Length", "9")]),
                h11.Data(data=b"not here\n"),
                h11.EndOfMessage(),
            )
        if self.conn.our_state is h11.MUST_CLOSE:
            self.t.close()  # type: ignore[attr-defined]
            return
        self.conn.start_next_cycle()
        self.busy = False
        self.pump()


async def start_backend(b: Backend) -> Backend:
    loop = asyncio.get_running_loop()
    b.gate, b.release = asyncio.Event(), asyncio.Event()
    b.server = await loop.create_server(lambda: H11Server(b), IP, b.port)
    b.port = b.server.sockets[0].getsockname()[1]
    return b


# ------------------------------------------------------------------ an h11 client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Client:
    """Blocking client; h11 renders requests and checks answers strictly."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((IP, port), timeout=DEADLINE)
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def render(
        self,
        method: str = "GET",
        target: str = "/echo",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        chunks: list[bytes] | None = None,
    ) -> bytes:
        hs = [("Host", "lab"), *(headers or [])]
        if body is not None:
            hs.append(("Content-Length", str(len(body))))
        if chunks is not None:
            hs.append(("Transfer-Encoding", "chunked"))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hs)) or b""
        for piece in [body] if body else chunks or []:
            out += self.conn.send(h11.Data(data=piece)) or b""
        return out + (self.conn.send(h11.EndOfMessage()) or b"")

    def request(self, *args: Any, **kw: Any) -> Reply:
        self.sock.sendall(self.render(*args, **kw))
        return self.reply()

    def reply(self) -> Reply:
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(1 << 20))  # b"": the peer closed
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the proxy closed the connection before the answer ended")
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(status, headers, bytes(body))

    def closed_by_peer(self) -> bool:
        """True once the proxy closed (EOF or reset) within the deadline."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def raw_exchange(port: int, data: bytes) -> Reply:
    """Send ``data`` as is on a new connection; parse the one answer with h11."""
    c = Client(port)
    try:
        c.sock.sendall(data)
        c.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "lab")]))
        return c.reply()
    finally:
        c.close()


# ------------------------------------------------------------------ fixtures


class Lab:
    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.proxies: list[Proxy] = []
        self.backends: list[Backend] = []

    def backend(self, name: str, mode: str = "ok") -> Backend:
        b = self.lt.run(start_backend(Backend(name, mode)))
        self.backends.append(b)
        return b

    def proxy(self, router: Any, **limits: Any) -> Proxy:
        async def start() -> Proxy:
            p = Proxy(router, Limits(**limits), access_log=False)
            await p.start([(IP, 0)], (IP, 0))
            return p

        p = self.lt.run(start())
        self.proxies.append(p)
        return p

    def set(self, event: asyncio.Event | None) -> None:
        assert event is not None
        self.lt.call(event.set)

    def close(self) -> None:
        for p in self.proxies:
            self.lt.run(p.close())
        for b in self.backends:
            self.lt.call(b.server.close)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def lab(loop_thread: LoopThread) -> Iterator[Lab]:
    lab = Lab(loop_thread)
    try:
        yield lab
    finally:
        lab.close()


def port_of(p: Proxy) -> int:
    return p.addresses[0][1]


@contextlib.contextmanager
def client(p: Proxy) -> Iterator[Client]:
    c = Client(port_of(p))
    try:
        yield c
    finally:
        c.close()


def one_backend(lab: Lab, **limits: Any) -> tuple[Backend, StubRouter, Proxy]:
    b = lab.backend("b1")
    router = StubRouter([b.address])
    return b, router, lab.proxy(router, **limits)


# ------------------------------------------------------------------ forwarding


def test_get_reaches_a_backend_and_the_answer_comes_back(lab: Lab) -> None:
    """A GET through the proxy reaches the backend, whose answer reaches the client."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        reply = c.request("GET", "/echo?x=1")
    assert reply.status == 200
    assert reply.json()["target"] == "/echo?x=1"
    assert reply.json()["backend"] == "b1"


def test_client_keep_alive_serves_three_requests_on_one_connection(lab: Lab) -> None:
    """Three requests in a row on one client connection get three answers."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        statuses = [c.request("GET", f"/echo?i={i}").status for i in range(3)]
    assert statuses == [200, 200, 200]
    assert p.counters.connections == 1


def test_upstream_keep_alive_reuses_one_backend_connection(lab: Lab) -> None:
    """Sequential requests, even from different clients, reach the backend on one connection."""
    b, _, p = one_backend(lab)
    for _ in range(3):
        with client(p) as c:
            assert c.request("GET", "/echo").status == 200
    assert {s.conn for s in b.seen} == {1}
    assert b.connections == 1


def test_chunked_request_body_of_one_mib_arrives_intact(lab: Lab) -> None:
    """A 1 MiB chunked request body is streamed to the backend byte for byte."""
    _, _, p = one_backend(lab, client_max_body_size=2 * MiB)
    chunks = [os.urandom(64 * 1024) for _ in range(16)]
    with client(p) as c:
        reply = c.request("POST", "/echo", chunks=chunks)
    assert reply.status == 200
    assert reply.json()["body_bytes"] == MiB
    assert reply.json()["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_chunked_response_is_streamed_before_the_backend_finishes(lab: Lab) -> None:
    """The first piece of a chunked answer reaches the client while the backend still holds
    the rest; then all of it arrives, re-chunked correctly."""
    b, _, p = one_backend(lab)
    with client(p) as c:
        c.sock.sendall(c.render("GET", "/chunked?n=64&size=65536&gate=1"))
        event = c.conn.next_event()
        while event is h11.NEED_DATA or isinstance(event, h11.Response):
            c.conn.receive_data(c.sock.recv(1 << 16))  # blocks until the first piece is here
            event = c.conn.next_event()
        assert isinstance(event, h11.Data)  # a body piece, while the backend waits on its gate
        received = len(event.data)
        lab.set(b.gate)
        rest = c.reply()
    assert received + len(rest.body) == 64 * 65536


def test_large_content_length_response_arrives_whole(lab: Lab) -> None:
    """An 8 MiB answer with Content-Length passes through complete."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        reply = c.request("GET", f"/big?n={8 * MiB}")
    assert reply.status == 200
    assert reply.body == b"x" * (8 * MiB)


def wait_until(lab: Lab, predicate: Callable[[], bool], what: str) -> None:
    """Evaluate ``predicate`` on the loop (each try one loop turn) until true or the deadline."""

    async def check() -> bool:
        await asyncio.sleep(0)
        return predicate()

    deadline = time.monotonic() + DEADLINE
    while not lab.lt.run(check()):
        assert time.monotonic() < deadline, f"not within {DEADLINE} s: {what}"


def test_many_pipelined_requests_are_all_answered_in_order(lab: Lab) -> None:
    """40 requests in one write (more than the proxy queues before pausing) all come back."""
    _, _, p = one_backend(lab)
    shadow = h11.Connection(h11.CLIENT)
    data = b""
    for i in range(40):
        data += shadow.send(
            h11.Request(method="GET", target=f"/echo?i={i}", headers=[("Host", "lab")])
        )
        data += shadow.send(h11.EndOfMessage())
        shadow.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
        while shadow.next_event() is not h11.NEED_DATA:
            pass
        shadow.start_next_cycle()
    targets = []
    with client(p) as c:
        c.sock.sendall(data)
        for i in range(40):
            c.conn.send(h11.Request(method="GET", target=f"/echo?i={i}", headers=[("Host", "lab")]))
            c.conn.send(h11.EndOfMessage())
            targets.append(c.reply().json()["target"])
    assert targets == [f"/echo?i={i}" for i in range(40)]


def test_a_client_that_does_not_read_pauses_the_backend_side(lab: Lab) -> None:
    """Back-pressure: while the client reads nothing of a large answer, the proxy stops
    reading the backend (bounded buffering), and resumes once the client reads."""
    _, _, p = one_backend(lab)

    def upstream_paused() -> bool:
        return any(c.active and c.active.up and c.active.up.read_paused for c in p.conns)

    with client(p) as c:
        c.sock.sendall(c.render("GET", f"/big?n={64 * MiB}"))
        wait_until(lab, upstream_paused, "the backend connection paused")
        reply = c.reply()
    assert len(reply.body) == 64 * MiB


def test_a_client_that_leaves_releases_its_backend_attempt(lab: Lab) -> None:
    """A client closing mid-request ends the attempt: the router's on_finish is called."""
    b, router, p = one_backend(lab)
    c = Client(port_of(p))
    c.sock.sendall(c.render("GET", "/hold"))
    assert b.got.wait(DEADLINE)
    c.close()
    wait_until(lab, lambda: router.active["b1"] == 0 and len(router.finished) == 1, "on_finish")
    assert p.counters.client_aborts == 1


def test_expect_100_continue_gets_100_before_the_body_is_sent(lab: Lab) -> None:
    """A request with Expect: 100-continue is told to continue, then its body goes through."""
    _, _, p = one_backend(lab)
    head = b"PUT /echo HTTP/1.1\r\nHost: lab\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with client(p) as c:
        c.sock.sendall(head)
        assert c.sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        c.sock.sendall(b"hello")
        c.conn.send(
            h11.Request(
                method="PUT", target="/echo", headers=[("Host", "lab"), ("Content-Length", "5")]
            )
        )
        c.conn.send(h11.Data(data=b"hello"))
        c.conn.send(h11.EndOfMessage())
        reply = c.reply()
    assert (reply.status, reply.json()["body_bytes"]) == (200, 5)


def test_pipelined_requests_are_answered_in_order(lab: Lab) -> None:
    """Two requests sent in one write get their answers in the order sent."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        first = c.render("GET", "/echo?i=1")
        shadow = h11.Connection(h11.CLIENT)  # renders the second request's bytes
        second = shadow.send(
            h11.Request(method="GET", target="/echo?i=2", headers=[("Host", "lab")])
        )
        c.sock.sendall(first + second + shadow.send(h11.EndOfMessage()))
        one = c.reply()
        c.conn.send(h11.Request(method="GET", target="/echo?i=2", headers=[("Host", "lab")]))
        c.conn.send(h11.EndOfMessage())
        two = c.reply()
    assert [one.json()["target"], two.json()["target"]] == ["/echo?i=1", "/echo?i=2"]


# ------------------------------------------------------------------ retries and failures


def test_a_backend_that_resets_is_retried_on_another(lab: Lab) -> None:
    """GET to a backend that resets goes to the next backend; the client sees 200."""
    bad, good = lab.backend("bad", mode="reset"), lab.backend("good")
    router = StubRouter([bad.address, good.address])
    p = lab.proxy(router)
    with client(p) as c:
        reply = c.request("GET", "/echo")
    assert reply.status == 200
    assert reply.json()["backend"] == "good"
    assert [(name, ok) for name, ok, _ in router.finished] == [("b1", False), ("b2", True)]


def test_a_post_to_a_backend_that_resets_is_not_retried(lab: Lab) -> None:
    """POST is not idempotent: a reset gives 502 and the other backend never sees it."""
    bad, good = lab.backend("bad", mode="reset"), lab.backend("good")
    p = lab.proxy(StubRouter([bad.address, good.address]))
    with client(p) as c:
        reply = c.request("POST", "/echo", body=b"pay once")
    assert reply.status == 502
    assert good.seen == []


def test_a_post_whose_connection_is_refused_goes_to_the_next_backend(lab: Lab) -> None:
    """A refused connect means the request never left: even a POST is retried (nginx)."""
    good = lab.backend("good")
    with socket.socket() as closed:
        closed.bind((IP, 0))  # bound, not listening: the connection is refused
        p = lab.proxy(StubRouter([f"{IP}:{closed.getsockname()[1]}", good.address]))
        with client(p) as c:
            reply = c.request("POST", "/echo", body=b"once")
    assert (reply.status, reply.json()["backend"]) == (200, "good")


def test_no_backend_available_is_503(lab: Lab) -> None:
    """When the router has no backend to pick, the answer is 503."""
    b = lab.backend("b1")
    router = StubRouter([b.address])
    router.down = {"b1"}
    p = lab.proxy(router)
    with client(p) as c:
        assert c.request("GET", "/echo").status == 503


def test_refused_connections_on_every_backend_are_502(lab: Lab) -> None:
    """Every backend refusing the connection ends in 502 after trying each (nginx)."""
    with socket.socket() as s1, socket.socket() as s2:
        s1.bind((IP, 0))
        s2.bind((IP, 0))  # bound, not listening: connections are refused
        router = StubRouter([f"{IP}:{s1.getsockname()[1]}", f"{IP}:{s2.getsockname()[1]}"])
        p = lab.proxy(router)
        with client(p) as c:
            assert c.request("GET", "/echo").status == 502
    assert [ok for _, ok, _ in router.finished] == [False, False]


def test_a_backend_slower_than_proxy_read_timeout_is_504(lab: Lab) -> None:
    """No answer within proxy_read_timeout: 504."""
    _, _, p = one_backend(lab, proxy_read_timeout=0.3)
    with client(p) as c:
        assert c.request("GET", "/slow").status == 504


def test_a_backend_that_never_accepts_is_504_after_the_connect_timeout(lab: Lab) -> None:
    """A listener whose accept queue is full drops SYNs: 504 after proxy_connect_timeout."""
    with socket.socket() as full:
        full.bind((IP, 0))
        full.listen(0)
        address = f"{IP}:{full.getsockname()[1]}"
        fillers = []
        for _ in range(4):  # fill the accept queue (nobody accepts)
            f = socket.socket()
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(full.getsockname())
            fillers.append(f)
        try:
            p = lab.proxy(StubRouter([address]), proxy_connect_timeout=0.3)
            with client(p) as c:
                assert c.request("GET", "/echo").status == 504
        finally:
            for f in fillers:
                f.close()


def test_router_reject_is_answered_with_its_status(lab: Lab) -> None:
    """A Reject from the router is answered locally with its status and reason."""
    b, _, p = one_backend(lab)
    with client(p) as c:
        reply = c.request("GET", "/blocked/x")
    assert (reply.status, reply.body) == (404, b"404 not found: no route\n")
    assert b.seen == []


def test_a_small_body_is_sent_again_on_retry(lab: Lab) -> None:
    """A PUT body under 64 KiB is kept and re-sent to the next backend intact."""
    bad, good = lab.backend("bad", mode="reset"), lab.backend("good")
    p = lab.proxy(StubRouter([bad.address, good.address]))
    body = os.urandom(10_000)
    with client(p) as c:
        reply = c.request("PUT", "/echo", body=body)
    assert reply.status == 200
    assert reply.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_body_over_64_kib_is_never_retried(lab: Lab) -> None:
    """A PUT body over 64 KiB is not kept, so a reset ends in 502 without a retry."""
    bad, good = lab.backend("bad", mode="reset"), lab.backend("good")
    p = lab.proxy(StubRouter([bad.address, good.address]))
    with client(p) as c:
        assert c.request("PUT", "/echo", body=os.urandom(100_000)).status == 502
    assert good.seen == []


def test_a_502_answer_is_retried_when_the_router_says_so(lab: Lab) -> None:
    """With http_502 in next_upstream, a backend's 502 is replaced by the next backend's 200."""
    first, second = lab.backend("first", mode="502"), lab.backend("second")
    router = StubRouter([first.address, second.address], next_upstream=("error", "http_502"))
    p = lab.proxy(router)
    with client(p) as c:
        reply = c.request("GET", "/echo")
    assert (reply.status, reply.json()["backend"]) == (200, "second")
    assert router.finished[0] == ("b1", False, 502)


def test_a_502_answer_is_passed_on_when_the_router_does_not_retry_it(lab: Lab) -> None:
    """Without http_502 in next_upstream, the backend's 502 and its body reach the client."""
    first, second = lab.backend("first", mode="502"), lab.backend("second")
    p = lab.proxy(StubRouter([first.address, second.address]))
    with client(p) as c:
        reply = c.request("GET", "/echo")
    assert (reply.status, reply.body) == (502, b"first says 502\n")
    assert second.seen == []


def test_an_unparseable_backend_answer_is_502(lab: Lab) -> None:
    """A backend answering with something that is not HTTP gives 502."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        assert c.request("GET", "/garbage").status == 502


def test_a_backend_answer_with_a_huge_head_is_502(lab: Lab) -> None:
    """A response head over 64 KiB is refused (nginx: "upstream sent too big header")."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        assert c.request("GET", "/bighead").status == 502


def test_a_backend_that_breaks_mid_body_drops_the_client_connection(lab: Lab) -> None:
    """Once the answer has started, a backend reset can only end the client's connection."""
    _, _, p = one_backend(lab)
    with client(p) as c, pytest.raises((ConnectionError, h11.RemoteProtocolError)):
        c.request("GET", "/cut")


def test_head_gets_headers_only_and_the_connection_is_reused(lab: Lab) -> None:
    """HEAD's answer has the Content-Length of GET and no body; the next request still works."""
    b, _, p = one_backend(lab)
    with client(p) as c:
        head = c.request("HEAD", "/big?n=1000")
        get = c.request("GET", "/echo")
    assert (head.status, head.headers["content-length"], head.body) == (200, "1000", b"")
    assert get.status == 200
    assert {s.conn for s in b.seen} == {1}


def test_an_http10_client_gets_a_chunked_answer_delimited_by_close(lab: Lab) -> None:
    """HTTP/1.0 knows no chunked coding: the body goes as is and the connection closes."""
    _, _, p = one_backend(lab)
    c = Client(port_of(p))
    try:
        c.sock.sendall(b"GET /chunked?n=3&size=5 HTTP/1.0\r\n\r\n")
        c.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "lab")]))
        reply = c.reply()
    finally:
        c.close()
    assert "transfer-encoding" not in reply.headers
    assert reply.body == b"AAAAABBBBBCCCCC"


class Lines(logging.Handler):
    """Collects log messages; ``arrived`` is set at the first one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.arrived.set()


def test_access_log_writes_one_json_line_per_request(lab: Lab) -> None:
    """With the access log on, a request gives one JSON record with the agreed fields."""
    b = lab.backend("b1")
    handler, logger = Lines(), logging.getLogger("lbkit.l7.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)

    async def start() -> Proxy:
        p = Proxy(StubRouter([b.address]), Limits(), access_log=True)
        await p.start([(IP, 0)])
        return p

    try:
        p = lab.lt.run(start())
        lab.proxies.append(p)
        with client(p) as c:
            c.request("GET", "/echo?q=1")
        assert handler.arrived.wait(DEADLINE)  # written just after the answer, on the loop
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    line = json.loads(handler.lines[0])
    assert len(handler.lines) == 1
    assert (line["target"], line["status"], line["backend"], line["retries"]) == (
        "/echo?q=1",
        200,
        "b1",
        0,
    )
    assert set(line) == set(FIELDS)


# ------------------------------------------------------------------ client errors


def test_a_header_too_large_is_431(lab: Lab) -> None:
    """A header line over large_client_header_buffers gets 431."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        assert c.request("GET", "/echo", headers=[("X-Big", "a" * 9000)]).status == 431


def test_a_uri_too_long_is_414(lab: Lab) -> None:
    """A request target over large_client_header_buffers gets 414."""
    _, _, p = one_backend(lab)
    with client(p) as c:
        assert c.request("GET", "/echo?" + "a" * 9000).status == 414


def test_a_body_too_large_is_413(lab: Lab) -> None:
    """A Content-Length over client_max_body_size gets 413 before any body is read."""
    b, _, p = one_backend(lab, client_max_body_size=1000)
    data = b"POST /echo HTTP/1.1\r\nHost: lab\r\nContent-Length: 5000\r\n\r\n"
    assert raw_exchange(port_of(p), data).status == 413
    assert b.seen == []


def test_a_client_that_stalls_in_its_header_gets_408(lab: Lab) -> None:
    """Half a request head, then nothing: 408 after client_header_timeout."""
    _, _, p = one_backend(lab, client_header_timeout=0.3)
    assert raw_exchange(port_of(p), b"GET /echo HTTP/1.1\r\nHost: lab\r\n").status == 408


def test_a_client_that_stalls_in_its_body_gets_408(lab: Lab) -> None:
    """A body that stops arriving: 408 after client_body_timeout."""
    _, _, p = one_backend(lab, client_body_timeout=0.3)
    data = b"POST /echo HTTP/1.1\r\nHost: lab\r\nContent-Length: 10\r\n\r\nabc"
    assert raw_exchange(port_of(p), data).status == 408


def test_garbage_is_400(lab: Lab) -> None:
    """Bytes that are not HTTP get 400."""
    _, _, p = one_backend(lab)
    assert raw_exchange(port_of(p), b"\x16\x03\x01 not http at all\r\n\r\n").status == 400


# ------------------------------------------------------------------ admin


def http_get(port: int, path: str) -> Reply:
    with contextlib.closing(Client(port)) as c:
        return c.request("GET", path)


def test_admin_serves_stats_json_with_router_stats(lab: Lab) -> None:
    """GET /stats on the admin address: the proxy's counters and router.stats()."""
    _, router, p = one_backend(lab)
    with client(p) as c:
        c.request("GET", "/echo")
    stats = http_get(p.admin_address[1], "/stats").json()  # type: ignore[index]
    assert stats["proxy"]["requests"] == 1
    assert stats["router"] == router.stats()


def test_admin_serves_prometheus_metrics(lab: Lab) -> None:
    """GET /metrics on the admin address is Prometheus text with the request counter."""
    _, _, p = one_backend(lab)
    reply = http_get(p.admin_address[1], "/metrics")  # type: ignore[index]
    assert reply.status == 200
    assert b"lbkit_l7_requests_total" in reply.body


def test_admin_paths_on_the_public_port_are_proxied_not_served(lab: Lab) -> None:
    """/stats and /metrics on the public listener go to the backend (here: its 404)."""
    b, _, p = one_backend(lab)
    replies = [http_get(port_of(p), path) for path in ("/stats", "/metrics")]
    assert [r.status for r in replies] == [404, 404]
    assert [s.target for s in b.seen] == ["/stats", "/metrics"]


# ------------------------------------------------------------------ SIGTERM drain

DRAIN_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from _l7_stub import StubRouter
from lbkit.l7.cli import run_proxy
from lbkit.l7.accesslog import FIELDS
from lbkit.l7.model import Limits
from lbkit.lab.roles.runner import loop_factory

def ready(proxy):
    print("ready", proxy.addresses[0][1], flush=True)

main = run_proxy(lambda: (StubRouter([{backend!r}]), Limits()), [("127.0.0.1", 0)],
                 admin=None, grace=5.0, on_ready=ready)
with asyncio.Runner(loop_factory=loop_factory()) as runner:
    sys.exit(0 if runner.run(main) else 3)
"""


def refused(port: int) -> bool:
    try:
        socket.create_connection((IP, port), timeout=DEADLINE).close()
    except (ConnectionRefusedError, ConnectionResetError):  # reset: closed with us in its backlog
        return True
    return False


def test_sigterm_drains_in_flight_requests_then_exits_zero(lab: Lab) -> None:
    """SIGTERM: the listener closes, the request in flight still completes, exit code 0."""
    b = lab.backend("b1")
    script = DRAIN_SCRIPT.format(tests=str(ROOT / "tests"), backend=b.address)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert line[:1] == ["ready"], line
        port = int(line[1])
        with contextlib.closing(Client(port)) as c:
            c.sock.sendall(c.render("GET", "/hold"))
            assert b.got.wait(DEADLINE), "the request did not reach the backend"
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + DEADLINE
            for _ in range(10_000):  # each try a round trip; bounded in count and time
                if refused(port):
                    break
                assert time.monotonic() < deadline, "the listener stayed open after SIGTERM"
            lab.set(b.release)
            reply = c.reply()
        assert reply.status == 200
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


RELOAD_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from _l7_stub import StubRouter
from lbkit.l7.cli import run_proxy
from lbkit.l7.model import Limits
from lbkit.lab.roles.runner import loop_factory

def make():
    with open({path!r}) as f:
        return StubRouter([f.read().strip()]), Limits()

def ready(proxy):
    print("ready", proxy.addresses[0][1], flush=True)

main = run_proxy(make, [("127.0.0.1", 0)], admin=None, grace=5.0, on_ready=ready)
with asyncio.Runner(loop_factory=loop_factory()) as runner:
    sys.exit(0 if runner.run(main) else 3)
"""


def test_sighup_routes_new_requests_by_the_new_config_and_finishes_old_ones(
    lab: Lab, tmp_path: Path
) -> None:
    """SIGHUP: a new router for new requests; the one in flight completes on the old one."""
    old, new = lab.backend("old"), lab.backend("new")
    conf = tmp_path / "backend.txt"
    conf.write_text(old.address)
    script = RELOAD_SCRIPT.format(tests=str(ROOT / "tests"), path=str(conf))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        port = int(proc.stdout.readline().split()[1])  # type: ignore[union-attr]
        with contextlib.closing(Client(port)) as held:
            held.sock.sendall(held.render("GET", "/hold"))
            assert old.got.wait(DEADLINE), "the request did not reach the old backend"
            conf.write_text(new.address)
            proc.send_signal(signal.SIGHUP)
            assert "reloaded" in proc.stderr.readline()  # type: ignore[union-attr]
            fresh = http_get(port, "/echo")
            lab.set(old.release)
            finished = held.reply()
        assert (fresh.status, fresh.json()["backend"]) == (200, "new")
        assert (finished.status, finished.json()["backend"]) == (200, "old")
    finally:
        proc.terminate()
        proc.wait(DEADLINE)


# ------------------------------------------------------------------ lbkit l7 (the CLI)


def lbkit_l7(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lbkit.l7.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_check_reports_a_valid_config_like_nginx_t(tmp_path: Path) -> None:
    """--check on a valid nginx config prints nginx -t's two lines and exits 0."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n  upstream u { server 127.0.0.1:9; }\n"
        "  server { listen 127.0.0.1:8080; location / { proxy_pass http://u; } }\n}\n"
    )
    out = lbkit_l7("--nginx-conf", str(conf), "--check")
    assert out.returncode == 0
    assert f"configuration file {conf} test is successful" in out.stderr


def test_check_lists_errors_and_exits_1(tmp_path: Path) -> None:
    """--check on a broken config prints each error on its own line and exits 1."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n  server { listen 127.0.0.1:8080;\n"
        "    location / { proxy_pass http://nowhere; bogus_directive on; } }\n}\n"
    )
    out = lbkit_l7("--nginx-conf", str(conf), "--check")
    assert out.returncode == 1
    assert f'{conf}:4: unknown directive "bogus_directive"' in out.stderr
    assert "test failed" in out.stderr


def two_free_ports() -> int:
    """A port p with p and p + 1 free (worker i serves the admin API on p + i)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind((IP, 0))
            p = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind((IP, p + 1))
                except OSError:
                    continue
                return p
    raise RuntimeError("no two consecutive free ports")


def test_two_workers_share_the_port_and_each_has_an_admin_api(lab: Lab, tmp_path: Path) -> None:
    """--workers 2: both serve the listen port (SO_REUSEPORT); SIGTERM stops both, exit 0."""
    b = lab.backend("b1")
    conf = tmp_path / "router.toml"
    conf.write_text(
        '[[server]]\nlisten = [1]\n[[server.route]]\npath = "/"\npool = "web"\n'
        f'[pool.web]\nservers = [{{ address = "{b.address}", name = "web1" }}]\n'
    )
    port, admin = two_free_ports(), two_free_ports()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbkit.l7.cli", "--config", str(conf), "--workers", "2",
         "--listen", f"{IP}:{port}", "--admin", f"{IP}:{admin}"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        assert sum(line.startswith("ready: worker") for line in lines) == 2, lines
        pids = {http_get(admin + i, "/stats").json()["pid"] for i in (0, 1)}
        assert http_get(port, "/echo").status == 200
        assert len(pids) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()  # the master forwards it; workers also die with the master
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------ the real router drops in


def real_router(addresses: list[str]) -> Any:
    from lbkit.l7.model import Listen, Location, RouterConfig, ServerBlock, Upstream, UpstreamServer
    from lbkit.l7.router import Router

    servers = [UpstreamServer(a, name=f"r{i + 1}") for i, a in enumerate(addresses)]
    config = RouterConfig(
        servers=[
            ServerBlock(
                listens=[Listen(port=80)],
                server_names=["lab"],
                locations=[Location(pattern="/echo", proxy_pass="http://pool")],
            )
        ],
        upstreams={"pool": Upstream("pool", servers)},
        source="test.toml",
    )
    return Router(config)


def test_the_real_router_drops_in_for_a_chunked_post(lab: Lab) -> None:
    """lbkit.l7.router's Router works in place of the stub: a chunked POST arrives intact."""
    b = lab.backend("b1")
    p = lab.proxy(real_router([b.address]))
    chunks = [b"hello ", b"world"]
    with client(p) as c:
        reply = c.request("POST", "/echo", chunks=chunks)
    assert reply.status == 200
    assert reply.json()["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert reply.json()["headers"]["x-forwarded-for"] == IP


def test_the_real_routers_reject_is_answered(lab: Lab) -> None:
    """A path with no location gets the real router's 404."""
    b = lab.backend("b1")
    p = lab.proxy(real_router([b.address]))
    with client(p) as c:
        assert c.request("GET", "/nowhere").status == 404
    assert b.seen == []
