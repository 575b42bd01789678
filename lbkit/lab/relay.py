"""``lbkit lab forward``: reach a lab host from your own shell and browser.

Like ``kubectl port-forward``: a relay listens on 127.0.0.1 in the root
namespace and, for every connection it accepts, connects to the target from
*inside* a lab host's network namespace. The trick is ordering: the listening
socket is created first, in the root namespace; then the process moves into
the lab host's namespace (``setns(2)``), where every socket it creates from
then on lives. The root namespace never gets a lab address or route.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listener: socket.socket, target: tuple[str, int]) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (TimeoutError, OSError):
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))

    server = await asyncio.start_server(handle, sock=listener)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def listen(port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` (0: any free port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    s.setblocking(False)
    return s


def run_relay(listener: socket.socket, target: tuple[str, int], netns: str | None) -> None:
    """Serve until SIGTERM/SIGINT; connect to ``target`` from inside ``netns`` (if given)."""
    if netns:
        from pyroute2.netns import setns

        setns(netns, flags=0)  # from here on, new sockets live in the lab host's namespace
    try:
        import uvloop

        uvloop.run(_serve(listener, target))
    except ImportError:
        asyncio.run(_serve(listener, target))


def main(argv: list[str]) -> None:
    """``python -m lbkit.lab.relay PORT TARGET_IP TARGET_PORT [NETNS]`` (run by ``lab forward``)."""
    port, ip, tport = int(argv[0]), argv[1], int(argv[2])
    netns = argv[3] if len(argv) > 3 else None
    sock = listen(port)
    print(f"listening 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    run_relay(sock, (ip, tport), netns)


if __name__ == "__main__":
    main(sys.argv[1:])
