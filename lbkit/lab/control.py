"""A lab host's control channel: JSON lines over a UNIX stream socket.

Each request is one JSON object on one line; each answer is one JSON object
on one line; a connection may carry many. The socket lives at
:func:`lbkit.lab.hostcmd.control_socket` (``STATE/hosts/HOST.sock``), which
every provider can reach: a file, so it crosses network namespaces, and a
bind mount crosses into containers.

``send_control`` is the client (blocking, for the CLI, the launcher and
notebooks); ``control_server`` the server side (asyncio), shared by every
role. What a request means is the role's business (``handler``); see
:func:`lbkit.lab.roles.backend_core.handle_control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from .errors import LabError

log = logging.getLogger(__name__)

MAX_LINE = 1024 * 1024
#: sun_path is 108 bytes on Linux, 104 on macOS, both including the final NUL.
MAX_PATH_BYTES = 103

Handler = Callable[[Any], Awaitable[dict[str, Any]]]


class ControlError(LabError):
    """The control channel could not be used; the message says why, in one line."""


# ---------------------------------------------------------------- client


def send_control(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the control socket at ``path``; return its answer.

    Raises :class:`ControlError` (a :class:`LabError`) if the socket is missing
    or refuses, or no complete answer comes within ``timeout`` seconds.
    An answer with ``"ok": false`` is returned, not raised.
    """
    deadline = time.monotonic() + timeout
    line = json.dumps(request).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path}: no control socket (is the host running?)") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"{path}: connection refused (a stale socket: the host's server is not running)"
            ) from None
        except OSError as e:
            raise ControlError(f"{path}: cannot connect: {e.strerror or e}") from None
        try:
            sock.sendall(line)
            answer = _read_line(sock, deadline)
        except TimeoutError:
            raise ControlError(f"{path}: no answer within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
    if answer is None:
        raise ControlError(f"{path}: the host closed the control connection without answering")
    try:
        reply = json.loads(answer)
    except ValueError:
        raise ControlError(f"{path}: the answer is not JSON: {answer[:80]!r}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: the answer is not a JSON object: {answer[:80]!r}")
    return reply


def _read_line(sock: socket.socket, deadline: float) -> bytes | None:
    buf = bytearray()
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_LINE:
            raise OSError("answer line too long")
    return bytes(buf.split(b"\n", 1)[0])


# ---------------------------------------------------------------- server


def parse_request_line(line: bytes) -> tuple[Any, str | None]:
    """``(request, None)`` for a JSON line, ``(None, error)`` when it is not JSON."""
    try:
        return json.loads(line), None
    except ValueError as e:
        return None, f"not JSON: {e}"


def _claim_path(path: str) -> None:
    """Make the parent directory; remove a stale socket; refuse to steal a live one."""
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise ControlError(
            f"{path}: control socket path is longer than {MAX_PATH_BYTES} bytes "
            "(UNIX sockets allow no more); use a shorter state directory"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"{path}: exists and is not a socket; remove it or pick another state dir"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
            return
    raise ControlError(f"{path}: another server already answers on this control socket")


@contextlib.asynccontextmanager
async def control_server(path: str, handler: Handler) -> AsyncIterator[asyncio.AbstractServer]:
    """Serve the control socket at ``path`` while the block runs; remove it after.

    ``handler`` gets each decoded request (any JSON value) and returns the
    answer object; a line that is not JSON is answered with an error without
    calling it. Requests are handled one at a time across all connections, so
    a ``set-mode`` finishes (listeners closed or re-opened) before the next.
    """
    _claim_path(path)
    lock = asyncio.Lock()
    writers: set[asyncio.StreamWriter] = set()

    async def answer(raw: bytes) -> dict[str, Any]:
        request, error = parse_request_line(raw)
        if error is not None:
            return {"ok": False, "error": error}
        async with lock:
            try:
                return await handler(request)
            except Exception as e:  # a bug must not take the channel down
                log.exception("control request %r failed", request)
                return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    reply = {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"}
                    writer.write(json.dumps(reply).encode() + b"\n")
                    break
                if not raw:
                    break
                if not raw.strip():
                    continue
                reply = await answer(raw)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_unix_server(on_client, path, limit=MAX_LINE)
    try:
        yield server
    finally:
        server.close()
        for writer in list(writers):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
