"""Header work of a reverse proxy: hop-by-hop fields, nginx variables, forwarding headers.

Pure functions over ``list[tuple[str, str]]`` (order and case as received).

* Hop-by-hop fields belong to one connection and are never forwarded
  (RFC 9110 §7.6.1): Connection, every field it names, Proxy-Connection,
  Keep-Alive, TE, Transfer-Encoding, Upgrade; and Trailer (RFC 2616 §13.5.1).
* nginx variables (``$host``, ``$http_user_agent``, ...) as the proxy module
  evaluates them for ``proxy_set_header`` (ngx_http_variables.c).
* ``X-Forwarded-*``, RFC 7239 ``Forwarded`` and ``Via`` (RFC 9110 §7.6.3) for
  lbkit's own configs.
* Body framing of a request (RFC 9112 §6.3).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Headers = list[tuple[str, str]]


def field_lines(fields: Iterable[tuple[str, str]]) -> bytes:
    """Header lines, ``Name: value\\r\\n`` each, in latin-1 (RFC 9112 §5): how the proxy
    writes every field list it sends (upstream requests, answers, its own errors)."""
    return "".join([f"{k}: {v}\r\n" for k, v in fields]).encode("latin-1")


#: RFC 9110 §7.6.1 (and Trailer, from RFC 2616 §13.5.1's older list).
HOP_BY_HOP = frozenset(
    (
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
#: nginx clears Expect too (ngx_http_proxy_headers): the proxy answers ``100 Continue`` itself.
NOT_FORWARDED = HOP_BY_HOP | {"expect"}
#: RFC 9110 §5.6.2 tchar: what a token (and an unquoted Forwarded value) may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every value of field ``name`` (case-insensitive), in order."""
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def joined(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The field's values joined as one (RFC 9110 §5.3: ``, ``; Cookie: ``; ``), or None."""
    found = values(headers, name)
    if not found:
        return None
    return ("; " if name.lower() == "cookie" else ", ").join(v.strip() for v in found)


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> Headers:
    """Drop hop-by-hop fields, every field the Connection header names, and Expect."""
    headers = list(headers)
    named = {
        token.strip().lower()
        for value in values(headers, "connection")
        for token in value.split(",")
        if token.strip()
    }
    drop = NOT_FORWARDED | named
    return [(n, v) for n, v in headers if n.lower() not in drop]


def parse_cookies(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Cookie pairs (RFC 6265 §5.4); the first of a repeated name wins, as nginx's $cookie_."""
    jar: dict[str, str] = {}
    for value in values(headers, "cookie"):
        for pair in value.split(";"):
            name, sep, val = pair.strip().partition("=")
            if sep and name and name not in jar:
                jar[name] = val.strip().strip('"')
    return jar


@dataclass
class RequestVars:
    """The nginx variables a request defines, for ``proxy_set_header`` values.

    Unknown variables expand to ``""`` (nginx refuses them at ``nginx -t``).
    """

    method: str
    request_uri: str
    uri: str
    args: str | None
    host: str  # $host: normalised Host without port, else the server name
    headers: Headers
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    scheme: str = "http"
    server_name: str = ""
    proxy_host: str = ""
    version: str = "1.1"
    cookies: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        """The value of ``$name``, or None if nginx has no such variable."""
        if name.startswith("http_"):
            field = name[5:].replace("_", "-")
            if field in ("cookie", "x-forwarded-for"):  # the two nginx 1.22 joins
                return joined(self.headers, field) or ""
            found = values(self.headers, field)  # nginx 1.22: the first (1.23+ joins them all)
            return found[0] if found else ""
        if name.startswith("cookie_"):
            return self.cookies.get(name[7:], "")
        if name.startswith("arg_"):
            for pair in (self.args or "").split("&"):
                key, _, val = pair.partition("=")
                if key == name[4:]:
                    return val
            return ""
        simple = {
            "host": self.host,
            "remote_addr": self.remote_addr,
            "remote_port": str(self.remote_port),
            "server_addr": self.server_addr,
            "server_port": str(self.server_port),
            "server_name": self.server_name,
            "scheme": self.scheme,
            "https": "on" if self.scheme == "https" else "",
            "request_uri": self.request_uri,
            "uri": self.uri,
            "document_uri": self.uri,
            "args": self.args or "",
            "query_string": self.args or "",
            "is_args": "?" if self.args else "",
            "request_method": self.method,
            "server_protocol": f"HTTP/{self.version}",
            "proxy_host": self.proxy_host,
            "proxy_add_x_forwarded_for": add_x_forwarded_for(self.headers, self.remote_addr),
        }
        return simple.get(name)

    def expand(self, template: str) -> str:
        """``template`` with every ``$name`` / ``${name}`` replaced (nginx script syntax)."""
        if "$" not in template:
            return template
        return _VAR.sub(lambda m: self.get(m.group(1) or m.group(2)) or "", template)


def add_x_forwarded_for(headers: Iterable[tuple[str, str]], remote_addr: str) -> str:
    """nginx ``$proxy_add_x_forwarded_for``: the client's X-Forwarded-For + ", " + the peer."""
    seen = joined(headers, "x-forwarded-for")
    return f"{seen}, {remote_addr}" if seen else remote_addr


def compose(
    client: Iterable[tuple[str, str]],
    defaults: Sequence[tuple[str, str]],
    set_headers: Sequence[tuple[str, str]],
    variables: RequestVars,
) -> Headers:
    """The header list sent upstream, as ngx_http_proxy_create_request builds it.

    ``defaults`` are literal values (``Host``, ``Connection``, forwarding
    headers) overridden by a ``set_headers`` entry of the same name;
    ``set_headers`` values are templates, expanded. A field set to ``""`` is
    not sent (nginx). The client's fields follow, minus hop-by-hop ones and
    minus every name the proxy set. ``Host`` goes first (RFC 9110 §7.2).
    """
    configured = {n.lower() for n, _ in set_headers}
    chosen = [(n, v) for n, v in defaults if n.lower() not in configured]
    chosen += [(n, variables.expand(v)) for n, v in set_headers]
    owned = {n.lower() for n, _ in chosen}
    out = [(n, v) for n, v in chosen if v != ""]
    out += [(n, v) for n, v in strip_hop_by_hop(client) if n.lower() not in owned]
    out.sort(key=lambda nv: nv[0].lower() != "host")  # stable: only moves Host first
    return out


# ------------------------------------------------------------------ forwarding
def in_networks(address: str, networks: Iterable[str]) -> bool:
    """Whether ``address`` lies in one of the CIDRs (``trusted_proxies``)."""
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def forwarded_value(value: str) -> str:
    """A Forwarded parameter value: a token as is, otherwise a quoted-string (RFC 7239 §4)."""
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwarded_node(ip: str, port: int | None = None) -> str:
    """A ``for=``/``by=`` node (RFC 7239 §6): IPv6 in brackets; quoted when it needs it.

    >>> forwarded_node("2001:db8::17", 4711)
    '"[2001:db8::17]:4711"'
    """
    name = f"[{ip}]" if ":" in ip else ip
    return forwarded_value(name if port is None else f"{name}:{port}")


def forwarded_element(ip: str, proto: str, host: str) -> str:
    """One RFC 7239 ``Forwarded`` element: ``for=...;proto=...;host=...``."""
    return f"for={forwarded_node(ip)};proto={forwarded_value(proto)};host={forwarded_value(host)}"


def lbkit_forwarding(
    client: Sequence[tuple[str, str]],
    *,
    peer: str,
    scheme: str,
    host: str,
    version: str,
    trusted: bool,
) -> Headers:
    """The forwarding headers lbkit's own configs add (ALB/Envoy style).

    From an untrusted peer every client-sent forwarding header is replaced
    (a client could forge them); from a trusted proxy they are kept and
    extended: X-Forwarded-For and Forwarded gain the peer, X-Forwarded-Proto
    and X-Forwarded-Host keep the first proxy's view. ``Via`` always grows
    (RFC 9110 §7.6.3: each proxy appends ``protocol-version pseudonym``).
    """
    element = forwarded_element(peer, scheme, host)
    if trusted:
        xff = add_x_forwarded_for(client, peer)
        seen = joined(client, "forwarded")
        proto = joined(client, "x-forwarded-proto") or scheme
        fhost = joined(client, "x-forwarded-host") or host
    else:
        xff, seen, proto, fhost = peer, None, scheme, host
    via = joined(client, "via")
    return [
        ("X-Forwarded-For", xff),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", fhost),
        ("Forwarded", f"{seen}, {element}" if seen else element),
        ("Via", f"{via}, {version} lbkit" if via else f"{version} lbkit"),
    ]


# -------------------------------------------------------------------- framing
class BadFraming(ValueError):
    """The request's body length cannot be trusted; ``status`` is the answer (400 or 501)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def request_framing(headers: Sequence[tuple[str, str]], version: str) -> tuple[str, int | None]:
    """How the request body is delimited: ``("chunked", None)``, ``("length", n)``, ``("none", 0)``.

    RFC 9112 §6.3: Transfer-Encoding wins over Content-Length, but a request
    carrying both is refused, as nginx does since 1.21.1 (request smuggling);
    chunked must be the final coding, and nginx knows no other (501,
    ngx_http_process_request_header); HTTP/1.0 has no Transfer-Encoding
    (RFC 9112 §6.1). Content-Length must be one non-negative integer
    (repeated identical values are one value, §6.3 rule 5).
    """
    return framing_of(
        values(headers, "transfer-encoding"), values(headers, "content-length"), version
    )


def framing_of(te: Sequence[str], cl: Sequence[str], version: str) -> tuple[str, int | None]:
    """:func:`request_framing` from the values of Transfer-Encoding and Content-Length."""
    if te:
        if cl:
            raise BadFraming(400, "both Content-Length and Transfer-Encoding")
        if version == "1.0":
            raise BadFraming(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise BadFraming(501, f"unsupported Transfer-Encoding {', '.join(te)!r}")
        return ("chunked", None)
    if cl:
        lengths = {p.strip() for v in cl for p in v.split(",")}
        if len(lengths) != 1:
            raise BadFraming(400, "conflicting Content-Length values")
        (text,) = lengths
        if not text.isdigit() or not text.isascii() or len(text) > 18:
            raise BadFraming(400, f"bad Content-Length {text!r}")
        return ("length", int(text))
    return ("none", 0)
