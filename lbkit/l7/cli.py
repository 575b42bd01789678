"""``lbkit l7``: run the L7 reverse proxy from a router TOML or an nginx config.

Signals, as nginx's master process reads them: SIGHUP reloads the
configuration (a new router; requests in flight finish on the old one),
SIGTERM and SIGINT drain (stop accepting, finish what is in flight for up to
``--grace`` seconds, exit 0). ``--workers N`` forks N processes that share
the listening ports with SO_REUSEPORT (the kernel spreads connections);
worker ``i`` serves the admin API on the admin port plus ``i``.

A ``listen ... ssl`` address terminates TLS (:mod:`lbkit.l7.tls`): its
certificates are loaded at start, by ``--check`` (as ``nginx -t`` does) and
again on SIGHUP; certificates from the lab CA are issued into ``--tls-dir``
(or the TOML's ``tls_ca_dir``) before the workers start.

Pools with a ``health_check`` are probed from each worker
(:mod:`lbkit.l7.healthrun`); each transition is a line on stderr
(``lbkit l7: health: api2 DOWN after 3 failures: HTTP 500 on /healthz (pool
api)``), and ``/stats`` shows every backend's state under ``health``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_ADMIN = "127.0.0.1:9200"
DEFAULT_GRACE = 10.0


def add_l7_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "l7",
        help="run the L7 reverse proxy (HTTP router)",
        description=(
            "An HTTP/1.1 reverse proxy: requests routed by host, path and headers (lbkit's "
            "router), bodies streamed, keep-alive on both sides, retries on another backend. "
            "The configuration is lbkit's TOML or an nginx config file."
        ),
        epilog=(
            "examples:\n"
            "  lbkit l7 --nginx-conf seed.conf --check        # like nginx -t\n"
            "  lbkit l7 --config router.toml --listen 127.0.0.1:8080 --workers 2\n"
            "  lbkit l7 --config router.toml --tls-dir .lab/tls   # https with lab certificates\n"
            "  curl --cacert .lab/tls/ca.pem https://app.example.com/\n"
            "signals: HUP reloads the configuration, TERM drains and exits.\n"
            'admin API: curl 127.0.0.1:9200/stats, /metrics (health: under "health")\n'
            "health checks: health_check = {...} in a TOML pool; transitions go to stderr"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="ROUTER.TOML", help="lbkit's router configuration")
    src.add_argument("--nginx-conf", metavar="NGINX.CONF", help="an nginx configuration file")
    p.add_argument(
        "--check", action="store_true", help="test the configuration and exit (like nginx -t)"
    )
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes (default: 1)")
    p.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="IP:PORT",
        help="listen here (plain HTTP) instead of the configuration's listen lines (repeatable)",
    )
    p.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="the lab CA's folder: server blocks with an ssl listen and no ssl_certificate get "
        "a certificate from it (made if missing; default: the TOML's tls_ca_dir, else none)",
    )
    p.add_argument(
        "--admin",
        default=DEFAULT_ADMIN,
        metavar="IP:PORT",
        help="admin API address, or 'off' (default: %(default)s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may take (default: %(default)s)",
    )
    p.add_argument(
        "--access-log", metavar="FILE", help="JSON access lines to FILE ('-': stdout); default off"
    )
    p.set_defaults(func=_run)


# ------------------------------------------------------------------ configuration


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _messages(exc: BaseException) -> list[str]:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list | tuple) and errors:
        return [str(e) for e in errors]
    return [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]


def load_config(path: str, kind: str) -> Any:
    """The RouterConfig from lbkit's TOML (``kind`` "toml") or nginx's syntax ("nginx")."""
    try:
        if kind == "toml":
            from .tomlconf import load_router_toml

            return load_router_toml(path)
        from .nginxconf import load_nginx

        return load_nginx(path)
    except (ImportError, OSError) as e:
        raise ConfigError([f"{path}: {e}"]) from None
    except ConfigError:
        raise
    except Exception as e:  # the loaders' own error types, whatever they are
        raise ConfigError(_messages(e)) from None


def build_router(config: Any) -> Any:
    """A router for ``config`` (lbkit.l7.router's ``build_router``, else ``Router(config)``)."""
    from . import router as router_module  # type: ignore[attr-defined]

    factory = getattr(router_module, "build_router", None) or router_module.Router
    try:
        return factory(config)
    except Exception as e:
        raise ConfigError(_messages(e)) from None


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"IP:PORT"`` or ``"PORT"`` -> (ip, port); ValueError with the text otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"not an address: {text!r} (expected IP:PORT)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


def listen_addresses(config: Any) -> list[tuple[str, int]]:
    """The plain-HTTP ``listen`` addresses of every server block, in order, no duplicates
    (an address any block marks ``ssl`` is a TLS one, for every block on it)."""
    from .tls import tls_addresses

    secure = tls_addresses(config)
    out: list[tuple[str, int]] = []
    for server in getattr(config, "servers", []):
        for ln in server.listens:
            addr = (ln.address, ln.port)
            if addr not in secure and addr not in out:
                out.append(addr)
    return out


def tls_contexts(config: Any, tls_dir: str | None = None) -> dict[tuple[str, int], Any]:
    """The TLS addresses' server contexts (lbkit.l7.tls.server_contexts); ConfigError, one
    line per problem (a certificate file missing, ...), when they cannot be built."""
    from .tls import server_contexts

    try:
        return server_contexts(config, cert_dir=tls_dir)
    except Exception as e:
        raise ConfigError(_messages(e)) from None


def check(path: str, kind: str, tls_dir: str | None = None) -> int:
    """``--check``: nginx -t's two lines and exit 0, or one error per line and exit 1.

    The certificates are loaded too (and lab ones issued), as nginx -t loads them.
    """
    try:
        config = load_config(path, kind)
        build_router(config)
        tls_contexts(config, tls_dir)
    except ConfigError as e:
        for message in e.errors:
            print(f"lbkit l7: [emerg] {message}", file=sys.stderr)
        print(f"lbkit l7: configuration file {path} test failed", file=sys.stderr)
        return 1
    for warning in getattr(config, "warnings", []):
        print(f"lbkit l7: [warn] {warning}", file=sys.stderr)
    print(f"lbkit l7: the configuration file {path} syntax is ok", file=sys.stderr)
    print(f"lbkit l7: configuration file {path} test is successful", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ running


async def run_proxy(
    make: Callable[[], tuple[Any, Any]],
    listen: list[tuple[str, int]],
    *,
    admin: tuple[str, int] | None,
    grace: float = DEFAULT_GRACE,
    reuse_port: bool = False,
    worker: int | None = None,
    on_ready: Callable[[Any], None] | None = None,
    tls: Callable[[], Mapping[tuple[str, int], Any]] | None = None,
) -> bool:
    """Serve until SIGTERM/SIGINT, reloading on SIGHUP; True when the drain was clean.

    ``make()`` returns ``(router, limits)``; ``tls()``, when given, the server
    contexts of the addresses of ``listen`` that terminate TLS. Both are called
    again on each SIGHUP (an exception keeps the running configuration and is
    reported on stderr).
    """
    from .healthrun import print_event
    from .proxy import Proxy

    router, limits = make()
    events = print_event(sys.stderr, "lbkit l7: health: ")
    proxy = Proxy(router, limits, worker=worker, health_events=events)
    await proxy.start(listen, admin, reuse_port=reuse_port, tls=tls() if tls else None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new_router, new_limits = make()
            new_tls = tls() if tls else None
        except Exception as e:
            for message in _messages(e):
                print(
                    f"lbkit l7: reload failed, keeping the running configuration: {message}",
                    file=sys.stderr,
                    flush=True,
                )
            return
        proxy.set_router(new_router, new_limits)
        if new_tls is not None:
            proxy.set_tls(new_tls)
        print(f"lbkit l7: configuration reloaded (pid {os.getpid()})", file=sys.stderr, flush=True)

    loop.add_signal_handler(signal.SIGHUP, reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if on_ready is not None:
            on_ready(proxy)
        await stop.wait()
        return await proxy.drain(grace)
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await proxy.close()


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when its parent dies (no orphaned workers), via prctl."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl: go now
            os.kill(os.getpid(), signal.SIGTERM)


def run_workers(
    workers: int, serve: Callable[[int], int], *, announce: Callable[[str], None] | None = None
) -> int:
    """Run ``serve(i)`` in ``workers`` forked processes; forward HUP/TERM/INT; 0 if all did.

    With one worker, ``serve(0)`` runs in this process.
    """
    if workers <= 1:
        return serve(0)
    pids: list[int] = []
    master = os.getpid()
    for i in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _die_with_parent(master)
                code = serve(i)
            finally:
                os._exit(code)
        pids.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    if announce is not None:
        announce(f"workers: {', '.join(map(str, pids))}")
    worst = 0
    for pid in pids:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        worst = max(worst, os.waitstatus_to_exitcode(status) & 0xFF)
    return worst


def _run(args: argparse.Namespace) -> int:
    from lbkit.lab.roles.runner import loop_factory

    from . import accesslog

    path, kind = (args.config, "toml") if args.config else (args.nginx_conf, "nginx")
    if args.check:
        return check(path, kind, args.tls_dir)
    try:
        listen = [parse_address(a) for a in args.listen]
        admin = None if args.admin in ("off", "") else parse_address(args.admin)
        config = load_config(path, kind)
        build_router(config)  # fail now, with the errors, rather than in each worker
        secure = list(tls_contexts(config, args.tls_dir))  # and lab certificates issued once
    except ValueError as e:
        print(f"lbkit l7: error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        for message in e.errors:
            print(f"lbkit l7: [emerg] {message}", file=sys.stderr)
        return 1
    if listen:
        secure = []  # --listen replaces every listen line, TLS ones too
    else:
        listen = listen_addresses(config) + secure
    if not listen:
        print(
            "lbkit l7: error: nothing to listen on (no listen line; use --listen)", file=sys.stderr
        )
        return 2
    if args.workers < 1:
        print("lbkit l7: error: --workers must be at least 1", file=sys.stderr)
        return 2

    loaded: list[Any] = []  # the configuration make() read last: make_tls() runs after it

    def make() -> tuple[Any, Any]:
        cfg = load_config(path, kind)
        router = build_router(cfg)
        loaded[:] = [cfg]
        return router, cfg.limits

    def make_tls() -> dict[tuple[str, int], Any]:
        return tls_contexts(loaded[0] if loaded else load_config(path, kind), args.tls_dir)

    def serve(i: int) -> int:
        accesslog.configure(args.access_log)
        worker_admin = None if admin is None else (admin[0], admin[1] + i if admin[1] else 0)

        def ready(proxy: Any) -> None:
            where = ", ".join(f"{h}:{p}" for h, p in proxy.addresses)
            extra = (
                f"; admin http://{proxy.admin_address[0]}:{proxy.admin_address[1]}/stats"
                if proxy.admin_address
                else ""
            )
            line = f"ready: worker {i} (pid {os.getpid()}) on {where}{extra}\n"
            sys.stdout.flush()
            os.write(sys.stdout.fileno(), line.encode())  # one write: workers share the pipe

        main = run_proxy(
            make,
            listen,
            admin=worker_admin,
            grace=args.grace,
            reuse_port=args.workers > 1,
            worker=i,
            on_ready=ready,
            tls=make_tls if secure else None,
        )
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                clean = runner.run(main)
        except OSError as e:
            print(f"lbkit l7: error: {e.strerror or e}", file=sys.stderr)
            return 1
        if not clean:
            print(
                f"lbkit l7: worker {i}: grace period over, open connections dropped",
                file=sys.stderr,
            )
        return 0

    return run_workers(args.workers, serve, announce=lambda m: print(m, flush=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m lbkit.l7.cli ...`` (the same as ``lbkit l7 ...``)."""
    parser = argparse.ArgumentParser(prog="lbkit")
    add_l7_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["l7", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
