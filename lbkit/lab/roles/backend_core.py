"""The backend role's behaviour as data in, data out: no sockets, no clock.

A lab backend answers HTTP, lines and UDP datagrams with its name, and can
be switched at run time into a failure mode so the course can show what an
L4 and an L7 balancer each notice (seed: "L4 TCP check vs L7 HTTP check").
Everything here decides *what* to answer; :mod:`lbkit.lab.roles.backend`
does the I/O (the h11 split: ``h11/_connection.py`` decides, sockets live
elsewhere).

Modes, and who notices them:

========================  ===============================================
``healthy``               everything answers at once
``slow``                  every HTTP and line answer waits ``slow_delay`` s
``error-500``             every HTTP answer is 500, ``/healthz`` included
``healthz-500``           only ``/healthz`` is 500: TCP connects (an L4 check
                          passes) while an HTTP check fails
``accept-no-answer``      TCP accepted and read, never answered; UDP dropped
``refuse``                listeners closed: connect gets RST (refused)
========================  ===============================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

MODES = ("healthy", "slow", "error-500", "healthz-500", "accept-no-answer", "refuse")
DEFAULT_SLOW_DELAY = 1.0
MAX_SLOW_DELAY = 3600.0

# What the connection does with an answer.
ANSWER = "answer"  # write it (after ``delay``)
HANG = "hang"  # never write anything again on this connection; keep reading
CLOSE = "close"  # drop the connection without answering
ACTIONS = (ANSWER, HANG, CLOSE)

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


class HttpAnswer(NamedTuple):
    """An HTTP answer: what to send, after how long, or not at all (``action``)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    delay: float = 0.0
    action: str = ANSWER


@dataclass
class RoleState:
    """What a lab host's server is doing; the control channel reads and changes it.

    ``modes`` lists the modes ``set-mode`` may choose; empty for roles whose
    mode is fixed (the ``l4``/``l7`` placeholders, idle clients). ``listening``
    is kept up to date by the adapter: ``(proto, ip, port)`` per open socket.
    """

    name: str
    role: str = "backend"
    mode: str = "healthy"
    slow_delay: float = DEFAULT_SLOW_DELAY
    modes: tuple[str, ...] = MODES
    requests: dict[str, int] = field(default_factory=lambda: {"http": 0, "line": 0, "udp": 0})
    listening: list[tuple[str, str, int]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """The control channel's status object."""
        out: dict[str, Any] = {"ok": True, "host": self.name, "role": self.role, "mode": self.mode}
        if self.modes:
            out["slow_delay"] = self.slow_delay
        out["requests"] = dict(self.requests)
        out["listening"] = [list(item) for item in self.listening]
        return out


def check_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`MODES`; ValueError with a one-line message otherwise."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    return mode


def check_slow_delay(value: object) -> float:
    """``value`` as seconds if it is a number in [0, 3600]; ValueError otherwise."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= MAX_SLOW_DELAY:  # type: ignore[arg-type]
        raise ValueError(f"slow_delay must be a number of seconds from 0 to 3600, got {value!r}")
    return float(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------- HTTP


def hostport(addr: tuple[str, int]) -> str:
    """``ip:port``, with IPv6 addresses in brackets (RFC 3986 §3.2.2)."""
    ip, port = addr[0], addr[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def request_path(target: str) -> str:
    """The path of a request target, origin-form or absolute-form (RFC 9112 §3.2)."""
    if target.startswith("/"):
        return target.split("?", 1)[0]
    return urlsplit(target).path or "/"


def text_answer(name: str, status: int, text: str, delay: float = 0.0) -> HttpAnswer:
    """A ``text/plain`` answer carrying ``X-Backend: name``."""
    body = text.encode()
    return HttpAnswer(status, _headers(name, TEXT, body), body, delay)


def _headers(name: str, content_type: str, body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", content_type), ("Content-Length", str(len(body))), ("X-Backend", name)]


def echo_body(
    name: str,
    method: str,
    target: str,
    http_version: str,
    headers: list[tuple[str, str]],
    body_bytes: int,
    client: tuple[str, int],
    server: tuple[str, int],
) -> bytes:
    """``/echo``'s JSON: the request as this backend saw it (after any proxy's rewrites)."""
    doc = {
        "backend": name,
        "method": method,
        "path": target,
        "http_version": http_version,
        "client": hostport(client),
        "server": hostport(server),
        "headers": [[k, v] for k, v in headers],
        "body_bytes": body_bytes,
    }
    return (json.dumps(doc) + "\n").encode()


def http_answer(
    state: RoleState,
    method: str,
    target: str,
    http_version: str,
    headers: list[tuple[str, str]],
    body_bytes: int,
    client: tuple[str, int],
    server: tuple[str, int],
) -> HttpAnswer:
    """The backend's answer to one complete request, given its current mode.

    ``/healthz`` -> ``ok``; ``/echo`` (any method) -> the request as JSON;
    anything else -> the backend's name. Modes bend that as the module's
    table says.
    """
    name, mode = state.name, state.mode
    if mode == "accept-no-answer":
        return HttpAnswer(0, [], b"", 0.0, HANG)
    if mode == "refuse":
        return HttpAnswer(0, [], b"", 0.0, CLOSE)
    delay = state.slow_delay if mode == "slow" else 0.0
    path = request_path(target)
    if mode == "error-500" or (mode == "healthz-500" and path == "/healthz"):
        return text_answer(name, 500, f"{name}: error\n", delay)
    if path == "/healthz":
        return text_answer(name, 200, "ok\n", delay)
    if path == "/echo":
        body = echo_body(name, method, target, http_version, headers, body_bytes, client, server)
        return HttpAnswer(200, _headers(name, JSON, body), body, delay)
    return text_answer(name, 200, f"{name}\n", delay)


def bad_request_answer(state: RoleState, status: int, reason: str) -> HttpAnswer:
    """The answer to a request llhttp rejected (400, or 431 for oversized headers)."""
    if state.mode == "accept-no-answer":
        return HttpAnswer(0, [], b"", 0.0, HANG)
    if state.mode == "refuse":
        return HttpAnswer(0, [], b"", 0.0, CLOSE)
    delay = state.slow_delay if state.mode == "slow" else 0.0
    return text_answer(state.name, status, f"{state.name}: bad request: {reason}\n", delay)


# ---------------------------------------------------------------- line and UDP


def line_reply(state: RoleState, line: bytes) -> tuple[str, bytes, float]:
    """``(action, reply, delay)`` for one received line (without its line ending)."""
    if state.mode == "accept-no-answer":
        return HANG, b"", 0.0
    if state.mode == "refuse":
        return CLOSE, b"", 0.0
    delay = state.slow_delay if state.mode == "slow" else 0.0
    return ANSWER, state.name.encode() + b": " + line + b"\n", delay


def udp_reply(state: RoleState, payload: bytes) -> bytes | None:
    """The reply datagram (RFC 862 echo, prefixed with the name), or None to stay silent."""
    if state.mode in ("accept-no-answer", "refuse"):
        return None
    return state.name.encode() + b": " + payload


# ---------------------------------------------------------------- control


def control_error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def handle_control(state: RoleState, request: object) -> dict[str, Any]:
    """Answer one control request, changing ``state`` for a valid ``set-mode``.

    ``{"op": "status"}`` -> the status object; ``{"op": "set-mode", "mode": M,
    "slow_delay": S}`` (``slow_delay`` optional) -> the status object after the
    change. Anything else -> ``{"ok": false, "error": "..."}``, state untouched.
    """
    if not isinstance(request, dict):
        return control_error('expected a JSON object such as {"op": "status"}')
    op = request.get("op")
    if op == "status":
        extra = sorted(set(request) - {"op"})
        if extra:
            return control_error(f"unknown key {extra[0]!r} for status")
        return state.status()
    if op == "set-mode":
        if not state.modes:
            return control_error(
                f"{state.name} ({state.role}) has the fixed mode {state.mode!r}; "
                "set-mode applies to backends"
            )
        extra = sorted(set(request) - {"op", "mode", "slow_delay"})
        if extra:
            return control_error(
                f"unknown key {extra[0]!r} for set-mode (expected mode, slow_delay)"
            )
        if "mode" not in request:
            return control_error(f"set-mode needs a mode (one of {', '.join(state.modes)})")
        try:
            mode = check_mode(request["mode"])
            delay = check_slow_delay(request.get("slow_delay", state.slow_delay))
        except ValueError as e:
            return control_error(str(e))
        state.mode, state.slow_delay = mode, delay
        return state.status()
    return control_error(f"unknown op {op!r} (expected status or set-mode)")
