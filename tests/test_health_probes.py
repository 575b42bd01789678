"""TCP and HTTP(S) probes and the check loop, over real sockets on 127.0.0.1.

Each test runs one event loop holding both the tiny server and the probe;
servers and tasks are closed on the way out. Waits are on conditions with
deadlines, never on sleeps; no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path

import pytest

from lbkit.health import (
    HealthChecker,
    HealthConfig,
    ProbeResult,
    http_check,
    http_probe,
    parse_expect,
    run_checks,
    tcp_check,
    tcp_probe,
)

IP = "127.0.0.1"
DEADLINE = 10.0  # seconds any test's event loop may run
NAME = "api.example.com"
ROOT = Path(__file__).resolve().parent.parent


def ok_response(status: str = "200 OK", body: bytes = b"ok", length: bool = True) -> bytes:
    head = f"HTTP/1.1 {status}\r\nConnection: close\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def run(coro: Coroutine) -> object:
    """Run ``coro`` on a fresh loop, bounded by DEADLINE."""

    async def bounded():
        async with asyncio.timeout(DEADLINE):
            return await coro

    return asyncio.run(bounded())


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A client that rejects our certificate hangs up mid-handshake: expected, not logged."""
    if context.get("message", "").startswith("Error on transport creation"):
        return
    loop.default_exception_handler(context)


@contextlib.asynccontextmanager
async def http_server(
    answer: bytes | None, tls: ssl.SSLContext | None = None, seen: list[bytes] | None = None
) -> AsyncIterator[int]:
    """Serve one canned ``answer`` per connection (None: read and never answer); yield the port."""
    stop = asyncio.Event()
    handlers: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        try:  # (never cancelled: a cancelled stream handler makes asyncio log an error)
            request = await reader.readuntil(b"\r\n\r\n")
            if seen is not None:
                seen.append(request)
            if answer is None:
                await stop.wait()
            else:
                writer.write(answer)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    if tls is not None:
        asyncio.get_running_loop().set_exception_handler(_quiet_handshake_failures)
    server = await asyncio.start_server(handle, IP, 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        stop.set()  # silent handlers return; the others end with their client
        server.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind((IP, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for api.example.com, made by labs/nginx/make_cert.py."""
    spec = importlib.util.spec_from_file_location("make_cert", ROOT / "labs/nginx/make_cert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_cert(tmp_path_factory.mktemp("certs"), days=2, name=NAME)


@pytest.fixture
def server_tls(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


@pytest.fixture
def client_tls(cert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert[0]))


# ------------------------------------------------------------------- probes


def test_tcp_probe_passes_on_a_listening_port():
    """A port that accepts connections passes the TCP check."""

    async def main():
        async with http_server(ok_response()) as port:
            return await tcp_probe(IP, port, 1.0)

    result = run(main())
    assert (result.ok, result.reason) == (True, "TCP connect ok")


def test_tcp_probe_refused():
    """Nothing listening: connection refused."""
    result = run(tcp_probe(IP, closed_port(), 1.0))
    assert (result.ok, result.reason) == (False, "connection refused")


def test_http_probe_200_passes():
    """200 on /healthz passes with the status as reason."""

    async def main():
        async with http_server(ok_response()) as port:
            return await http_probe(IP, port)

    result = run(main())
    assert (result.ok, result.reason) == (True, "HTTP 200 on /healthz")


def test_http_probe_500_fails_where_tcp_passes():
    """The course's point: a backend answering 500 passes TCP and fails HTTP."""

    async def main():
        async with http_server(ok_response("500 Internal Server Error", b"boom")) as port:
            return await tcp_probe(IP, port), await http_probe(IP, port)

    tcp, http = run(main())
    assert tcp.ok
    assert (http.ok, http.reason) == (False, "HTTP 500 on /healthz")


def test_http_probe_refused():
    """The HTTP check reports a refused connection as such."""
    result = run(http_probe(IP, closed_port(), "/healthz"))
    assert (result.ok, result.reason) == (False, "connection refused")


def test_http_probe_times_out_on_a_silent_server():
    """A server that reads and never answers: timeout after the configured time."""

    async def main():
        async with http_server(None) as port:
            return await http_probe(IP, port, timeout=0.2)

    result = run(main())
    assert (result.ok, result.reason) == (False, "timeout after 0.2 s")


def test_http_probe_body_match():
    """body_match passes when the text is there, fails and says so when not."""

    async def main():
        async with http_server(ok_response(body=b"status: degraded")) as port:
            return (
                await http_probe(IP, port, body_match="degraded"),
                await http_probe(IP, port, body_match="ok"),
            )

    good, bad = run(main())
    assert good.ok
    assert (bad.ok, bad.reason) == (False, "body did not match 'ok'")


def test_http_probe_reads_a_body_delimited_by_the_close():
    """No Content-Length: the body ends with the connection (RFC 9112 §6.3)."""

    async def main():
        async with http_server(ok_response(body=b"all good", length=False)) as port:
            return await http_probe(IP, port, body_match="good")

    assert run(main()).ok


def test_http_probe_expect_range():
    """A 302 passes the default 200-399 and fails an expect of exactly 200."""
    answer = b"HTTP/1.1 302 Found\r\nLocation: /\r\nContent-Length: 0\r\n\r\n"

    async def main():
        async with http_server(answer) as port:
            return await http_probe(IP, port), await http_probe(IP, port, expect=200)

    default, strict = run(main())
    assert default.ok
    assert (strict.ok, strict.reason) == (False, "HTTP 302 on /healthz")


def test_http_probe_sends_path_and_host_header():
    """The request line carries the path; Host is host_header when given."""
    seen: list[bytes] = []

    async def main():
        async with http_server(ok_response(), seen=seen) as port:
            return await http_probe(IP, port, "/ready", host_header=NAME)

    assert run(main()).reason == "HTTP 200 on /ready"
    assert seen[0].startswith(b"GET /ready HTTP/1.1\r\n")
    assert f"\r\nHost: {NAME}\r\n".encode() in seen[0]


def test_http_probe_rejects_a_non_http_answer():
    """Bytes that are not HTTP fail the check with llhttp's complaint."""

    async def main():
        async with http_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as port:
            return await http_probe(IP, port)

    result = run(main())
    assert not result.ok
    assert result.reason.startswith("bad HTTP response")


def test_http_probe_connection_closed_without_answer():
    """A server that closes without a byte: no response."""

    async def main():
        async with http_server(b"") as port:
            return await http_probe(IP, port)

    assert run(main()).reason == "connection closed before a response"


def test_https_probe_with_trusted_certificate(server_tls, client_tls):
    """Over TLS, with the lab certificate trusted and the right name, 200 passes."""

    async def main():
        async with http_server(ok_response(), tls=server_tls) as port:
            return (
                await http_probe(IP, port, tls=client_tls, host_header=NAME),
                await tcp_probe(IP, port, tls=client_tls, server_hostname=NAME),
            )

    http, tcp = run(main())
    assert (http.ok, http.reason) == (True, "HTTP 200 on /healthz")
    assert (tcp.ok, tcp.reason) == (True, "TLS handshake ok")


def test_https_probe_rejects_an_untrusted_certificate(server_tls):
    """A self-signed certificate not in the client's trust store fails the check."""

    async def main():
        async with http_server(ok_response(), tls=server_tls) as port:
            return await http_probe(IP, port, tls=ssl.create_default_context(), host_header=NAME)

    result = run(main())
    assert not result.ok
    assert result.reason.startswith("TLS certificate rejected")


def test_https_probe_rejects_the_wrong_name(server_tls, client_tls):
    """The certificate is for api.example.com, not for other.example.com."""

    async def main():
        async with http_server(ok_response(), tls=server_tls) as port:
            return await http_probe(IP, port, tls=client_tls, server_hostname="other.example.com")

    result = run(main())
    assert result.reason.startswith("TLS certificate rejected")


def test_tls_probe_times_out_against_a_silent_server(client_tls):
    """A TLS handshake nobody answers times out."""

    async def main():
        async with http_server(None) as port:
            return await tcp_probe(IP, port, 0.2, tls=client_tls, server_hostname=NAME)

    assert run(main()).reason == "timeout after 0.2 s"


@pytest.mark.parametrize(
    ("spec", "inside", "outside"),
    [
        ("200-399", [200, 302, 399], [199, 400, 500]),
        ("200,204", [200, 204], [201, 203]),
        ("200-204, 404", [204, 404], [205]),
        (200, [200], [201]),
        (range(200, 300), [250], [300]),
    ],
)
def test_parse_expect(spec, inside, outside):
    """Status specs accept ranges, lists and single codes."""
    accepted = parse_expect(spec)
    assert all(s in accepted for s in inside)
    assert not any(s in accepted for s in outside)


@pytest.mark.parametrize("spec", ["2xx", "400-200", "99", "200-"])
def test_parse_expect_rejects_nonsense(spec):
    """A spec that is not a status list is an error, not an empty set."""
    with pytest.raises(ValueError):
        parse_expect(spec)


# --------------------------------------------------------------------- loop


class Watched(HealthChecker):
    """A checker that sets ``done`` once ``condition(self)`` holds after a result."""

    def __init__(self, *args, condition: Callable[[HealthChecker], bool], **kw) -> None:
        super().__init__(*args, **kw)
        self.condition = condition
        self.done = asyncio.Event()

    def record(self, name, ok, reason, now):
        transition = super().record(name, ok, reason, now)
        if self.condition(self):
            self.done.set()
        return transition


async def checks_until_done(checker, probes) -> None:
    """Run ``run_checks`` until ``checker.done`` is set (a Watched checker), then stop it."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(
        run_checks(checker, probes, until=loop.time() + DEADLINE, clock=loop.time)
    )
    try:
        await checker.done.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


FAST = HealthConfig(interval=0.02, timeout=1.0, rise=1, fall=2, jitter=0.1)


def test_run_checks_marks_a_500_backend_down_and_keeps_the_good_one():
    """The loop probes both backends until the 500 one is down after 2 failures."""

    async def main():
        good_answer = ok_response()
        bad_answer = ok_response("500 Internal Server Error", b"")
        async with http_server(good_answer) as good, http_server(bad_answer) as bad:
            states: list[tuple[str, str]] = []
            checker = Watched(
                ["good", "bad"],
                FAST,
                condition=lambda c: c.state("good") == "up" and c.machines["bad"].failures >= 2,
                on_change=lambda n, s: states.append((n, s)),
            )
            probes = {"good": http_check(IP, good), "bad": http_check(IP, bad)}
            await checks_until_done(checker, probes)
            return checker, states

    checker, states = run(main())
    assert checker.effective_state("bad") == "down"
    assert checker.effective_state("good") == "up"
    assert states == [("bad", "down")]
    assert "bad DOWN after 1 failure: HTTP 500 on /healthz" in [e.message for e in checker.events]
    assert checker.in_flight() == set()


def test_run_checks_stops_by_itself_at_until():
    """With a deadline the loop returns the transitions it caused, nothing left in flight."""

    async def main():
        loop = asyncio.get_running_loop()
        checker = HealthChecker(["gone"], FAST)
        probes = {"gone": tcp_check(IP, closed_port())}
        transitions = await run_checks(checker, probes, until=loop.time() + 0.5, clock=loop.time)
        return checker, transitions

    checker, transitions = run(main())
    assert [t.message for t in transitions] == ["gone DOWN after 1 failure: connection refused"]
    assert checker.in_flight() == set()


def test_run_checks_times_out_a_stuck_probe():
    """A probe that never returns is cut at the backend's timeout and counted as failed."""

    async def stuck(timeout: float) -> ProbeResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def main():
        cfg = HealthConfig(interval=0.02, timeout=0.1, fall=1)
        checker = Watched(["a"], cfg, condition=lambda c: bool(c.machines["a"].history))
        await checks_until_done(checker, {"a": stuck})
        return checker

    checker = run(main())
    assert checker.machines["a"].history[0].reason == "timeout after 0.1 s"
    assert checker.state("a") == "down"


def test_cancelling_run_checks_cancels_its_probes():
    """Cancelled mid-probe, the loop cancels the probe and hands the backend back."""

    async def main():
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def slow(timeout: float) -> ProbeResult:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

        checker = HealthChecker(["a"], HealthConfig(timeout=60.0, jitter=0.0))
        task = asyncio.create_task(
            run_checks(checker, {"a": slow}, until=loop.time() + DEADLINE, clock=loop.time)
        )
        await started.wait()
        assert checker.in_flight() == {"a"}
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return checker, cancelled.is_set(), task.cancelled()

    checker, probe_cancelled, loop_cancelled = run(main())
    assert probe_cancelled and loop_cancelled
    assert checker.in_flight() == set()
    assert checker.state("a") == "unknown"


def test_run_checks_needs_a_probe_per_backend():
    """A checked backend without a probe is refused before anything runs."""
    checker = HealthChecker(["a", "b"])
    with pytest.raises(KeyError, match="b"):
        run(run_checks(checker, {"a": tcp_check(IP, 1)}, until=0.0))


def test_a_probe_that_raises_counts_as_a_failure():
    """A bug in a probe is logged and recorded as a failure, not a dead loop."""

    async def broken(timeout: float) -> ProbeResult:
        raise RuntimeError("oops")

    async def main():
        checker = Watched(["a"], FAST, condition=lambda c: bool(c.machines["a"].history))
        await checks_until_done(checker, {"a": broken})
        return checker

    checker = run(main())
    assert checker.machines["a"].history[0].reason == "probe error: RuntimeError('oops')"
