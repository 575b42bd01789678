"""A straightforward aiohttp reverse proxy: the baseline of ``bench_l7_proxy.py``.

What a careful first version looks like: aiohttp.web in front, one
ClientSession with a keep-alive connector behind, round robin over the
backends, bodies streamed both ways. Usage:
``python bench/aiohttp_proxy.py LISTEN_PORT BACKEND_ADDR [BACKEND_ADDR ...]``.
"""

from __future__ import annotations

import itertools
import sys

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host"}


def make_app(backends: list[str]) -> web.Application:
    ring = itertools.cycle(backends)
    app = web.Application()

    async def start(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=64, keepalive_timeout=60)
        app["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        url = f"http://{next(ring)}{request.rel_url}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = request.content if request.body_exists else None
        async with app["session"].request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as up:
            out = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP_BY_HOP | {"content-length"}:
                    out.headers.add(k, v)
            if up.content_length is not None:
                out.content_length = up.content_length
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


if __name__ == "__main__":
    port, backends = int(sys.argv[1]), sys.argv[2:]
    web.run_app(make_app(backends), host="127.0.0.1", port=port, access_log=None, print=None)
