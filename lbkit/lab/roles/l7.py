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

TLS: when the router file has a ``listen ... ssl``, the host also serves
``https`` on port 443 (8443 locally) with the certificates of the file's TLS
address on port 443 (else of its first TLS address), SNI included
(:mod:`lbkit.l7.tls`). Certificates the file asks of the lab CA
(``ssl_certificate = "lab"``) come from the lab's one CA in ``STATE/tls``
(:attr:`lbkit.lab.Lab.ca_path`), as ``lbkit l7 --tls-dir STATE/tls`` would
have them: ``lab up`` makes the CA and issues them before any host starts
(:func:`issue_l7_certificates`), each host loads them (and, under docker,
where the containers share the state volume, the first one makes them; the
CA's lock file keeps that safe). A reload reads the certificates again.

Addresses: the router file names backends by their lab addresses
(``10.0.1.10:80``). Under netns and docker those exist. Under the local
provider they do not, so every upstream server (and literal ``proxy_pass``
address) that is a lab host's address and one of its TCP service ports is
rewritten to where that service listens on loopback (``127.0.1.6:8080``),
keeping its name, so sticky cookies, stats and logs still say ``api1``.

Control channel: ``status`` (mode ``proxy``, requests, listening, config),
``stats`` (:meth:`Proxy.stats`), ``reload`` (read the file again; on an
error the running router stays), ``health`` (the pools' backends and their
latest transitions, :meth:`lbkit.l7.healthrun.HealthRunner.report`: the format of
the L4 tier's ``health`` op, read by ``lbkit lab health``). SIGHUP reloads too,
as with ``lbkit l7``. Health checks of the router file's pools probe each
backend's address (mapped to loopback under the local provider, like the
traffic); each transition is a ``health: ...`` line in the host's log.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ..errors import LabError
from ..services import bind_address, endpoint_map, router_terminates_tls, service_named
from ..topology import L7_KINDS, Host, Topology, l7_router_option

#: Option key -> the loader's kind (lbkit.l7.cli.load_config).
KINDS = L7_KINDS
#: The port of the router file's TLS address whose certificates the ``https`` service uses.
HTTPS_PORT = 443
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


def load_l7(
    topology: Topology,
    host: Host,
    addressing: str = "native",
    tls_dir: str | Path | None = None,
) -> tuple[Any, Any, dict[tuple[str, int], Any]]:
    """``(router, limits, tls)`` for ``host``'s router file, its addresses mapped for
    ``addressing``; ``tls`` (with ``tls_dir``, the lab CA's folder; else empty) holds the
    server contexts of the file's TLS addresses, lab certificates issued into ``tls_dir``.
    LabError, one line, naming the topology, the key and the file's mistake."""
    found = router_file(topology, host)
    if found is None:
        raise LabError(f"{topology.source}: hosts.{host.name}.options: no config or nginx_conf")
    key, path, kind = found
    from lbkit.l7.cli import ConfigError, build_router, load_config, tls_contexts

    try:
        config = load_config(path, kind)
        if addressing != "native":
            config = map_upstreams(config, endpoint_map(topology, addressing))
        router = build_router(config)
        tls = tls_contexts(config, str(tls_dir)) if tls_dir is not None else {}
    except ConfigError as e:
        more = f" (and {len(e.errors) - 1} more)" if len(e.errors) > 1 else ""
        raise LabError(
            f"{topology.source}: hosts.{host.name}.options.{key}: {e.errors[0]}{more}"
        ) from None
    return router, config.limits, tls


def load_router(topology: Topology, host: Host, addressing: str = "native") -> tuple[Any, Any]:
    """``(router, limits)`` for ``host``'s router file, its addresses mapped for
    ``addressing``; LabError naming the topology, the key and the file's mistake."""
    router, limits, _ = load_l7(topology, host, addressing)
    return router, limits


def check_l7_hosts(topology: Topology) -> None:
    """Read and check every l7 host's router file (``lab up`` calls this first)."""
    for host in topology.by_role("l7"):
        if router_file(topology, host) is not None:
            load_router(topology, host)


def issue_l7_certificates(topology: Topology, tls_dir: str | Path) -> bool:
    """Make the lab CA in ``tls_dir`` and issue every TLS router file's lab certificates
    there, loading each as its host will (``lab up``, before the hosts start); True if
    any l7 host terminates TLS (else nothing is made). LabError as :func:`load_l7`."""
    hosts = [h for h in topology.by_role("l7") if router_terminates_tls(h)]
    if hosts:
        from ..ca import LabCA

        LabCA.load_or_create(tls_dir)
    done: set[str] = set()
    for host in hosts:
        if host.router_path not in done:  # alb1 and alb2 share one file: once is enough
            load_l7(topology, host, tls_dir=tls_dir)
            done.add(str(host.router_path))
    return bool(hosts)


def https_context(tls: dict[tuple[str, int], Any]) -> Any:
    """The context the ``https`` service terminates with: the TLS address on port 443's,
    else the first TLS address's (None without any)."""
    for (_, port), context in tls.items():
        if port == HTTPS_PORT:
            return context
    return next(iter(tls.values()), None)


def https_name(topology: Topology, host: Host) -> str | None:
    """A host name ``host``'s router serves over TLS, for examples (``curl --resolve``):
    the first exact ``server_name`` of a TLS server block other than the default
    (``app.example.com``), else of the default; None without TLS."""
    found = router_file(topology, host)
    if found is None or not router_terminates_tls(host):
        return None
    from lbkit.l7.cli import ConfigError, load_config
    from lbkit.l7.tls import tls_addresses

    try:
        pairs = next(iter(tls_addresses(load_config(found[1], found[2])).values()))
    except (ConfigError, StopIteration):
        return None
    blocks = list({id(b): b for b, _ in pairs}.values())
    default = next((b for b, ln in pairs if ln.default_server), blocks[0])
    for block in [*(b for b in blocks if b is not default), default]:
        for name in block.server_names:
            if _DNS_NAME.fullmatch(name) and not _is_ip(name):
                return name
    return None


_DNS_NAME = re.compile(r"(?:[A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def serve_l7(
    topology: Topology,
    host: Host,
    addressing: str,
    control: str,
    on_ready: Callable[[], None],
    *,
    tls_dir: str | Path | None = None,
) -> Coroutine[Any, Any, None]:
    """The coroutine serving ``host``'s router; the file is read now (LabError if bad).

    ``tls_dir``: the lab CA's folder (``STATE/tls``), where lab certificates are issued;
    needed when the file terminates TLS with them.
    """
    https = router_terminates_tls(host)
    router, limits, tls = load_l7(topology, host, addressing, tls_dir if https else None)
    path = router_file(topology, host)[1]  # type: ignore[index]  # load_l7 found it
    if addressing != "native":
        sys.stdout.write(f"notice: {NOTICE}\n")
        sys.stdout.flush()

    def addr(service: str) -> tuple[str, int]:
        return bind_address(addressing, topology, host, service_named(host, service))

    listen = [addr("http")]
    secure: dict[tuple[str, int], Any] = {}
    if https:
        listen.append(addr("https"))
        secure[addr("https")] = https_context(tls)

    def reload() -> tuple[Any, Any, dict[tuple[str, int], Any]]:
        new_router, new_limits, new_tls = load_l7(
            topology, host, addressing, tls_dir if https else None
        )
        context = https_context(new_tls)
        return new_router, new_limits, {addr("https"): context} if context is not None else {}

    return serve_router(
        host.name,
        router,
        limits,
        listen,
        addr("admin"),
        control,
        on_ready,
        reload=reload,
        config=path,
        tls=secure,
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
    reload: Callable[[], tuple[Any, ...]] | None = None,
    config: str = "",
    tls: dict[tuple[str, int], Any] | None = None,
) -> None:
    """Proxy through ``router`` on ``listen`` and answer the control channel until cancelled.

    ``tls``: the addresses of ``listen`` that terminate TLS, with their server contexts.
    ``reload()`` returns ``(router, limits)`` or ``(router, limits, tls)``.
    """
    from lbkit.l7.healthrun import print_event
    from lbkit.l7.proxy import Proxy

    from ..control import control_server
    from .backend_core import RoleState, control_error, handle_control

    proxy = Proxy(router, limits, health_events=print_event())
    state = RoleState(name, role="l7", mode="proxy", modes=(), requests={"http": 0})
    try:
        await proxy.start(listen, admin, tls=tls or None)
    except OSError as e:
        raise LabError(f"{name}: {e.strerror or e}") from None
    state.listening = [("tcp", ip, port) for ip, port in proxy.addresses]
    if proxy.admin_address:
        state.listening.append(("tcp", *proxy.admin_address))

    def do_reload() -> dict[str, Any]:
        if reload is None:
            return control_error(f"{name}: no router file to reload")
        try:
            new_router, new_limits, *new_tls = reload()
        except LabError as e:
            return control_error(f"reload failed, the running router stays: {e}")
        proxy.set_router(new_router, new_limits)
        if new_tls and new_tls[0]:
            proxy.set_tls(new_tls[0])
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
        if op == "health":
            return {"ok": True, "host": name, **proxy.health_report()}
        if op in ("status", "set-mode") or not isinstance(request, dict):
            state.requests["http"] = proxy.counters.requests
            reply = handle_control(state, request)
            return {**reply, "config": config} if reply.get("ok") else reply
        return control_error(f"unknown op {op!r} (expected status, stats, health or reload)")

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
