"""The L7 router's sans-I/O core: a request head goes in, a decision comes out.

No socket, no clock (``now`` is passed in), randomness from a seeded RNG,
in the manner of h11's ``Connection``. The asyncio proxy (``proxy.py``)
feeds it parsed heads and acts on the answers::

    router = Router(config, seed=0)
    d = router.route(RequestHead("GET", "/api/x", "1.1", headers, client, server), now)
    if isinstance(d, Reject): answer d.status
    elif d.return_answer: answer it (nginx ``return``)
    else:
        tried = set()
        while (backend := d.pick(now, frozenset(tried))) is not None:
            tried.add(backend.name); d.on_start(backend, now)
            send d.request_line(backend) + d.upstream_headers(backend) + body ...
            d.on_finish(backend, now, ok, status)
            if success or not d.should_retry(len(tried), outcome, now): break

The order of checks follows nginx's ``ngx_http_process_request_line`` /
``ngx_http_process_request_header``, then ``ngx_http_find_virtual_server``
and ``ngx_http_core_find_location`` (:mod:`lbkit.l7.matching`).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, NamedTuple

from lbkit.algorithms import Backend, Flow

from .canary import to_canary
from .headerplan import HeaderPlan
from .headers import (
    BadFraming,
    Headers,
    RequestVars,
    field_lines,
    framing_of,
    in_networks,
    joined,
    lbkit_forwarding,
    parse_cookies,
)
from .hostname import BadHost, HostPort, parse_host
from .matching import match_location, select_server
from .model import Location, RouterConfig, ServerBlock, Upstream, UpstreamServer
from .pools import Pool, split_address
from .retry import counts_as_failure, retryable, tries_limit
from .sticky import resolve_token, set_cookie, sticky_token
from .uri import BadTarget, Target, escape_uri, parse_target

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PROXY_PASS = re.compile(r"(?i)(https?)://([^/?#]+)(.*)")
ALLOW = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
HASHED = ("ring_hash", "maglev")
_NO_BODY: Final[tuple[str, int | None]] = ("none", 0)
#: Methods known to be tokens and allowed: no regex for them.
_COMMON_METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
#: Header names already checked to be tokens (RFC 9110 §5.1); bounded, since clients choose them.
_TOKEN_NAMES: set[str] = set()
_TOKEN_NAMES_MAX = 4096
#: The names the router looks at, by length (a cheap first test before lower()).
_SPECIAL_LENGTHS: Final = frozenset((4, 6, 10, 14, 17))


@dataclass(slots=True)
class RequestHead:
    """A parsed request head, as the adapter received it."""

    method: str  # "GET"
    target: str  # "/api/v1?x=1"
    version: str  # "1.1"
    headers: list[tuple[str, str]]  # order and case as received
    client: tuple[str, int]  # the peer's address and port
    server: tuple[str, int]  # the local address and port it reached
    scheme: str = "http"
    sni: str | None = None  # TLS server name indication (https)
    #: The fields' scan if the adapter's parser made it (:class:`HeadScan`); None: the router
    #: scans and validates ``headers`` itself.
    scan: HeadScan | None = None


@dataclass
class Reject:
    """Answer the client at once: ``status`` with a one-line ``reason``."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)


class _Refuse(Exception):
    def __init__(self, status: int, reason: str, headers: Headers | None = None) -> None:
        super().__init__(reason)
        self.reject = Reject(status, reason, headers or [])


def _bad(reason: str) -> _Refuse:
    """400, and close: after a malformed head the connection cannot be trusted (nginx)."""
    return _Refuse(400, reason, [("Connection", "close")])


#: Distinct (Host, port) pairs remembered by Router._server before the cache starts over.
SERVER_CACHE_SIZE: Final = 1024


@dataclass(frozen=True)
class ProxyPass:
    """``proxy_pass scheme://authority[uri]``: ``uri`` is None when there is no URI part."""

    scheme: str
    authority: str
    uri: str | None


@lru_cache(maxsize=4096)
def parse_proxy_pass(text: str) -> ProxyPass:
    """``proxy_pass``'s URL, parsed once per distinct text (a pure function, so cached)."""
    m = _PROXY_PASS.fullmatch(text.strip())
    if not m:
        raise ValueError(f"proxy_pass {text!r}: expected http[s]://host[:port][/uri]")
    return ProxyPass(m.group(1).lower(), m.group(2), m.group(3) or None)


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@lru_cache(maxsize=4096)
def _target(target: str, method: str, scheme: str) -> Target:
    """:func:`parse_target`, remembered: a pure function of client text (errors are not kept)."""
    return parse_target(target, method, scheme)


@lru_cache(maxsize=1024)
def _host_value(value: str, scheme: str) -> HostPort:
    """:func:`parse_host`, remembered (errors are not kept)."""
    return parse_host(value, scheme)


class HeadScan:
    """What the router reads of a request's fields, found in one pass.

    ``hosts``, ``content_length`` and ``transfer_encoding`` are the values of
    those fields in order; ``cookie`` and ``connection`` say whether the
    field was sent. :meth:`of` makes one from a field list and checks the
    fields' validity on the way; an adapter whose parser already enforced
    that (llhttp refuses a name that is not a token and a value with CR, LF,
    NUL or another control byte) may build one as it parses and hand it over
    in :attr:`RequestHead.scan`, so the fields are not walked twice.
    """

    __slots__ = ("connection", "content_length", "cookie", "hosts", "transfer_encoding")

    def __init__(
        self,
        hosts: Sequence[str] = (),
        cookie: bool = False,
        connection: bool = False,
        content_length: Sequence[str] = (),
        transfer_encoding: Sequence[str] = (),
    ) -> None:
        self.hosts = hosts
        self.cookie = cookie
        self.connection = connection
        self.content_length = content_length
        self.transfer_encoding = transfer_encoding

    @classmethod
    def of(cls, headers: Headers) -> HeadScan:
        """Scan ``headers``; :class:`_Refuse` 400 for a field name that is not a token or a
        value holding CR, LF or NUL (RFC 9110 §5.1, §5.5)."""
        hosts: list[str] = []
        te: list[str] = []
        cl: list[str] = []
        cookie = connection = False
        names = _TOKEN_NAMES
        for name, value in headers:
            if name not in names:
                if not _TOKEN.fullmatch(name):
                    raise _bad(f"invalid header field {name!r}")
                if len(names) < _TOKEN_NAMES_MAX:
                    names.add(name)
            if "\r" in value or "\n" in value or "\x00" in value:
                raise _bad(f"invalid header field {name!r}")
            if len(name) in _SPECIAL_LENGTHS:
                lower = name.lower()
                if lower == "host":
                    hosts.append(value)
                elif lower == "cookie":
                    cookie = True
                elif lower == "connection":
                    connection = True
                elif lower == "content-length":
                    cl.append(value)
                elif lower == "transfer-encoding":
                    te.append(value)
        return cls(hosts, cookie, connection, cl, te)


def conditions_hold(loc: Location, headers: Headers, cookies: dict[str, str]) -> bool:
    """Whether every ``Location.matches`` condition holds (lbkit's extension).

    A header condition searches the field's joined value (missing: ``""``);
    ``cookie:NAME`` searches that cookie's value. The router drops the
    locations whose conditions fail *before* nginx's matching runs, so among
    locations sharing a pattern the first whose conditions all hold wins
    (first match, in file order), and a request that no conditional location
    accepts falls back to the next best one. nginx has no conditions on
    ``location``; it would use ``map $http_user_agent $pool`` or ``if``.
    """
    for m in loc.matches:
        if m.header.startswith("cookie:"):
            value = cookies.get(m.header[7:], "")
        else:
            value = joined(headers, m.header) or ""
        if not _regex(m.regex).search(value):
            return False
    return True


class _Route(NamedTuple):
    """What routing found for a plain proxied location, remembered by ``Router._routes``."""

    target: Target
    host: HostPort | None
    server: ServerBlock
    location: Location
    proxy: ProxyPass
    pool: Pool


class Decision:
    """Where one request goes, and the bookkeeping of its attempts.

    Attributes: ``server`` and ``location`` (model objects), ``upstream``
    (the pool's name, after the canary split; None for a ``return``),
    ``return_answer`` (``(status, text)`` of a ``return``), ``request_framing``
    (``("length", n)``, ``("chunked", None)`` or ``("none", 0)``), ``canary``,
    ``host`` (the normalised Host), ``target`` (the parsed request target),
    ``upstream_tls``, ``route_name``; ``vars`` (the nginx variables, made
    when first asked for).
    """

    __slots__ = (
        "_headers",
        "_pool",
        "_retrying",
        "_router",
        "_scan",
        "_started",
        "_sticky",
        "_tried",
        "_vars",
        "canary",
        "cookies",
        "head",
        "host",
        "location",
        "proxy",
        "request_framing",
        "return_answer",
        "server",
        "target",
        "upstream",
        "version",
    )

    def __init__(
        self,
        router: Router,
        head: RequestHead,
        target: Target,
        host: HostPort | None,
        server: ServerBlock,
        location: Location,
        version: str,
        cookies: dict[str, str],
        framing: tuple[str, int | None],
        scan: HeadScan,
    ) -> None:
        self._router = router
        self.head = head
        self.target = target
        self.host = host
        self.server = server
        self.location = location
        self.version = version
        self.cookies = cookies
        self.request_framing = framing
        self._scan = scan
        self._vars: RequestVars | None = None
        self.upstream: str | None = None
        self.return_answer: tuple[int, str] | None = None
        self.proxy: ProxyPass | None = None
        self.canary = False
        self._pool: Pool | None = None
        self._sticky: str | None = None  # the backend the client's cookie names
        self._tried: list[str] = []
        self._started: list[str] = []  # backends attempts began on
        self._retrying: list[str] = []
        self._headers: Headers | None = None

    @property
    def vars(self) -> RequestVars:
        """The request's nginx variables ($host, $remote_addr, ...), made on first use."""
        if self._vars is None:
            head, target, host = self.head, self.target, self.host
            names = [n for n in self.server.server_names if n]
            self._vars = RequestVars(
                method=head.method,
                request_uri=target.origin_form if target.authority else head.target,
                uri=target.uri,
                args=target.args,
                host=host.host if host else (names[0] if names else ""),
                headers=head.headers,
                remote_addr=head.client[0],
                remote_port=head.client[1],
                server_addr=head.server[0],
                server_port=head.server[1],
                scheme=head.scheme,
                server_name=names[0] if names else "",
                proxy_host=self.proxy.authority if self.proxy else "",
                version=self.version,
                cookies=self.cookies,
            )
        return self._vars

    # ------------------------------------------------------------ identity
    @property
    def route_name(self) -> str:
        """``"server_name location"`` for the access log, e.g. ``"api.example.com /v1/"``."""
        names = [n for n in self.server.server_names if n]
        loc = self.location
        pattern = f"{loc.modifier} {loc.pattern}" if loc.modifier else loc.pattern
        return f"{names[0] if names else '_'} {pattern}"

    @property
    def no_backend_status(self) -> int:
        """The status when no backend can be picked (see ``Router.no_backend_status``)."""
        return self._router.no_backend_status

    @property
    def upstream_tls(self) -> bool:
        """Whether the upstream connection speaks TLS (``proxy_pass https://``)."""
        return self.proxy is not None and self.proxy.scheme == "https"

    # ---------------------------------------------------------- the request
    def request_line(self, backend: Backend | None = None) -> bytes:
        """The request line for the backend, by nginx's proxy_pass URI rule.

        With a URI part (``proxy_pass http://api/v2/``), the part of the
        normalised URI that the location's prefix matched is replaced by it,
        and the rest is escaped again (ngx_http_proxy_create_request); the
        query follows. Without one, the client's target goes unchanged (in
        origin-form). nginx forbids a URI part in a regex location; lbkit
        then passes the original target.

        The version is the location's ``proxy_http_version``: by default 1.0
        for nginx configs (as nginx) and 1.1 for lbkit's TOML. A chunked
        request body goes as HTTP/1.1 even then: nginx would read the whole
        body first and send its length (``proxy_request_buffering on``), lbkit
        streams it, and HTTP/1.0 has no chunked coding (RFC 9112 §6.1).
        """
        t = self.target
        loc = self.location
        if t.asterisk:
            target = "*"
        elif (
            self.proxy is not None
            and self.proxy.uri is not None
            and loc.modifier in ("", "^~", "=")
            and t.uri.startswith(loc.pattern)
        ):
            target = self.proxy.uri + escape_uri(t.uri[len(loc.pattern) :])
            if t.args is not None:
                target += "?" + t.args
        else:
            target = t.origin_form
        version = loc.http_version or self._router.default_http_version
        if version == "1.0" and self.request_framing[0] == "chunked":
            version = "1.1"
        line = f"{self.head.method} {target} HTTP/{version}\r\n"
        return line.encode("utf-8", "surrogateescape")

    def upstream_headers(self, backend: Backend | None = None) -> list[tuple[str, str]]:
        """The full header list for the backend (never Transfer-Encoding: see ``request_framing``).

        nginx configs: the client's fields minus hop-by-hop ones, with
        ``Host: $proxy_host`` and ``Connection: close`` unless the location
        sets them, then ``proxy_set_header`` in order (an empty value removes
        the field). lbkit TOML configs: ``Host`` is kept as the client sent it
        (normalised) and no ``Connection: close`` is added, so upstream
        connections may be reused (as an ALB does), plus X-Forwarded-For,
        -Proto, -Host, ``Forwarded`` and ``Via``. The adapter frames the body itself from
        ``request_framing``: ``("length", n)`` keeps Content-Length,
        ``("chunked", None)`` needs its own ``Transfer-Encoding: chunked``.
        """
        headers = self._headers
        if headers is None:
            headers = self._headers = self._router._upstream_headers(self)
        return list(headers)

    def upstream_head(self, backend: Backend | None = None) -> bytes:
        """:meth:`request_line` and :meth:`upstream_headers` as the bytes the adapter sends:
        the request line, then one ``Name: value\\r\\n`` line per field (the blank line that
        ends the head, and a ``Transfer-Encoding`` for a chunked body, are the adapter's)."""
        if self._headers is not None:  # asked for as a list already: the same list
            return self.request_line(backend) + field_lines(self._headers)
        return self.request_line(backend) + self._router._upstream_lines(self)

    # ------------------------------------------------------------ attempts
    def _flow(self) -> Flow | None:
        """The flow the pool's algorithm hashes; None for one that reads none (cheaper)."""
        assert self._pool is not None
        up = self._pool.upstream
        if not up.hash_key and not self._pool.balancer.needs_flow:
            return None
        client_ip, client_port = self.head.client
        key: str | None = None
        if up.hash_key or up.algorithm in HASHED:
            key = self.vars.expand(up.hash_key or "$remote_addr") or None  # nginx: empty -> rr
        vip, vport = self.head.server
        return Flow(client_ip, client_port, vip=vip, vport=vport, key=key)

    def pick(self, now: float, exclude: frozenset[str] = frozenset()) -> Backend | None:
        """A backend not tried yet by this request (nor in ``exclude``), or None.

        The first pick honours a valid sticky cookie while its backend is up,
        healthy and below max_conns; otherwise the pool's algorithm chooses.
        """
        pool = self._pool
        if pool is None:
            return None
        tried = self._tried
        skip = (set(exclude) | set(tried)) if (exclude or tried) else exclude
        backend = None
        sticky = self._sticky
        if sticky and not tried and sticky not in skip and pool.choosable(sticky, now):
            backend = pool.backend(sticky)
            pool.selected(backend, now)
            self._router.counters["sticky_hits"] += 1
        if backend is None:
            backend = pool.pick(self._flow(), now, skip)
        if backend is not None:
            self._tried.append(backend.name)
        return backend

    def on_start(self, backend: Backend, now: float) -> None:
        """An attempt begins on ``backend``; one on a backend not started before is a retry.

        (Starting the same backend again, e.g. a fresh connection after a stale
        pooled one, is not a retry.)
        """
        assert self._pool is not None
        self._pool.on_start(backend, now)
        retry = bool(self._started) and backend.name not in self._started
        self._started.append(backend.name)
        if retry:
            self._pool.budget.started()
            self._pool.retries += 1
            self._retrying.append(backend.name)

    def on_finish(
        self, backend: Backend, now: float, ok: bool = True, status: int | None = None
    ) -> None:
        """An attempt ended: ``ok=False`` for error/timeout/invalid header; ``status`` if any.

        Passive health counts it as failed per :func:`lbkit.l7.retry.counts_as_failure`;
        outlier detection, when the pool has it, sees ``ok`` and ``status`` as they are.
        """
        assert self._pool is not None
        failure = (not ok) or (
            status is not None
            and status >= 400
            and counts_as_failure(ok, status, self.location.next_upstream)
        )
        self._pool.on_finish(backend, now, failure, ok, status)
        if backend.name in self._retrying:
            self._retrying.remove(backend.name)
            self._pool.budget.finished()

    def should_retry(
        self, attempt: int, outcome: str, now: float, *, request_sent: bool = True
    ) -> bool:
        """Whether attempt number ``attempt`` (1 = the first), failed with ``outcome``, is retried.

        All must hold: ``outcome`` listed in ``proxy_next_upstream`` (and
        ``non_idempotent`` for a sent non-idempotent request); fewer than
        ``proxy_next_upstream_tries`` attempts (0: the pool's size); a server
        not yet tried is available; the pool's retry budget has room.
        """
        pool = self._pool
        loc = self.location
        if pool is None:
            return False
        if not retryable(outcome, loc.next_upstream, self.head.method, request_sent=request_sent):
            return False
        if attempt >= tries_limit(loc.next_upstream_tries, pool.size):
            return False
        if not pool.has_candidate(set(self._tried), now):
            return False
        return pool.budget.allows(pool.active_requests())

    # ----------------------------------------------------------- the answer
    def response_headers(self, backend: Backend | None = None) -> list[tuple[str, str]]:
        """Headers to add to the client's response.

        ``Set-Cookie`` pinning the client when the location is sticky and the
        request had no valid cookie for ``backend``; ``Location`` for a
        redirecting ``return``; ``Allow`` for ``OPTIONS *``.
        """
        if self.return_answer is not None:
            status, text = self.return_answer
            if self.target.asterisk:
                return [("Allow", ALLOW)]
            if status in (301, 302, 303, 307, 308) and text:
                return [("Location", self._absolute(text))]
            return []
        name = self.location.sticky_cookie
        if not name or backend is None or self.upstream is None:
            return []
        if backend.name == self._sticky:
            return []
        token = sticky_token(self._router.config.sticky_secret, self.upstream, backend.name)
        return [set_cookie(name, token, secure=self.head.scheme == "https")]

    def _absolute(self, location: str) -> str:
        """nginx makes a redirect to ``/path`` absolute (``absolute_redirect on``,
        ``server_name_in_redirect off``, ``port_in_redirect on``;
        ngx_http_header_filter): the Host without its port, else the local
        address, and the local port unless it is the scheme's default. lbkit's
        TOML keeps it relative, as RFC 9110 §10.2.2 allows."""
        if not self._router.nginx_semantics or not location.startswith("/"):
            return location
        head = self.head
        host = self.host.host if self.host else head.server[0]
        port = head.server[1]
        default = 443 if head.scheme == "https" else 80
        return f"{head.scheme}://{host}{'' if port == default else f':{port}'}{location}"

    def __repr__(self) -> str:
        where = self.upstream or (self.return_answer and f"return {self.return_answer[0]}")
        return f"<Decision {self.route_name!r} -> {where}>"


class Router:
    """Routes request heads by a :class:`~lbkit.l7.model.RouterConfig`.

    ``nginx_semantics`` (default: true unless the config came from a
    ``.toml`` file) chooses the header behaviour: nginx's proxy module, or
    lbkit's forwarding headers (see :meth:`Decision.upstream_headers`).
    """

    def __init__(
        self, config: RouterConfig, *, seed: int = 0, nginx_semantics: bool | None = None
    ) -> None:
        self.config = config
        if nginx_semantics is None:
            nginx_semantics = not config.source.endswith(".toml")
        self.nginx_semantics = nginx_semantics
        self.seed = seed
        self.rng = random.Random(seed)
        #: proxy_http_version when a location sets none (nginx: 1.0).
        self.default_http_version = "1.0" if nginx_semantics else "1.1"
        #: The answer when no backend can be picked: nginx's 502 ("no live upstreams"),
        #: or 503 for lbkit's TOML (the issue's "no healthy backend").
        self.no_backend_status = 502 if nginx_semantics else 503
        self.pools: dict[str, Pool] = {}
        for name, up in config.upstreams.items():
            self.pools[name] = Pool(up, seed=seed, quick_recovery=not nginx_semantics)
        listens = [ln for s in config.servers for ln in s.listens]
        #: The config's ports, TLS ones first for https (a router run on other ports, e.g.
        #: the local provider's 8080/8443, picks its server blocks by these).
        self._ports = {
            "http": list(dict.fromkeys(ln.port for ln in sorted(listens, key=lambda ln: ln.ssl))),
            "https": list(
                dict.fromkeys(ln.port for ln in sorted(listens, key=lambda ln: not ln.ssl))
            ),
        }
        #: (host, port) -> server block: pure for one config (a reload builds a new Router).
        #: Hosts come from clients, so the cache is bounded and simply cleared when full.
        self._servers: dict[tuple[str | None, int, str], ServerBlock | None] = {}
        #: id(server) -> {uri: location}, for servers without conditional locations (pure).
        self._locations: dict[int, dict[str, Location | None]] = {
            id(s): {} for s in config.servers if not any(loc.matches for loc in s.locations)
        }
        self._plans: dict[int, HeaderPlan] = {}  # id(location) -> its header plan
        #: (target, method, scheme, Host, port, SNI) -> what routing found for a plain proxied
        #: location (see _route): pure for one config, bounded like _servers.
        self._routes: dict[tuple[str, str, str, str, int, str | None], _Route] = {}
        #: id(server) -> (URI -> the location whose name is URI + "/"), and the names that stop it
        self._redirects = {
            id(s): _auto_redirects(s.locations) for s in config.servers if nginx_semantics
        }
        self.counters = dict.fromkeys(("requests", "routed", "canary", "sticky_hits"), 0)
        self.rejected: dict[str, int] = {}
        for s in config.servers:
            for loc in s.locations:
                if loc.split and loc.split.upstream not in self.pools:
                    raise ValueError(
                        f"{loc.origin or loc.pattern}: no upstream {loc.split.upstream!r}"
                    )
                if loc.proxy_pass and "$" not in loc.proxy_pass:
                    with contextlib.suppress(ValueError):  # a bad one answers 502 when used
                        self._pool_for(parse_proxy_pass(loc.proxy_pass))

    # ------------------------------------------------------------------ pools
    def _pool_for(self, proxy: ProxyPass) -> Pool:
        """The pool a proxy_pass names: an ``upstream`` by name, else an implicit one."""
        name = proxy.authority
        if name in self.pools:
            return self.pools[name]
        split_address(name)  # validates
        up = Upstream(name, [UpstreamServer(address=name)])
        self.pools[name] = pool = Pool(
            up, seed=self.seed, scheme=proxy.scheme, quick_recovery=not self.nginx_semantics
        )
        return pool

    def set_backend_state(
        self, upstream: str, name: str, state: str, now: float | None = None
    ) -> None:
        """Operator: ``up``, ``down`` or ``drain`` (combined with the pool's checks, see
        :mod:`lbkit.l7.pools`); with ``now`` the change is logged as an event. KeyError if
        unknown."""
        if upstream not in self.pools:
            raise KeyError(f"no upstream {upstream!r}")
        self.pools[upstream].set_admin_state(name, state, now)

    def tick(self, now: float) -> None:
        """Let time pass in every pool that needs it (outlier returns, slow-start ramps)."""
        for pool in self.pools.values():
            if pool.needs_ticks:
                pool.tick(now)

    def stats(self) -> dict[str, object]:
        """Counters and per-upstream backend state, JSON-able."""
        ups = {name: pool.stats() for name, pool in self.pools.items()}
        return {
            **self.counters,
            "rejected": dict(self.rejected),
            "retries": sum(p.retries for p in self.pools.values()),
            "retries_denied_by_budget": sum(p.budget.denied for p in self.pools.values()),
            "upstreams": ups,
        }

    # ---------------------------------------------------------------- routing
    def route(self, head: RequestHead, now: float) -> Decision | Reject:
        """Decide where ``head`` goes, or how to refuse it."""
        self.counters["requests"] += 1
        try:
            decision = self._route(head, now)
        except _Refuse as r:
            key = str(r.reject.status)
            self.rejected[key] = self.rejected.get(key, 0) + 1
            return r.reject
        self.counters["routed"] += 1
        return decision

    def _server(self, host: str | None, port: int, scheme: str = "http") -> ServerBlock | None:
        """select_server on the local port; a router run on another port uses the config's."""
        key = (host, port, scheme)
        try:
            return self._servers[key]
        except KeyError:
            pass
        if len(self._servers) >= SERVER_CACHE_SIZE:
            self._servers.clear()
        found = self._servers[key] = self._select(host, port, scheme)
        return found

    def _select(self, host: str | None, port: int, scheme: str = "http") -> ServerBlock | None:
        found = select_server(self.config.servers, host, port)
        for p in self._ports.get(scheme, self._ports["http"]):
            if found is not None:
                break
            found = select_server(self.config.servers, host, p)
        return found

    def _check_line(self, head: RequestHead) -> str:
        """The request line's version and method; the version as ``"1.0"`` or ``"1.1"``."""
        version = head.version
        if version != "1.1":
            version = version.removeprefix("HTTP/")
            major, _, minor = version.partition(".")
            if major != "1" or not minor.isdigit():
                raise _Refuse(
                    505, f"HTTP version {head.version!r} not supported", [("Connection", "close")]
                )
            version = "1.0" if minor == "0" else "1.1"  # RFC 9110 §2.5: a higher minor is 1.1
        method = head.method
        if method not in _COMMON_METHODS:
            if not _TOKEN.fullmatch(method):
                raise _bad(f"bad method {method!r}")
            if method in ("CONNECT", "TRACE"):  # nginx answers TRACE 405 too
                raise _Refuse(405, f"method {method} not allowed", [("Allow", ALLOW)])
        return version

    def _host(
        self, hosts: Sequence[str], scheme: str, target: Target, version: str
    ) -> HostPort | None:
        if len(hosts) > 1:
            raise _bad("more than one Host header (RFC 9112 §3.2)")
        if not hosts and version == "1.1":
            raise _bad("HTTP/1.1 request without Host (RFC 9112 §3.2)")
        try:
            parsed = _host_value(hosts[0], scheme) if hosts else None
        except BadHost as e:
            raise _bad(f"invalid Host: {e}") from None
        return target.authority or parsed  # RFC 9112 §3.2.2: absolute-form wins

    def _location(
        self, server: ServerBlock, uri: str, headers: Headers, cookies: dict[str, str]
    ) -> Location | None:
        """match_location over the locations whose conditions hold; remembered per
        (server, uri) when the server has no conditional location (then it is pure)."""
        cache = self._locations.get(id(server))
        if cache is None:
            found = match_location(
                [loc for loc in server.locations if conditions_hold(loc, headers, cookies)], uri
            )
            return found
        try:
            return cache[uri]
        except KeyError:
            pass
        if len(cache) >= SERVER_CACHE_SIZE:
            cache.clear()
        found = cache[uri] = match_location(server.locations, uri)
        return found

    def _route(self, head: RequestHead, now: float) -> Decision:
        version = self._check_line(head)
        scan = head.scan or HeadScan.of(head.headers)
        framing = _NO_BODY
        if scan.transfer_encoding or scan.content_length:
            try:
                framing = framing_of(scan.transfer_encoding, scan.content_length, version)
            except BadFraming as framing_error:
                raise _Refuse(
                    framing_error.status, str(framing_error), [("Connection", "close")]
                ) from None
        key = None
        if len(scan.hosts) == 1:
            # Seen before? Target, Host, server, location, proxy_pass and pool are a pure
            # function of these for a location whose choice reads nothing else (below).
            key = (head.target, head.method, head.scheme, scan.hosts[0], head.server[1], head.sni)
            hit = self._routes.get(key)
            if hit is not None:
                return self._remembered(hit, head, version, framing, scan)
        try:
            target = _target(head.target, head.method, head.scheme)
        except BadTarget as target_error:
            raise _bad(str(target_error)) from None
        host = self._host(scan.hosts, head.scheme, target, version)
        port = head.server[1]
        sni = head.sni.lower().rstrip(".") if head.scheme == "https" and head.sni else None
        server = self._server(host.host if host else sni, port, head.scheme)
        if server is None:
            raise _Refuse(404, "no server block for this request")
        if sni and host and self._server(sni, port, head.scheme) is not server:
            raise _Refuse(421, f"Host {host.host!r} is not served under TLS name {sni!r}")
        cookies = parse_cookies(head.headers) if scan.cookie else {}
        redirects = self._redirects.get(id(server))
        if target.asterisk:
            location: Location | None = Location(pattern="*", return_status=200)
        elif redirects and target.uri in redirects[0]:
            # nginx's auto_redirect (ngx_http_core_find_static_location -> NGX_DONE, no regex):
            # /api for "location /api/ { proxy_pass ...; }" is answered 301 /api/.
            location = redirects[0][target.uri]
            d = Decision(
                self, head, target, host, server, location, version, cookies, framing, scan
            )
            to = location.pattern if target.args is None else f"{target.uri}/?{target.args}"
            d.return_answer = (301, to)
            return d
        else:
            location = self._location(server, target.uri, head.headers, cookies)
        if location is None:
            raise _Refuse(404, f"no location for {target.uri!r}")
        d = Decision(self, head, target, host, server, location, version, cookies, framing, scan)
        if location.return_status is not None:
            body = location.return_body
            d.return_answer = (location.return_status, d.vars.expand(body) if "$" in body else body)
            return d
        proxy_pass = location.proxy_pass
        if not proxy_pass:
            raise _Refuse(
                404, f"location {location.pattern!r} has no proxy_pass (lbkit serves no files)"
            )
        try:
            d.proxy = parse_proxy_pass(
                d.vars.expand(proxy_pass) if "$" in proxy_pass else proxy_pass
            )
            pool = self._pool_for(d.proxy)
        except ValueError as proxy_error:
            raise _Refuse(502, str(proxy_error)) from None
        if d._vars is not None:
            d._vars.proxy_host = d.proxy.authority
        if location.split is None and location.sticky_cookie is None:
            d._pool = pool
            d.upstream = pool.name
            # Remembered only when no header, cookie or variable took part in the choice.
            if key is not None and "$" not in proxy_pass and id(server) in self._locations:
                if len(self._routes) >= SERVER_CACHE_SIZE:
                    self._routes.clear()
                self._routes[key] = _Route(target, host, server, location, d.proxy, pool)
        else:
            self._choose_pool(d, pool, location, head, cookies)
        return d

    def _remembered(
        self,
        r: _Route,
        head: RequestHead,
        version: str,
        framing: tuple[str, int | None],
        scan: HeadScan,
    ) -> Decision:
        """The decision for a request whose route was found before (see ``_routes``)."""
        target, host, server, location, proxy, pool = r
        cookies = parse_cookies(head.headers) if scan.cookie else {}
        d = Decision(self, head, target, host, server, location, version, cookies, framing, scan)
        d.proxy = proxy
        d._pool = pool
        d.upstream = pool.name
        return d

    def _choose_pool(
        self, d: Decision, main: Pool, loc: Location, head: RequestHead, cookies: dict[str, str]
    ) -> None:
        """Canary split, unless a valid sticky cookie already names a backend of either pool."""
        split = self.pools[loc.split.upstream] if loc.split else None
        token = cookies.get(loc.sticky_cookie) if loc.sticky_cookie else None
        chosen = None
        if token:
            for pool in (main, split):
                if pool is None:
                    continue
                names = [b.name for b in pool.backends]
                name = resolve_token(self.config.sticky_secret, pool.name, names, token)
                if name is not None:
                    chosen, d._sticky = pool, name
                    break
        if chosen is None:
            to_split = (
                split is not None
                and loc.split is not None
                and to_canary(loc.split, head.headers, head.client[0], self.rng)
            )
            chosen = split if split is not None and to_split else main
        d.canary = split is not None and chosen is split
        self.counters["canary"] += d.canary
        d._pool = chosen
        d.upstream = chosen.name

    def _plan(self, loc: Location) -> HeaderPlan:
        plan = self._plans.get(id(loc))
        if plan is None:
            nginx = self.nginx_semantics
            names = _NGINX_DEFAULTS if nginx else _LBKIT_DEFAULTS
            cleared = _NGINX_CLEARED if nginx else ()
            plan = HeaderPlan(names, loc.set_headers, nginx=nginx, cleared=cleared)
            self._plans[id(loc)] = plan
        return plan

    def _upstream_headers(self, d: Decision) -> Headers:
        """What :func:`lbkit.l7.headers.compose` gives, through the location's plan."""
        plan = self._plan(d.location)
        return plan.build(d.head.headers, self._defaults(d), lambda: d.vars, d._scan.connection)

    def _upstream_lines(self, d: Decision) -> bytes:
        """:meth:`_upstream_headers` as header lines (the plan remembers its own fields')."""
        plan = self._plan(d.location)
        return plan.lines(d.head.headers, self._defaults(d), lambda: d.vars, d._scan.connection)

    def _defaults(self, d: Decision) -> tuple[tuple[str, str], ...]:
        """The proxy's default fields for ``d``, named as in ``_NGINX_DEFAULTS`` or
        ``_LBKIT_DEFAULTS`` (their values vary per request)."""
        head = d.head
        proxy_host = d.proxy.authority if d.proxy else ""
        if self.nginx_semantics:
            kind, length = d.request_framing
            body_length = str(length) if kind == "length" else ""
            return (("Host", proxy_host), ("Connection", "close"), ("Content-Length", body_length))
        host = str(d.host) if d.host else proxy_host
        trusted = in_networks(head.client[0], self.config.trusted_proxies)
        forwarding = lbkit_forwarding(
            head.headers,
            peer=head.client[0],
            scheme=head.scheme,
            host=host,
            version=d.version,
            trusted=trusted,
        )
        return (("Host", host), *forwarding)


def _auto_redirects(locations: list[Location]) -> tuple[dict[str, Location], set[str]]:
    """``(URI -> location, names)`` for nginx's auto_redirect: a prefix or exact location
    whose name ends in ``/`` and that proxies (ngx_http_proxy_pass sets ``auto_redirect``)
    redirects its name minus the slash, unless a location is named exactly that."""
    static = [loc for loc in locations if loc.modifier in ("", "^~", "=")]
    names = {loc.pattern for loc in static}
    found = {
        loc.pattern[:-1]: loc
        for loc in reversed(static)
        if loc.proxy_pass and loc.pattern.endswith("/") and loc.pattern[:-1] not in names
    }
    return found, names


#: nginx's defaults that only clear a client's field (ngx_http_proxy_headers: "" values).
_NGINX_CLEARED = ("Transfer-Encoding", "TE", "Keep-Alive", "Expect", "Upgrade")
#: The names of the defaults ``_upstream_headers`` passes, per semantics, in order.
_NGINX_DEFAULTS = ("Host", "Connection", "Content-Length")
_LBKIT_DEFAULTS = (
    "Host",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "Forwarded",
    "Via",
)
