"""The L4 forwarder's admin API: counters and backend state, inside its host only.

HTTP on ``127.0.0.1:9100`` of the L4 host (its own network namespace, so
nothing outside the host reaches it):

* ``GET /stats``: JSON (counters, conntrack size, backends and their state,
  ``no_backend_drops``, and ``health``: :meth:`lbkit.l4.health.L4Health.report`);
* ``GET /health``: that ``health`` report alone;
* ``GET /metrics``: Prometheus text exposition (prometheus-client), with
  ``lbkit_l4_backend_up{backend}`` (1 up or not yet checked, 0 down by the
  checks; present when checks run), ``lbkit_l4_health_transitions_total``
  ``{backend,to}`` and ``lbkit_l4_no_backend_drops_total``;
* ``POST /backends/NAME?state=down`` (``up``, ``down`` or ``drain``): the
  operator's switch. It sets the health checker's admin state (``up`` is
  HAProxy's ``ready``: the checks decide; ``down`` is ``maint``), so a
  check and the operator combine instead of overwriting each other.

The lab's control socket carries the same operations (``status``, ``stats``,
``set-backend``, and ``health``: ``{"backends": {NAME: {"state", "since",
"last", ...}}, "events": [{"at", "message", ...}]}``), so ``lbkit lab ...``
and tests reach them from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lbkit.lab.errors import LabError
from lbkit.lab.roles.http_server import HttpServerProtocol, Request, plain_answer


class _Collector:
    """Turns the forwarder's counters into Prometheus metric families."""

    def __init__(self, forwarder) -> None:
        self.forwarder = forwarder

    def collect(self):
        stats = self.forwarder.stats()
        counters: dict[str, int] = stats.get("counters", {})
        packets = CounterMetricFamily(
            "lbkit_l4_packets", "Frames received and sent", labels=["direction"]
        )
        per_backend = CounterMetricFamily(
            "lbkit_l4_backend_packets", "Frames sent to each backend", labels=["backend"]
        )
        drops = CounterMetricFamily(
            "lbkit_l4_dropped", "Frames dropped, by reason", labels=["reason"]
        )
        passes = CounterMetricFamily(
            "lbkit_l4_passed", "Frames not ours, by reason", labels=["reason"]
        )
        events = CounterMetricFamily("lbkit_l4_events", "Other events", labels=["event"])
        for key, value in sorted(counters.items()):
            kind, _, rest = key.partition(":")
            if key in ("rx", "tx"):
                packets.add_metric([key], value)
            elif kind == "backend":
                per_backend.add_metric([rest], value)
            elif kind == "drop":
                drops.add_metric([rest], value)
            elif kind == "pass":
                passes.add_metric([rest], value)
            else:
                events.add_metric([key], value)
        yield from (packets, per_backend, drops, passes, events)
        size = GaugeMetricFamily("lbkit_l4_conntrack_entries", "Tracked flows")
        size.add_metric(
            [],
            stats.get("conntrack", {}).get("size", 0)
            if isinstance(stats.get("conntrack"), dict)
            else stats.get("conntrack_size", 0),
        )
        yield size
        no_backend = CounterMetricFamily(
            "lbkit_l4_no_backend_drops", "New flows dropped: no backend up in their service"
        )
        no_backend.add_metric([], stats.get("no_backend_drops", 0))
        yield no_backend
        yield from health_metrics(stats.get("health"), self.forwarder.health)


def health_metrics(report: dict | None, health) -> list:
    """The health gauge per backend (when checks run) and the transitions counter."""
    if not report:
        return []
    transitions = CounterMetricFamily(
        "lbkit_l4_health_transitions",
        "Health-check transitions, by backend and new state",
        labels=["backend", "to"],
    )
    for (backend, to), n in sorted(health.transitions.items()):
        transitions.add_metric([backend, to], n)
    if report.get("checks") is None:
        return [transitions]
    up = GaugeMetricFamily(
        "lbkit_l4_backend_up",
        "Health checks' verdict: 1 up (or not yet checked), 0 down",
        labels=["backend"],
    )
    for name, row in report["backends"].items():
        up.add_metric([name], 0 if row["health"] == "down" else 1)
    return [up, transitions]


def _answer(status: int, doc: Any) -> tuple:
    body = (json.dumps(doc, indent=1) + "\n").encode()
    return (
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        body,
        0.0,
        "answer",
    )


def handle_admin(forwarder, req: Request, registry: CollectorRegistry) -> tuple:
    """One admin request -> an answer tuple (pure apart from the forwarder's methods)."""
    url = urlsplit(req.target)
    parts = [p for p in url.path.split("/") if p]
    try:
        if req.method == "GET" and parts == ["stats"]:
            return _answer(200, forwarder.stats())
        if req.method == "GET" and parts == ["health"]:
            return _answer(200, forwarder.health_report())
        if req.method == "GET" and parts == ["metrics"]:
            body = generate_latest(registry)
            return (
                200,
                [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))],
                body,
                0.0,
                "answer",
            )
        if req.method in ("POST", "PUT") and len(parts) == 2 and parts[0] == "backends":
            state = parse_qs(url.query).get("state", [""])[0]
            return _answer(200, forwarder.set_backend(parts[1], state))
        if req.method == "GET" and parts == []:
            return plain_answer(
                200,
                "lbkit L4 admin: GET /stats, GET /metrics, GET /health, "
                "POST /backends/NAME?state=up|down|drain\n",
            )
    except LabError as e:
        return _answer(400, {"ok": False, "error": str(e)})
    return _answer(404, {"ok": False, "error": f"no such endpoint: {req.method} {url.path}"})


async def handle_control(forwarder, request: Any) -> dict[str, Any]:
    """The lab control channel: status, stats, set-backend, health."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "expected a JSON object"}
    op = request.get("op")
    try:
        if op in ("status", "stats"):
            return {"ok": True, "role": "l4", "mode": forwarder.cfg.mode, **forwarder.stats()}
        if op == "health":
            return {"ok": True, **forwarder.health_report()}
        if op == "set-backend":
            return {
                "ok": True,
                **forwarder.set_backend(str(request.get("backend")), str(request.get("state"))),
            }
    except LabError as e:
        return {"ok": False, "error": str(e)}
    return {"ok": False, "error": f"unknown op {op!r} (status, stats, set-backend, health)"}


@contextlib.asynccontextmanager
async def serve_admin(forwarder, control_path: str | None = None) -> AsyncIterator[None]:
    """Serve the admin HTTP API (and the lab control socket) while the block runs."""
    from lbkit.lab.control import control_server

    registry = CollectorRegistry()
    registry.register(_Collector(forwarder))
    loop = asyncio.get_running_loop()
    host, port = forwarder.cfg.admin
    try:
        server = await loop.create_server(
            lambda: HttpServerProtocol(lambda req: handle_admin(forwarder, req, registry)),
            host,
            port,
            reuse_address=True,
        )
    except OSError as e:
        raise LabError(f"admin API: cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        if control_path:
            async with control_server(control_path, lambda r: handle_control(forwarder, r)):
                yield
        else:
            yield
    finally:
        server.close()
