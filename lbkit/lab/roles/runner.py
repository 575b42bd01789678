"""``lbkit lab host``: run one host's role until SIGTERM, whichever provider hosts it.

Picks the server by role (``backend``; an ``l4`` forwarder with a VIP; an
``l7`` router with a router file, :mod:`lbkit.lab.roles.l7`; else ``l4``/``l7``
placeholders; ``client`` and ``tools`` idle with only the control channel),
binds each service where :func:`lbkit.lab.services.bind_address` says, prints
``ready NAME`` once every listener is up, and on SIGTERM or SIGINT closes
everything and returns (exit code 0). Runs on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ..errors import LabError
from ..hostcmd import control_socket, tls_dir
from ..hostsetup import prepare
from ..services import bind_address, service_named
from ..topology import Host, Topology, l7_router_option
from .backend_core import DEFAULT_SLOW_DELAY, RoleState, check_mode, check_slow_delay


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when importable, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve_idle(
    name: str, role: str, control_path: str, on_ready: Callable[[], None] | None = None
) -> None:
    """Roles with no services (client, tools): only the control channel, mode ``idle``."""
    from ..control import control_server
    from .backend_core import handle_control

    state = RoleState(name, role=role, mode="idle", modes=(), requests={})

    async def on_control(request: Any) -> dict[str, Any]:
        return handle_control(state, request)

    async with control_server(control_path, on_control):
        if on_ready is not None:
            on_ready()
        await asyncio.Event().wait()


def role_main(
    topology: Topology, host: Host, state_dir: str, addressing: str, on_ready: Callable[[], None]
) -> Coroutine[Any, Any, None]:
    """The coroutine serving ``host``'s role; LabError for bad host options."""
    control = control_socket(state_dir, host.name)

    def addr(service: str) -> tuple[str, int]:
        return bind_address(addressing, topology, host, service_named(host, service))

    if host.role == "backend":
        key = f"{topology.source}: hosts.{host.name}.options"
        try:
            mode = check_mode(host.options.get("mode", "healthy"))
        except ValueError as e:
            raise LabError(f"{key}.mode: {e}") from None
        try:
            delay = check_slow_delay(host.options.get("slow_delay", DEFAULT_SLOW_DELAY))
        except ValueError as e:
            raise LabError(f"{key}.slow_delay: {e}") from None
        from .backend import serve_backend

        def udp_addresses() -> list[tuple[str, int]]:
            """UDP echo per address when the host holds loopback VIPs (replies from the VIP)."""
            ip, port = addr("echo")
            if addressing != "native" or not host.loopback:
                return [(ip, port)]
            own = [itf.ip for itf in host.interfaces]
            return [(a, port) for a in [*own, *host.loopback, "127.0.0.1"]]

        def backend(ready: Callable[[], None]) -> Coroutine[Any, Any, None]:
            return serve_backend(
                host.name,
                [addr("http"), addr("http-alt")],
                addr("line"),
                udp_addresses(),
                control,
                mode=mode,
                slow_delay=delay,
                on_ready=ready,
            )

        if host.options.get("decap") and addressing == "native":
            return _with_decap(host, backend, on_ready)
        return backend(on_ready)
    if host.role == "l4" and "vip" in host.options:
        from lbkit.l4.config import from_topology

        cfg = from_topology(topology, host)
        if addressing == "native":
            from lbkit.l4.forwarder import Forwarder

            return Forwarder(cfg).serve(on_ready, control)
        return _serve_l4_proxy(topology, host, cfg, addressing, control, on_ready)
    if host.role == "l7" and l7_router_option(host) is not None:
        from .l7 import serve_l7

        return serve_l7(topology, host, addressing, control, on_ready, tls_dir=tls_dir(state_dir))
    if host.role in ("l4", "l7"):
        from .placeholder import serve_placeholder

        return serve_placeholder(host.name, host.role, [addr("http")], control, on_ready)
    return serve_idle(host.name, host.role, control, on_ready)


async def _serve_l4_proxy(topology, host, cfg, addressing, control, on_ready) -> None:
    """No raw packets here (local provider): the L4 tier as a TCP/UDP proxy, said clearly."""
    from lbkit.l4.proxy import NOTICE, L4Proxy, proxy_health, serve_proxies

    from ..control import control_server
    from ..services import endpoint, endpoint_map, services_of

    sys.stdout.write(f"notice: {NOTICE}\n")
    sys.stdout.flush()

    def target(name: str, port: int, proto: str) -> tuple[str, str, int]:
        backend = topology.host(name)
        for svc in services_of(backend):
            if svc.port == port and svc.proto == proto:
                return (name, *endpoint(topology, backend, svc, addressing))
        raise LabError(f"{name} has no {proto} service on port {port} to relay to")

    proxies = []
    for spec, svc in zip(cfg.services, services_of(host), strict=True):
        pool = [target(b.name, b.port, spec.proto) for b in spec.backends]
        proxy = L4Proxy(cfg.vip, spec.port, spec.proto, pool, cfg.algorithm)
        proxies.append((proxy, bind_address(addressing, topology, host, svc)))
    try:
        where = endpoint_map(topology, addressing)
        health = proxy_health(cfg, [p for p, _ in proxies], where)
    except LabError as e:
        raise LabError(f"{topology.source}: hosts.{host.name}.options.{e}") from None

    async def on_control(request: Any) -> dict[str, Any]:
        if isinstance(request, dict) and request.get("op") == "health":
            return {"ok": True, **health.report()}
        counters: dict[str, int] = {}
        for proxy, _ in proxies:
            for key, value in proxy.counters.items():
                counters[key] = counters.get(key, 0) + value
        return {
            "ok": True,
            "host": host.name,
            "role": "l4",
            "mode": "proxy",
            "notice": NOTICE,
            "counters": counters,
            "no_backend_drops": counters.get("drop:no-backend", 0),
            "health": health.report(),
        }

    async with control_server(control, on_control), health.running():
        await serve_proxies(proxies, on_ready)


async def _with_decap(
    host: Host,
    backend: Callable[[Callable[[], None]], Coroutine[Any, Any, None]],
    on_ready: Callable[[], None],
) -> None:
    """A tunnel backend: the backend and the IP-in-IP decapsulator, ready when both are."""
    from lbkit.l4.decap import serve_decap

    pending = {"backend", "decap"}

    def one_ready(which: str) -> Callable[[], None]:
        def done() -> None:
            pending.discard(which)
            if not pending:
                on_ready()

        return done

    iface = host.interfaces[0].name
    await asyncio.gather(
        backend(one_ready("backend")),
        serve_decap(iface, host.ip, on_ready=one_ready("decap")),
    )


async def until_signal(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main``; SIGTERM or SIGINT cancels it and this returns normally."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        task.cancel()

    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    try:
        await task
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run_role(topology: Topology, host: Host | str, state_dir: str, addressing: str) -> None:
    """Serve ``host``'s role until SIGTERM/SIGINT; print ``ready NAME`` once listening.

    Blocking; call it from the main thread (it installs signal handlers).
    LabError (one line) for bad options, a port that cannot be bound, or a
    control socket another server owns.
    """
    h = host if isinstance(host, Host) else topology.host(host)
    if addressing == "native":
        prepare(h)  # gateway, routes, loopback VIPs, offloads: the same in netns and docker

    def ready() -> None:
        sys.stdout.write(f"ready {h.name}\n")
        sys.stdout.flush()

    main = role_main(topology, h, state_dir, addressing, ready)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(until_signal(main))
