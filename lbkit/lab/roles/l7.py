"""The ``l7`` role with a router file: lbkit's L7 reverse proxy as a lab host.

An ``l7`` host whose options name a router file serves
:class:`lbkit.l7.proxy.Proxy`; without one it keeps the placeholder page::

    [hosts.alb1]
    role = "l7"
    addresses = ["10.0.1.3"]
    options = { config = "l7/router.toml" }       # lbkit's router TOML, or
    # options = { nginx_conf = "nginx/site.conf" }  # nginx's syntax

The path is relative to the topology file. ``lab up`` reads and checks the
file before it builds anything (:func:`check_l7_hosts`), so a mistake is one
line naming the topology, the key and the router file's own key or line.

Where it listens is the lab's business, as for every role
(:mod:`lbkit.lab.services`): ``http`` on port 80 of every address (the
router file's ``listen`` ports only choose its server blocks), the admin
API (``/stats``, ``/metrics``) on 127.0.0.1:9101 inside the host.

Addresses: the router file names backends by their lab addresses
(``10.0.1.10:80``). Under netns and docker those exist. Under the local
provider they do not, so every upstream server (and literal ``proxy_pass``
address) that is a lab host's address and one of its TCP service ports is
rewritten to where that service listens on loopback (``127.0.1.6:8080``),
keeping its name, so sticky cookies, stats and logs still say ``api1``.

Control channel: ``status`` (mode ``proxy``, requests, listening, config),
``stats`` (:meth:`Proxy.stats`), ``reload`` (read the file again; on an
error the running router stays). SIGHUP reloads too, as with ``lbkit l7``.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ..errors import LabError
from ..services import bind_address, endpoint_map, service_named
from ..topology import Host, Topology, l7_router_option

#: Option key -> the loader's kind (lbkit.l7.cli.load_config).
KINDS = {"config": "toml", "nginx_conf": "nginx"}
NOTICE = (
    "local provider: upstream servers at lab addresses (10.0.1.10:80) are reached where "
    "those hosts listen on loopback (127.0.1.x:8080); names, cookies and stats are unchanged"
)


def router_file(topology: Topology, host: Host) -> tuple[str, str, str] | None:
    """``(option key, path, kind)`` of ``host``'s router file, or None (a placeholder)."""
    found = l7_router_option(host)
    if found is None:
        return None
    key, written = found
    return key, str(Path(topology.source).parent / written), KINDS[key]


def map_upstreams(config: Any, endpoints: dict[tuple[str, int], tuple[str, int]]) -> Any:
    """A copy of ``config`` with every lab address rewritten by ``endpoints``.

    Upstream servers keep their names (an unnamed server is named by its
    original address); a literal ``proxy_pass http://IP:PORT`` is rewritten
    too. Addresses outside ``endpoints`` stay as they are.
    """
    from lbkit.l7.pools import join_address, split_address
    from lbkit.l7.router import parse_proxy_pass

    def mapped(address: str, default_port: int = 80) -> str | None:
        try:
            where = endpoints.get(split_address(address, default_port))
        except ValueError:
            return None
        return join_address(*where) if where else None

    config = copy.deepcopy(config)
    for upstream in config.upstreams.values():
        for server in upstream.servers:
            new = mapped(server.address)
            if new is not None:
                server.name = server.name or server.address
                server.address = new
    for block in config.servers:
        for loc in block.locations:
            if not loc.proxy_pass or "$" in loc.proxy_pass:
                continue
            try:
                target = parse_proxy_pass(loc.proxy_pass)
            except ValueError:
                continue
            if target.authority in config.upstreams:
                continue
            new = mapped(target.authority, 443 if target.scheme == "https" else 80)
            if new is not None:
                loc.proxy_pass = f"{target.scheme}://{new}{target.uri or ''}"
    return config


def load_router(topology: Topology, host: Host, addressing: str = "native") -> tuple[Any, Any]:
    """``(router, limits)`` for ``host``'s router file, its addresses mapped for
    ``addressing``; LabError naming the topology, the key and the file's mistake."""
    found = router_file(topology, host)
    if found is None:
        raise LabError(f"{topology.source}: hosts.{host.name}.options: no config or nginx_conf")
    key, path, kind = found
    from lbkit.l7.cli import ConfigError, build_router, load_config

    try:
        config = load_config(path, kind)
        if addressing != "native":
            config = map_upstreams(config, endpoint_map(topology, addressing))
        router = build_router(config)
    except ConfigError as e:
        more = f" (and {len(e.errors) - 1} more)" if len(e.errors) > 1 else ""
        raise LabError(
            f"{topology.source}: hosts.{host.name}.options.{key}: {e.errors[0]}{more}"
        ) from None
    return router, config.limits


def check_l7_hosts(topology: Topology) -> None:
    """Read and check every l7 host's router file (``lab up`` calls this first)."""
    for host in topology.by_role("l7"):
        if router_file(topology, host) is not None:
            load_router(topology, host)


def serve_l7(
    topology: Topology,
    host: Host,
    addressing: str,
    control: str,
    on_ready: Callable[[], None],
) -> Coroutine[Any, Any, None]:
    """The coroutine serving ``host``'s router; the file is read now (LabError if bad)."""
    router, limits = load_router(topology, host, addressing)
    path = router_file(topology, host)[1]  # type: ignore[index]  # load_router found it
    if addressing != "native":
        sys.stdout.write(f"notice: {NOTICE}\n")
        sys.stdout.flush()

    def addr(service: str) -> tuple[str, int]:
        return bind_address(addressing, topology, host, service_named(host, service))

    def reload() -> tuple[Any, Any]:
        return load_router(topology, host, addressing)

    return serve_router(
        host.name,
        router,
        limits,
        [addr("http")],
        addr("admin"),
        control,
        on_ready,
        reload=reload,
        config=path,
    )


async def serve_router(
    name: str,
    router: Any,
    limits: Any,
    listen: list[tuple[str, int]],
    admin: tuple[str, int] | None,
    control: str,
    on_ready: Callable[[], None] | None = None,
    *,
    reload: Callable[[], tuple[Any, Any]] | None = None,
    config: str = "",
) -> None:
    """Proxy through ``router`` on ``listen`` and answer the control channel until cancelled."""
    from lbkit.l7.proxy import Proxy

    from ..control import control_server
    from .backend_core import RoleState, control_error, handle_control

    proxy = Proxy(router, limits)
    state = RoleState(name, role="l7", mode="proxy", modes=(), requests={"http": 0})
    try:
        await proxy.start(listen, admin)
    except OSError as e:
        raise LabError(f"{name}: {e.strerror or e}") from None
    state.listening = [("tcp", ip, port) for ip, port in proxy.addresses]
    if proxy.admin_address:
        state.listening.append(("tcp", *proxy.admin_address))

    def do_reload() -> dict[str, Any]:
        if reload is None:
            return control_error(f"{name}: no router file to reload")
        try:
            new_router, new_limits = reload()
        except LabError as e:
            return control_error(f"reload failed, the running router stays: {e}")
        proxy.set_router(new_router, new_limits)
        return {"ok": True, "host": name, "reloads": proxy.reloads}

    def on_hup() -> None:
        reply = do_reload()
        text = f"reloaded {config}" if reply["ok"] else reply["error"]
        sys.stdout.write(f"{name}: {text}\n")
        sys.stdout.flush()

    async def on_control(request: Any) -> dict[str, Any]:
        op = request.get("op") if isinstance(request, dict) else None
        if op == "stats":
            return {"ok": True, "host": name, "stats": proxy.stats()}
        if op == "reload":
            return do_reload()
        if op in ("status", "set-mode") or not isinstance(request, dict):
            state.requests["http"] = proxy.counters.requests
            reply = handle_control(state, request)
            return {**reply, "config": config} if reply.get("ok") else reply
        return control_error(f"unknown op {op!r} (expected status, stats or reload)")

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        hup = True
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or Windows
        hup = False
    try:
        async with control_server(control, on_control):
            if on_ready is not None:
                on_ready()
            await asyncio.Event().wait()
    finally:
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await proxy.close()
