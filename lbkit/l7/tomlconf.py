"""lbkit's own router config, in TOML, read into :class:`~lbkit.l7.model.RouterConfig`.

The shape (``labs/l7/router.toml`` is a full example)::

    trusted_proxies = ["10.0.1.2/32"]      # peers whose X-Forwarded-For is kept
    sticky_secret = "change-me"            # shared by every router of a lab
    tls_ca_dir = "tls"                     # the lab CA's folder (lbkit.lab.ca), made if missing

    [limits]                               # any field of lbkit.l7.model.Limits
    proxy_connect_timeout = 2.0

    [[server]]
    listen = [80]                          # ports, "addr:port", or {port=, ssl=, default_server=}
    server_name = ["app.example.com"]
    ssl_certificate = "certs/app.pem"      # with ssl_certificate_key = "certs/app-key.pem"; or
    # ssl_certificate = "lab"              # a certificate from the lab CA for server_name

    [[server.route]]
    path = "/api/"
    match = "prefix"                       # prefix | exact | regex | iregex
    headers = { user-agent = "(?i)mobile", "cookie:beta" = "^1$" }   # all must hold
    pool = "api"                           # or proxy_pass = "http://10.0.1.9:8080/v2/", or
    # return = { status = 301, body = "https://$host$request_uri" }
    split = { pool = "canary", percent = 1, force_header = "x-canary", sticky = "request" }
    sticky_cookie = "lbkit_sticky"
    set_headers = { X-Route = "api" }      # nginx proxy_set_header, variables allowed
    next_upstream = ["error", "timeout", "http_502"]
    next_upstream_tries = 0

    [pool.api]
    algorithm = "least_connections"        # any lbkit.algorithms name
    hash_key = "$remote_addr"              # ring_hash / maglev key (nginx variables)
    servers = [{ address = "10.0.1.10:80", name = "api1", weight = 2 }]   # also backup,
                                           # down, max_fails, fail_timeout, max_conns
    # active checks from the router to each server's own address (absent: none)
    health_check = { type = "http", path = "/healthz", expect = "200-399", body = "ok",
                     interval = 2.0, timeout = 1.0, rise = 2, fall = 3, jitter = 0.1 }
    # or health_check = "tcp" / "http" / "http:/ready" with the defaults above
    outlier = { consecutive_5xx = 5, base_ejection_time = 30.0 }   # Envoy; any OutlierConfig
                                           # field; failure_percentage_threshold = false: off
    slow_start = 10.0                      # seconds; weight-based algorithms only

Routes of one server behave as nginx locations (exact, then longest prefix,
then regexes in order); routes sharing a path are tried in file order and
the first whose ``headers`` all hold wins. Every mistake is a
:class:`~lbkit.lab.errors.LabError` naming the file and the key.

TLS (served by :mod:`lbkit.l7.tls`): a server with a listen ``{ssl = true}``
needs a certificate, in one of three ways:

* ``ssl_certificate`` and ``ssl_certificate_key`` name PEM files. Relative
  paths resolve against the folder of this TOML file (nginx resolves them
  against its prefix; the file's folder is what a lab directory needs) and
  are stored absolute. The files are read when the proxy starts (and by
  ``lbkit l7 --check``), as nginx reads them, not here.
* ``ssl_certificate = "lab"`` (no key): the lab CA in ``tls_ca_dir`` (or
  ``lbkit l7 --tls-dir``) issues one for the server's names (exact and
  wildcard ``server_name``; not ``""``, ``_``, ``mail.*`` or regexes). A
  certificate file named ``lab`` is written ``"./lab"``.
* neither: the same as ``"lab"`` when a lab CA folder is given; otherwise the
  server uses its address's default certificate (nginx's behaviour), and a
  default server without one is an error.

``tls_ca_dir`` is relative to this file's folder, like the certificates.

Health (run by :mod:`lbkit.l7.healthrun`, combined by :class:`lbkit.l7.pools.Pool`):

* ``health_check``: every server of the pool is probed at its own address
  (never through the router). ``type`` defaults to ``http``; ``body`` only
  with ``http``. Timing fields are :class:`lbkit.health.HealthConfig`'s.
* ``outlier``: :class:`lbkit.health.OutlierConfig`'s fields, fed by the
  pool's real requests (a 5xx or a connection error is a failure).
* ``slow_start``: a backend that a check brings back ``UP`` regains its
  weight over this many seconds (Envoy's ramp). Refused, as an error naming
  the key, for ``ip_hash``, ``ring_hash`` and ``maglev``: a weight there
  decides which keys a backend owns, so a ramp would move sticky flows on
  every step (:data:`lbkit.health.NO_SLOW_START` gives the reason in the
  message). nginx Plus refuses ``slow_start`` with ``hash`` and ``ip_hash``
  too; a setting that would silently do nothing is a mistake worth stopping at.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from lbkit.algorithms import ALGORITHMS
from lbkit.health import CheckSpec, CheckSpecError, OutlierConfig, parse_check, why_no_slow_start
from lbkit.health.spec import ALL_FIELDS as ALL_CHECK_FIELDS
from lbkit.lab.errors import LabError

from .model import (
    HeaderMatch,
    Limits,
    Listen,
    Location,
    RouterConfig,
    ServerBlock,
    Split,
    Upstream,
    UpstreamServer,
)
from .pools import split_address
from .retry import OUTCOMES

MATCH = {"prefix": "", "exact": "=", "regex": "~", "iregex": "~*"}
NEXT_UPSTREAM = (*OUTCOMES, "non_idempotent", "off")
TOP = {"trusted_proxies", "sticky_secret", "tls_ca_dir", "limits", "server", "pool"}
LAB_CERT = "lab"  # ssl_certificate = "lab": issue one from the lab CA
SERVER = {"listen", "server_name", "route", "ssl_certificate", "ssl_certificate_key"}
ROUTE = {
    "path", "match", "headers", "pool", "proxy_pass", "return", "split", "sticky_cookie",
    "set_headers", "next_upstream", "next_upstream_tries",
}  # fmt: skip
POOL = {"algorithm", "hash_key", "servers", "health_check", "outlier", "slow_start"}
#: A pool's health_check takes every check field but port (each server's address has it).
HEALTH_CHECK = tuple(f for f in ALL_CHECK_FIELDS if f != "port")
OUTLIER = {f.name for f in fields(OutlierConfig)}
BACKEND = {"address", "name", "weight", "backup", "down", "max_fails", "fail_timeout", "max_conns"}
SPLIT = {"pool", "percent", "force_header", "sticky"}


class _Reader:
    """Typed access to TOML values, every error prefixed with ``file: key``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def path(self, value: Any, key: str, what: str = "a file name") -> str:
        """A file or folder name, made absolute against the folder of the TOML file."""
        text = self.typed(value, key, str, what)
        if not text:
            raise self.fail(key, f"expected {what}, got an empty string")
        return os.path.abspath(Path(self.source).parent / text)

    def fail(self, key: str, message: str) -> LabError:
        return LabError(f"{self.source}: {key}: {message}")

    def table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "expected a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(
                f"{key}.{unknown[0]}", f"unknown key; known: {', '.join(sorted(allowed))}"
            )
        return value

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        """A table with any keys."""
        if not isinstance(value, dict):
            raise self.fail(key, "expected a table")
        return value

    def typed(self, value: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"expected {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {what}, got {value!r}")
        return value

    def strings(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "expected a list of strings")
        return value

    def regex(self, value: Any, key: str) -> str:
        self.typed(value, key, str, "a regular expression")
        try:
            re.compile(value)
        except re.error as e:
            raise self.fail(key, f"bad regular expression {value!r}: {e}") from None
        return value


def _listen(r: _Reader, value: Any, key: str) -> Listen:
    if isinstance(value, dict):
        r.table(value, key, {"port", "address", "ssl", "default_server"})
        if "port" not in value:
            raise r.fail(key, "a listen table needs port")
        ln = _listen(r, value["port"], f"{key}.port")
        ln.address = r.typed(value.get("address", ln.address), f"{key}.address", str, "an address")
        ln.ssl = r.typed(value.get("ssl", False), f"{key}.ssl", bool, "true or false")
        ln.default_server = r.typed(
            value.get("default_server", False), f"{key}.default_server", bool, "true or false"
        )
        return ln
    if isinstance(value, str) and ":" in value:
        try:
            address, port = split_address(value)
        except ValueError as e:
            raise r.fail(key, str(e)) from None
        return Listen(port=port, address=address, origin=f"{r.source}: {key}")
    port = r.typed(value, key, int, "a port number") if not isinstance(value, str) else value
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise r.fail(key, f"port {value!r} is out of range 1-65535")
    return Listen(port=int(port), origin=f"{r.source}: {key}")


def _split(r: _Reader, value: Any, key: str, pools: dict[str, Any]) -> Split:
    r.table(value, key, SPLIT)
    if value.get("pool") not in pools:
        raise r.fail(f"{key}.pool", f"no pool named {value.get('pool')!r}")
    percent = r.typed(value.get("percent"), f"{key}.percent", (int, float), "a number 0-100")
    if not 0 <= percent <= 100:
        raise r.fail(f"{key}.percent", f"{percent} is not within 0-100")
    sticky = value.get("sticky", "request")
    if sticky not in ("request", "client"):
        raise r.fail(f"{key}.sticky", f"{sticky!r} is not one of request, client")
    force = value.get("force_header")
    if force is not None:
        force = r.typed(force, f"{key}.force_header", str, "a header name").lower()
    return Split(value["pool"], float(percent), force, sticky)


def _route(r: _Reader, value: Any, key: str, pools: dict[str, Any]) -> Location:
    r.table(value, key, ROUTE)
    path = r.typed(value.get("path"), f"{key}.path", str, "a path")
    match = value.get("match", "prefix")
    if match not in MATCH:
        raise r.fail(f"{key}.match", f"{match!r} is not one of {', '.join(MATCH)}")
    if MATCH[match] in ("~", "~*"):
        r.regex(path, f"{key}.path")
    elif not path.startswith("/"):
        raise r.fail(f"{key}.path", f"{path!r} must start with '/'")
    loc = Location(pattern=path, modifier=MATCH[match], origin=f"{r.source}: {key}")
    targets = [k for k in ("pool", "proxy_pass", "return") if k in value]
    if len(targets) != 1:
        raise r.fail(key, "give exactly one of pool, proxy_pass, return")
    if "pool" in value:
        if value["pool"] not in pools:
            raise r.fail(f"{key}.pool", f"no pool named {value['pool']!r}")
        loc.proxy_pass = f"http://{value['pool']}"
    elif "proxy_pass" in value:
        loc.proxy_pass = r.typed(value["proxy_pass"], f"{key}.proxy_pass", str, "a URL")
        if not re.fullmatch(r"https?://[^/?#]+.*", loc.proxy_pass):
            raise r.fail(f"{key}.proxy_pass", "expected http[s]://host[:port][/uri]")
    else:
        ret = r.table(value["return"], f"{key}.return", {"status", "body"})
        loc.return_status = r.typed(ret.get("status"), f"{key}.return.status", int, "a status")
        if not 100 <= loc.return_status <= 599:
            raise r.fail(f"{key}.return.status", f"{loc.return_status} is not an HTTP status")
        loc.return_body = r.typed(ret.get("body", ""), f"{key}.return.body", str, "text")
    for name, regex in r.mapping(value.get("headers", {}), f"{key}.headers").items():
        loc.matches.append(HeaderMatch(name.lower(), r.regex(regex, f"{key}.headers.{name}")))
    if "split" in value:
        loc.split = _split(r, value["split"], f"{key}.split", pools)
    if "sticky_cookie" in value:
        cookie = r.typed(value["sticky_cookie"], f"{key}.sticky_cookie", str, "a cookie name")
        if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", cookie):
            raise r.fail(f"{key}.sticky_cookie", f"{cookie!r} is not a valid cookie name")
        loc.sticky_cookie = cookie
    for name, text in r.mapping(value.get("set_headers", {}), f"{key}.set_headers").items():
        loc.set_headers.append((name, r.typed(text, f"{key}.set_headers.{name}", str, "text")))
    if "next_upstream" in value:
        nu = r.strings(value["next_upstream"], f"{key}.next_upstream")
        bad = [v for v in nu if v not in NEXT_UPSTREAM]
        if bad:
            raise r.fail(
                f"{key}.next_upstream", f"{bad[0]!r} is not one of {', '.join(NEXT_UPSTREAM)}"
            )
        loc.next_upstream = nu
    tries = r.typed(
        value.get("next_upstream_tries", 0), f"{key}.next_upstream_tries", int, "a count"
    )
    if tries < 0:
        raise r.fail(f"{key}.next_upstream_tries", "must be >= 0")
    loc.next_upstream_tries = tries
    return loc


def _server(r: _Reader, value: Any, key: str, pools: dict[str, Any]) -> ServerBlock:
    r.table(value, key, SERVER)
    listens = value.get("listen", [80])
    if not isinstance(listens, list) or not listens:
        raise r.fail(f"{key}.listen", "expected a non-empty list")
    block = ServerBlock(
        listens=[_listen(r, v, f"{key}.listen[{i}]") for i, v in enumerate(listens)],
        server_names=[
            n.lower() for n in r.strings(value.get("server_name", []), f"{key}.server_name")
        ],
        origin=f"{r.source}: {key}",
    )
    _certificate(r, value, key, block)
    routes = value.get("route", [])
    if not isinstance(routes, list) or not routes:
        raise r.fail(f"{key}.route", "a server needs at least one [[server.route]]")
    block.locations = [_route(r, v, f"{key}.route[{i}]", pools) for i, v in enumerate(routes)]
    return block


def _certificate(r: _Reader, value: dict[str, Any], key: str, block: ServerBlock) -> None:
    """ssl_certificate and ssl_certificate_key: two files, or "lab" alone (see the docstring)."""
    cert, cert_key = value.get("ssl_certificate"), value.get("ssl_certificate_key")
    if cert is None and cert_key is None:
        return
    block.ssl_origin = f"{r.source}: {key}.ssl_certificate"
    if cert == LAB_CERT:
        if cert_key is not None:
            raise r.fail(
                f"{key}.ssl_certificate_key",
                'not used with ssl_certificate = "lab" (the CA makes it)',
            )
        block.ssl_lab_ca = True
    elif cert is None:
        raise r.fail(f"{key}.ssl_certificate", "needed with ssl_certificate_key")
    elif cert_key is None:
        raise r.fail(f"{key}.ssl_certificate_key", f"needed with ssl_certificate {cert!r}")
    else:
        block.ssl_certificate = r.path(cert, f"{key}.ssl_certificate")
        block.ssl_certificate_key = r.path(cert_key, f"{key}.ssl_certificate_key")
    if not any(ln.ssl for ln in block.listens):
        r.warnings.append(f"{block.ssl_origin}: no listen of this server has ssl = true; unused")


def _backend(r: _Reader, value: Any, key: str) -> UpstreamServer:
    r.table(value, key, BACKEND)
    address = r.typed(value.get("address"), f"{key}.address", str, "host:port")
    try:
        split_address(address)
    except ValueError as e:
        raise r.fail(f"{key}.address", str(e)) from None
    s = UpstreamServer(address=address, origin=f"{r.source}: {key}")
    for name, kind, what in (
        ("name", str, "a name"),
        ("weight", int, "an integer >= 1"),
        ("backup", bool, "true or false"),
        ("down", bool, "true or false"),
        ("max_fails", int, "an integer >= 0"),
        ("fail_timeout", (int, float), "seconds"),
        ("max_conns", int, "an integer >= 0"),
    ):
        if name in value:
            setattr(s, name, r.typed(value[name], f"{key}.{name}", kind, what))
    if s.weight < 1 or s.max_fails < 0 or s.max_conns < 0 or s.fail_timeout < 0:
        raise r.fail(key, "weight must be >= 1; max_fails, max_conns, fail_timeout >= 0")
    s.fail_timeout = float(s.fail_timeout)
    return s


def _pool(r: _Reader, name: str, value: Any) -> Upstream:
    key = f"pool.{name}"
    r.table(value, key, POOL)
    algorithm = value.get("algorithm", "weighted_round_robin")
    if algorithm not in ALGORITHMS:
        raise r.fail(f"{key}.algorithm", f"unknown {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    servers = value.get("servers")
    if not isinstance(servers, list) or not servers:
        raise r.fail(f"{key}.servers", "expected a non-empty list of {address=...} tables")
    backends = [_backend(r, v, f"{key}.servers[{i}]") for i, v in enumerate(servers)]
    names = [b.name or b.address for b in backends]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise r.fail(f"{key}.servers", f"two servers named {dup!r}")
    hash_key = value.get("hash_key")
    if hash_key is not None:
        r.typed(hash_key, f"{key}.hash_key", str, "an nginx variable expression")
    up = Upstream(name, backends, algorithm, hash_key, origin=f"{r.source}: {key}")
    if "health_check" in value:
        up.health_check = _health_check(r, value["health_check"], f"{key}.health_check")
    if "outlier" in value:
        up.outlier = _outlier(r, value["outlier"], f"{key}.outlier")
    if "slow_start" in value:
        window = r.typed(value["slow_start"], f"{key}.slow_start", (int, float), "seconds")
        if not window >= 0:
            raise r.fail(f"{key}.slow_start", f"expected seconds >= 0, got {window!r}")
        why = why_no_slow_start(algorithm)
        if window and why is not None:
            raise r.fail(f"{key}.slow_start", f"not with algorithm {algorithm!r}: {why}")
        up.slow_start = float(window)
    return up


def _health_check(r: _Reader, value: Any, key: str) -> CheckSpec:
    """``health_check``: a table of :class:`~lbkit.health.CheckSpec` fields (no ``port``),
    or ``"tcp"``, ``"http"``, ``"http:/path"`` for the defaults."""
    try:
        return parse_check(value, allowed=HEALTH_CHECK, origin=f"{r.source}: {key}")
    except CheckSpecError as e:
        raise r.fail(f"{key}.{e.key}" if e.key else key, e.message) from None


def _outlier(r: _Reader, value: Any, key: str) -> OutlierConfig:
    """``outlier``: any :class:`lbkit.health.OutlierConfig` field; the percentage detector's
    ``failure_percentage_threshold = false`` turns it off (TOML has no null)."""
    r.table(value, key, OUTLIER)
    options: dict[str, Any] = {}
    for f in fields(OutlierConfig):
        if f.name not in value:
            continue
        v, k = value[f.name], f"{key}.{f.name}"
        if f.name == "always_eject_one":
            options[f.name] = r.typed(v, k, bool, "true or false")
        elif f.name == "failure_percentage_threshold" and v is False:
            options[f.name] = None
        elif f.name in ("consecutive_5xx", "failure_percentage_request_volume",
                        "failure_percentage_minimum_hosts"):  # fmt: skip
            options[f.name] = r.typed(v, k, int, "a count")
        else:
            options[f.name] = float(r.typed(v, k, (int, float), "a number"))
    try:
        return OutlierConfig(**options)
    except ValueError as e:
        message = str(e)
        found = sorted((message.index(n), -len(n), n) for n in OUTLIER if n in message)
        field_name = found[0][2] if found else None
        raise r.fail(f"{key}.{field_name}" if field_name else key, message) from None


def parse_router_toml(data: dict[str, Any], source: str = "<memory>.toml") -> RouterConfig:
    """Build a RouterConfig from parsed TOML ``data``; ``source`` names it in errors."""
    r = _Reader(source)
    r.table(data, "(top level)", TOP)
    pools_data = r.mapping(data.get("pool", {}), "pool")
    upstreams = {name: _pool(r, name, v) for name, v in pools_data.items()}
    servers = data.get("server")
    if not isinstance(servers, list) or not servers:
        raise r.fail("server", "at least one [[server]] is needed")
    blocks = [_server(r, v, f"server[{i}]", upstreams) for i, v in enumerate(servers)]
    limits = Limits()
    known = {f.name: f for f in fields(Limits)}
    for name, val in r.table(data.get("limits", {}), "limits", set(known)).items():
        kind = (int, float) if known[name].type in ("float", float) else int
        setattr(limits, name, r.typed(val, f"limits.{name}", kind, "a number"))
    trusted = r.strings(data.get("trusted_proxies", []), "trusted_proxies")
    for i, cidr in enumerate(trusted):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise r.fail(f"trusted_proxies[{i}]", f"{cidr!r} is not an address or CIDR") from None
    config = RouterConfig(blocks, upstreams, limits, trusted, source=source)
    if "sticky_secret" in data:
        config.sticky_secret = r.typed(data["sticky_secret"], "sticky_secret", str, "text")
    if "tls_ca_dir" in data:
        config.tls_ca_dir = r.path(data["tls_ca_dir"], "tls_ca_dir", "a folder name")
    config.warnings.extend(r.warnings)
    return config


def load_router_toml(path: str | Path) -> RouterConfig:
    """Read a router TOML file; a LabError names the file and the key of any mistake."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LabError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise LabError(f"{path}: not valid TOML: {e}") from None
    return parse_router_toml(data, str(path))
