"""lbkit.viz.l7: curl's trace read back, header changes, the canary's interval, the exercise."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.figure import Figure
from rich.console import Console

from lbkit.l7.nginxconf import load_nginx
from lbkit.l7.router import Router
from lbkit.viz.l7 import (
    ROUTE_QUESTIONS,
    ROUTER_TOML,
    Answer,
    changes_table,
    check_routes,
    curl_argv,
    head,
    header_changes,
    host_of,
    load_router,
    nginx_binary,
    nginx_t,
    parse_curl,
    parse_write_out,
    plot_canary,
    request_bytes,
    request_packet,
    route_many,
    route_truth,
    rules_table,
    sees_rows,
    send,
    short_paths,
    spread,
    target,
    tls_info,
    upstream_request,
    wilson,
)

ECHO = {
    "backend": "static1",
    "method": "GET",
    "path": "/echo",
    "client": "10.0.1.3:50296",
    "server": "10.0.1.20:80",
    "headers": [["Host", "10.0.1.3"], ["X-Forwarded-For", "198.51.100.2"], ["Via", "1.1 lbkit"]],
}
TRACE = "\n".join(
    [
        "*   Trying 10.0.1.3:80...",
        "* Connected to 10.0.1.3 (10.0.1.3) port 80 (#0)",
        "> GET /echo HTTP/1.1",
        "> Host: 10.0.1.3",
        "> User-Agent: curl/7.88.1",
        "> Connection: keep-alive, X-Debug",
        "> X-Debug: 1",
        "> ",
        "< HTTP/1.1 200 OK",
        "< Content-Type: application/json",
        "< X-Backend: static1",
        "< Set-Cookie: lbkit_sticky=PJV5DqSIe2nffFMOUs3jNw; Path=/; HttpOnly; SameSite=Lax",
        "< ",
        "{ [420 bytes data]",
        "* Connection #0 to host 10.0.1.3 left intact",
    ]
)
TLS_LINES = [
    "SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384",
    "ALPN: server accepted http/1.1",
    "Server certificate:",
    " subject: CN=app.example.com; O=lbkit lab",
    ' subjectAltName: host "app.example.com" matched cert\'s "app.example.com"',
    " issuer: CN=lbkit lab CA; O=lbkit lab",
    " SSL certificate verify ok.",
]
SEED = ROUTER_TOML.parents[1] / "nginx" / "seed.conf"
FIXED = ROUTER_TOML.parents[1] / "nginx" / "seed-fixed.conf"


class FakeLab:
    """Just enough of Lab for :func:`target`: fixed endpoints per service."""

    def __init__(self, ports: dict[str | None, int]) -> None:
        self.ports = ports

    def endpoint(self, host: str, service: str | None = None) -> tuple[str, int]:
        return "127.0.1.4", self.ports[service]


# ------------------------------------------------------------------ curl's trace
def test_parse_curl_reads_request_response_and_echo():
    """Sent headers from '> ', the response from '< ', the body's echo from stdout."""
    a = parse_curl(json.dumps(ECHO), TRACE, 0)
    assert (a.status, a.backend, a.request_line) == (200, "static1", "GET /echo HTTP/1.1")
    assert ("X-Debug", "1") in a.sent and a.sent[0] == ("Host", "10.0.1.3")
    assert a.header("content-type") == "application/json"
    assert a.cookie == "lbkit_sticky=PJV5DqSIe2nffFMOUs3jNw"
    assert a.echo["backend"] == "static1"
    assert a.received == [
        ("Host", "10.0.1.3"),
        ("X-Forwarded-For", "198.51.100.2"),
        ("Via", "1.1 lbkit"),
    ]


def test_parse_curl_keeps_only_the_last_response_head():
    """A 100 Continue before the real answer does not count."""
    trace = "> POST / HTTP/1.1\n< HTTP/1.1 100 Continue\n< \n"
    trace += "< HTTP/1.1 201 Created\n< X-Backend: api2\n"
    a = parse_curl("api2\n", trace)
    assert (a.status, a.backend, a.headers) == (201, "api2", [("X-Backend", "api2")])


def test_parse_curl_without_an_answer():
    """curl could not connect (exit 7): no status, no backend, no echo."""
    a = parse_curl("", "*   Trying 10.0.1.11:80...\n* connect to 10.0.1.11 port 80 failed\n", 7)
    assert (a.status, a.backend, a.echo, a.exit_code) == (None, None, None, 7)
    assert a.received == [] and a.cookie is None


def test_echo_ignores_a_body_that_is_not_the_backends_json():
    """A plain name, or JSON without headers, is not an echo."""
    assert Answer(200, "api1", [], "api1\n", "", []).echo is None
    assert Answer(200, "api1", [], '{"a": 1}', "", []).echo is None


def test_tls_info_reads_the_certificate_curl_checked():
    """Protocol, cipher, subject, SAN match, issuer and the verdict."""
    info = tls_info(TLS_LINES)
    assert info == {
        "protocol": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "subject": "CN=app.example.com; O=lbkit lab",
        "san": 'host "app.example.com" matched cert\'s "app.example.com"',
        "issuer": "CN=lbkit lab CA; O=lbkit lab",
        "verified": "yes",
    }
    refused = tls_info(["SSL certificate problem: unable to get local issuer certificate"])
    assert refused == {"verified": "no"}


def test_curl_argv_puts_every_option_before_the_url():
    """Headers, cookie, agent, --resolve and --cacert, then the URL last."""
    argv = curl_argv(
        "https://app.example.com/",
        headers=["X-Canary: 1"],
        cookie="a=b",
        user_agent="iPhone",
        resolve="app.example.com:443:10.0.1.3",
        cacert="/tmp/ca.pem",
    )
    assert argv[:2] == ["curl", "-sv"] and argv[-1] == "https://app.example.com/"
    pairs = dict(zip(argv[4:-1:2], argv[5:-1:2], strict=True))
    assert pairs == {
        "-H": "X-Canary: 1",
        "-b": "a=b",
        "-A": "iPhone",
        "--resolve": "app.example.com:443:10.0.1.3",
        "--cacert": "/tmp/ca.pem",
    }


def test_target_names_the_host_and_resolves_it_to_the_endpoint():
    """A name goes in the URL and --resolve maps it; a scheme's own port is left out."""
    native = FakeLab({None: 80, "https": 443})
    assert target(native, "alb1", "/x") == ("http://127.0.1.4/x", None)
    assert target(native, "alb1", "/", "https", "app.example.com") == (
        "https://app.example.com/",
        "app.example.com:443:127.0.1.4",
    )
    local = FakeLab({None: 8080, "https": 8443})
    assert target(local, "alb1", "/", "https", "app.example.com")[0] == (
        "https://app.example.com:8443/"
    )


def test_write_out_lines_become_status_and_backend():
    """'000' (no answer) is None, as is a missing X-Backend."""
    assert parse_write_out("200 api1\n000 \n500 api3\n\n") == [
        (200, "api1"),
        (None, None),
        (500, "api3"),
    ]


def test_spread_counts_every_kind_of_answer():
    """Answers, (status, backend) pairs and names mix; no backend is '(none)'."""
    answers = [parse_curl("", TRACE), (200, "api1"), (None, None), "api1"]
    assert spread(answers) == {"(none)": 1, "api1": 2, "static1": 1}


# ------------------------------------------------------------------ header rewrites
def test_header_changes_classify_each_field():
    """Hop-by-hop and Connection-named fields removed, a forged XFF rewritten, additions named."""
    sent = [
        ("Host", "10.0.1.3"),
        ("Connection", "keep-alive, X-Debug"),
        ("X-Debug", "1"),
        ("X-Forwarded-For", "203.0.113.66"),
        ("Accept", "*/*"),
    ]
    received = [
        ("Host", "10.0.1.3"),
        ("X-Forwarded-For", "198.51.100.2"),
        ("Via", "1.1 lbkit"),
        ("Accept", "*/*"),
    ]
    rows = {r["name"]: r for r in header_changes(sent, received)}
    assert [r["name"] for r in header_changes(sent, received)][-1] == "Via"
    assert {n: r["change"] for n, r in rows.items()} == {
        "Host": "kept",
        "Connection": "removed",
        "X-Debug": "removed",
        "X-Forwarded-For": "rewritten",
        "Accept": "kept",
        "Via": "added",
    }
    assert rows["X-Debug"]["why"].startswith("hop-by-hop")
    assert rows["X-Forwarded-For"]["received"] == "198.51.100.2"
    assert "RFC 9110" in rows["Via"]["why"]


def test_a_removed_field_that_is_not_hop_by_hop_says_nothing_false():
    """A field dropped for another reason is not called hop-by-hop."""
    (row,) = header_changes([("X-Secret", "1")], [])
    assert (row["change"], row["why"]) == ("removed", "")


def test_changes_table_has_a_row_per_header():
    """The rich table lists every compared header."""
    rows = header_changes([("A", "1")], [("A", "2"), ("Via", "1.1 lbkit")])
    table = changes_table(rows)
    assert table.row_count == 2


# ------------------------------------------------------------------ L4 and L7 views
def test_sees_rows_l4_reads_the_five_tuple_and_flags_only():
    """L4 reads addresses, protocol, ports and flags; every HTTP field is L7 only."""
    request = request_bytes(
        "GET", "/api/users", [("Host", "lb.example.com"), ("User-Agent", "iPhone")]
    )
    rows = sees_rows(request_packet(request))
    l4 = {(r["layer"], r["field"]) for r in rows if r["l4"]}
    assert l4 == {
        ("IP", "src"),
        ("IP", "dst"),
        ("IP", "proto"),
        ("TCP", "sport"),
        ("TCP", "dport"),
        ("TCP", "flags"),
    }
    http = {r["field"]: r for r in rows if r["layer"] == "HTTP"}
    assert set(http) >= {"request line", "Host", "User-Agent"}
    assert not any(r["l4"] for r in http.values()) and all(r["l7"] for r in rows)
    assert "path routing" in http["request line"]["use"]


def test_request_bytes_is_an_http11_head():
    """Request line, one line per header, an empty line; CRLF throughout."""
    assert request_bytes("GET", "/x", [("Host", "h")]) == b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


# ------------------------------------------------------------------ the router, in process
def test_route_many_is_exact_for_a_seed_and_counts_the_canary():
    """Same seed, same counts; the canary count equals the router's own counter."""
    router = load_router(seed=0)
    counts = route_many(router, 2_000)
    assert counts == route_many(load_router(seed=0), 2_000)
    assert sum(counts.values()) == 2_000
    assert counts.get("canary1", 0) == router.stats()["canary"]
    api = [counts[n] for n in ("api1", "api2", "api3")]
    assert max(api) - min(api) <= 1  # least connections, all idle: ties rotate


def test_force_header_sends_every_request_to_the_canary():
    """X-Canary: 1 wins over the 1% draw."""
    assert route_many(load_router(), 50, headers=[("X-Canary", "1")]) == {"canary1": 50}


def test_sticky_cookie_keeps_a_client_and_is_read_by_a_second_router():
    """With three app servers, the cookie from app2's answer keeps every request on app2,
    also through another router sharing the secret (alb1 and alb2)."""
    pools = {"app": ["app1", "app2", "app3"]}
    alb1, alb2 = load_router(pools=pools), load_router(pools=pools)
    picks = [send(alb1, head("/", host="app.example.com")) for _ in range(3)]
    assert [b for _, b, _ in picks] == ["app1", "app2", "app3"]
    cookie = picks[1][2][0][1].split(";")[0]
    again = [
        send(alb2, head("/", host="app.example.com", headers=[("Cookie", cookie)]))
        for _ in range(5)
    ]
    assert {b for _, b, _ in again} == {"app2"}
    assert all(h == [] for _, _, h in again)  # no new cookie
    assert alb2.stats()["sticky_hits"] == 5


def test_send_reports_a_refusal_by_status():
    """A path no route claims on the seed's nginx server is a 404, with no backend."""
    router = Router(load_nginx(FIXED))
    request = head("/v2/x", host="api.example.com", server=("10.0.1.3", 443), scheme="https")
    assert send(router, request) == ("404", None, [])


def test_fixed_seed_runs_with_weights_backup_and_the_real_xff_variable():
    """api1 (weight 2) gets two thirds, api2 one third, the backup none; XFF is appended to."""
    router = Router(load_nginx(FIXED))
    kw = {"host": "api.example.com", "server": ("10.0.1.3", 443), "scheme": "https"}
    counts = route_many(router, 300, "/v1/users", **kw)
    assert counts == {"10.0.1.10:3000": 200, "10.0.1.11:3000": 100}
    xff = [("X-Forwarded-For", "203.0.113.7")]
    _, text = upstream_request(router, head("/v1/users", headers=xff, **kw))
    assert "X-Forwarded-For: 203.0.113.7, 198.51.100.2" in text.splitlines()
    assert text.splitlines()[0] == "GET /v1/users HTTP/1.0"


def test_rules_table_has_a_row_per_route():
    """Every route of router.toml, with the canary split spelled out."""
    router = load_router()
    routes = sum(len(s.locations) for s in router.config.servers)
    table = rules_table(router.config)
    assert table.row_count == routes
    console = Console(width=200, record=True)
    console.print(table)
    assert "1% to canary" in console.export_text()


# ------------------------------------------------------------------ the canary's interval
def test_wilson_known_value_and_symmetry():
    """110 of 10,000 gives [0.913%, 1.324%]; k and n-k mirror each other."""
    lo, hi = wilson(110, 10_000)
    assert (round(lo, 5), round(hi, 5)) == (0.00914, 0.01324)
    lo2, hi2 = wilson(10_000 - 110, 10_000)
    assert math.isclose(lo, 1 - hi2) and math.isclose(hi, 1 - lo2)


def test_wilson_with_no_hits_is_not_a_point():
    """0 of 100: the interval starts at 0 and still has width (the naive one would be [0, 0])."""
    lo, hi = wilson(0, 100)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.03 < hi < 0.04


def test_wilson_covers_about_95_percent_of_binomial_outcomes():
    """For p = 1%, n = 2,000 the exact chance that the interval holds p is close to 95%."""
    n, p = 2_000, 0.01
    coverage = sum(
        math.comb(n, k) * p**k * (1 - p) ** (n - k)
        for k in range(n + 1)
        if wilson(k, n)[0] <= p <= wilson(k, n)[1]
    )
    assert 0.93 < coverage < 0.97


def test_wilson_refuses_nonsense():
    """n must be positive and k within 0..n."""
    with pytest.raises(ValueError):
        wilson(1, 0)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_plot_canary_draws_shares_and_intervals():
    """Two panels: a bar per backend, an error bar per sample; the canary bar is its own colour."""
    counts = {"api1": 3297, "api2": 3297, "api3": 3296, "canary1": 110}
    fig = plot_canary(counts, {"in process": (110, 10_000), "live": (2, 400)})
    assert isinstance(fig, Figure)
    left, right = fig.axes
    bars = left.patches
    assert len(bars) == 4
    assert bars[3].get_facecolor() != bars[0].get_facecolor()
    assert bars[3].get_height() == pytest.approx(1.1)
    assert [t.get_text() for t in right.get_yticklabels()] == ["in process", "live"]


# ------------------------------------------------------------------ the exercise
def test_route_truth_follows_nginx_order():
    """Host first, then the longest prefix; header conditions only among equal paths."""
    assert route_truth() == {
        "a": "api",
        "b": "static",  # /static/ is longer than the mobile rule's /
        "c": "mobile",
        "d": "app",  # the Host picks the server before any header is looked at
        "e": "canary",
        "f": "static",  # /apidocs does not start with /api/
        "g": "static",  # an unknown Host gets the default server
    }
    assert set(route_truth()) == set(ROUTE_QUESTIONS)


def test_check_routes_accepts_the_truth_and_hints_otherwise():
    """The truth is correct; one wrong answer gets a hint that names no pool."""
    truth = route_truth()
    assert check_routes(truth)
    wrong = {**truth, "b": "mobile"}
    verdict = check_routes(wrong)
    assert not verdict and "1 not right yet" in str(verdict)
    assert "longest prefix" in str(verdict)


def test_check_routes_asks_for_every_letter_and_real_pools():
    """Missing letters and unknown pool names are pointed out."""
    assert "missing: g" in str(check_routes({k: "api" for k in "abcdef"}))
    assert "answer a pool name (api, app" in str(check_routes({k: "web" for k in ROUTE_QUESTIONS}))
    assert not check_routes(None)


# ------------------------------------------------------------------ nginx -t
needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")


@needs_nginx
def test_nginx_t_refuses_the_seed_and_accepts_the_fixed_copy():
    """Real nginx: the seed fails on its first fault; the mended copy passes."""
    seed = nginx_t(SEED)
    assert seed[0] == (
        'nginx: [emerg] no "ssl_certificate" is defined for the "listen ... ssl" directive '
        f"in {SEED}:12"
    )
    assert seed[-1] == "nginx: configuration file <prefix>/nginx.conf test failed"
    assert nginx_t(FIXED) == [
        "nginx: the configuration file <prefix>/nginx.conf syntax is ok",
        "nginx: configuration file <prefix>/nginx.conf test is successful",
    ]


def test_nginx_t_says_when_nginx_is_missing(tmp_path):
    """No binary: FileNotFoundError, which a notebook prints."""
    with pytest.raises(FileNotFoundError, match="not installed"):
        nginx_t(SEED, nginx=str(tmp_path / "nginx"))


def test_short_paths_drops_the_checkout():
    """Absolute paths under the checkout become relative."""
    assert short_paths(f"error in {SEED}:12") == "error in labs/nginx/seed.conf:12"


class Itf:
    def __init__(self, ip: str) -> None:
        self.ip = ip


class Host:
    def __init__(self, name: str, *ips: str) -> None:
        self.name, self.interfaces = name, [Itf(ip) for ip in ips]


class HostsLab:
    """A lab with a client, an alb and an api host, under ``provider``."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._hosts = [
            Host("client", "198.51.100.2"),
            Host("alb1", "10.0.1.3"),
            Host("api1", "10.0.1.10"),
        ]
        self._local = {"alb1": "127.0.1.4", "api1": "127.0.1.6"}

    def hosts(self) -> list[Host]:
        return self._hosts

    def endpoint(self, host: str, service: str | None = None) -> tuple[str, int]:
        if host not in self._local:
            raise KeyError(host)
        return self._local[host], 8080


def test_host_of_names_the_owner_of_an_address():
    """netns: by the hosts' addresses; local: by where services listen, 127.0.0.1 is nobody."""
    netns, local = HostsLab("netns"), HostsLab("local")
    assert host_of(netns, "10.0.1.3:50296") == "alb1"
    assert host_of(netns, "198.51.100.2") == "client"
    assert host_of(netns, "10.9.9.9:1") is None
    assert host_of(local, "127.0.1.6:8080") == "api1"
    assert host_of(local, "127.0.0.1:51388") is None
