"""The ``Host`` header: validate it, then normalise it for routing.

Grammar, RFC 9110 §7.2 and RFC 3986 §3.2.2-3.2.3::

    Host     = uri-host [ ":" port ]
    uri-host = IP-literal / IPv4address / reg-name
    reg-name = *( unreserved / pct-encoded / sub-delims )
    port     = *DIGIT

So a space, ``@`` (userinfo), ``/``, ``?``, ``#`` or ``\\`` makes the value
invalid, and RFC 9112 §3.2 says a server MUST answer such a request with 400.
nginx's ``ngx_http_validate_host`` is laxer (it lets ``@`` through) but, like
us, refuses an empty label (``a..b``) and drops one trailing dot.

Normalising (RFC 3986 §6.2.2.1 and §6.2.3): lower case, no trailing dot, no
default port (``:80`` for http, ``:443`` for https), no empty port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

#: RFC 3986 §2.3 unreserved + §2.2 sub-delims; pct-encoded is checked separately.
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_PORT = re.compile(r"[0-9]*")
DEFAULT_PORTS = {"http": 80, "https": 443}


class BadHost(ValueError):
    """The value is not a valid ``host[:port]`` (answer 400)."""


@dataclass(frozen=True)
class HostPort:
    """A validated, normalised Host: ``host`` has no port; ``port`` is None when default."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        """``host[:port]``: what X-Forwarded-Host and Forwarded ``host=`` carry."""
        return self.host if self.port is None else f"{self.host}:{self.port}"


def _split(value: str) -> tuple[str, str | None]:
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise BadHost(f"unterminated IP literal in {value!r}")
        host, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadHost(f"junk after the IP literal in {value!r}")
        return host, (rest[1:] if rest else None)
    host, sep, port = value.partition(":")
    return host, (port if sep else None)


def _check_host(host: str, value: str) -> str:
    if host.startswith("["):
        inner = host[1:-1]
        if inner[:1] in ("v", "V"):  # IPvFuture: RFC 3986 §3.2.2
            if not re.fullmatch(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+", inner):
                raise BadHost(f"bad IPvFuture literal in {value!r}")
            return host.lower()
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise BadHost(f"bad IPv6 literal in {value!r}") from None
    if not host or not _REG_NAME.fullmatch(host):
        raise BadHost(f"{value!r} is not a valid host[:port] (RFC 3986 reg-name)")
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or ".." in name or name.startswith("."):
        raise BadHost(f"{value!r} has an empty label")
    return name


def parse_host(value: str, scheme: str = "http") -> HostPort:
    """Validate and normalise one ``Host`` value; raise :class:`BadHost` when invalid.

    >>> str(parse_host("WWW.Example.COM.:80"))
    'www.example.com'
    >>> str(parse_host("example.com:8080", "https"))
    'example.com:8080'
    """
    value = value.strip(" \t")  # RFC 9110 §5.5: optional whitespace around a field value
    if not value:
        raise BadHost("empty Host")
    host, port_text = _split(value)
    name = _check_host(host, value)
    if port_text is None or port_text == "":  # RFC 3986 §3.2.3: an empty port is no port
        return HostPort(name)
    if not _PORT.fullmatch(port_text) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise BadHost(f"bad port in Host {value!r}")
    port = int(port_text)
    return HostPort(name, None if DEFAULT_PORTS.get(scheme) == port else port)
