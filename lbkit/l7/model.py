"""The L7 router's configuration, as plain data (the contract between its parts).

Two loaders fill it: lbkit's own TOML (``lbkit l7 --config router.toml``) and
nginx's syntax (``lbkit l7 --nginx-conf nginx.conf``, via crossplane). The
router core reads only this model, so both configs behave the same way, and
a differential test can run one nginx file on lbkit and on nginx.

Every object remembers where it came from (``origin``: ``file:line``) so a
run-time message can point at the line that caused it, as nginx does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lbkit.health import CheckSpec, OutlierConfig

#: nginx ``location`` modifiers: "" prefix, "=" exact, "^~" prefix that stops the
#: regex search, "~" regex, "~*" case-insensitive regex (ngx_http_core_find_location).
LOCATION_MODIFIERS = ("", "=", "^~", "~", "~*")


@dataclass
class UpstreamServer:
    """One ``server`` line of an ``upstream`` block (or a backend of a TOML pool)."""

    address: str  # "10.0.1.10:3000" (nginx: a port defaults to 80)
    weight: int = 1
    backup: bool = False
    down: bool = False
    max_fails: int = 1  # nginx defaults: max_fails=1 fail_timeout=10s
    fail_timeout: float = 10.0
    max_conns: int = 0
    name: str | None = None  # a label (TOML: the lab host name); defaults to the address
    origin: str = ""


@dataclass
class Upstream:
    """A pool: nginx ``upstream NAME { ... }``."""

    name: str
    servers: list[UpstreamServer]
    #: An lbkit.algorithms name: weighted_round_robin (nginx's default), least_connections,
    #: ip_hash, ring_hash (``hash $key consistent``), power_of_two (``random two``), random.
    algorithm: str = "weighted_round_robin"
    hash_key: str | None = None  # the nginx variable expression of ``hash KEY``
    origin: str = ""
    #: Active checks of every server (lbkit's TOML only: nginx OSS has none); no ``port``:
    #: each server is probed at its own address.
    health_check: CheckSpec | None = None
    #: Envoy's outlier detection on the pool's live traffic (lbkit's TOML only).
    outlier: OutlierConfig | None = None
    #: Seconds over which a backend back from a failed check regains its weight (0: off;
    #: weight-based algorithms only, see lbkit.health.slowstart).
    slow_start: float = 0.0


@dataclass
class HeaderMatch:
    """A routing condition on a request header or cookie (lbkit's TOML; nginx: ``map``)."""

    header: str  # lower-case name; "cookie:NAME" matches a cookie
    regex: str  # Python regex, searched case-insensitively


@dataclass
class Split:
    """A weighted share of a route's traffic sent to another pool (canary)."""

    upstream: str
    percent: float  # 0..100
    force_header: str | None = None  # a request header that forces the split pool, e.g. "x-canary"
    sticky: str = (
        "request"  # "request" (a random choice each time) or "client" (hash of the client)
    )


@dataclass
class Location:
    """nginx ``location [modifier] pattern { ... }``, or a TOML route."""

    pattern: str
    modifier: str = ""  # one of LOCATION_MODIFIERS
    proxy_pass: str | None = None  # "http://UPSTREAM" or "http://host:port[/uri]"
    #: proxy_set_header NAME VALUE, in order; VALUE may hold nginx variables ($host, ...).
    #: nginx's defaults apply when absent: Host $proxy_host, Connection close.
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    #: proxy_next_upstream conditions: error timeout invalid_header http_500 http_502
    #: http_503 http_504 http_403 http_404 http_429 non_idempotent off.
    next_upstream: list[str] = field(default_factory=lambda: ["error", "timeout"])
    next_upstream_tries: int = 0  # 0: no limit but the number of servers (nginx)
    #: proxy_http_version: the upstream request's version; None: nginx's "1.0" under nginx
    #: semantics, "1.1" for lbkit's TOML (keep-alive to the backends, as an ALB).
    http_version: str | None = None
    matches: list[HeaderMatch] = field(default_factory=list)  # TOML: all must hold
    split: Split | None = None
    sticky_cookie: str | None = None  # name of the cookie pinning a client to a backend
    return_status: int | None = None  # nginx ``return CODE [text]`` (no proxying)
    return_body: str = ""
    origin: str = ""


@dataclass
class Listen:
    """nginx ``listen``: address, port, and whether it speaks TLS."""

    port: int
    address: str = "0.0.0.0"
    ssl: bool = False
    default_server: bool = False
    origin: str = ""


@dataclass
class ServerBlock:
    """nginx ``server { ... }``: a virtual host."""

    listens: list[Listen]
    server_names: list[str] = field(default_factory=list)  # "" matches a missing Host
    locations: list[Location] = field(default_factory=list)
    ssl_certificate: str | None = None  # a file, stored absolute by the loaders
    ssl_certificate_key: str | None = None
    #: TOML ``ssl_certificate = "lab"``: a certificate from the lab CA (lbkit.lab.ca) for
    #: this block's server_names, made when the proxy starts (lbkit.l7.tls).
    ssl_lab_ca: bool = False
    ssl_origin: str = ""  # where ssl_certificate was given ("file:line" or "file: key")
    origin: str = ""


@dataclass
class Limits:
    """Time-outs (seconds) and sizes (bytes), named after nginx's directives."""

    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    client_max_body_size: int = 1024 * 1024  # nginx: 1m; 0 means unlimited
    large_client_header_buffers: int = 8 * 1024  # a request line or header longer -> 414/431
    max_headers_bytes: int = 32 * 1024
    proxy_connect_timeout: float = 60.0
    proxy_read_timeout: float = 60.0
    keepalive_timeout: float = 75.0


@dataclass
class RouterConfig:
    """Everything the router needs; ``warnings`` carries what a loader skipped."""

    servers: list[ServerBlock]
    upstreams: dict[str, Upstream]
    limits: Limits = field(default_factory=Limits)
    trusted_proxies: list[str] = field(default_factory=list)  # CIDRs whose X-Forwarded-For is kept
    sticky_secret: str = "lbkit-lab-sticky-key"  # shared by every router of a lab
    source: str = "<memory>"
    tls_ca_dir: str | None = None  # the lab CA's folder (TOML tls_ca_dir), stored absolute
    warnings: list[str] = field(default_factory=list)
