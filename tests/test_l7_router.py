"""The router core: request head in, decision out (servers, locations, pools, rewrites)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lbkit.l7.model import (
    HeaderMatch,
    Listen,
    Location,
    RouterConfig,
    ServerBlock,
    Split,
    Upstream,
    UpstreamServer,
)
from lbkit.l7.router import Decision, Reject, RequestHead, Router

CLIENT = ("198.51.100.2", 40000)
LOCAL = ("10.0.1.3", 80)


def pool(name: str, *names: str, **kw) -> Upstream:
    servers = [UpstreamServer(f"10.0.1.{10 + i}:80", name=n) for i, n in enumerate(names)]
    return Upstream(name, servers, **kw)


def make_config() -> RouterConfig:
    default = ServerBlock(
        [Listen(80, default_server=True), Listen(443, ssl=True)],
        ["lb.example.com"],
        [
            Location("/", proxy_pass="http://web"),
            Location(
                "/api/",
                proxy_pass="http://mobile",
                matches=[HeaderMatch("user-agent", "mobile")],
            ),
            Location("/api/", proxy_pass="http://api"),
            Location(
                "/beta/", proxy_pass="http://api", matches=[HeaderMatch("cookie:beta", "^1$")]
            ),
            Location("/static/", proxy_pass="http://web"),
            Location("/v1/", proxy_pass="http://api/v2/"),
            Location("/old", modifier="=", return_status=301, return_body="$scheme://$host/new"),
            Location(r"\.php$", modifier="~", proxy_pass="http://api"),
            Location("/direct/", proxy_pass="http://10.0.1.99:8080"),
            Location("/files/"),
        ],
    )
    app = ServerBlock(
        [Listen(80), Listen(443, ssl=True)],
        ["app.example.com", "*.apps.example.com"],
        [Location("/", proxy_pass="http://app")],
    )
    upstreams = {
        "api": pool("api", "api1", "api2", "api3"),
        "web": pool("web", "static1", "static2"),
        "mobile": pool("mobile", "mobile1"),
        "app": pool("app", "app1"),
    }
    return RouterConfig([default, app], upstreams)


def head(target="/", headers=None, *, method="GET", version="1.1", host="lb.example.com", **kw):
    hs = [("Host", host)] if host is not None else []
    return RequestHead(method, target, version, hs + list(headers or []), CLIENT, LOCAL, **kw)


def routed(h: RequestHead, router: Router | None = None) -> Decision:
    d = (router or Router(make_config())).route(h, 0.0)
    assert isinstance(d, Decision), d
    return d


def rejected(h: RequestHead) -> Reject:
    r = Router(make_config()).route(h, 0.0)
    assert isinstance(r, Reject), r
    return r


# ------------------------------------------------------------------ servers
@pytest.mark.parametrize(
    ("host", "server_name"),
    [
        ("app.example.com", "app.example.com"),
        ("APP.example.com.:80", "app.example.com"),
        ("x.apps.example.com", "app.example.com"),
        ("unknown.example.org", "lb.example.com"),
        ("10.0.1.3", "lb.example.com"),
    ],
)
def test_server_chosen_by_normalised_host(host, server_name):
    """Host (lower-cased, trailing dot and default port dropped) selects the server block."""
    assert routed(head(host=host)).server.server_names[0] == server_name


@pytest.mark.parametrize(
    "host", ["bad host", "user@app.example.com", "app.example.com/x", "app.example.com:99999"]
)
def test_invalid_host_is_400(host):
    """A Host that is not host[:port] is refused with 400 (RFC 9112 §3.2)."""
    assert rejected(head(host=host)).status == 400


def test_two_host_headers_is_400():
    """More than one Host header is a 400 (RFC 9112 §3.2)."""
    assert rejected(head(headers=[("host", "app.example.com")])).status == 400


def test_http11_without_host_is_400():
    """HTTP/1.1 requires Host."""
    r = rejected(head(host=None))
    assert (r.status, r.headers) == (400, [("Connection", "close")])


def test_http10_without_host_uses_default_server():
    """HTTP/1.0 may omit Host: the default server takes it."""
    assert routed(head(host=None, version="1.0")).server.server_names == ["lb.example.com"]


def test_absolute_form_authority_beats_host_header():
    """GET http://app.example.com/ picks the app server whatever Host says (RFC 9112 §3.2.2)."""
    d = routed(head("http://app.example.com/x?y=1"))
    assert d.upstream == "app"
    assert d.request_line() == b"GET /x?y=1 HTTP/1.0\r\n"  # nginx: HTTP/1.0 upstream


def test_sni_mismatch_is_421():
    """Over TLS, a Host served by another block than the SNI name gets 421 Misdirected."""
    h = head(host="app.example.com", scheme="https", sni="lb.example.com")
    h.server = ("10.0.1.3", 443)
    assert rejected(h).status == 421


def test_sni_selects_server_when_no_host():
    """An HTTP/1.0 request over TLS without Host is routed by its SNI name."""
    h = head(host=None, version="1.0", scheme="https", sni="app.example.com")
    h.server = ("10.0.1.3", 443)
    assert routed(h).upstream == "app"


def test_other_local_port_still_routes():
    """A router run on an unprivileged port (local provider) uses the config's servers."""
    h = head(host="app.example.com")
    h.server = ("127.0.1.3", 8080)
    assert routed(h).upstream == "app"


@pytest.mark.parametrize(
    ("method", "version", "status"),
    [("TRACE", "1.1", 405), ("CONNECT", "1.1", 405), ("GET", "2.0", 505), ("G T", "1.1", 400)],
)
def test_method_and_version_refused(method, version, status):
    """TRACE/CONNECT get 405 (nginx), HTTP/2 framing on HTTP/1 505, a bad method 400."""
    assert rejected(head(method=method, version=version)).status == status


def test_framing_conflict_is_400():
    """Content-Length with Transfer-Encoding is refused (request smuggling)."""
    h = head(headers=[("Content-Length", "3"), ("Transfer-Encoding", "chunked")], method="POST")
    assert rejected(h).status == 400


def test_framing_reported_on_decision():
    """A chunked body is reported to the adapter as ("chunked", None)."""
    d = routed(head("/api/", [("Transfer-Encoding", "chunked")], method="POST"))
    assert d.request_framing == ("chunked", None)


# ---------------------------------------------------------------- locations
@pytest.mark.parametrize(
    ("target", "upstream"),
    [
        ("/", "web"),
        ("/api/users?id=7", "api"),
        ("/api/../static/x", "web"),
        ("/api/%2e%2e/static/x", "web"),
        ("/index.php", "api"),
        ("/static/x.php", "api"),
        ("/direct/x", "10.0.1.99:8080"),
    ],
)
def test_location_by_normalised_path(target, upstream):
    """nginx's location order on the normalised path decides the upstream."""
    assert routed(head(target)).upstream == upstream


@pytest.mark.parametrize("target", ["/../etc/passwd", "/a/%2e%2e/%2e%2e/x", "api/x", "*"])
def test_bad_target_is_400(target):
    """A path escaping the root, a relative target, or '*' for GET: 400."""
    assert rejected(head(target)).status == 400


def test_options_asterisk_answered_locally():
    """OPTIONS * is answered by the router itself, with Allow."""
    d = routed(head("*", method="OPTIONS"))
    assert d.return_answer == (200, "")
    assert d.response_headers()[0][0] == "Allow"


def test_location_without_proxy_pass_is_404():
    """A location that would serve files (no proxy_pass) gets 404: lbkit serves none."""
    assert rejected(head("/files/a")).status == 404


def test_mobile_user_agent_routes_to_mobile_pool():
    """The location whose header condition holds wins among those sharing /api/."""
    ua = ("User-Agent", "Mozilla/5.0 (iPhone; Mobile)")
    assert routed(head("/api/x", [ua])).upstream == "mobile"
    assert routed(head("/api/x", [("User-Agent", "curl/8")])).upstream == "api"


def test_first_matching_location_among_same_pattern_wins():
    """Same pattern: the first whose conditions hold (here the unconditioned one)."""
    config = make_config()
    locs = config.servers[0].locations
    locs.insert(0, Location("/api/", proxy_pass="http://app"))
    ua = ("User-Agent", "Mobile")
    assert routed(head("/api/x", [ua]), Router(config)).upstream == "app"


def test_cookie_condition():
    """cookie:beta=1 opens /beta/; without it the request falls back to /."""
    assert routed(head("/beta/x", [("Cookie", "beta=1")])).upstream == "api"
    assert routed(head("/beta/x", [("Cookie", "beta=0")])).upstream == "web"


def test_return_expands_variables_and_sets_location():
    """location = /old { return 301 $scheme://$host/new; } answers without proxying."""
    d = routed(head("/old"))
    assert d.return_answer == (301, "http://lb.example.com/new")
    assert d.response_headers() == [("Location", "http://lb.example.com/new")]
    assert d.pick(0.0) is None


def test_route_name_for_the_access_log():
    """route_name is "server_name location"."""
    assert routed(head("/api/x")).route_name == "lb.example.com /api/"
    assert routed(head("/old")).route_name == "lb.example.com = /old"


# ----------------------------------------------------------- request lines
@pytest.mark.parametrize(
    ("target", "line"),
    [
        ("/api/%7Euser/./x?q=1", b"GET /api/%7Euser/./x?q=1 HTTP/1.0\r\n"),
        ("/v1/users?id=7", b"GET /v2/users?id=7 HTTP/1.0\r\n"),
        ("/v1/a%20b/../c", b"GET /v2/c HTTP/1.0\r\n"),
        ("/v1/caf%C3%A9", b"GET /v2/caf%C3%A9 HTTP/1.0\r\n"),
    ],
)
def test_proxy_pass_uri_rule(target, line):
    """No URI part: the target as sent; with one, the location prefix replaced (nginx)."""
    d = routed(head(target))
    assert d.request_line(d.pick(0.0)) == line


def test_proxy_host_of_implicit_upstream():
    """proxy_pass to an address: an implicit pool, and Host is that address ($proxy_host)."""
    d = routed(head("/direct/x"))
    b = d.pick(0.0)
    assert b.address == "10.0.1.99:8080"
    assert d.upstream_headers(b)[0] == ("Host", "10.0.1.99:8080")


# -------------------------------------------------------------------- pools
def one_location_router(upstream: Upstream, **kw) -> Router:
    block = ServerBlock([Listen(80)], ["lb.example.com"], [Location("/", proxy_pass="http://p")])
    upstream.name = "p"
    return Router(RouterConfig([block], {"p": upstream}), **kw)


def picks(router: Router, n: int, headers=None, client=CLIENT) -> Counter:
    out: Counter = Counter()
    for _ in range(n):
        h = head(headers=headers)
        h.client = client
        out[routed(h, router).pick(0.0).name] += 1
    return out


def test_weights_honoured():
    """weight=2 gets twice the requests of weight=1 (smooth WRR)."""
    up = pool("p", "a", "b")
    up.servers[0].weight = 2
    assert picks(one_location_router(up), 30) == {"a": 20, "b": 10}


def test_backup_used_only_when_primaries_are_down():
    """A backup server takes traffic only once every primary is down."""
    up = pool("p", "a", "spare")
    up.servers[1].backup = True
    router = one_location_router(up)
    assert set(picks(router, 4)) == {"a"}
    router.set_backend_state("p", "a", "down")
    assert set(picks(router, 4)) == {"spare"}


def test_server_marked_down_in_config_never_picked():
    """server ... down starts the backend down."""
    up = pool("p", "a", "b")
    up.servers[0].down = True
    assert set(picks(one_location_router(up), 6)) == {"b"}


def test_max_conns_skips_a_full_backend():
    """A backend at max_conns is skipped until a request finishes."""
    up = pool("p", "a", "b")
    up.servers[0].max_conns = 1
    router = one_location_router(up)
    d = routed(head(), router)
    a = d.pick(0.0)
    d.on_start(a, 0.0)
    assert a.name == "a" and set(picks(router, 3)) == {"b"}


def test_ip_hash_keeps_a_client_on_one_backend():
    """ip_hash: the client's address decides, whatever its port."""
    router = one_location_router(pool("p", "a", "b", "c", algorithm="ip_hash"))
    assert len(picks(router, 10, client=("203.0.113.5", 1234))) == 1


def test_ring_hash_key_from_variables():
    """hash $cookie_user consistent: one user, one backend; users spread."""
    router = one_location_router(
        pool("p", "a", "b", "c", algorithm="ring_hash", hash_key="$cookie_user")
    )
    for user in ("u1", "u2", "u3"):
        assert len(picks(router, 5, headers=[("Cookie", f"user={user}")])) == 1
    spread = {next(iter(picks(router, 1, headers=[("Cookie", f"user=u{i}")]))) for i in range(30)}
    assert len(spread) == 3


def test_pick_excludes_given_names():
    """pick(exclude=...) never returns an excluded backend; None when all are."""
    d = routed(head("/api/"))
    assert d.pick(0.0, frozenset({"api1", "api2"})).name == "api3"
    assert d.pick(0.0, frozenset({"api1", "api2"})) is None


# -------------------------------------------------------------- operations
def test_set_backend_state_takes_backend_out():
    """An operator's down takes effect on the next pick."""
    router = Router(make_config())
    router.set_backend_state("api", "api1", "down")
    assert "api1" not in {routed(head("/api/"), router).pick(0.0).name for _ in range(6)}


def test_set_backend_state_errors():
    """An unknown upstream or backend is a KeyError; a bad state a ValueError."""
    router = Router(make_config())
    with pytest.raises(KeyError):
        router.set_backend_state("nope", "api1", "down")
    with pytest.raises(KeyError):
        router.set_backend_state("api", "nope", "down")
    with pytest.raises(ValueError):
        router.set_backend_state("api", "api1", "sleeping")


def test_stats_are_json_and_per_backend():
    """stats() serialises to JSON with state, active, fails and ejections per backend."""
    router = Router(make_config())
    d = routed(head("/api/"), router)
    d.on_start(d.pick(0.0), 0.0)
    rejected_head = head(host="bad host")
    router.route(rejected_head, 0.0)
    stats = json.loads(json.dumps(router.stats()))
    row = stats["upstreams"]["api"]["backends"][0]
    assert {"name", "state", "active", "fails", "ejections"} <= set(row)
    assert row["active"] == 1
    assert stats["rejected"] == {"400": 1}
    assert stats["requests"] == 2


def test_upstream_http_version_follows_proxy_http_version():
    """nginx configs speak HTTP/1.0 upstream unless proxy_http_version 1.1; lbkit's TOML 1.1;
    a chunked body always goes as 1.1 (HTTP/1.0 has no chunked coding)."""
    cfg = make_config()
    assert routed(head("/api/x")).request_line().endswith(b"HTTP/1.0\r\n")
    for server in cfg.servers:
        for loc in server.locations:
            loc.http_version = "1.1"
    assert routed(head("/api/x"), Router(cfg)).request_line().endswith(b"HTTP/1.1\r\n")
    toml = Router(make_config(), nginx_semantics=False)
    assert routed(head("/api/x"), toml).request_line().endswith(b"HTTP/1.1\r\n")
    chunked = head("/api/x", [("Transfer-Encoding", "chunked")], method="POST")
    assert routed(chunked).request_line().endswith(b"HTTP/1.1\r\n")


def test_nginx_auto_redirect_of_a_proxying_prefix_without_its_slash():
    """``location /api/ { proxy_pass ...; }``: /api is answered 301 to /api/ (nginx's
    auto_redirect), with the query kept, and the Location made absolute as nginx does."""
    d = routed(head("/api"))
    assert d.return_answer == (301, "/api/")
    assert d.response_headers() == [("Location", "http://lb.example.com/api/")]
    d = routed(head("/api?x=1", host="LB.example.com:8080"))
    assert d.return_answer == (301, "/api/?x=1")
    assert d.response_headers() == [("Location", "http://lb.example.com/api/?x=1")]
    toml = Router(make_config(), nginx_semantics=False)
    assert routed(head("/api"), toml).return_answer is None  # not an ALB habit


def test_no_backend_status_is_nginx_502_or_lbkit_503():
    """With nothing to pick, nginx answers 502 ("no live upstreams"); lbkit's TOML 503."""
    assert routed(head("/api/x")).no_backend_status == 502
    toml = Router(make_config(), nginx_semantics=False)
    assert routed(head("/api/x"), toml).no_backend_status == 503


def test_router_on_other_ports_picks_tls_blocks_for_https():
    """Run on ports the config does not name (the local provider's 8080/8443), a request
    over TLS is routed by the config's TLS listens, plain HTTP by the plain ones."""
    plain = ServerBlock([Listen(80)], ["a.example"], [Location("/", proxy_pass="http://web")])
    tls = ServerBlock(
        [Listen(443, ssl=True)], ["a.example"], [Location("/", proxy_pass="http://api")]
    )
    config = make_config()
    config.servers = [plain, tls]
    router = Router(config)
    h = head(host="a.example")
    h.server = ("127.0.1.4", 8080)
    assert routed(h, router).upstream == "web"
    h = head(host="a.example", scheme="https", sni="a.example")
    h.server = ("127.0.1.4", 8443)
    assert routed(h, router).upstream == "api"


# ------------------------------------------------- the route cache: the same answers
def cacheable_config() -> RouterConfig:
    """make_config() plus a server whose locations read no header (its routes are remembered)."""
    config = make_config()
    plain = ServerBlock(
        [Listen(80), Listen(443, ssl=True)],
        ["plain.example.com", "*.plain.example.com"],
        [
            Location("/", proxy_pass="http://web"),
            Location("/api/", proxy_pass="http://api"),
            Location("/v1/", proxy_pass="http://api/v2/"),
            Location("/exact", modifier="=", proxy_pass="http://app"),
            Location(r"\.php$", modifier="~", proxy_pass="http://api"),
            Location("/gone", modifier="=", return_status=410, return_body="gone $host"),
            Location("/var/", proxy_pass="http://$http_x_pool"),
            Location("/sticky/", proxy_pass="http://api", sticky_cookie="lbk"),
            Location("/canary/", proxy_pass="http://web", split=Split("api", 50.0)),
        ],
    )
    config.servers.append(plain)
    return config


CACHE_HEADS = [
    ("/", "plain.example.com", []),
    ("/api/users?id=7", "plain.example.com", []),
    ("/api/users?id=7", "PLAIN.example.com:80", []),
    ("/api/users?id=7", "x.plain.example.com", [("X-Pool", "web")]),
    ("/v1/a%20b", "plain.example.com", []),
    ("/exact", "plain.example.com", []),
    ("/index.php", "plain.example.com", []),
    ("/gone", "plain.example.com", []),
    ("/var/x", "plain.example.com", [("X-Pool", "app")]),
    ("/var/x", "plain.example.com", [("X-Pool", "web")]),
    ("/api/x", "lb.example.com", [("User-Agent", "mobile")]),
    ("/api/x", "lb.example.com", [("User-Agent", "desktop")]),
    ("/beta/x", "lb.example.com", [("Cookie", "beta=1")]),
    ("/beta/x", "lb.example.com", []),
    ("/", "app.example.com", []),
    ("/", "unknown.example.com", []),
]


def summary(d: Decision | Reject) -> tuple:
    if isinstance(d, Reject):
        return ("reject", d.status)
    backend = None
    return (
        d.server.server_names[0],
        d.location.pattern,
        d.upstream,
        d.return_answer,
        d.request_line(backend),
        tuple(d.upstream_headers(backend)) if d.return_answer is None else (),
    )


def test_a_remembered_route_is_the_route_found_afresh():
    """One router answering each request three times (found, then remembered) agrees with
    a new router per request (always found), in every order the requests come."""
    shared = Router(cacheable_config())
    for _ in range(3):
        for target, host, extra in CACHE_HEADS + CACHE_HEADS[::-1]:
            h = head(target, extra, host=host)
            fresh = Router(cacheable_config()).route(h, 0.0)
            assert summary(shared.route(h, 0.0)) == summary(fresh), (target, host, extra)
    assert shared._routes, "plain proxied locations are remembered"
    patterns = {entry[3].pattern for entry in shared._routes.values()}
    assert patterns == {"/", "/api/", "/v1/", "/exact", r"\.php$"}, patterns


def test_conditional_and_split_routes_are_never_remembered():
    """A header, cookie, variable or draw that decides the route keeps deciding it."""
    router = Router(cacheable_config())
    mobile = head("/api/x", [("User-Agent", "mobile")])
    desktop = head("/api/x", [("User-Agent", "desktop")])
    for _ in range(3):
        assert routed(mobile, router).upstream == "mobile"
        assert routed(desktop, router).upstream == "api"
    pools = Counter(routed(head("/canary/", host="plain.example.com"), router).upstream
                    for _ in range(200))  # fmt: skip
    assert set(pools) == {"web", "api"}, pools
    for pool_name in ("app", "web", "app"):
        h = head("/var/x", [("X-Pool", pool_name)], host="plain.example.com")
        assert routed(h, router).upstream == pool_name
