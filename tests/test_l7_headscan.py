"""The proxy hands the router the scan it made while llhttp parsed (RequestHead.scan).

The router trusts that scan instead of walking the fields again, so it must
say exactly what ``HeadScan.of`` says of the same fields: these tests parse
real request bytes through :class:`lbkit.l7.proxy.ClientConnection` and
compare the two, field by field.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbkit.l7.model import Limits
from lbkit.l7.proxy import ClientConnection, Proxy
from lbkit.l7.router import HeadScan, Reject

from ._l7_stub import FakeTransport

FIELDS = ("connection", "content_length", "cookie", "hosts", "transfer_encoding")


class Recorder:
    """A router that refuses everything and keeps the heads it was given."""

    def __init__(self) -> None:
        self.heads = []

    def route(self, head, now):
        self.heads.append(head)
        return Reject(404, "recorded")

    def stats(self):
        return {}

    def health_pools(self):
        return {}


def scans(raw: bytes) -> tuple[HeadScan, HeadScan]:
    """(the proxy's scan, ``HeadScan.of`` the same fields) for one request."""

    async def run() -> tuple[HeadScan, HeadScan]:
        router = Recorder()
        proxy = Proxy(router, Limits(), access_log=False)
        conn = ClientConnection(proxy)
        conn.connection_made(FakeTransport())
        conn.data_received(raw)
        await proxy.health.stop()
        (head,) = router.heads
        return head.scan, HeadScan.of(head.headers)

    return asyncio.run(run())


def same(a: HeadScan, b: HeadScan) -> None:
    """Equal field by field (value lists compared as lists: one side may hold tuples)."""
    for name in FIELDS:
        left, right = getattr(a, name), getattr(b, name)
        if isinstance(left, bool):
            assert left is right, name
        else:
            assert list(left) == list(right), name


@pytest.mark.parametrize(
    "fields",
    [
        [b"Host: a.test"],
        [b"host: A.test:8080", b"Cookie: s=1", b"cookie: t=2"],
        [b"Host: a", b"Content-Length: 5", b"Connection: keep-alive, X-Trace"],
        [b"Host: a", b"Transfer-Encoding: gzip", b"transfer-encoding: chunked"],
        [b"HOST: a", b"Expect: 100-continue", b"Content-Length: 0", b"X-Host: b"],
    ],
)
def test_proxy_scan_equals_router_scan(fields):
    raw = b"POST /x HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    proxy_scan, router_scan = scans(raw)
    same(proxy_scan, router_scan)


def test_http10_without_host_scans_no_host():
    proxy_scan, router_scan = scans(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert list(proxy_scan.hosts) == [] == list(router_scan.hosts)


NAMES = st.sampled_from(
    ["Host", "host", "Cookie", "COOKIE", "Connection", "Content-Length", "Transfer-Encoding",
     "Expect", "X-Host", "Hosts", "Accept", "Cookies"]
)  # fmt: skip
VALUES = st.text(alphabet="abc019 ,;=-.", min_size=1, max_size=12).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=8))
def test_proxy_scan_equals_router_scan_for_any_fields(fields):
    # What llhttp lets through: one Content-Length (digits) or one Transfer-Encoding, not both
    framing = {"Content-Length": "7", "Transfer-Encoding": "chunked"}
    fixed, seen = [], None
    for name, value in fields:
        if name in framing:
            if seen is not None:
                continue
            seen, value = name, framing[name]
        fixed.append((name, value))
    # HTTP/1.0: any number of Host fields reaches the router (1.1 needs exactly one)
    raw = b"GET / HTTP/1.0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fixed).encode() + b"\r\n"
    proxy_scan, router_scan = scans(raw)
    same(proxy_scan, router_scan)
