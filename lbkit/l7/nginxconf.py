"""Read an nginx configuration into :mod:`lbkit.l7.model`, reporting faults as ``nginx -t`` does.

>>> check = check_nginx("labs/nginx/seed.conf")          # doctest: +SKIP
>>> check.errors                                          # doctest: +SKIP
['labs/nginx/seed.conf:12: no "ssl_certificate" is defined for the "listen ... ssl" directive',
 'labs/nginx/seed.conf:19: unknown "proxy_add_x_forwarded_header" variable']

crossplane (NGINX Inc.'s own parser) turns the file into statements; this
module walks them the way nginx's configuration phases do and keeps what
lbkit's router runs. Rules and wording follow nginx 1.22:

* A file whose top level holds ``upstream``/``server`` blocks (a conf.d file,
  the seed's example) is read as if included in ``http {}``; a full
  ``nginx.conf`` (``events {}``, ``http {}``) and ``include`` work too.
* Errors use nginx's words, one line each, ``FILE:LINE: message``, in the
  order ``nginx -t`` meets them: parsing (ngx_conf_parse and each directive's
  handler), upstream init (ngx_http_upstream_init_round_robin), merging
  (certificates, ngx_http_init_locations), ``ngx_http_ssl_init``, then
  ``ngx_http_variables_init_vars``. nginx stops at the first; lbkit lists all.
* A directive nginx knows but lbkit does not run is a warning
  (``directive "gzip" is not supported by lbkit, ignored``); one nginx does
  not know is nginx's error ``unknown directive "NAME"``. Process settings of
  a full nginx.conf (``worker_processes``, ``events {}``...) are nginx's own
  and skipped silently.
* Health: nginx OSS has only passive checks (``max_fails``/``fail_timeout``,
  run as nginx runs them). nginx Plus's active ``health_check`` (and its
  ``match`` block) and ``server ... slow_start=`` are warnings naming the line
  (``"health_check": nginx Plus only; ...``), not nginx OSS's errors: the file
  is probably right for nginx Plus, and lbkit's TOML has both features.
* ``proxy_pass http://NAME[/uri]`` keeps its URL in :attr:`Location.proxy_pass`;
  the pool is ``upstreams[AUTHORITY]``, where AUTHORITY is the URL's
  ``host[:port]`` as written: an ``upstream NAME`` block, or else an implicit
  one-server upstream created here, as nginx's ``ngx_http_upstream_add`` does.
* Relative certificate paths resolve against the folder of the file given
  (nginx: against the folder of ``-c FILE``), and are stored absolute.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import crossplane
from crossplane.analyzer import CONTEXTS, DIRECTIVES, analyze
from crossplane.errors import NgxParserDirectiveError

from lbkit.lab.errors import LabError

from .model import Limits, Listen, Location, RouterConfig, ServerBlock, Upstream, UpstreamServer
from .retry import OUTCOMES

__all__ = [
    "NginxCheck",
    "NginxConfigError",
    "check_nginx",
    "lbkit_message",
    "load_nginx",
    "nginx_errors_like_nginx_t",
]

Stmt = dict[str, Any]

# The phases of ``nginx -t`` in which an error is found (it stops at the first).
_PARSE, _INIT_UPSTREAM, _MERGE, _SSL_INIT, _VARIABLES = range(5)


def _open_source_directives() -> frozenset[str]:
    """crossplane's table less its nginx Plus tail, less spdy, plus what nginx 1.22 adds.

    The additions were found by asking nginx 1.22 itself (``nginx -t`` on each
    name in its binary); module directives count as known even when the module
    is dynamic and not loaded, as any build with the module knows them.
    """
    names = list(DIRECTIVES)
    end = next((i for i in range(1, len(names)) if names[i] < names[i - 1]), len(names))
    known = {name for name in names[:end] if not name.startswith("spdy_")}
    return frozenset(known) | {
        "auth_delay",
        "epoll_events",
        "grpc_ssl_conf_command",
        "gzip_hash",
        "gzip_no_buffer",
        "gzip_window",
        "http2_pool_size",
        "http2_streams_index_size",
        "keepalive_time",
        "max_headers",
        "mp4_start_key_frame",
        "open_file_cache_events",
        "post_action",
        "postpone_gzipping",
        "proxy_cookie_flags",
        "proxy_half_close",
        "proxy_ssl_conf_command",
        "ssi_ignore_recycled_buffers",
        "ssl_alpn",
        "ssl_conf_command",
        "ssl_ocsp",
        "ssl_ocsp_cache",
        "ssl_ocsp_responder",
        "ssl_reject_handshake",
        "userid_flags",
        "uwsgi_ssl_conf_command",
        "uwsgi_string",
    }


#: Every directive of open-source nginx 1.22 (the ones ``nginx -t`` does not call unknown).
NGINX_DIRECTIVES = _open_source_directives()

#: nginx Plus's health features: nginx OSS (``nginx -t``) refuses them as unknown; lbkit
#: warns and ignores them, naming its own TOML keys (lbkit.l7.tomlconf) that do the same.
#: max_fails/fail_timeout (OSS passive health) keep working as in nginx.
PLUS_ONLY = {
    "health_check": (
        "nginx Plus only; nginx OSS has no active health checks, ignored "
        "(lbkit's TOML: health_check in the pool)"
    ),
    "match": "nginx Plus only (health_check's match block), ignored",
    "slow_start": "nginx Plus only, ignored (lbkit's TOML: slow_start in the pool)",
}

#: nginx 1.22's variables by name (ngx_http_variables.c and the modules of a stock build).
NGINX_VARIABLES = frozenset(
    """
    host binary_remote_addr remote_addr remote_port proxy_protocol_addr proxy_protocol_port
    proxy_protocol_server_addr proxy_protocol_server_port server_addr server_port
    server_protocol scheme https request_uri uri document_uri request document_root
    realpath_root query_string args is_args request_filename server_name request_method
    remote_user bytes_sent body_bytes_sent pipe request_completion request_body
    request_body_file request_length request_time request_id status content_length
    content_type limit_rate connection connection_requests connection_time nginx_version
    hostname pid msec time_iso8601 time_local tcpinfo_rtt tcpinfo_rttvar tcpinfo_snd_cwnd
    tcpinfo_rcv_space
    proxy_host proxy_port proxy_add_x_forwarded_for proxy_internal_body_length
    proxy_internal_chunked
    upstream_addr upstream_status upstream_connect_time upstream_header_time
    upstream_response_time upstream_response_length upstream_bytes_received
    upstream_bytes_sent upstream_cache_status
    ssl_protocol ssl_cipher ssl_ciphers ssl_curve ssl_curves ssl_session_id
    ssl_session_reused ssl_early_data ssl_server_name ssl_alpn_protocol ssl_client_cert
    ssl_client_raw_cert ssl_client_escaped_cert ssl_client_s_dn ssl_client_i_dn
    ssl_client_s_dn_legacy ssl_client_i_dn_legacy ssl_client_serial ssl_client_fingerprint
    ssl_client_verify ssl_client_v_start ssl_client_v_end ssl_client_v_remain
    realip_remote_addr realip_remote_port connections_active connections_reading
    connections_writing connections_waiting fastcgi_script_name fastcgi_path_info
    gzip_ratio limit_conn_status limit_req_status invalid_referer secure_link
    secure_link_expires uid_got uid_set uid_reset modern_browser ancient_browser msie
    http2 date_local date_gmt slice_range
    """.split()  # noqa: SIM905 (a word list reads better than 120 quoted strings)
)

#: Name prefixes that make a variable of any suffix ($http_user_agent, $cookie_sid, ...).
NGINX_VARIABLE_PREFIXES = (
    "http_",
    "sent_http_",
    "sent_trailer_",
    "cookie_",
    "arg_",
    "upstream_http_",
    "upstream_trailer_",
    "upstream_cookie_",
)

# Which arguments of a directive nginx compiles as a script (and so checks variables of).
_SCRIPT_ARGS: dict[str, slice] = {
    "proxy_set_header": slice(1, 2),
    "proxy_pass": slice(0, 1),
    "hash": slice(0, 1),
    "add_header": slice(1, 2),
    "add_trailer": slice(1, 2),
    "set": slice(1, 2),
    "map": slice(0, 1),
    "rewrite": slice(1, 2),
    "if": slice(0, 1),
    "root": slice(0, 1),
    "alias": slice(0, 1),
    "try_files": slice(0, None),
    "proxy_cache_key": slice(0, 1),
    "proxy_set_body": slice(0, 1),
    "limit_req_zone": slice(0, 1),
    "limit_conn_zone": slice(0, 1),
}
# Directives that create variables: where the new variable's name is.
_DEFINES = {"set": 0, "map": 1, "split_clients": 1, "geo": -1}

_VAR = re.compile(r"\$(?:\{(\w*)\}|(\w*))")
_NAMED_GROUP = re.compile(r"\(\?(?:P?<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)')")
_NEXT_UPSTREAM = frozenset({*OUTCOMES, "updating", "non_idempotent", "off"})
# Python's re errors in PCRE2's words, for the common slips (pcre2_compile's messages);
# True: PCRE2 points at the error's offset, and nginx adds ' at "REST OF PATTERN"'.
_PCRE_WORDS = {
    "missing ), unterminated subpattern": ("missing closing parenthesis", False),
    "unbalanced parenthesis": ("unmatched closing parenthesis", True),
    "unterminated character set": ("missing terminating ] for character class", False),
    "nothing to repeat": ("quantifier does not follow a repeatable item", True),
}
_LISTEN_FLAGS = frozenset({"bind", "deferred", "reuseport", "ssl", "http2", "proxy_protocol"})
_LISTEN_KEYS = ("setfib=", "fastopen=", "backlog=", "rcvbuf=", "sndbuf=", "accept_filter=")
_LISTEN_KEYS += ("ipv6only=", "so_keepalive=")
_BALANCERS = ("least_conn", "ip_hash", "hash", "random")

# Limits: directive -> (kind, Limits attribute). Each names nginx's parser of the value.
_LIMITS: dict[str, tuple[str, str]] = {
    "client_max_body_size": ("offset", "client_max_body_size"),  # ngx_parse_offset
    "client_header_timeout": ("msec", "client_header_timeout"),  # ngx_parse_time(, 0)
    "client_body_timeout": ("msec", "client_body_timeout"),
    "proxy_connect_timeout": ("msec", "proxy_connect_timeout"),
    "proxy_read_timeout": ("msec", "proxy_read_timeout"),
    "keepalive_timeout": ("msec", "keepalive_timeout"),
    "large_client_header_buffers": ("bufs", "large_client_header_buffers"),
}


class NginxConfigError(LabError):
    """An nginx configuration that nginx itself would refuse; the message is its first error."""

    def __init__(self, errors: list[str], warnings: list[str] | None = None) -> None:
        super().__init__(errors[0] if errors else "invalid nginx configuration")
        self.errors = list(errors)
        self.warnings = list(warnings or [])


@dataclass
class NginxCheck:
    """What :func:`check_nginx` found: ``config`` is None when there is any error."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: RouterConfig | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def check_nginx(path: str | os.PathLike[str]) -> NginxCheck:
    """Read ``path`` like ``nginx -t``: every error and warning, and the model if it is valid."""
    return _Reader(Path(path)).run()


def load_nginx(path: str | os.PathLike[str]) -> RouterConfig:
    """The router configuration of nginx file ``path``; :class:`NginxConfigError` if invalid."""
    check = check_nginx(path)
    if check.errors or check.config is None:
        raise NginxConfigError(check.errors, check.warnings)
    return check.config


# --------------------------------------------------------------------------- values
_TIME_UNITS = {"y": 365 * 86400, "M": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600}
_TIME_UNITS |= {"m": 60, "s": 1, "ms": 0.001}
_TIME_ORDER = ["y", "M", "w", "d", "h", "m", "s", "ms"]


def parse_time(text: str, seconds_only: bool = False) -> float | None:
    """nginx's ``ngx_parse_time``: "10s", "1m30s", "500ms", "60" in seconds; None if invalid.

    Units go from large to small, each at most once, and a bare number counts
    seconds (also at the end: "1m30"). ``seconds_only`` (nginx's ``is_sec``, as
    in ``fail_timeout=``) refuses ``ms``; time-outs (``is_sec=0``) refuse
    years and months.
    """
    parts = re.findall(r"(\d+)(ms|[yMwdhms]?)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    total, last = 0.0, -1
    for number, unit in parts:
        if unit:  # a bare number can only come last: \d+ took every digit
            rank = _TIME_ORDER.index(unit)
            if rank <= last or unit in (("ms",) if seconds_only else ("y", "M")):
                return None
            last = rank
        total += int(number) * _TIME_UNITS[unit or "s"]
    return total


def parse_size(text: str) -> int | None:
    """nginx's ``ngx_parse_offset``: "512", "512k", "1m", "1g" in bytes; None if invalid."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    if not m:
        return None
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * scale


def _host_port(url: str, default_port: int) -> tuple[str, int | None]:
    """Split ``host[:port]`` / ``[v6]:port``; port None if it is not a valid port number."""
    if url.startswith("["):
        host, _, rest = url[1:].partition("]")
        host = f"[{host}]"
        port_text = rest[1:] if rest.startswith(":") else ""
    elif url.count(":") == 1:
        host, _, port_text = url.partition(":")
    else:
        host, port_text = url, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return host, None
    return host, int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- reader
@dataclass
class _Inherited:
    """Directives a location inherits from its server, and a server from ``http``."""

    set_headers: list[tuple[str, str]] | None = None
    next_upstream: list[str] | None = None
    next_upstream_tries: int | None = None
    http_version: str | None = None
    ssl_certificate: tuple[str, str] | None = None  # (value, origin)
    ssl_certificate_key: tuple[str, str] | None = None
    seen: set[str] = field(default_factory=set)  # directives given here (duplicate checks)


@dataclass
class _Merge:
    """A server waiting for the merge phase: its own settings and its locations' settings."""

    block: ServerBlock
    scope: _Inherited
    locations: list[tuple[Location, _Inherited]]


class _Reader:
    """One reading of one file: walks crossplane's statements, collects model and faults."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self._errors: list[tuple[int, int, str]] = []
        self.warnings: list[str] = []
        self.upstreams: dict[str, Upstream] = {}
        self.servers: list[ServerBlock] = []
        self.limits = Limits()
        self.http = _Inherited()
        self._limit_origin: dict[str, tuple[object, str, str, bool]] = {}  # attr -> value, ...
        self._used_vars: list[tuple[str, str]] = []  # (name, origin)
        self._defined_vars: set[str] = set()
        self._proxy_targets: list[tuple[str, str, str]] = []  # (authority, scheme, origin)
        # (address, port) -> every (server, listen) on it, in order (ngx_http_add_addresses)
        self._addresses: dict[tuple[str, int], list[tuple[ServerBlock, Listen]]] = {}
        self._optioned: set[tuple[str, int]] = set()  # addresses whose options a listen set
        self._names_seen: set[tuple[str, int, str]] = set()
        self._merges: list[_Merge] = []

    # ------------------------------------------------------------- messages
    @staticmethod
    def _origin(stmt: Stmt) -> str:
        return f"{stmt['file']}:{stmt['line']}"

    def _error(self, phase: int, origin: str, message: str) -> None:
        self._errors.append((phase, len(self._errors), f"{origin}: {message}"))

    def _warn(self, origin: str, message: str) -> None:
        self.warnings.append(f"{origin}: {message}")

    def _unsupported(self, stmt: Stmt) -> None:
        self._warn(
            self._origin(stmt),
            f'directive "{stmt["directive"]}" is not supported by lbkit, ignored',
        )
        self._note_variables(stmt)
        self._note_definitions(stmt)

    def _note_definitions(self, stmt: Stmt) -> None:
        """Variables that an ignored directive or block creates (set, regex named groups)."""
        if stmt["directive"] in ("if", "rewrite", "location"):
            for arg in stmt["args"]:
                for m in _NAMED_GROUP.finditer(arg):
                    self._defined_vars.add((m.group(1) or m.group(2)).lower())
        if stmt["directive"] in _DEFINES and stmt["args"]:
            self._defined_vars.add(stmt["args"][_DEFINES[stmt["directive"]]].lstrip("$").lower())
        if stmt["directive"] in ("if", "location", "limit_except"):
            for inner in stmt.get("block", []):
                self._note_definitions(inner)

    # ----------------------------------------------------------------- main
    def run(self) -> NginxCheck:
        if not self.path.is_file():
            self._error(
                _PARSE,
                str(self.path),
                f'open() "{self.path}" failed (2: No such file or directory)',
            )
            return self._result()
        try:
            payload = crossplane.parse(
                str(self.path),
                catch_errors=True,
                combine=False,  # its combine mislabels the file of statements after an include
                single=False,
                comments=False,
                strict=False,
                check_ctx=False,
                check_args=False,
            )
        except Exception as exc:  # crossplane's lexer on an unreadable file
            self._error(_PARSE, str(self.path), str(exc))
            return self._result()
        for err in payload["errors"]:
            self._crossplane_error(err)
        top = _expand_includes(payload["config"])
        if any(s["directive"] in ("http", "events") for s in top):
            self._main(top)
        else:
            self._http(top, ("http",))
        self._finish()
        return self._result()

    def _crossplane_error(self, err: dict[str, Any]) -> None:
        file, line, text = err.get("file") or str(self.path), err.get("line"), err["error"]
        text = re.sub(r" in \S+?(:\d+)?$", "", text)
        m = re.match(r"\[Errno (\d+)\] ([^:]+): '(.*)'$", text)
        if m:  # an include that cannot be opened, in nginx's words
            text = f'open() "{m.group(3)}" failed ({m.group(1)}: {m.group(2)})'
        if text.startswith("unexpected end of file"):  # nginx counts the line after the last \n
            line = Path(file).read_text(errors="replace").count("\n") + 1
        self._error(_PARSE, f"{file}:{line}" if line else file, text)

    def _analyze(self, stmt: Stmt, ctx: tuple[str, ...]) -> bool:
        """nginx's generic checks: known directive, allowed here, number of arguments."""
        name = stmt["directive"]
        if ctx not in CONTEXTS:  # inside map/types/geo...: entries, not directives
            return False
        if name not in NGINX_DIRECTIVES:
            if name in PLUS_ONLY:
                self._warn(self._origin(stmt), f'"{name}": {PLUS_ONLY[name]}')
                return False
            self._error(_PARSE, self._origin(stmt), f'unknown directive "{name}"')
            return False
        try:
            term = "{" if "block" in stmt else ";"
            analyze(stmt["file"], stmt, term, ctx, strict=False, check_ctx=True, check_args=True)
        except NgxParserDirectiveError as exc:
            self._error(_PARSE, self._origin(stmt), exc.strerror)
            return False
        return True

    def _main(self, top: list[Stmt]) -> None:
        """A full nginx.conf: only ``http {}`` matters to lbkit; the rest runs nginx itself."""
        for stmt in top:
            if not self._analyze(stmt, ()):
                continue
            name = stmt["directive"]
            if name == "http":
                self._http(stmt["block"], ("http",))
            elif name == "events":
                for inner in stmt["block"]:
                    self._analyze(inner, ("events",))
            elif name in ("stream", "mail"):
                self._warn(self._origin(stmt), f'"{name}" is not supported by lbkit, ignored')
        if not any(s["directive"] == "events" for s in top):
            self._error(_INIT_UPSTREAM, str(self.path), 'no "events" section in configuration')

    # ----------------------------------------------------------------- http
    def _http(self, block: list[Stmt], ctx: tuple[str, ...]) -> None:
        for stmt in block:
            if not self._analyze(stmt, ctx):
                continue
            name = stmt["directive"]
            if name == "upstream":
                self._upstream(stmt)
            elif name == "server":
                self._server(stmt)
            elif not self._common(stmt, self.http):
                self._unsupported(stmt)

    def _common(self, stmt: Stmt, scope: _Inherited) -> bool:
        """Directives valid at http, server and location level; False if not one of them."""
        name, args, origin = stmt["directive"], stmt["args"], self._origin(stmt)
        if name in _LIMITS:
            self._limit(stmt, scope)
        elif name == "proxy_set_header":
            scope.set_headers = [*(scope.set_headers or []), (args[0], args[1])]
            self._note_variables(stmt)
        elif name == "proxy_next_upstream":
            bad = [a for a in args if a not in _NEXT_UPSTREAM]
            if bad:
                self._error(_PARSE, origin, f'invalid value "{bad[0]}"')
            else:  # nginx ORs the bits of repeated lines (ngx_conf_set_bitmask_slot)
                scope.next_upstream = [*(scope.next_upstream or []), *args]
        elif name == "proxy_next_upstream_tries":
            if self._duplicate(stmt, scope):
                return True
            if not args[0].isdigit():
                self._error(_PARSE, origin, f'"{name}" directive invalid number')
            else:
                scope.next_upstream_tries = int(args[0])
        elif name == "proxy_http_version":
            if self._duplicate(stmt, scope):
                return True
            if args[0] not in ("1.0", "1.1"):
                self._error(_PARSE, origin, f'invalid value "{args[0]}"')  # ngx_conf_set_enum_slot
            else:
                scope.http_version = args[0]
        elif name in ("ssl_certificate", "ssl_certificate_key"):
            if getattr(scope, name) is None:
                setattr(scope, name, (args[0], origin))
            else:
                self._warn(origin, f'lbkit uses one "{name}" per server, this one is ignored')
        elif name in _DEFINES:
            self._unsupported(stmt)  # which notes the variable it defines
        else:
            return False
        return True

    def _duplicate(self, stmt: Stmt, scope: _Inherited) -> bool:
        name = stmt["directive"]
        if name in scope.seen:
            self._error(_PARSE, self._origin(stmt), f'"{name}" directive is duplicate')
            return True
        scope.seen.add(name)
        return False

    def _limit(self, stmt: Stmt, scope: _Inherited) -> None:
        """A time-out or size. lbkit keeps one value for the whole router: http's, or a server's."""
        name, args, origin = stmt["directive"], stmt["args"], self._origin(stmt)
        if self._duplicate(stmt, scope):
            return
        kind, attr = _LIMITS[name]
        value: Any
        if kind == "msec":
            value = parse_time(args[0])
            if name == "keepalive_timeout" and len(args) > 1 and parse_time(args[1]) is None:
                value = None
        elif kind == "offset":
            value = parse_size(args[0])
        else:  # large_client_header_buffers NUMBER SIZE
            number, size = int(args[0]) if args[0].isdigit() else 0, parse_size(args[1])
            value = (number, size) if number and size else None
        if value is None:
            self._error(_PARSE, origin, f'"{name}" directive invalid value')
            return
        text, at_http = " ".join(args), scope is self.http
        previous = self._limit_origin.get(attr)
        if previous is not None and not previous[3]:  # a server or location set it first
            if not at_http and previous[0] != value:
                self._warn(
                    origin,
                    f'"{name} {text}" ignored: lbkit applies one value to every server, '
                    f"{previous[1]} from {previous[2]}",
                )
            return
        self._limit_origin[attr] = (value, text, origin, at_http)
        if kind == "bufs":
            self.limits.large_client_header_buffers = value[1]
            self.limits.max_headers_bytes = value[0] * value[1]
        else:
            setattr(self.limits, attr, value)

    # ------------------------------------------------------------- upstream
    def _upstream(self, stmt: Stmt) -> None:
        """``upstream NAME {}``: ngx_http_upstream and the balancer modules' directives."""
        name, origin = stmt["args"][0], self._origin(stmt)
        if name in self.upstreams:
            self._error(_PARSE, origin, f'duplicate upstream "{name}"')
            return
        up = Upstream(name=name, servers=[], origin=origin)
        method: str | None = None
        errors_before = len(self._errors)
        for inner in stmt["block"]:
            if not self._analyze(inner, ("http", "upstream")):
                continue
            d, where = inner["directive"], self._origin(inner)
            if d in _BALANCERS:
                if method is not None:
                    self._warn(where, "load balancing method redefined")
                method = d
                self._balancer(up, inner)
            elif d == "server":
                self._upstream_server(up, inner, method)
            else:
                self._unsupported(inner)
            if d in _BALANCERS and d != "least_conn" and any(s.backup for s in up.servers):
                self._warn(
                    where,
                    f'"{d}" does not support "backup" servers; nginx checks only the servers '
                    "after it, lbkit keeps the ones before as backups",
                )
        self.upstreams[name] = up
        if len(self._errors) > errors_before:  # nginx stopped at that error already
            return
        if not up.servers:
            self._error(
                _PARSE, f"{stmt['file']}:{_block_end(stmt)}", "no servers are inside upstream"
            )
        elif all(s.backup for s in up.servers):
            self._error(_INIT_UPSTREAM, origin, f'no servers in upstream "{name}"')

    def _balancer(self, up: Upstream, stmt: Stmt) -> None:
        d, args, origin = stmt["directive"], stmt["args"], self._origin(stmt)
        if d == "least_conn":
            up.algorithm = "least_connections"
        elif d == "ip_hash":
            up.algorithm = "ip_hash"
        elif d == "hash":
            if args[1:] not in ([], ["consistent"]):
                self._error(_PARSE, origin, f'invalid parameter "{args[1]}"')
                return
            up.algorithm, up.hash_key = "ring_hash", args[0]
            if len(args) == 1:
                self._warn(origin, "hash without consistent: lbkit uses a consistent ring")
            self._note_variables(stmt)
        else:  # random [two [least_conn]]
            bad = next(
                (a for a, ok in zip(args, ("two", "least_conn"), strict=False) if a != ok), None
            )
            if bad is not None:
                self._error(_PARSE, origin, f'invalid parameter "{bad}"')
                return
            up.algorithm = "power_of_two" if args else "random"

    def _upstream_server(self, up: Upstream, stmt: Stmt, method: str | None) -> None:
        """ngx_http_upstream_server: ``server ADDRESS [weight=N] [max_fails=N] ...``."""
        args, origin = stmt["args"], self._origin(stmt)
        server = UpstreamServer(address=args[0], origin=origin)
        for arg in args[1:]:
            key, eq, value = arg.partition("=")
            number = int(value) if value.isdigit() else None
            if eq and key in ("weight", "max_conns", "max_fails"):
                if number is None or (key == "weight" and number == 0):
                    self._error(_PARSE, origin, f'invalid parameter "{arg}"')
                    return
                setattr(server, key, number)
            elif eq and key == "fail_timeout":
                seconds = parse_time(value, seconds_only=True)
                if seconds is None:
                    self._error(_PARSE, origin, f'invalid parameter "{arg}"')
                    return
                server.fail_timeout = seconds
            elif arg == "backup":
                if method not in (None, "least_conn"):
                    message = f'balancing method does not support parameter "{arg}"'
                    self._error(_PARSE, origin, message)
                    return
                server.backup = True
            elif arg == "down":
                server.down = True
            elif eq and key == "slow_start":
                self._warn(origin, f'"{arg}": {PLUS_ONLY["slow_start"]}')
            else:
                self._error(_PARSE, origin, f'invalid parameter "{arg}"')
                return
        if args[0].startswith("unix:"):
            self._warn(origin, "unix-domain upstream servers are not supported by lbkit")
        else:
            host, port = _host_port(args[0], 80)
            if port is None:
                self._error(_PARSE, origin, f'invalid port in upstream "{args[0]}"')
                return
            server.address = f"{host}:{port}"
        up.servers.append(server)

    # --------------------------------------------------------------- server
    def _server(self, stmt: Stmt) -> None:
        """``server {}``: listens, names, certificates and the locations in file order."""
        ctx, origin = ("http", "server"), self._origin(stmt)
        block = ServerBlock(listens=[], origin=origin)
        merge = _Merge(block, _Inherited(), [])
        server_return: tuple[int, str, str] | None = None
        for inner in stmt["block"]:
            if not self._analyze(inner, ctx):
                continue
            d = inner["directive"]
            if d == "listen":
                self._listen(block, inner)
            elif d == "server_name":
                for name in inner["args"]:
                    if name.startswith("~"):
                        regex = self._regex(name[1:], inner)
                        if regex is None:
                            continue
                        name = "~" + regex
                    block.server_names.append(name)
                    self._server_name(block, name, inner)
            elif d == "location":
                self._location(inner, merge)
            elif d == "return":
                result = self._return(inner)
                if result is not None and server_return is None:
                    server_return = (*result, self._origin(inner))
            elif not self._common(inner, merge.scope):
                self._unsupported(inner)
        if not block.listens:  # nginx: *:80 when started as root
            self._add_listen(block, Listen(port=80, origin=origin))
        if not block.server_names:
            block.server_names = [""]
            self._server_name(block, "", stmt)
        if server_return is not None:  # the server's rewrite phase runs before any location
            status, body, where = server_return
            loc = Location("/", return_status=status, return_body=body, origin=where)
            merge.locations = [(loc, _Inherited())]
        self.servers.append(block)
        self._merges.append(merge)

    def _server_name(self, block: ServerBlock, name: str, stmt: Stmt) -> None:
        """ngx_http_server_names: a name given twice on one address:port is ignored."""
        for ln in block.listens:
            key = (ln.address, ln.port, name.lower())
            if key in self._names_seen:
                where = f"{ln.address}:{ln.port}"
                self._warn(
                    self._origin(stmt), f'conflicting server name "{name}" on {where}, ignored'
                )
            self._names_seen.add(key)

    def _listen(self, block: ServerBlock, stmt: Stmt) -> None:
        """ngx_http_core_listen: ``listen [ADDRESS:]PORT [default_server] [ssl] ...``."""
        args, origin = stmt["args"], self._origin(stmt)
        if args[0].startswith("unix:"):
            self._warn(origin, "unix-domain listen sockets are not supported by lbkit, ignored")
            return
        text = args[0]
        if text.isdigit():
            host, port = "*", int(text) if 0 < int(text) < 65536 else None
        else:
            host, port = _host_port(text, 80)
        if port is None:
            self._error(_PARSE, origin, f'invalid port in "{text}" of the "listen" directive')
            return
        listen = Listen(port=port, address="0.0.0.0" if host == "*" else host, origin=origin)
        options = False  # nginx's lsopt.set: socket options that only one listen may give
        for arg in args[1:]:
            if arg in ("default_server", "default"):
                listen.default_server = True
            elif arg == "ssl":
                listen.ssl = True
            elif arg in ("http2", "proxy_protocol"):
                self._warn(origin, f'listen parameter "{arg}" is not supported by lbkit, ignored')
            elif arg in _LISTEN_FLAGS or arg.startswith(_LISTEN_KEYS):
                options = True
            else:
                self._error(_PARSE, origin, f'invalid parameter "{arg}"')
                return
        where = f"{listen.address}:{port}"
        if any((ln.address, ln.port) == (listen.address, port) for ln in block.listens):
            self._error(_PARSE, origin, f"a duplicate listen {where}")
            return
        others = self._addresses.get((listen.address, port), [])
        if options and (listen.address, port) in self._optioned:
            self._error(_PARSE, origin, f"duplicate listen options for {where}")
            return
        if listen.default_server and any(ln.default_server for _, ln in others):
            self._error(_PARSE, origin, f"a duplicate default server for {where}")
            return
        if options:
            self._optioned.add((listen.address, port))
        self._add_listen(block, listen)

    def _add_listen(self, block: ServerBlock, listen: Listen) -> None:
        block.listens.append(listen)
        self._addresses.setdefault((listen.address, listen.port), []).append((block, listen))

    # ------------------------------------------------------------- location
    def _location(self, stmt: Stmt, merge: _Merge) -> None:
        """ngx_http_core_location: ``location [=|~|~*|^~] PATTERN { ... }``; lbkit: no nesting."""
        args, origin = stmt["args"], self._origin(stmt)
        if len(args) == 2:
            modifier, pattern = args
            if modifier not in ("=", "~", "~*", "^~"):
                self._error(_PARSE, origin, f'invalid location modifier "{modifier}"')
                return
        else:
            text = args[0]
            if text.startswith("@"):
                self._warn(origin, "named locations are not supported by lbkit, ignored")
                return
            modifier = next((m for m in ("=", "^~", "~*", "~") if text.startswith(m)), "")
            pattern = text[len(modifier) :]
        if modifier in ("~", "~*"):
            regex = self._regex(pattern, stmt)
            if regex is None:
                return
            pattern = regex
        loc = Location(pattern=pattern, modifier=modifier, origin=origin)
        scope = _Inherited()
        for inner in stmt["block"]:
            if not self._analyze(inner, ("http", "location")):
                continue
            d, where = inner["directive"], self._origin(inner)
            if d == "location":
                self._warn(where, "nested locations are not supported by lbkit, ignored")
                self._note_definitions(inner)
            elif d == "proxy_pass":
                if not self._duplicate(inner, scope):
                    self._proxy_pass(loc, inner)
            elif d == "return":
                result = self._return(inner)
                if result is not None and loc.return_status is None:
                    loc.return_status, loc.return_body = result
            elif not self._common(inner, scope):
                self._unsupported(inner)
        if modifier not in ("~", "~*"):  # ngx_http_join_exact_locations, after the merge
            for other, _ in merge.locations:
                same = other.modifier not in ("~", "~*") and other.pattern == pattern
                if same and (other.modifier == "=") == (modifier == "="):
                    self._error(_MERGE, origin, f'duplicate location "{pattern}"')
                    return
        merge.locations.append((loc, scope))

    def _proxy_pass(self, loc: Location, stmt: Stmt) -> None:
        """ngx_http_proxy_pass: an upstream name or host:port, and an optional URI part."""
        url, origin = stmt["args"][0], self._origin(stmt)
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            self._error(_PARSE, origin, "invalid URL prefix")
            return
        self._note_variables(stmt)
        loc.proxy_pass = url
        if "$" in url:
            self._warn(origin, "proxy_pass with variables is not supported by lbkit")
            return
        authority, slash, _ = rest.partition("/")
        if slash and loc.modifier in ("~", "~*"):
            self._error(
                _PARSE,
                origin,
                '"proxy_pass" cannot have URI part in location given by regular expression, '
                'or inside named location, or inside "if" statement, '
                'or inside "limit_except" block',
            )
            return
        self._proxy_targets.append((authority, scheme.lower(), origin))

    def _return(self, stmt: Stmt) -> tuple[int, str] | None:
        """ngx_http_rewrite_return: ``return CODE [TEXT]`` or ``return URL`` (a 302)."""
        args, origin = stmt["args"], self._origin(stmt)
        self._note_variables(stmt, args[-1:])
        if len(args) == 1 and args[0].startswith(("http://", "https://", "$scheme")):
            return 302, args[0]
        if not args[0].isdigit():
            self._error(_PARSE, origin, f'invalid return code "{args[0]}"')
            return None
        return int(args[0]), args[1] if len(args) > 1 else ""

    # ------------------------------------------------------------ variables
    def _regex(self, pattern: str, stmt: Stmt) -> str | None:
        """A PCRE pattern as Python's re writes it (``(?<name>`` -> ``(?P<name>``); None if bad.

        Its named groups become variables, as nginx's regex captures do.
        """
        pattern = re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern)
        try:
            re.compile(pattern)
        except re.error as exc:
            why, at = _PCRE_WORDS.get(exc.msg, (exc.msg, False))
            where = f' at "{pattern[exc.pos :]}"' if at and exc.pos is not None else ""
            message = f'pcre2_compile() failed: {why} in "{pattern}"{where}'
            self._error(_PARSE, self._origin(stmt), message)
            return None
        for m in _NAMED_GROUP.finditer(pattern):
            self._defined_vars.add((m.group(1) or m.group(2)).lower())
        return pattern

    def _note_variables(self, stmt: Stmt, values: list[str] | None = None) -> None:
        """Remember every ``$name`` that nginx would compile from this directive's arguments."""
        name = stmt["directive"]
        if values is None:
            if name == "log_format":
                values = [a for a in stmt["args"][1:] if not a.startswith("escape=")]
            else:
                values = stmt["args"][_SCRIPT_ARGS.get(name, slice(0, 0))]
        for value in values:
            for m in _VAR.finditer(value):
                var = (m.group(1) if m.group(1) is not None else m.group(2)).lower()
                if var and not var[0].isdigit():
                    self._used_vars.append((var, self._origin(stmt)))

    @staticmethod
    def known_variable(name: str) -> bool:
        return name in NGINX_VARIABLES or name.startswith(NGINX_VARIABLE_PREFIXES)

    # --------------------------------------------------------------- finish
    def _finish(self) -> None:
        """What nginx does after parsing: upstream init, merge, ssl init, variables init."""
        for authority, scheme, origin in self._proxy_targets:
            host, port = _host_port(authority, 443 if scheme == "https" else 80)
            if host in self.upstreams or authority in self.upstreams:
                continue
            if port is None:
                self._error(_PARSE, origin, f'invalid port in upstream "{authority}"')
                continue
            if not _is_ip(host) and host != "localhost":
                self._warn(origin, f'no upstream "{host}": lbkit connects to {host}:{port}')
            server = UpstreamServer(address=f"{host}:{port}", origin=origin)
            self.upstreams[authority] = Upstream(name=authority, servers=[server], origin=origin)
        for merge in self._merges:
            self._merge(merge)
        for listens in self._addresses.values():
            # ngx_http_ssl_init: the default server of an address with "ssl" needs a
            # certificate; nginx cites that server block's line (cscf->line), not the listen.
            default = next((b for b, ln in listens if ln.default_server), listens[0][0])
            if any(ln.ssl for _, ln in listens) and default.ssl_certificate is None:
                message = 'no "ssl_certificate" is defined for the "listen ... ssl" directive'
                self._error(_SSL_INIT, default.origin, message)
        reported: set[str] = set()
        for name, origin in self._used_vars:
            if name in reported or self.known_variable(name) or name in self._defined_vars:
                continue
            reported.add(name)
            self._error(_VARIABLES, origin, f'unknown "{name}" variable')

    def _merge(self, merge: _Merge) -> None:
        """ngx_http_merge_servers: a location inherits what it does not set, from server, http."""
        block, scope, http = merge.block, merge.scope, self.http
        cert = scope.ssl_certificate or http.ssl_certificate
        key = scope.ssl_certificate_key or http.ssl_certificate_key
        if cert is not None:
            block.ssl_certificate = os.path.abspath(self.base / cert[0])
            block.ssl_origin = cert[1]
            if key is None:
                message = f'no "ssl_certificate_key" is defined for certificate "{cert[0]}"'
                self._error(_MERGE, cert[1], message)
            elif not Path(block.ssl_certificate).is_file():
                self._error(
                    _MERGE,
                    cert[1],
                    f'cannot load certificate "{block.ssl_certificate}": no such file',
                )
        if key is not None:
            block.ssl_certificate_key = os.path.abspath(self.base / key[0])
            if cert is not None and not Path(block.ssl_certificate_key).is_file():
                message = f'cannot load certificate key "{block.ssl_certificate_key}": no such file'
                self._error(_MERGE, key[1], message)
        for loc, own in merge.locations:
            for attr in ("set_headers", "next_upstream", "next_upstream_tries", "http_version"):
                chain = (getattr(own, attr), getattr(scope, attr), getattr(http, attr))
                value = next((v for v in chain if v is not None), None)
                if value is not None:
                    setattr(loc, attr, list(value) if isinstance(value, list) else value)
            block.locations.append(loc)

    def _result(self) -> NginxCheck:
        errors = [text for _, _, text in sorted(self._errors)]
        if errors:
            return NginxCheck(errors=errors, warnings=list(self.warnings))
        config = RouterConfig(
            servers=self.servers,
            upstreams=self.upstreams,
            limits=self.limits,
            source=str(self.path),
            warnings=list(self.warnings),
        )
        return NginxCheck(errors=[], warnings=list(self.warnings), config=config)


def _expand_includes(configs: list[dict[str, Any]]) -> list[Stmt]:
    """crossplane's per-file statements as one tree, each statement stamped with its file."""

    def expand(index: int, active: tuple[int, ...]) -> list[Stmt]:
        return walk(configs[index]["parsed"], configs[index]["file"], (*active, index))

    def walk(block: list[Stmt], file: str, active: tuple[int, ...]) -> list[Stmt]:
        out: list[Stmt] = []
        for stmt in block:
            if "includes" in stmt:  # an include cycle would never end in nginx either
                for index in stmt["includes"]:
                    if index not in active:
                        out.extend(expand(index, active))
                continue
            stmt = {**stmt, "file": file}
            if "block" in stmt:
                stmt["block"] = walk(stmt["block"], file, active)
            out.append(stmt)
        return out

    return expand(0, ()) if configs else []


def _block_end(stmt: Stmt) -> int:
    """The line of the ``}`` closing a block without nested blocks (where nginx reports)."""
    lines = Path(stmt["file"]).read_text(errors="replace").splitlines()
    depth = 0
    for number in range(stmt["line"], len(lines) + 1):
        text = re.sub(r"#.*", "", re.sub(r"\"[^\"]*\"|'[^']*'", "", lines[number - 1]))
        for ch in text:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if ch == "}" and depth == 0:
                return number
    return stmt["line"]


# ------------------------------------------------------------------- nginx -t itself
_FULL_CONFIG = re.compile(r"^\s*(http|events)\s*\{", re.MULTILINE)


def lbkit_message(nginx_message: str) -> str:
    """nginx's ``MESSAGE in FILE:LINE`` as lbkit writes it, ``FILE:LINE: MESSAGE``."""
    m = re.fullmatch(r"(.*) in (\S+:\d+)", nginx_message)
    return f"{m.group(2)}: {m.group(1)}" if m else nginx_message


def nginx_errors_like_nginx_t(
    path: str | os.PathLike[str], level: str = "emerg", nginx: str | None = None
) -> list[str]:
    """Run the real ``nginx -t`` on ``path``; its ``[emerg]`` (or ``level``) messages.

    A conf.d-style file is included in ``http {}`` of a wrapper written to a
    temporary prefix (with ``events {}``, the pid file and temp paths there),
    and the file's folder is mirrored into that prefix by symlinks, so relative
    paths resolve as lbkit resolves them; a full nginx.conf is tested as it is.
    Each message is the text after ``[level] PID#TID: ``. Raises
    ``FileNotFoundError`` if nginx is not installed.
    """
    binary = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise FileNotFoundError("nginx is not installed")
    source = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="lbkit-nginx-t-") as tmp:
        prefix = Path(tmp)
        if _FULL_CONFIG.search(source.read_text(errors="replace")):
            command = [binary, "-t", "-c", str(source)]  # nginx's own prefix, for its modules
        else:
            for entry in source.parent.iterdir():
                link = prefix / entry.name
                if not link.exists():
                    link.symlink_to(entry)
            conf = prefix / "lbkit-nginx-t.conf"
            temps = " ".join(
                f"{kind}_temp_path {prefix}/{kind};"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            conf.write_text(
                f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
                f"events {{}}\nhttp {{\n{temps}\ninclude {source};\n}}\n"
            )
            command = [binary, "-t", "-p", f"{prefix}/", "-c", str(conf)]
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    pattern = re.compile(rf"\[{re.escape(level)}\] \d+#\d+: (.*)")
    return [m.group(1) for line in proc.stderr.splitlines() if (m := pattern.search(line))]
