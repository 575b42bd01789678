"""The L7 proxy's admin API: ``GET /stats`` (JSON) and ``GET /metrics`` (Prometheus).

It listens on its own address (``lbkit l7 --admin``, 127.0.0.1:9101 inside a lab
host), never on the public listener, as the issue asks. Metrics are read from
the proxy's counters at scrape time through a prometheus-client collector.

Per backend (labels ``upstream``, ``backend``): ``lbkit_l7_backend_up`` (1 when it
takes new requests, i.e. its combined state is ``up``; 0 when ``down`` or
``drain``), ``lbkit_l7_backend_health`` (the active checks' verdict: 1 up or
not yet checked, 0 down; pools with checks only) and the counter
``lbkit_l7_health_transitions_total`` (label ``to``: up, down, ejected, failed,
active). ``/stats`` carries the same under ``health`` (:meth:`Proxy.health_report`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .proxy import Proxy


def _numeric_leaves(doc: Any, prefix: str = "") -> list[tuple[str, float]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``: the numbers in router.stats(), for Prometheus."""
    out: list[tuple[str, float]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(doc, int | float):  # bool included
        out.append((prefix, float(doc)))
    return out


class _Collector:
    """The proxy's counters as Prometheus metric families (read at scrape time)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = self.proxy.counters
        responses = CounterMetricFamily(
            "lbkit_l7_responses", "Responses sent to clients, by status", labels=["status"]
        )
        for status, n in sorted(c.status.items()):
            responses.add_metric([str(status)], n)
        failures = CounterMetricFamily(
            "lbkit_l7_upstream_failures", "Failed upstream attempts, by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(c.failures.items()):
            failures.add_metric([outcome], n)
        yield responses
        yield failures
        for name, doc, value in (
            ("lbkit_l7_requests", "Requests received", c.requests),
            ("lbkit_l7_retries", "Attempts after the first", c.retries),
            ("lbkit_l7_bytes_sent", "Bytes sent to clients", c.bytes_out),
            ("lbkit_l7_client_connections", "Client connections accepted", c.connections),
            ("lbkit_l7_client_aborts", "Requests whose client left first", c.client_aborts),
            ("lbkit_l7_tls_handshakes", "TLS handshakes completed", c.tls_handshakes),
            ("lbkit_l7_tls_handshake_failures", "TLS handshakes refused", c.tls_handshake_failures),
            ("lbkit_l7_upstream_connects", "Upstream connections opened", self.proxy.pool.connects),
            ("lbkit_l7_upstream_reuses", "Requests on a pooled connection", self.proxy.pool.reuses),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        open_conns = GaugeMetricFamily("lbkit_l7_open_connections", "Client connections open")
        open_conns.add_metric([], len(self.proxy.conns))
        yield open_conns
        try:
            leaves = _numeric_leaves(self.proxy.router.stats())
        except Exception:
            leaves = []
        router = GaugeMetricFamily(
            "lbkit_l7_router_stat", "Numbers from router.stats()", labels=["name"]
        )
        for name, value in leaves:
            router.add_metric([name], value)
        yield router
        yield from backend_metrics(getattr(self.proxy.router, "pools", None) or {})


def backend_metrics(pools: dict[str, Any]) -> list:
    """The per-backend gauges and the transitions counter (see the module docstring)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["upstream", "backend"]
    up = GaugeMetricFamily(
        "lbkit_l7_backend_up",
        "1 when the backend takes new requests (state up), else 0",
        labels=labels,
    )
    health = GaugeMetricFamily(
        "lbkit_l7_backend_health",
        "Active health checks' verdict: 1 up (or not yet checked), 0 down",
        labels=labels,
    )
    transitions = CounterMetricFamily(
        "lbkit_l7_health_transitions",
        "Health transitions (checks, ejections, max_fails), by backend and new state",
        labels=[*labels, "to"],
    )
    for name, pool in pools.items():
        for b in pool.backends:
            up.add_metric([name, b.name], 1 if pool.state(b.name) == "up" else 0)
            if pool.checker is not None:
                verdict = pool.checker.machines[b.name].state
                health.add_metric([name, b.name], 0 if verdict == "down" else 1)
        for (backend, to), n in sorted(pool.transitions.items()):
            transitions.add_metric([name, backend, to], n)
    return [up, health, transitions]


async def start_admin(proxy: Proxy, address: tuple[str, int]) -> asyncio.AbstractServer:
    """The admin HTTP API on ``address``: GET /stats (JSON) and GET /metrics (Prometheus)."""
    import json

    from prometheus_client import CollectorRegistry, generate_latest

    from lbkit.lab.roles.http_server import HttpServerProtocol, Request, plain_answer

    registry = CollectorRegistry()
    registry.register(_Collector(proxy))

    def answer(req: Request) -> tuple:
        path = req.target.split("?", 1)[0]
        if req.method in ("GET", "HEAD") and path == "/stats":
            body = (json.dumps(proxy.stats(), indent=1) + "\n").encode()
            ctype = "application/json"
        elif req.method in ("GET", "HEAD") and path == "/metrics":
            body = generate_latest(registry)
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        elif req.method in ("GET", "HEAD") and path == "/":
            return plain_answer(200, "lbkit L7 admin: GET /stats, GET /metrics\n")
        else:
            return plain_answer(404, f"no such admin endpoint: {req.method} {path}\n")
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        return 200, headers, body, 0.0, "answer"

    host, port = address
    try:
        return await proxy.loop.create_server(
            lambda: HttpServerProtocol(answer), host, port, reuse_address=True
        )
    except OSError as e:
        raise OSError(e.errno, f"admin API: cannot listen on {host}:{port}: {e.strerror}") from e
