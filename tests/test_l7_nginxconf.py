"""nginx configuration into the router model, with faults reported as ``nginx -t`` reports them."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
from pathlib import Path

import pytest

from lbkit.l7.matching import match_location, select_server
from lbkit.l7.nginxconf import (
    NginxConfigError,
    check_nginx,
    lbkit_message,
    load_nginx,
    nginx_errors_like_nginx_t,
    parse_size,
    parse_time,
)
from lbkit.lab.errors import LabError

from ._nginx import NGINX, free_ports, run_nginx

LABS = Path(__file__).resolve().parent.parent / "labs" / "nginx"
SEED = LABS / "seed.conf"
FIXED = LABS / "seed-fixed.conf"
CERT = LABS / "certs" / "api.example.com.pem"
KEY = LABS / "certs" / "api.example.com-key.pem"

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _write(tmp_path: Path, text: str, name: str = "site.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _nginx_first(path: Path) -> str | None:
    """The first ``[emerg]`` of real ``nginx -t``, as lbkit writes it (FILE:LINE: message)."""
    errors = nginx_errors_like_nginx_t(path, nginx=NGINX)
    return lbkit_message(errors[0]) if errors else None


def _same_as_nginx(ours: str, theirs: str | None) -> bool:
    """Equal, or equal text where nginx names no place (variables, certificates)."""
    return theirs is not None and (ours == theirs or ours.split(": ", 1)[1] == theirs)


def _raw_get(port: int, target: str, host: str | None) -> tuple[int, str]:
    """One HTTP/1.0 request (so the Host header may be absent); status and body."""
    head = f"GET {target} HTTP/1.0\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall((head + "\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


# ------------------------------------------------------------------ the seed's example
#: SHA-256 of the seed's nginx example (from "upstream api_backend {" to the server's "}").
SEED_EXAMPLE_SHA256 = "27b639f988624014e2815c48d069c87fd89fb1cd1fd339d8d4e0e0fa6b8bf231"


def test_seed_copy_is_verbatim() -> None:
    """labs/nginx/seed.conf holds the seed's example byte for byte, after its comment."""
    copy = SEED.read_text()
    assert copy.startswith("#")
    example = copy[copy.index("upstream api_backend {") :]
    assert hashlib.sha256(example.encode()).hexdigest() == SEED_EXAMPLE_SHA256
    seed = Path(__file__).resolve().parents[2] / "shared/seed/load-balancing-l4-vs-l7.txt"
    if seed.exists():  # beside a checkout (and in CI): compare with the seed itself too
        text = seed.read_text()
        start = text.index("upstream api_backend {")
        assert text[start : text.index("\n}\n", text.index("server {", start)) + 3] == example


def test_seed_has_exactly_the_two_faults() -> None:
    """The seed fails twice: listen ... ssl without a certificate, and an unknown variable."""
    check = check_nginx(SEED)
    server, header = _line_of(SEED, "server {"), _line_of(SEED, "X-Forwarded-For")
    assert check.errors == [
        f'{SEED}:{server}: no "ssl_certificate" is defined for the "listen ... ssl" directive',
        f'{SEED}:{header}: unknown "proxy_add_x_forwarded_header" variable',
    ]
    assert check.config is None


def test_load_nginx_raises_the_first_error() -> None:
    """load_nginx raises a LabError whose one-line message is the first error; all in .errors."""
    with pytest.raises(NginxConfigError) as info:
        load_nginx(SEED)
    assert isinstance(info.value, LabError)
    assert str(info.value) == check_nginx(SEED).errors[0]
    assert "\n" not in str(info.value)
    assert len(info.value.errors) == 2


@needs_nginx
def test_seed_messages_equal_nginx_t(tmp_path: Path) -> None:
    """Each of the seed's errors is the one real nginx -t prints, once the one before is mended."""
    ours = check_nginx(SEED).errors
    assert _nginx_first(SEED) == ours[0]  # nginx cites the server block's line
    mended = _write(tmp_path, SEED.read_text().replace("listen 443 ssl;", "listen 443;"))
    (second,) = check_nginx(mended).errors
    assert second.split(": ", 1)[1] == ours[1].split(": ", 1)[1]
    assert nginx_errors_like_nginx_t(mended, nginx=NGINX) == [
        'unknown "proxy_add_x_forwarded_header" variable'  # nginx names no place for this one
    ]


def test_fixed_copy_loads() -> None:
    """The mended copy: least_conn over 2:1 weights and a backup; 443 ssl for api.example.com."""
    check = check_nginx(FIXED)
    assert (check.errors, check.warnings) == ([], [])
    config = check.config
    assert config is not None
    up = config.upstreams["api_backend"]
    assert up.algorithm == "least_connections"
    assert [(s.address, s.weight, s.backup) for s in up.servers] == [
        ("10.0.1.10:3000", 2, False),
        ("10.0.1.11:3000", 1, False),
        ("10.0.1.12:3000", 1, True),
    ]
    (server,) = config.servers
    assert [(ln.port, ln.ssl) for ln in server.listens] == [(443, True)]
    assert server.server_names == ["api.example.com"]
    assert server.ssl_certificate == str(CERT)
    assert server.ssl_certificate_key == str(KEY)
    (loc,) = server.locations
    assert (loc.modifier, loc.pattern, loc.proxy_pass) == ("", "/v1/", "http://api_backend")
    assert loc.set_headers == [
        ("Host", "$host"),
        ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ]
    assert loc.origin == f"{FIXED}:{_line_of(FIXED, 'location /v1/')}"
    assert up.servers[2].origin == f"{FIXED}:{_line_of(FIXED, 'backup')}"


@needs_nginx
def test_nginx_t_accepts_fixed_copy() -> None:
    """Real nginx -t, run from a temporary prefix, accepts the mended copy."""
    assert nginx_errors_like_nginx_t(FIXED, nginx=NGINX) == []


@needs_nginx
def test_shipped_certificate_serves_api_example_com(tmp_path: Path) -> None:
    """The shipped pair verifies for api.example.com in a real TLS handshake, for years to come."""
    (port,) = free_ports(1)
    server = (
        f"server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {CERT}; "
        f'ssl_certificate_key {KEY}; return 200 "tls"; }}'
    )
    context = ssl.create_default_context(cafile=str(CERT))
    with (
        run_nginx(server, tmp_path, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="api.example.com") as tls,
    ):
        cert = tls.getpeercert()
    not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), dt.UTC)
    assert not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=5 * 365)


# --------------------------------------------------------------------------- structure
def test_top_level_blocks_read_as_in_http(tmp_path: Path) -> None:
    """A conf.d file and a full nginx.conf that includes it give the same upstreams and servers."""
    confd = tmp_path / "conf.d"
    confd.mkdir()
    site = _write(
        confd,
        "upstream app { server 127.0.0.1:8001; }\n"
        "server { listen 8080; location / { proxy_pass http://app; } }\n",
    )
    full = _write(
        tmp_path,
        "worker_processes 1;\nevents { worker_connections 64; }\n"
        "http {\n    include conf.d/*.conf;\n    gzip on;\n}\n",
        "nginx.conf",
    )
    direct, included = load_nginx(site), load_nginx(full)
    assert list(direct.upstreams) == list(included.upstreams) == ["app"]
    assert included.servers[0].origin == f"{site}:2"  # the line in the included file
    assert included.servers[0].locations[0].proxy_pass == "http://app"
    # process settings are nginx's own, not warnings; the line after the include is nginx.conf's
    assert included.warnings == [f'{full}:5: directive "gzip" is not supported by lbkit, ignored']
    if NGINX:
        assert nginx_errors_like_nginx_t(full, nginx=NGINX) == []


def test_unsupported_directive_is_a_warning(tmp_path: Path) -> None:
    """A directive nginx knows and lbkit does not run is a warning with FILE:LINE."""
    path = _write(
        tmp_path,
        "server {\n    listen 8080;\n    gzip on;\n"
        "    location / {\n        add_header X-A b;\n        return 204;\n    }\n}\n",
    )
    check = check_nginx(path)
    assert check.errors == []
    assert check.warnings == [
        f'{path}:3: directive "gzip" is not supported by lbkit, ignored',
        f'{path}:5: directive "add_header" is not supported by lbkit, ignored',
    ]
    assert check.config is not None and check.config.warnings == check.warnings


def test_unknown_directive_is_an_error(tmp_path: Path) -> None:
    """A directive nginx does not know is nginx's error, at its line."""
    path = _write(tmp_path, "server {\n    listen 8080;\n    gzipp on;\n}\n")
    assert check_nginx(path).errors == [f'{path}:3: unknown directive "gzipp"']


@needs_nginx
def test_unknown_directive_error_equals_nginx_t(tmp_path: Path) -> None:
    """The same message nginx -t gives, for the same line."""
    path = _write(tmp_path, "server {\n    listen 8080;\n    gzipp on;\n}\n")
    assert _nginx_first(path) == check_nginx(path).errors[0]


@pytest.mark.parametrize(
    ("directive", "algorithm", "hash_key", "warned"),
    [
        ("", "weighted_round_robin", None, False),
        ("least_conn;", "least_connections", None, False),
        ("ip_hash;", "ip_hash", None, False),
        ("hash $request_uri consistent;", "ring_hash", "$request_uri", False),
        ("hash $remote_addr;", "ring_hash", "$remote_addr", True),
        ("random;", "random", None, False),
        ("random two;", "power_of_two", None, False),
        ("random two least_conn;", "power_of_two", None, False),
    ],
)
def test_balancing_directive_maps_to_algorithm(
    tmp_path: Path, directive: str, algorithm: str, hash_key: str | None, warned: bool
) -> None:
    """Each nginx balancing method becomes the lbkit algorithm of the same behaviour."""
    path = _write(
        tmp_path, f"upstream u {{\n    {directive}\n    server 127.0.0.1:1;\n    server b:2;\n}}\n"
    )
    check = check_nginx(path)
    assert check.errors == [] and check.config is not None
    up = check.config.upstreams["u"]
    assert (up.algorithm, up.hash_key) == (algorithm, hash_key)
    assert [s.address for s in up.servers] == ["127.0.0.1:1", "b:2"]
    expected = [f"{path}:2: hash without consistent: lbkit uses a consistent ring"]
    assert check.warnings == (expected if warned else [])


@pytest.mark.parametrize("method", ["ip_hash;", "hash $remote_addr consistent;", "random two;"])
def test_backup_with_hashing_method_is_an_error(tmp_path: Path, method: str) -> None:
    """nginx: a method without backup support refuses a backup server listed after it."""
    path = _write(
        tmp_path,
        f"upstream u {{\n    {method}\n    server 127.0.0.1:1;\n"
        "    server 127.0.0.1:2 backup;\n}\n",
    )
    message = f'{path}:4: balancing method does not support parameter "backup"'
    assert check_nginx(path).errors == [message]
    if NGINX:
        assert _nginx_first(path) == message


def test_server_parameters_and_time_units(tmp_path: Path) -> None:
    """weight, max_fails, fail_timeout (seconds units), max_conns, down."""
    path = _write(
        tmp_path,
        "upstream u {\n    server 127.0.0.1:1 weight=3 max_fails=2 fail_timeout=1m30s "
        "max_conns=10 down;\n    server localhost;\n}\n",
    )
    up = load_nginx(path).upstreams["u"]
    first, second = up.servers
    assert (first.weight, first.max_fails, first.fail_timeout, first.max_conns, first.down) == (
        3,
        2,
        90.0,
        10,
        True,
    )
    assert second.address == "localhost:80"  # nginx: the port defaults to 80


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m", 60), ("500ms", 0.5), ("1m30s", 90), ("1m30", 90), ("2", 2), ("1h", 3600)],
)
def test_parse_time(text: str, seconds: float) -> None:
    """nginx's time syntax, in seconds."""
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["1x", "s", "1s1m", "1M", "1.5s", ""])
def test_parse_time_refuses(text: str) -> None:
    """Unknown units, units out of order, and months for a time-out are invalid (as in nginx)."""
    assert parse_time(text) is None


def test_fail_timeout_refuses_milliseconds() -> None:
    """fail_timeout is parsed with is_sec: no ms."""
    assert parse_time("500ms", seconds_only=True) is None
    assert parse_time("10s", seconds_only=True) == 10


@pytest.mark.parametrize(
    ("text", "size"), [("512", 512), ("512k", 512 * 1024), ("1m", 1 << 20), ("1G", 1 << 30)]
)
def test_parse_size(text: str, size: int) -> None:
    """nginx's size syntax, in bytes; "1.5m" or "1mb" are invalid."""
    assert parse_size(text) == size
    assert parse_size(text + "b") is None


def test_limits_from_http_and_server_levels(tmp_path: Path) -> None:
    """Time-outs and sizes land in Limits, in seconds and bytes."""
    path = _write(
        tmp_path,
        "client_max_body_size 10m;\nproxy_connect_timeout 500ms;\n"
        "server {\n    listen 8080;\n    proxy_read_timeout 1m;\n    client_header_timeout 5s;\n"
        "    keepalive_timeout 10s 5;\n    large_client_header_buffers 4 16k;\n}\n",
    )
    limits = load_nginx(path).limits
    assert limits.client_max_body_size == 10 << 20
    assert limits.proxy_connect_timeout == 0.5
    assert limits.proxy_read_timeout == 60
    assert limits.client_header_timeout == 5
    assert limits.keepalive_timeout == 10
    assert (limits.large_client_header_buffers, limits.max_headers_bytes) == (16384, 65536)


def test_invalid_time_is_an_error_like_nginx(tmp_path: Path) -> None:
    """An invalid value is nginx's '"NAME" directive invalid value'."""
    path = _write(tmp_path, "server {\n    listen 8080;\n    proxy_read_timeout 1x;\n}\n")
    message = f'{path}:3: "proxy_read_timeout" directive invalid value'
    assert check_nginx(path).errors == [message]
    if NGINX:
        assert _nginx_first(path) == message


def test_headers_inherit_only_when_a_level_sets_none(tmp_path: Path) -> None:
    """proxy_set_header: a location with its own list does not inherit the server's (nginx)."""
    path = _write(
        tmp_path,
        "proxy_set_header X-Http 1;\n"
        "server {\n    listen 8080;\n    proxy_set_header X-Server $host;\n"
        "    location /a/ { proxy_pass http://127.0.0.1:9000; }\n"
        "    location /b/ { proxy_pass http://127.0.0.1:9000; proxy_set_header X-Own $uri; }\n"
        "}\n"
        "server {\n    listen 8081;\n    location / { proxy_pass http://127.0.0.1:9000; }\n}\n",
    )
    config = load_nginx(path)
    a, b = config.servers[0].locations
    assert a.set_headers == [("X-Server", "$host")]
    assert b.set_headers == [("X-Own", "$uri")]
    assert config.servers[1].locations[0].set_headers == [("X-Http", "1")]


def test_proxy_pass_to_an_address_makes_an_implicit_upstream(tmp_path: Path) -> None:
    """proxy_pass http://host:port/uri: a one-server upstream named by the authority; URI kept."""
    path = _write(
        tmp_path,
        "server {\n    listen 8080;\n"
        "    location /old/ { proxy_pass http://127.0.0.1:9000/new/; }\n}\n",
    )
    config = load_nginx(path)
    assert config.servers[0].locations[0].proxy_pass == "http://127.0.0.1:9000/new/"
    up = config.upstreams["127.0.0.1:9000"]
    assert [s.address for s in up.servers] == ["127.0.0.1:9000"]
    assert up.origin == f"{path}:3"


def test_server_level_return_answers_every_uri(tmp_path: Path) -> None:
    """``return`` in a server runs before any location: one catch-all location carries it."""
    path = _write(tmp_path, "server { listen 8080; return 301 https://$host$request_uri; }\n")
    (loc,) = load_nginx(path).servers[0].locations
    assert (loc.pattern, loc.return_status, loc.return_body) == (
        "/",
        301,
        "https://$host$request_uri",
    )


# --------------------------------------------------------- faults, checked against nginx -t
FAULTS = {
    "duplicate_upstream": "upstream a { server 127.0.0.1:1; }\n"
    "upstream a { server 127.0.0.1:2; }\n",
    "weight_zero": "upstream a { server 127.0.0.1:1 weight=0; }\n",
    "only_backups": "upstream a {\n  least_conn;\n  server 127.0.0.1:1 backup;\n}\n",
    "empty_upstream": "upstream b {\n\n}\n",
    "proxy_pass_here": "server { listen 1; proxy_pass http://127.0.0.1:1; }\n",
    "proxy_pass_twice": "server { listen 1; location / {\n"
    "    proxy_pass http://127.0.0.1:1;\n    proxy_pass http://127.0.0.1:2;\n} }\n",
    "url_prefix": "server { listen 1; location / { proxy_pass ftp://127.0.0.1:1; } }\n",
    "regex_uri_part": "server { listen 1; location ~ /x { proxy_pass http://127.0.0.1:1/y; } }\n",
    "duplicate_location": "server { listen 1; location /x { } location ^~ /x { } }\n",
    "bad_modifier": "server { listen 1; location !! /x { } }\n",
    "bad_regex": "server { listen 1; location ~ ( { } }\n",
    "two_default_servers": "server { listen 1 default_server; }\n"
    "server { listen 1 default_server; }\n",
    "duplicate_listen": "server { listen 1; listen 1; }\n",
    "listen_port": "server { listen 99999; }\n",
    "next_upstream": "server { listen 1; location / { proxy_next_upstream error bogus; } }\n",
    "return_code": "server { listen 1; location / { return abc; } }\n",
    "arguments": "server { listen 1; location / { proxy_set_header A; } }\n",
    "flag": "server { listen 1; gzip maybe; }\n",
    "no_brace": "server listen 1;\n",
    "eof": "server { listen 1;\n  location / {\n",
    "extra_brace": "server { listen 1; } }\n",
    "cert_without_key": f"server {{ listen 1; ssl_certificate {CERT}; }}\n",
    "variable_case": "server { listen 1; location / { proxy_set_header A $FOO; } }\n",
    "missing_include": "include /nonexistent/lbkit.conf;\n",
}


@needs_nginx
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_first_error_equals_nginx_t(tmp_path: Path, name: str) -> None:
    """For each fault, lbkit's first error is the message real nginx -t stops at."""
    path = _write(tmp_path, FAULTS[name])
    ours = check_nginx(path).errors
    assert ours, "lbkit accepted a file nginx refuses"
    theirs = _nginx_first(path)
    assert _same_as_nginx(ours[0], theirs), (ours[0], theirs)


@needs_nginx
def test_valid_variables_are_known(tmp_path: Path) -> None:
    """Variables nginx knows (any $http_*, $cookie_*, case-insensitive, captures) are accepted."""
    path = _write(
        tmp_path,
        "server { listen 1; location ~ ^/(?<user>[a-z]+)/ {\n"
        "    proxy_pass http://127.0.0.1:1;\n"
        '    proxy_set_header A "$HOST $http_x_y ${cookie_sid}x $1 $user $binary_remote_addr";\n'
        "    proxy_set_header B $scheme$request_uri$upstream_addr$remote_port$server_port;\n"
        "} }\n",
    )
    assert check_nginx(path).errors == []
    assert nginx_errors_like_nginx_t(path, nginx=NGINX) == []


# ----------------------------------------------------- matching, checked against real nginx
LOCATIONS = {
    "root": "/",
    "exact": "= /exact",
    "images": "^~ /images/",
    "gifjpg": r"~* \.(gif|jpg)$",
    "api": "/api/",
    "apiv2": "/api/v2/",
    "admin": "~ ^/api/v[0-9]+/admin",
}
URIS = [
    "/",
    "/exact",
    "/exact/",
    "/exactly",
    "/images/a.gif",
    "/images",
    "/img/a.GIF",
    "/a.jpg?size=2",
    "/x.gif.txt",
    "/api",
    "/API/",
    "/api/",
    "/api/x.jpg",
    "/api/v2/",
    "/api/v2/a.gif",
    "/api/v2/admin",
    "/api/v1/admin",
    "/api/V1/admin",
    "/api/v10/admin/users",
]


@needs_nginx
def test_location_order_matches_nginx(tmp_path: Path) -> None:
    """match_location over the loaded config picks the location real nginx picks, URI by URI."""
    (port,) = free_ports(1)
    blocks = "".join(f'    location {p} {{ return 200 "{n}"; }}\n' for n, p in LOCATIONS.items())
    path = _write(tmp_path, f"server {{\n    listen 127.0.0.1:{port};\n{blocks}}}\n")
    locations = load_nginx(path).servers[0].locations
    assert [loc.return_status for loc in locations] == [200] * len(LOCATIONS)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    with run_nginx(f"include {path};", prefix, port):
        seen = {uri: _raw_get(port, uri, "localhost")[1] for uri in URIS}
    ours = {uri: match_location(locations, uri.split("?")[0]).return_body for uri in URIS}
    assert ours == seen
    assert set(seen.values()) == set(LOCATIONS)  # every rule was exercised


SERVER_NAMES = {
    "first": "first.test",
    "exact": "example.com",
    "www": "www.example.com",
    "lead": "*.example.com",
    "longer": "*.sub.example.com",
    "dot": ".example.org",
    "trail": "mail.*",
    "regex": r"~^(www|api)\d+\.example\.net$",
    "regex2": "~^api",
    "empty": '""',
}
HOSTS = [
    "example.com",
    "Example.COM.",
    "www.example.com",
    "a.example.com",
    "a.sub.example.com",
    "example.org",
    "x.example.org",
    "mail.example.com",
    "mail.foo.net",
    "api12.example.net",
    "API7.EXAMPLE.NET",
    "apix.test",
    "first.test",
    "unknown.test",
    "127.0.0.1",
    None,
]


def _names_config(tmp_path: Path, port: int) -> Path:
    text = "".join(
        f'server {{ listen 127.0.0.1:{port}; server_name {name}; return 200 "{body}"; }}\n'
        for body, name in SERVER_NAMES.items()
    )
    text += f'server {{ listen 127.0.0.1:{port} default_server; return 200 "default"; }}\n'
    return _write(tmp_path, text)


@needs_nginx
def test_server_name_selection_matches_nginx(tmp_path: Path) -> None:
    """select_server picks nginx's block: exact, *.lead, .dot, trail.*, regex, default_server."""
    (port,) = free_ports(1)
    path = _names_config(tmp_path, port)
    servers = load_nginx(path).servers
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    with run_nginx(f"include {path};", prefix, port):
        seen = {host: _raw_get(port, "/", host)[1] for host in HOSTS}
    ours = {host: select_server(servers, host, port).locations[0].return_body for host in HOSTS}
    assert ours == seen
    assert set(seen.values()) == {*SERVER_NAMES, "default"}


@needs_nginx
def test_host_with_port_selects_like_nginx_once_the_port_is_stripped(tmp_path: Path) -> None:
    """nginx drops ":port" from Host (ngx_http_validate_host); select_server expects it gone."""
    (port,) = free_ports(1)
    path = _names_config(tmp_path, port)
    servers = load_nginx(path).servers
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    with run_nginx(f"include {path};", prefix, port):
        _, body = _raw_get(port, "/", f"example.com:{port}")
    assert body == "exact"
    assert select_server(servers, "example.com", port).locations[0].return_body == body
