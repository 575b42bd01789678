"""What an L4 forwarder serves: VIP, services, mode, engine (pure; from flags or a topology).

Two sources, one shape:

* the command line: ``--vip 10.0.1.200:80 --vip 10.0.1.200:7/udp --backend 10.0.1.10
  --backend 10.0.1.11`` (a backend without a port serves every VIP port; with a
  port it is only valid with a single ``--vip``);
* a lab topology, under the L4 host's ``[hosts.NAME.options]``::

      vip = "10.0.1.200"
      mode = "nat"            # nat | dsr | tunnel
      engine = "fast"         # scapy | fast | nftables
      algorithm = "maglev"
      [[hosts.lb.options.services]]
      port = 80
      backends = ["api1", "api2", "api3"]      # host names, or "host:port"
      [[hosts.lb.options.services]]
      port = 7
      proto = "udp"
      backends = ["api1", "api2", "api3"]
      # optional: active health checks from the box (absent: none, operator only)
      health = { type = "http", path = "/healthz", expect = "200-399", body = "ok",
                 interval = 2.0, timeout = 1.0, rise = 2, fall = 3, jitter = 0.1 }  # port: below

  ``health`` (also ``health = "tcp"`` or ``health = "http:/healthz"`` for the
  defaults; flags ``--health tcp|http[:PATH]``, ``--health-interval`` ...) is
  read by :func:`lbkit.health.parse_check`, as an L7 pool's ``health_check``:
  ``type`` tcp (a connect) or http (the default: ``GET path``, status in
  ``expect``, body containing ``body`` if given); ``port`` the port probed on
  every backend, default the backend's own port of each TCP service, and for
  a UDP service the backend's first TCP service port (a TCP or HTTP probe
  cannot reach a UDP port); the rest as :class:`lbkit.health.HealthConfig`
  (HAProxy's ``inter``, ``rise``, ``fall``; defaults 2 s, 2, 3).

Every mistake is a :class:`~lbkit.lab.errors.LabError` naming the flag or key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lbkit.algorithms import ALGORITHMS
from lbkit.health.spec import CheckSpec, CheckSpecError, parse_check
from lbkit.lab.errors import LabError

MODES = ("nat", "dsr", "tunnel")
ENGINES = ("scapy", "fast", "nftables")
ADMIN = ("127.0.0.1", 9100)
#: IP-in-IP adds a 20-byte header (RFC 2003 §3.1): 1500 - 20 - 40 = 1440.
TUNNEL_MSS = 1440


@dataclass(frozen=True)
class BackendSpec:
    name: str
    ip: str
    port: int


@dataclass(frozen=True)
class ServiceSpec:
    port: int
    proto: str
    backends: tuple[BackendSpec, ...]


@dataclass(frozen=True)
class L4Config:
    iface: str
    vip: str
    services: tuple[ServiceSpec, ...]
    mode: str = "nat"
    engine: str = "fast"
    algorithm: str = "maglev"
    admin: tuple[str, int] = ADMIN
    extra: dict = field(default_factory=dict)
    health: CheckSpec | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LabError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.engine not in ENGINES:
            raise LabError(f"engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.engine == "nftables" and self.mode != "nat":
            raise LabError("engine nftables implements nat mode only (nftables DNAT)")
        if self.algorithm not in ALGORITHMS:
            raise LabError(f"algorithm: unknown {self.algorithm!r}; one of {', '.join(ALGORITHMS)}")
        if not self.services:
            raise LabError("no service: give at least one --vip IP:PORT and one --backend")
        if self.health is not None:
            from .health import plan_checks

            try:
                plan_checks(self.services, self.health)
            except ValueError as e:
                raise LabError(f"health.port: {e}") from None

    @property
    def mss_clamp(self) -> int | None:
        return TUNNEL_MSS if self.mode == "tunnel" else None


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise LabError(f"{what}: {text!r} is not an IPv4 address") from None


def _port(text: object, what: str) -> int:
    try:
        port = int(str(text))
    except ValueError:
        raise LabError(f"{what}: {text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise LabError(f"{what}: port {port} is out of range 1-65535")
    return port


def parse_vip(text: str) -> tuple[str, int, str]:
    """``IP:PORT[/udp]`` -> ``(ip, port, proto)``."""
    where, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise LabError(f"--vip {text}: protocol must be tcp or udp")
    ip, sep, port = where.rpartition(":")
    if not sep:
        raise LabError(f"--vip {text}: expected IP:PORT[/udp]")
    return _ip(ip, f"--vip {text}"), _port(port, f"--vip {text}"), proto


def from_cli(
    iface: str,
    vips: list[str],
    backends: list[str],
    *,
    mode: str = "nat",
    engine: str = "fast",
    algorithm: str = "maglev",
    admin: str = "127.0.0.1:9100",
    health: Mapping[str, object] | None = None,
) -> L4Config:
    """Build the config from ``lbkit l4`` flags.

    ``health``: the ``--health*`` flags given, by key (``{"type": "http:/healthz",
    "interval": 0.5}``); None or empty for no checks.
    """
    parsed = [parse_vip(v) for v in vips]
    if not parsed:
        raise LabError("--vip is required (IP:PORT[/udp], repeatable)")
    if len({ip for ip, _, _ in parsed}) != 1:
        raise LabError("--vip: every VIP:PORT must share one VIP address")
    if not backends:
        raise LabError("--backend is required (IP[:PORT], repeatable)")
    services = []
    for _vip, vport, proto in parsed:
        pool = []
        for text in backends:
            ip, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
            if sep and len(parsed) > 1:
                raise LabError(
                    f"--backend {text}: with several --vip, give backends without a port"
                )
            pool.append(
                BackendSpec(
                    _ip(ip, f"--backend {text}"),
                    _ip(ip, f"--backend {text}"),
                    _port(port, f"--backend {text}") if sep else vport,
                )
            )
        services.append(ServiceSpec(vport, proto, tuple(pool)))
    host, _, port = admin.rpartition(":")
    spec = _health_from_flags(dict(health)) if health else None
    try:
        return L4Config(
            iface,
            parsed[0][0],
            tuple(services),
            mode,
            engine,
            algorithm,
            (_ip(host, "--admin"), _port(port, "--admin")),
            health=spec,
        )
    except LabError as e:
        if str(e).startswith("health.port:"):
            raise LabError(f"--health-port: {str(e).removeprefix('health.port: ')}") from None
        raise


def _health_from_flags(flags: dict[str, object]) -> CheckSpec:
    """``--health SPEC`` plus ``--health-KEY VALUE`` flags -> :class:`~lbkit.health.CheckSpec`."""

    def flag(key: str) -> str:
        return "--health" if key in ("type", "path", "") else f"--health-{key}"

    spec = flags.pop("type", None)
    if spec is None:
        given = sorted(flags)
        raise LabError(f"{flag(given[0])}: needs --health tcp|http[:PATH] to turn checks on")
    base = _parse_health(str(spec), flag)
    shorthand = {"type": base.type, **({"path": base.path} if base.type == "http" else {})}
    return _parse_health({**shorthand, **flags}, flag)


def _parse_health(value: object, name: Callable[[str], str]) -> CheckSpec:
    """:func:`lbkit.health.parse_check`, its error one line starting with ``name(key)``."""
    try:
        return parse_check(value)
    except CheckSpecError as e:
        raise LabError(f"{name(e.key)}: {e.message}") from None


def from_topology(topology, host) -> L4Config:
    """Build the config from an ``l4`` host's options in a lab topology."""
    opts = host.options
    key = f"{topology.source}: hosts.{host.name}.options"
    if "vip" not in opts:
        raise LabError(f"{key}.vip: required for a forwarding l4 host")
    services = []
    for i, svc in enumerate(opts.get("services", [])):
        where = f"{key}.services[{i}]"
        if not isinstance(svc, dict) or "port" not in svc or "backends" not in svc:
            raise LabError(f"{where}: expected a table with port and backends")
        proto = svc.get("proto", "tcp")
        if proto not in ("tcp", "udp"):
            raise LabError(f"{where}.proto: must be tcp or udp")
        port = _port(svc["port"], f"{where}.port")
        pool = []
        for name in svc["backends"]:
            bname, _, bport = str(name).partition(":")
            if bname not in topology.hosts:
                raise LabError(f"{where}.backends: no host named {bname!r}")
            pool.append(
                BackendSpec(
                    bname,
                    topology.hosts[bname].ip,
                    _port(bport, f"{where}.backends") if bport else port,
                )
            )
        services.append(ServiceSpec(port, proto, tuple(pool)))
    try:
        return L4Config(
            iface=str(opts.get("iface", host.interfaces[0].name)),
            vip=_ip(str(opts["vip"]), f"{key}.vip"),
            services=tuple(services),
            mode=str(opts.get("mode", "nat")),
            engine=str(opts.get("engine", "fast")),
            algorithm=str(opts.get("algorithm", "maglev")),
            health=_health_option(opts),
        )
    except LabError as e:
        raise LabError(f"{key}.{e}") from None


def _health_option(opts: Mapping[str, object]) -> CheckSpec | None:
    """The ``health`` option; errors name ``health.KEY`` (from_topology adds the rest)."""
    if "health" not in opts:
        return None
    return _parse_health(opts["health"], lambda k: f"health.{k}" if k else "health")
