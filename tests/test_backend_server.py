"""The backend and placeholder servers over real sockets on 127.0.0.1.

Each server runs on its own event loop in a background thread; tests wait
on its readiness and on answers with deadlines, never with sleeps. Answers
are checked with h11, a strict HTTP/1.1 parser independent of ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from lbkit.lab.control import send_control
from lbkit.lab.errors import LabError
from lbkit.lab.roles.backend import serve_backend
from lbkit.lab.roles.http_server import render
from lbkit.lab.roles.placeholder import serve_placeholder
from lbkit.lab.roles.runner import loop_factory, serve_idle

DEADLINE = 5.0  # seconds any expected event may take
SILENCE = 0.3  # how long "no answer" is watched for
IP = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ harness


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((IP, 0))
        return s.getsockname()[1]


class Running:
    """A server coroutine on its own event loop in a background thread."""

    def __init__(self, make: Callable[[Callable[[], None]], Coroutine]) -> None:
        self._make = make
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            await self._make(self._ready.set)

        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as e:
            self.error = e
        finally:
            self._ready.set()

    def start(self) -> Running:
        self._thread.start()
        assert self._ready.wait(DEADLINE), "server not ready within the deadline"
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "server did not stop within the deadline"


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short temporary directory (UNIX socket paths are limited to ~104 bytes)."""
    path = tempfile.mkdtemp(prefix="lbk")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Backend:
    http: list[tuple[str, int]]
    line: tuple[str, int]
    udp: tuple[str, int]
    control_path: str
    running: Running | None = None

    def control(self, request: dict) -> dict:
        return send_control(self.control_path, request, timeout=DEADLINE)

    def set_mode(self, mode: str, **options: object) -> dict:
        reply = self.control({"op": "set-mode", "mode": mode, **options})
        assert reply["ok"], reply
        return reply

    def wait_until(self, predicate: Callable[[dict], bool]) -> dict:
        """Poll status (each poll a round trip, no sleeping) until ``predicate`` holds."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            status = self.control({"op": "status"})
            if predicate(status):
                return status
        raise AssertionError(f"condition not met within {DEADLINE} s: {status}")


def make_backend(directory: str, name: str = "api1", mode: str = "healthy") -> Backend:
    b = Backend(
        http=[(IP, free_port()), (IP, free_port())],
        line=(IP, free_port()),
        udp=(IP, free_port(socket.SOCK_DGRAM)),
        control_path=f"{directory}/hosts/{name}.sock",
    )
    b.running = Running(
        lambda ready: serve_backend(
            name, b.http, b.line, b.udp, b.control_path, mode=mode, on_ready=ready
        )
    )
    return b


@pytest.fixture
def backend(short_dir: str) -> Iterator[Backend]:
    b = make_backend(short_dir)
    b.running.start()  # type: ignore[union-attr]
    try:
        yield b
    finally:
        b.running.stop()  # type: ignore[union-attr]


# ------------------------------------------------------------------ an h11 client


@dataclass
class Req:
    method: str = "GET"
    target: str = "/"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes | None = None  # what goes on the wire instead of h11's rendering
    chunks: list[bytes] = field(default_factory=list)  # body pieces (chunked encoding)

    def event(self) -> h11.Request:
        headers = [("Host", "lab"), *self.headers]
        names = {k.lower() for k, _ in headers}
        if self.body and "transfer-encoding" not in names and "content-length" not in names:
            headers.append(("Content-Length", str(len(self.body))))
        return h11.Request(method=self.method, target=self.target, headers=headers)

    def feed(self, conn: h11.Connection) -> bytes:
        data = conn.send(self.event()) or b""
        for piece in [self.body] if self.body else self.chunks:
            data += conn.send(h11.Data(data=piece)) or b""
        return data + (conn.send(h11.EndOfMessage()) or b"")

    def wire(self) -> bytes:
        return self.raw if self.raw is not None else self.feed(h11.Connection(h11.CLIENT))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    closes: bool  # the server said it will close (Connection: close / HTTP/1.0)

    def json(self) -> dict:
        return json.loads(self.body)


class Client:
    """Sends requests (pipelined if several at once); h11 checks each answer strictly."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=DEADLINE)
        self.conn = h11.Connection(h11.CLIENT)
        self._sent: list[Req] = []

    def send(self, *reqs: Req) -> None:
        self.sock.sendall(b"".join(r.wire() for r in reqs))
        self._sent.extend(reqs)

    def receive(self) -> Reply:
        req = self._sent.pop(0)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        req.feed(self.conn)  # h11 learns the request (method, version) it parses for
        response, body = None, b""
        while True:
            event = self.next_event()
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert response is not None
        headers = {k.decode().lower(): v.decode() for k, v in response.headers}
        closes = self.conn.their_state is h11.MUST_CLOSE
        return Reply(response.status_code, headers, body, closes)

    def next_event(self) -> h11.Event:
        """h11's next event, reading from the socket as needed, within the deadline."""
        deadline = time.monotonic() + DEADLINE
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            self.conn.receive_data(self.sock.recv(65536))
        return event

    def exchange(self, req: Req) -> Reply:
        self.send(req)
        return self.receive()

    def at_eof(self) -> bool:
        """True if the server closed (read returns EOF within the deadline)."""
        self.sock.settimeout(DEADLINE)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def get(addr: tuple[str, int], target: str = "/", req: Req | None = None, **kw) -> Reply:
    client = Client(addr)
    try:
        return client.exchange(req or Req(target=target, **kw))
    finally:
        client.close()


def readable_now(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def udp_exchange(addr: tuple[str, int], payload: bytes, timeout: float = DEADLINE) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(addr)
        s.send(payload)
        return s.recv(65536)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(DEADLINE)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


# ------------------------------------------------------------------ HTTP


def test_root_answers_the_name(backend):
    """GET / is 200 text/plain with the name, X-Backend and Content-Length."""
    reply = get(backend.http[0])
    assert (reply.status, reply.body) == (200, b"api1\n")
    assert reply.headers["x-backend"] == "api1"
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.headers["content-length"] == "5"


def test_healthz_is_ok(backend):
    """GET /healthz is 200 ok."""
    assert get(backend.http[0], "/healthz").body == b"ok\n"


def test_second_http_port_serves_the_same(backend):
    """The :3000 listener is the same HTTP server."""
    reply = get(backend.http[1], "/anything")
    assert (reply.status, reply.body, reply.headers["x-backend"]) == (200, b"api1\n", "api1")


def test_echo_reports_the_request(backend):
    """/echo returns method, full target, version, both addresses and body size as JSON."""
    client = Client(backend.http[0])
    reply = client.exchange(Req("PUT", "/echo?a=1&b=2", body=b"x" * 1234))
    doc = reply.json()
    assert reply.headers["content-type"] == "application/json"
    assert doc["backend"] == "api1" and doc["method"] == "PUT"
    assert doc["path"] == "/echo?a=1&b=2" and doc["http_version"] == "1.1"
    assert doc["client"] == "{}:{}".format(*client.sock.getsockname())
    assert doc["server"] == "{}:{}".format(*backend.http[0])
    assert doc["body_bytes"] == 1234
    client.close()


def test_echo_headers_in_order_with_original_case(backend):
    """Headers come back in the order sent, names in their original case."""
    sent = [("X-Zeta", "1"), ("x-alpha", "two"), ("X-Forwarded-For", "198.51.100.2")]
    doc = get(backend.http[0], "/echo", headers=sent).json()
    assert doc["headers"] == [["Host", "lab"], *[list(h) for h in sent]]


def test_chunked_body_is_counted(backend):
    """A chunked request body is read fully and its size reported."""
    chunked = Req(
        "POST", "/echo", [("Transfer-Encoding", "chunked")], chunks=[b"y" * 10, b"z" * 1007]
    )
    assert get(backend.http[0], req=chunked).json()["body_bytes"] == 1017


def test_keep_alive_serves_three_requests_on_one_connection(backend):
    """Three requests in turn on one connection, all answered, connection kept."""
    client = Client(backend.http[0])
    seen = []
    for _ in range(3):
        reply = client.exchange(Req(target="/echo"))
        assert reply.status == 200 and not reply.closes
        seen.append(reply.json()["client"])
    assert len(set(seen)) == 1
    client.close()


def test_pipelined_requests_answered_in_order(backend):
    """Two requests sent in one write get their answers in request order."""
    client = Client(backend.http[0])
    client.send(Req(target="/healthz"), Req(target="/echo?second"))
    assert client.receive().body == b"ok\n"
    assert client.receive().json()["path"] == "/echo?second"
    client.close()


def test_connection_close_is_honoured(backend):
    """Connection: close gets Connection: close and the server closes after the answer."""
    client = Client(backend.http[0])
    reply = client.exchange(Req(headers=[("Connection", "close")]))
    assert reply.status == 200 and reply.closes and reply.headers["connection"] == "close"
    assert client.at_eof()
    client.close()


def test_http10_closes_by_default(backend):
    """An HTTP/1.0 request without keep-alive is answered, then the connection closes."""
    client = Client(backend.http[0])
    reply = client.exchange(Req(raw=b"GET / HTTP/1.0\r\n\r\n"))
    assert (reply.status, reply.body, reply.headers["connection"]) == (200, b"api1\n", "close")
    assert client.at_eof()
    client.close()


def test_http10_keep_alive_is_honoured(backend):
    """HTTP/1.0 with Connection: keep-alive keeps the connection for a second request."""
    client = Client(backend.http[0])
    raw = b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    first = client.exchange(Req(raw=raw))
    assert first.headers["connection"] == "keep-alive"
    assert first.json()["http_version"] == "1.0"
    assert client.exchange(Req(target="/healthz")).body == b"ok\n"
    client.close()


def test_head_has_headers_and_no_body(backend):
    """HEAD gets GET's headers (Content-Length included) and no body."""
    client = Client(backend.http[0])
    reply = client.exchange(Req("HEAD", "/"))
    assert (reply.status, reply.body, reply.headers["content-length"]) == (200, b"", "5")
    assert client.exchange(Req(target="/healthz")).body == b"ok\n"  # framing intact
    client.close()


def test_expect_continue_gets_100_before_the_body(backend):
    """A request with Expect: 100-continue gets 100 Continue, then its answer."""
    client = Client(backend.http[0])
    req = Req("POST", "/echo", [("Expect", "100-continue")], body=b"abc")
    client.sock.sendall(client.conn.send(req.event()))
    interim = client.next_event()
    assert isinstance(interim, h11.InformationalResponse) and interim.status_code == 100
    client.sock.sendall(
        client.conn.send(h11.Data(data=b"abc")) + client.conn.send(h11.EndOfMessage())
    )
    response, data = client.next_event(), client.next_event()
    assert response.status_code == 200 and json.loads(data.data)["body_bytes"] == 3
    client.close()


def test_malformed_request_gets_400_and_close(backend):
    """A request llhttp rejects is answered 400 with Connection: close, then closed."""
    client = Client(backend.http[0])
    reply = client.exchange(Req(raw=b"GARBAGE / HTTP/1.1\r\nHost: lab\r\n\r\nmore bytes"))
    assert reply.status == 400 and reply.closes
    assert reply.body.startswith(b"api1: bad request: ")
    assert client.at_eof()
    client.close()


def test_http11_without_host_is_400(backend):
    """An HTTP/1.1 request without Host is a 400 (RFC 9112 §3.2)."""
    reply = get(backend.http[0], raw=b"GET / HTTP/1.1\r\n\r\n")
    assert reply.status == 400 and b"Host" in reply.body


def test_oversized_headers_get_431(backend):
    """Request headers beyond 64 KiB are refused with 431."""
    reply = get(backend.http[0], headers=[("X-Big", "a" * 70000)])
    assert reply.status == 431 and reply.closes


def test_render_head_and_http10_keep_alive():
    """render drops HEAD's body and says keep-alive to an HTTP/1.0 client that asked."""
    answer = (200, [("Content-Length", "2")], b"hi", 0.0, "answer")
    data = render(answer, head=True, keep_alive=True, http10=True, now=0.0)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: keep-alive\r\n" in data and data.endswith(b"\r\n\r\n")
    assert b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n" in data


# ------------------------------------------------------------------ line and UDP


def test_line_service_prefixes_each_line(backend):
    """Each line, LF or CRLF terminated, comes back as 'NAME: line'."""
    with socket.create_connection(backend.line, timeout=DEADLINE) as s:
        s.sendall(b"hello\r\nworld\n")
        assert read_exactly(s, len(b"api1: hello\napi1: world\n")) == b"api1: hello\napi1: world\n"


def test_udp_echo_prefixes_the_datagram(backend):
    """A datagram comes back as 'NAME: ' + payload, bytes unchanged."""
    assert udp_exchange(backend.udp, b"ping\x00\xff") == b"api1: ping\x00\xff"


# ------------------------------------------------------------------ modes


def test_error_500_answers_500_everywhere(backend):
    """error-500: /, /healthz and /echo all answer 500 'NAME: error'."""
    backend.set_mode("error-500")
    for path in ("/", "/healthz", "/echo"):
        reply = get(backend.http[0], path)
        assert (reply.status, reply.body) == (500, b"api1: error\n")
        assert reply.headers["x-backend"] == "api1"


def test_healthz_500_fails_only_the_http_check(backend):
    """healthz-500: TCP connects and / is 200, only /healthz is 500."""
    backend.set_mode("healthz-500")
    assert get(backend.http[0], "/healthz").status == 500
    assert get(backend.http[0], "/").status == 200


def test_slow_delays_the_http_answer(backend):
    """slow: the answer is not there while the control channel answers, then it arrives."""
    backend.set_mode("slow", slow_delay=0.5)
    client = Client(backend.http[0])
    client.send(Req())
    backend.wait_until(lambda s: s["requests"]["http"] == 1)  # the request was read
    assert not readable_now(client.sock)
    assert client.receive().body == b"api1\n"
    client.close()


def test_slow_keeps_pipelined_order(backend):
    """slow: pipelined answers still come in request order."""
    backend.set_mode("slow", slow_delay=0.05)
    client = Client(backend.http[0])
    client.send(Req(target="/echo?1"), Req(target="/healthz"), Req(target="/echo?3"))
    assert client.receive().json()["path"] == "/echo?1"
    assert client.receive().body == b"ok\n"
    assert client.receive().json()["path"] == "/echo?3"
    client.close()


def test_slow_delays_line_answers(backend):
    """slow: a line's answer is held back, then arrives."""
    backend.set_mode("slow", slow_delay=0.5)
    with socket.create_connection(backend.line, timeout=DEADLINE) as s:
        s.sendall(b"hi\n")
        backend.wait_until(lambda st: st["requests"]["line"] == 1)
        assert not readable_now(s)
        assert read_exactly(s, 9) == b"api1: hi\n"


def test_accept_no_answer_reads_and_never_answers(backend):
    """accept-no-answer: connect succeeds, the request is read, the read times out."""
    backend.set_mode("accept-no-answer")
    client = Client(backend.http[0])
    client.send(Req())
    backend.wait_until(lambda s: s["requests"]["http"] == 1)
    client.sock.settimeout(SILENCE)
    with pytest.raises(TimeoutError):
        client.sock.recv(1)
    client.close()


def test_accept_no_answer_drops_udp(backend):
    """accept-no-answer: a datagram gets no reply."""
    backend.set_mode("accept-no-answer")
    with pytest.raises(TimeoutError):
        udp_exchange(backend.udp, b"ping", timeout=SILENCE)


def test_refuse_closes_tcp_listeners(backend):
    """refuse: every TCP port refuses connections and status lists no listener."""
    assert backend.set_mode("refuse")["listening"] == []
    for addr in [*backend.http, backend.line]:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(addr, timeout=DEADLINE)


def test_refuse_closes_the_udp_socket(backend):
    """refuse: a datagram meets a closed port (ICMP port unreachable)."""
    backend.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        udp_exchange(backend.udp, b"ping")


def test_refuse_drops_open_connections(backend):
    """refuse: a kept-alive connection is dropped too, as if the server died."""
    client = Client(backend.http[0])
    assert client.exchange(Req()).status == 200
    backend.set_mode("refuse")
    assert client.at_eof()
    client.close()


def test_back_to_healthy_reopens_the_same_ports(backend):
    """Leaving refuse re-opens every listener on the same ports."""
    before = backend.control({"op": "status"})["listening"]
    backend.set_mode("refuse")
    assert backend.set_mode("healthy")["listening"] == before
    assert get(backend.http[1]).body == b"api1\n"
    assert udp_exchange(backend.udp, b"x") == b"api1: x"


def test_mode_switches_keep_the_control_connection(backend):
    """One control connection survives refuse and back; every line gets its answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(DEADLINE)
        s.connect(backend.control_path)
        stream = s.makefile("rwb")
        switch = [{"op": "set-mode", "mode": m} for m in ("refuse", "slow", "healthy")]
        for request in [switch[0], {"op": "status"}, *switch[1:]]:
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
            assert json.loads(stream.readline())["ok"] is True
    assert backend.control({"op": "status"})["mode"] == "healthy"


def test_initial_mode_applies_from_the_start(short_dir):
    """serve_backend(mode='refuse') starts with no TCP listener but a control socket."""
    b = make_backend(short_dir, mode="refuse")
    b.running.start()  # type: ignore[union-attr]
    try:
        assert b.control({"op": "status"})["mode"] == "refuse"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(b.http[0], timeout=DEADLINE)
    finally:
        b.running.stop()  # type: ignore[union-attr]


# ------------------------------------------------------------------ control channel


def test_status_lists_listeners_and_counts(backend):
    """status names the host and every listening socket, and counts requests per service."""
    get(backend.http[0])
    udp_exchange(backend.udp, b"x")
    status = backend.control({"op": "status"})
    assert (status["host"], status["role"], status["mode"]) == ("api1", "backend", "healthy")
    assert status["requests"] == {"http": 1, "line": 0, "udp": 1}
    expected = [["tcp", *a] for a in [*backend.http, backend.line]] + [["udp", *backend.udp]]
    assert status["listening"] == expected


def test_set_mode_answers_the_new_status(backend):
    """set-mode answers with the status after the change."""
    reply = backend.control({"op": "set-mode", "mode": "slow", "slow_delay": 0.5})
    assert (reply["ok"], reply["mode"], reply["slow_delay"]) == (True, "slow", 0.5)


def test_bad_control_input_gets_an_error_and_keeps_the_connection(backend):
    """Not-JSON and an unknown mode get ok false; the same connection still answers."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(DEADLINE)
        s.connect(backend.control_path)
        stream = s.makefile("rwb")
        stream.write(b"this is not json\n" + b'{"op": "set-mode", "mode": "on-fire"}\n')
        stream.write(b'{"op": "status"}\n')
        stream.flush()
        first, second, third = (json.loads(stream.readline()) for _ in range(3))
    assert first["ok"] is False and first["error"].startswith("not JSON")
    assert second["ok"] is False and "unknown mode 'on-fire'" in second["error"]
    assert third["ok"] is True and third["mode"] == "healthy"


def test_send_control_without_socket_raises_lab_error(short_dir):
    """No socket file: send_control raises a LabError with a one-line message."""
    with pytest.raises(LabError, match="no control socket") as info:
        send_control(f"{short_dir}/hosts/nobody.sock", {"op": "status"})
    assert "\n" not in str(info.value)


def test_send_control_to_stale_socket_raises_lab_error(short_dir):
    """A socket file nobody listens on: send_control raises a LabError (refused)."""
    path = f"{short_dir}/stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
    with pytest.raises(LabError, match="refused"):
        send_control(path, {"op": "status"})


def test_stale_socket_file_is_replaced_at_start(short_dir):
    """A stale socket file left by a crashed server is removed and served again."""
    os.makedirs(f"{short_dir}/hosts")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(f"{short_dir}/hosts/api1.sock")
    b = make_backend(short_dir)
    b.running.start()  # type: ignore[union-attr]
    try:
        assert b.control({"op": "status"})["ok"] is True
    finally:
        b.running.stop()  # type: ignore[union-attr]


def test_live_control_socket_is_not_stolen(backend, short_dir):
    """A second server on a control socket that answers fails with a LabError."""
    other = make_backend(short_dir)
    with pytest.raises(LabError, match="another server already answers"):
        other.running.start()  # type: ignore[union-attr]
    other.running.stop()  # type: ignore[union-attr]
    assert backend.control({"op": "status"})["ok"] is True


def test_shutdown_closes_ports_and_removes_the_socket(short_dir):
    """Cancelling serve_backend closes every port and removes the control socket file."""
    b = make_backend(short_dir)
    b.running.start()  # type: ignore[union-attr]
    assert os.path.exists(b.control_path)
    b.running.stop()  # type: ignore[union-attr]
    assert not os.path.exists(b.control_path)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(b.http[0], timeout=DEADLINE)


# ------------------------------------------------------------------ placeholder and idle


@pytest.fixture
def placeholder(short_dir: str) -> Iterator[tuple[tuple[str, int], str]]:
    addr, path = (IP, free_port()), f"{short_dir}/hosts/nlb.sock"
    running = Running(lambda ready: serve_placeholder("nlb", "l4", [addr], path, ready)).start()
    try:
        yield addr, path
    finally:
        running.stop()
    assert not os.path.exists(path)


def test_placeholder_answers_every_path(placeholder):
    """Every path gets 200, the placeholder sentence and X-Placeholder."""
    addr, _ = placeholder
    for path in ("/", "/api/users?id=1"):
        reply = get(addr, path)
        assert reply.status == 200 and reply.headers["x-placeholder"] == "nlb"
        assert reply.body == (
            b"nlb (l4): placeholder. This tier is not built yet; it arrives with a later chapter.\n"
        )


def test_placeholder_status_and_no_set_mode(placeholder):
    """The placeholder reports mode placeholder and answers set-mode with ok false."""
    _, path = placeholder
    status = send_control(path, {"op": "status"})
    assert (status["role"], status["mode"]) == ("l4", "placeholder")
    assert send_control(path, {"op": "set-mode", "mode": "refuse"})["ok"] is False


def test_idle_role_serves_status(short_dir):
    """A client host serves only the control channel, mode idle."""
    path = f"{short_dir}/hosts/client.sock"
    running = Running(lambda ready: serve_idle("client", "client", path, ready)).start()
    try:
        status = send_control(path, {"op": "status"})
        assert (status["role"], status["mode"], status["listening"]) == ("client", "idle", [])
    finally:
        running.stop()


# ------------------------------------------------------------------ run_role, as lbkit lab host


RUN_API1 = """
import sys
from lbkit.lab.roles.runner import run_role
from lbkit.lab.topology import load_topology
run_role(load_topology(sys.argv[1]), "api1", sys.argv[2], "loopback")
"""


def test_run_role_serves_api1_on_loopback_until_sigterm(short_dir):
    """run_role prints 'ready api1', serves 127.0.1.3:8080, and exits 0 on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_API1, str(ROOT / "labs/basic.toml"), short_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert select.select([proc.stdout], [], [], DEADLINE)[0], "no 'ready' line in time"
        assert proc.stdout.readline() == b"ready api1\n"  # type: ignore[union-attr]
        assert get(("127.0.1.3", 8080)).body == b"api1\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0, proc.stderr.read()  # type: ignore[union-attr]
        assert not os.path.exists(f"{short_dir}/hosts/api1.sock")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
