"""Host parsing, path normalisation, nginx variables and the headers sent upstream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbkit.l7.headers import (
    BadFraming,
    RequestVars,
    compose,
    forwarded_node,
    parse_cookies,
    request_framing,
    strip_hop_by_hop,
)
from lbkit.l7.hostname import BadHost, parse_host
from lbkit.l7.model import Listen, Location, RouterConfig, ServerBlock, Upstream, UpstreamServer
from lbkit.l7.router import Decision, RequestHead, Router
from lbkit.l7.uri import BadTarget, normalize_path, parse_target

CLIENT = ("198.51.100.2", 40000)
LOCAL = ("10.0.1.3", 80)


# ------------------------------------------------------------------- Host
@pytest.mark.parametrize(
    ("value", "scheme", "expected"),
    [
        ("Example.COM", "http", "example.com"),
        ("example.com.", "http", "example.com"),
        ("example.com:80", "http", "example.com"),
        ("example.com:443", "https", "example.com"),
        ("example.com:443", "http", "example.com:443"),
        ("example.com:", "http", "example.com"),
        ("[2001:DB8::1]:8080", "http", "[2001:db8::1]:8080"),
        ("10.0.1.3", "http", "10.0.1.3"),
    ],
)
def test_host_normalised(value, scheme, expected):
    """Lower case, no trailing dot, no default or empty port (RFC 3986 §6.2)."""
    assert str(parse_host(value, scheme)) == expected


@pytest.mark.parametrize(
    "value",
    ["exa mple.com", "user@example.com", "example.com/x", "example.com:http", "a:1:2",
     "example.com:70000", "a..b", "", "[::1", "[nope]", "exämple.com"],
)  # fmt: skip
def test_invalid_hosts_refused(value):
    """A value that is not host[:port] raises BadHost (RFC 9110 §7.2, RFC 3986 reg-name)."""
    with pytest.raises(BadHost):
        parse_host(value)


# ------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/../static/x", "/static/x"),
        ("/api/%2e%2E/static/x", "/static/x"),
        ("/a//b///c", "/a/b/c"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/caf%C3%A9", "/café"),
        ("/a%2Fb", "/a/b"),
    ],
)
def test_path_normalised_like_nginx(raw, expected):
    """Escapes decoded, slashes merged, dot segments resolved (ngx_http_parse_complex_uri)."""
    assert normalize_path(raw) == expected


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2E%2e", "%2F", "x%20y"])))
def test_normalised_path_is_canonical(segments):
    """Property: absolute, no empty/./.. segments inside, and normalising again changes nothing."""
    try:
        out = normalize_path("/" + "/".join(segments))
    except BadTarget:
        return
    parts = out.split("/")[1:]
    assert out.startswith("/")
    assert not {".", ".."} & set(parts)
    assert "" not in parts[:-1]
    assert normalize_path(out) == out


@pytest.mark.parametrize("raw", ["/..", "/a/../../b", "/%2e%2e/x", "/bad%zz", "/nul%00"])
def test_bad_paths_refused(raw):
    """Climbing above the root, a bad escape or a NUL is a BadTarget (400)."""
    with pytest.raises(BadTarget):
        normalize_path(raw)


def test_absolute_form_target_gives_authority_and_path():
    """http://host/path?q: the authority replaces Host (RFC 9112 §3.2.2)."""
    t = parse_target("http://Example.com:80/a/b?q=1", "GET")
    assert (str(t.authority), t.uri, t.args, t.origin_form) == (
        "example.com",
        "/a/b",
        "q=1",
        "/a/b?q=1",
    )


@pytest.mark.parametrize(
    ("target", "method"), [("*", "GET"), ("example.com:443", "GET"), ("a/b", "GET")]
)
def test_other_target_forms_refused(target, method):
    """Only OPTIONS may use '*'; authority-form and relative paths are refused."""
    with pytest.raises(BadTarget):
        parse_target(target, method)


# ----------------------------------------------------------- header helpers
def test_hop_by_hop_and_connection_named_fields_dropped():
    """Hop-by-hop fields and every field Connection names are dropped (RFC 9110 §7.6.1)."""
    headers = [
        ("Connection", "keep-alive, X-Secret"),
        ("Keep-Alive", "timeout=5"),
        ("X-Secret", "1"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("Transfer-Encoding", "chunked"),
        ("Trailer", "X-T"),
        ("Accept", "*/*"),
    ]
    assert strip_hop_by_hop(headers) == [("Accept", "*/*")]


def test_cookies_first_value_wins():
    """Cookie pairs from every Cookie header; a repeated name keeps its first value."""
    jar = parse_cookies([("Cookie", "a=1; b=2"), ("cookie", "a=3; c=x=y")])
    assert jar == {"a": "1", "b": "2", "c": "x=y"}


def _vars(headers=(), **kw) -> RequestVars:
    base = dict(
        method="GET", request_uri="/p?x=1", uri="/p", args="x=1", host="example.com",
        headers=list(headers), remote_addr="198.51.100.2", remote_port=40000,
        server_addr="10.0.1.3", server_port=80, server_name="example.com", proxy_host="api",
    )  # fmt: skip
    base.update(kw)
    return RequestVars(**base)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$host", "example.com"),
        ("$http_user_agent", "curl/8"),
        ("$remote_addr:$remote_port", "198.51.100.2:40000"),
        ("$scheme://${host}$request_uri", "http://example.com/p?x=1"),
        ("$uri|$args|$server_port|$request_method", "/p|x=1|80|GET"),
        ("$proxy_host $server_name", "api example.com"),
        ("$cookie_sid", "abc"),
        ("$proxy_add_x_forwarded_for", "203.0.113.9, 198.51.100.2"),
        ("$no_such_variable", ""),
    ],
)
def test_variables_expand(template, expected):
    """nginx variables expand as the proxy module evaluates them."""
    headers = [("User-Agent", "curl/8"), ("X-Forwarded-For", "203.0.113.9")]
    v = _vars(headers, cookies={"sid": "abc"})
    assert v.expand(template) == expected


def test_add_x_forwarded_for_without_header_is_remote_addr():
    """$proxy_add_x_forwarded_for is just $remote_addr when the client sent none."""
    assert _vars().expand("$proxy_add_x_forwarded_for") == "198.51.100.2"


def test_empty_set_header_removes_the_field():
    """proxy_set_header X "" removes X, even the client's X (nginx)."""
    out = compose([("Accept-Encoding", "gzip")], [], [("Accept-Encoding", "")], _vars())
    assert out == []


def test_set_header_overrides_default_and_host_goes_first():
    """A location's Host replaces the default; Host leads the list."""
    out = compose(
        [("Accept", "*/*"), ("Host", "client.example")],
        [("Host", "api"), ("Connection", "close")],
        [("X-Real-IP", "$remote_addr"), ("Host", "$host")],
        _vars(),
    )
    assert out == [
        ("Host", "example.com"),
        ("Connection", "close"),
        ("X-Real-IP", "198.51.100.2"),
        ("Accept", "*/*"),
    ]


@pytest.mark.parametrize(
    ("ip", "port", "expected"),
    [
        ("192.0.2.43", None, "192.0.2.43"),
        ("192.0.2.43", 47011, '"192.0.2.43:47011"'),
        ("2001:db8:cafe::17", None, '"[2001:db8:cafe::17]"'),
        ("2001:db8:cafe::17", 4711, '"[2001:db8:cafe::17]:4711"'),
    ],
)
def test_forwarded_node_quoting(ip, port, expected):
    """RFC 7239 §6: IPv6 in brackets, and quoted whenever a ':' appears."""
    assert forwarded_node(ip, port) == expected


# ------------------------------------------------------------------ framing
@pytest.mark.parametrize(
    ("headers", "version", "expected"),
    [
        ([], "1.1", ("none", 0)),
        ([("Content-Length", "12")], "1.1", ("length", 12)),
        ([("Content-Length", "5"), ("content-length", "5")], "1.1", ("length", 5)),
        ([("Transfer-Encoding", "Chunked")], "1.1", ("chunked", None)),
    ],
)
def test_request_framing(headers, version, expected):
    """Content-Length and chunked framing are reported for the adapter (RFC 9112 §6.3)."""
    assert request_framing(headers, version) == expected


@pytest.mark.parametrize(
    ("headers", "version", "status"),
    [
        ([("Content-Length", "3"), ("Transfer-Encoding", "chunked")], "1.1", 400),
        ([("Content-Length", "3"), ("Content-Length", "4")], "1.1", 400),
        ([("Content-Length", "-1")], "1.1", 400),
        ([("Transfer-Encoding", "gzip, chunked")], "1.1", 501),
        ([("Transfer-Encoding", "chunked")], "1.0", 400),
    ],
)
def test_bad_framing_refused(headers, version, status):
    """Smuggling-prone or unknown framing is refused (nginx 1.21.1+: 400; unknown coding: 501)."""
    with pytest.raises(BadFraming) as err:
        request_framing(headers, version)
    assert err.value.status == status


# --------------------------------------------------- upstream headers, end to end
def _router(source: str, set_headers=(), trusted=()) -> Router:
    up = Upstream("api", [UpstreamServer("10.0.1.10:80", name="api1")])
    loc = Location("/", proxy_pass="http://api", set_headers=list(set_headers))
    block = ServerBlock([Listen(80)], ["example.com"], [loc])
    return Router(RouterConfig([block], {"api": up}, trusted_proxies=list(trusted), source=source))


def _upstream_headers(router: Router, headers, client=CLIENT) -> list[tuple[str, str]]:
    d = router.route(RequestHead("GET", "/", "1.1", headers, client, LOCAL), 0.0)
    assert isinstance(d, Decision)
    return d.upstream_headers(d.pick(0.0))


def test_nginx_defaults_host_proxy_host_and_connection_close():
    """nginx: Host is $proxy_host and Connection is close unless the location sets them."""
    out = _upstream_headers(_router("nginx.conf"), [("Host", "Example.com"), ("Accept", "*/*")])
    assert out == [("Host", "api"), ("Connection", "close"), ("Accept", "*/*")]


def test_seed_style_headers():
    """The seed's Host $host and X-Forwarded-For $proxy_add_x_forwarded_for."""
    router = _router(
        "nginx.conf",
        [("Host", "$host"), ("X-Forwarded-For", "$proxy_add_x_forwarded_for")],
    )
    out = dict(
        _upstream_headers(router, [("Host", "example.com:80"), ("X-Forwarded-For", "1.2.3.4")])
    )
    assert out["Host"] == "example.com"
    assert out["X-Forwarded-For"] == "1.2.3.4, 198.51.100.2"


def test_content_length_kept_transfer_encoding_dropped():
    """Content-Length goes upstream; Transfer-Encoding is the adapter's framing, not a header."""
    router = _router("nginx.conf")
    out = _upstream_headers(router, [("Host", "example.com"), ("Content-Length", "3")])
    assert ("Content-Length", "3") in out
    out = _upstream_headers(router, [("Host", "example.com"), ("Transfer-Encoding", "chunked")])
    assert all(n.lower() != "transfer-encoding" for n, _ in out)


def test_lbkit_untrusted_peer_forwarding_replaced():
    """lbkit TOML: a client's forged X-Forwarded-For/Proto/Forwarded are replaced."""
    forged = [
        ("Host", "Example.com"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=6.6.6.6"),
    ]
    out = dict(_upstream_headers(_router("router.toml"), forged))
    assert out["Host"] == "example.com"
    assert out["X-Forwarded-For"] == "198.51.100.2"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "example.com"
    assert out["Forwarded"] == "for=198.51.100.2;proto=http;host=example.com"
    assert out["Via"] == "1.1 lbkit"
    assert "Connection" not in out


def test_lbkit_trusted_proxy_chain_kept():
    """From a trusted proxy, X-Forwarded-For and Forwarded are extended, Via appended."""
    router = _router("router.toml", trusted=["10.0.1.0/24"])
    sent = [
        ("Host", "example.com"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=203.0.113.9;proto=https"),
        ("Via", "1.1 edge"),
    ]
    out = dict(_upstream_headers(router, sent, client=("10.0.1.2", 5000)))
    assert out["X-Forwarded-For"] == "203.0.113.9, 10.0.1.2"
    assert out["X-Forwarded-Proto"] == "https"
    assert (
        out["Forwarded"] == "for=203.0.113.9;proto=https, for=10.0.1.2;proto=http;host=example.com"
    )
    assert out["Via"] == "1.1 edge, 1.1 lbkit"


def test_lbkit_forwarded_quotes_ipv6_client():
    """An IPv6 client appears bracketed and quoted in Forwarded (RFC 7239 §6)."""
    out = dict(
        _upstream_headers(_router("router.toml"), [("Host", "example.com")], ("2001:db8::7", 1))
    )
    assert out["Forwarded"] == 'for="[2001:db8::7]";proto=http;host=example.com'


def test_nginx_semantics_flag_overrides_source():
    """Router(nginx_semantics=False) gives lbkit's headers whatever the source."""
    up = Upstream("api", [UpstreamServer("10.0.1.10:80")])
    block = ServerBlock([Listen(80)], ["example.com"], [Location("/", proxy_pass="http://api")])
    router = Router(RouterConfig([block], {"api": up}), nginx_semantics=False)
    assert "Via" in dict(_upstream_headers(router, [("Host", "example.com")]))


# ------------------------------------------------- the per-location plan == compose
_NAMES = ["Host", "host", "Connection", "X-Forwarded-For", "Via", "Accept", "Keep-Alive",
          "TE", "Cookie", "X-Custom", "Upgrade", "Expect"]  # fmt: skip
_FIELD = st.tuples(st.sampled_from(_NAMES), st.sampled_from(["", "a", "close, x-custom", "$host"]))


@given(
    client=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(["1", "close, x-custom"]))),
    defaults=st.sampled_from([("Host", "Connection"), ("Host", "X-Forwarded-For", "Via")]),
    values=st.lists(st.sampled_from(["", "v", "w"]), min_size=3, max_size=3),
    set_headers=st.lists(_FIELD, max_size=4),
)
def test_header_plan_equals_compose(client, defaults, values, set_headers):
    """HeaderPlan (what the router runs) gives exactly compose's list (the stated rule)."""
    from lbkit.l7.headerplan import HeaderPlan

    variables = RequestVars("GET", "/", "/", None, "h.example", client, *CLIENT, *LOCAL)
    default_fields = list(zip(defaults, values, strict=False))
    expected = compose(client, default_fields, set_headers, variables)
    plan = HeaderPlan(defaults, set_headers)
    connection = any(n.lower() == "connection" for n, _ in client)
    assert plan.build(client, default_fields, lambda: variables, connection) == expected


@given(
    client=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(["1", "close, x-custom"]))),
    defaults=st.sampled_from([("Host", "Connection"), ("Host", "X-Forwarded-For", "Via")]),
    values=st.lists(st.sampled_from(["", "v", "w"]), min_size=3, max_size=3),
    set_headers=st.lists(_FIELD, max_size=4),
    nginx=st.booleans(),
)
def test_header_plan_lines_are_its_list_rendered(client, defaults, values, set_headers, nginx):
    """HeaderPlan.lines (the bytes the proxy sends) is build()'s list as header lines, the
    first time and again from its remembered part."""
    from lbkit.l7.headerplan import HeaderPlan
    from lbkit.l7.headers import field_lines

    variables = RequestVars("GET", "/", "/", None, "h.example", client, *CLIENT, *LOCAL)
    default_fields = tuple(zip(defaults, values, strict=False))
    plan = HeaderPlan(defaults, set_headers, nginx=nginx)
    connection = any(n.lower() == "connection" for n, _ in client)
    expected = field_lines(plan.build(client, default_fields, lambda: variables, connection))
    assert plan.lines(client, default_fields, lambda: variables, connection) == expected
    assert plan.lines(client, default_fields, lambda: variables, connection) == expected
    assert plan.lines([], default_fields, lambda: variables, False) == field_lines(
        plan.build([], default_fields, lambda: variables, False)
    )


def test_upstream_head_is_request_line_and_fields():
    """Decision.upstream_head is request_line + upstream_headers rendered, asked either way."""
    from lbkit.l7.headers import field_lines

    up = Upstream("api", [UpstreamServer("10.0.1.10:80")])
    loc = Location("/", proxy_pass="http://api", set_headers=[("X-Real-IP", "$remote_addr")])
    block = ServerBlock([Listen(80)], ["example.com"], [loc])
    for nginx in (True, False):
        router = Router(RouterConfig([block], {"api": up}), nginx_semantics=nginx)
        fields = [("Host", "example.com"), ("Accept", "*/*"), ("Connection", "x-a"), ("X-A", "1")]
        head = RequestHead("GET", "/p?q=1", "1.1", fields, CLIENT, LOCAL)
        first = router.route(head, 0.0)
        backend = first.pick(0.0)
        got = first.upstream_head(backend)
        assert got == first.request_line(backend) + field_lines(first.upstream_headers(backend))
        second = router.route(RequestHead("GET", "/p?q=1", "1.1", fields, CLIENT, LOCAL), 0.0)
        listed = second.upstream_headers(backend)
        assert second.upstream_head(backend) == got
        assert b"X-Real-IP: " + CLIENT[0].encode() in got and listed
