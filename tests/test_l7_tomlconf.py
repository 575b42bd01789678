"""lbkit's router TOML: the lab's config loads and routes; mistakes name file and key."""

from __future__ import annotations

import copy

import pytest

from lbkit.l7.router import Decision, RequestHead, Router
from lbkit.l7.tomlconf import load_router_toml, parse_router_toml
from lbkit.lab.errors import LabError

LAB = "labs/l7/router.toml"

MINIMAL = {
    "server": [{"listen": [80], "server_name": ["x.test"], "route": [{"path": "/", "pool": "p"}]}],
    "pool": {"p": {"servers": [{"address": "10.0.1.10:80", "name": "p1"}]}},
}


def lab_route(target="/", headers=(), host="lb.example.com") -> Decision:
    router = Router(load_router_toml(LAB))
    h = RequestHead(
        "GET", target, "1.1", [("Host", host), *headers], ("198.51.100.2", 1), ("10.0.1.3", 80)
    )
    d = router.route(h, 0.0)
    assert isinstance(d, Decision), d
    return d


# --------------------------------------------------------------- the lab file
def test_lab_config_pools():
    """labs/l7/router.toml defines the layered lab's five pools with its host names."""
    cfg = load_router_toml(LAB)
    names = {k: [s.name for s in up.servers] for k, up in cfg.upstreams.items()}
    assert names == {
        "api": ["api1", "api2", "api3"],
        "static": ["static1", "static2"],
        "mobile": ["mobile1"],
        "app": ["app1"],
        "canary": ["canary1"],
    }
    assert cfg.upstreams["api"].servers[0].address == "10.0.1.10:80"


@pytest.mark.parametrize(
    ("target", "headers", "host", "upstream"),
    [
        ("/api/users", [], "lb.example.com", "api"),
        ("/static/logo.png", [], "lb.example.com", "static"),
        ("/", [], "app.example.com", "app"),
        ("/", [("User-Agent", "Mozilla/5.0 (iPhone; Mobile)")], "lb.example.com", "mobile"),
        ("/api/users", [("X-Canary", "1")], "lb.example.com", "canary"),
        ("/", [], "10.0.1.200", "static"),
    ],
)
def test_lab_config_routes(target, headers, host, upstream):
    """Each rule of the lab file sends its request to its pool."""
    assert lab_route(target, headers, host).upstream == upstream


def test_lab_app_route_is_sticky():
    """The app route sets the lbkit_sticky cookie."""
    d = lab_route(host="app.example.com")
    assert d.response_headers(d.pick(0.0))[0][1].startswith("lbkit_sticky=")


def test_lab_api_canary_is_one_percent():
    """The /api/ route splits 1 % to the canary pool, forced by X-Canary."""
    split = load_router_toml(LAB).servers[0].locations[1].split
    assert (split.upstream, split.percent, split.force_header) == ("canary", 1.0, "x-canary")


def test_toml_source_means_lbkit_headers():
    """A config read from .toml uses lbkit's forwarding headers (Via, Forwarded)."""
    d = lab_route("/api/x")
    assert {"Via", "Forwarded", "X-Forwarded-For"} <= {n for n, _ in d.upstream_headers()}


# ------------------------------------------------------------------ the format
def test_listen_forms():
    """listen takes ports, "addr:port" strings and tables."""
    data = copy.deepcopy(MINIMAL)
    data["server"][0]["listen"] = [80, "127.0.0.1:8080", {"port": 443, "ssl": True}]
    listens = parse_router_toml(data).servers[0].listens
    assert [(ln.address, ln.port, ln.ssl) for ln in listens] == [
        ("0.0.0.0", 80, False),
        ("127.0.0.1", 8080, False),
        ("0.0.0.0", 443, True),
    ]


def test_route_options_fill_the_location():
    """match, headers, set_headers (in order), next_upstream and return map onto Location."""
    data = copy.deepcopy(MINIMAL)
    data["server"][0]["route"] = [
        {
            "path": r"\.php$",
            "match": "regex",
            "pool": "p",
            "headers": {"User-Agent": "bot", "cookie:beta": "1"},
            "set_headers": {"X-B": "2", "X-A": "$host"},
            "next_upstream": ["error", "http_502"],
            "next_upstream_tries": 2,
        },
        {"path": "/old", "match": "exact", "return": {"status": 301, "body": "/new"}},
    ]
    php, old = parse_router_toml(data).servers[0].locations
    assert (php.modifier, php.proxy_pass) == ("~", "http://p")
    assert [(m.header, m.regex) for m in php.matches] == [
        ("user-agent", "bot"),
        ("cookie:beta", "1"),
    ]
    assert php.set_headers == [("X-B", "2"), ("X-A", "$host")]
    assert (php.next_upstream, php.next_upstream_tries) == (["error", "http_502"], 2)
    assert (old.modifier, old.return_status, old.return_body) == ("=", 301, "/new")


def test_pool_options_fill_the_upstream():
    """Server options (weight, backup, max_fails...) and algorithm reach the model."""
    data = copy.deepcopy(MINIMAL)
    data["pool"]["p"] = {
        "algorithm": "ring_hash",
        "hash_key": "$cookie_user",
        "servers": [
            {"address": "10.0.1.10", "weight": 3, "max_fails": 2, "fail_timeout": 5},
            {"address": "10.0.1.11:81", "backup": True, "down": True, "max_conns": 4},
        ],
    }
    up = parse_router_toml(data).upstreams["p"]
    a, b = up.servers
    assert (up.algorithm, up.hash_key) == ("ring_hash", "$cookie_user")
    assert (a.weight, a.max_fails, a.fail_timeout) == (3, 2, 5.0)
    assert (b.backup, b.down, b.max_conns) == (True, True, 4)


# ------------------------------------------------------------------ mistakes
def _set(path: str, value):
    """A copy of MINIMAL with ``value`` at dotted ``path`` (ints index lists)."""
    data = copy.deepcopy(MINIMAL)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("colour", "red", r"\(top level\)\.colour: unknown key"),
        ("server.0.route.0.match", "glob", r"server\[0\]\.route\[0\]\.match: 'glob'"),
        ("server.0.route.0.pool", "nope", r"server\[0\]\.route\[0\]\.pool: no pool named 'nope'"),
        ("server.0.route.0.path", "api", r"route\[0\]\.path: 'api' must start with '/'"),
        ("server.0.route.0.headers", {"ua": "("}, r"route\[0\]\.headers\.ua: bad regular"),
        ("server.0.route.0.split", {"pool": "p", "percent": 150}, r"split\.percent: 150"),
        ("server.0.route.0.split", {"pool": "q", "percent": 1}, r"split\.pool: no pool"),
        ("server.0.route.0.next_upstream", ["http_418"], r"next_upstream: 'http_418'"),
        ("server.0.route.0.proxy_pass", "http://x", r"route\[0\]: give exactly one of"),
        ("server.0.route.0.sticky_cookie", "a b", r"sticky_cookie: 'a b' is not a valid"),
        ("server.0.listen", [70000], r"server\[0\]\.listen\[0\]: port 70000"),
        ("server.0.route", [], r"server\[0\]\.route: a server needs"),
        ("pool.p.algorithm", "fastest", r"pool\.p\.algorithm: unknown 'fastest'"),
        ("pool.p.servers.0.address", "10.0.1.10:http", r"servers\[0\]\.address: bad port"),
        ("pool.p.servers.0.weight", 0, r"pool\.p\.servers\[0\]: weight must be >= 1"),
        ("pool.p.servers.0.weight", "2", r"servers\[0\]\.weight: expected an integer"),
        (
            "pool.p.servers",
            [{"address": "a:1"}, {"address": "a:1"}],
            r"servers: two servers named 'a:1'",
        ),
        ("trusted_proxies", ["10.0.0.0/33"], r"trusted_proxies\[0\]: '10.0.0.0/33'"),
        ("limits", {"proxy_read_timeout": "slow"}, r"limits\.proxy_read_timeout: expected"),
        ("limits", {"warp": 9}, r"limits\.warp: unknown key"),
    ],
)
def test_mistakes_name_file_and_key(path, value, message):
    """Every mistake is one LabError line: file, key path, what is wrong."""
    with pytest.raises(LabError, match=r"^r\.toml: \S*" + message):
        parse_router_toml(_set(path, value), "r.toml")


def test_missing_server_section():
    """A config without [[server]] says so."""
    with pytest.raises(LabError, match=r"r\.toml: server: at least one"):
        parse_router_toml({"pool": MINIMAL["pool"]}, "r.toml")


def test_invalid_toml_names_the_file(tmp_path):
    """A syntax error is reported with the file name."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[[server]\n")
    with pytest.raises(LabError, match=r"bad\.toml: not valid TOML"):
        load_router_toml(bad)


def test_missing_file(tmp_path):
    """A missing file is a LabError, not a traceback."""
    with pytest.raises(LabError, match="cannot read"):
        load_router_toml(tmp_path / "none.toml")
