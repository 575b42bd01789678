"""The ``l4`` and ``l7`` roles until their chapters build them: a labelled page.

Every path answers 200 with a sentence saying which tier this is and that it
arrives later, so a learner who curls the NLB or an ALB of the layered lab
early sees why nothing is balanced yet. The control channel answers
``status`` (mode ``placeholder``) and refuses ``set-mode``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..control import control_server
from .backend import Listeners
from .backend_core import HttpAnswer, RoleState, handle_control
from .http_server import HttpServerProtocol, Request, plain_answer

PLACEHOLDER_TEXT = (
    "{name} ({role}): placeholder. This tier is not built yet; it arrives with a later chapter.\n"
)


def placeholder_answer(name: str, role: str) -> HttpAnswer:
    """The answer to every request: 200, the sentence, ``X-Placeholder: name``."""
    status, headers, body, delay, action = plain_answer(
        200, PLACEHOLDER_TEXT.format(name=name, role=role), [("X-Placeholder", name)]
    )
    return HttpAnswer(status, headers, body, delay, action)


def placeholder_state(name: str, role: str) -> RoleState:
    """A fixed-mode state: ``set-mode`` is refused, requests counted as ``http``."""
    return RoleState(name, role=role, mode="placeholder", modes=(), requests={"http": 0})


async def serve_placeholder(
    name: str,
    role: str,
    http: list[tuple[str, int]],
    control_path: str,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve the placeholder page on ``http`` addresses until cancelled."""
    state = placeholder_state(name, role)
    connections: set[asyncio.BaseTransport] = set()

    def on_request(req: Request) -> HttpAnswer:
        state.requests["http"] += 1
        return placeholder_answer(name, role)

    def on_bad_request(status: int, reason: str) -> Any:
        return plain_answer(status, f"{name}: bad request: {reason}\n", [("X-Placeholder", name)])

    def factory() -> asyncio.Protocol:
        return HttpServerProtocol(on_request, on_bad_request, connections=connections)

    async def on_control(request: Any) -> dict[str, Any]:
        return handle_control(state, request)

    listeners = Listeners(state, [(addr, factory) for addr in http], [], connections)
    try:
        await listeners.open()
        async with control_server(control_path, on_control):
            if on_ready is not None:
                on_ready()
            await asyncio.Event().wait()
    finally:
        await listeners.close()
