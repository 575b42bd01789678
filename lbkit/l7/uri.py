"""The request target: its forms, and the normalised path that locations match.

RFC 9112 §3.2 gives four forms of request-target. A router accepts
origin-form (``/path?query``), absolute-form (``http://host/path``, §3.2.2:
then the authority replaces the Host header) and, for OPTIONS only,
asterisk-form (``*``, §3.2.4). Anything else is a 400.

Matching uses a normalised path, as nginx's ``ngx_http_parse_complex_uri``
builds ``$uri``: percent-escapes decoded (a decoded ``/`` or ``.`` counts
as one, so ``/%2e%2e/`` is ``/../``), runs of slashes merged
(``merge_slashes on``), ``.`` segments dropped and ``..`` segments removing
the previous one (RFC 3986 §5.2.4). A ``..`` that would climb above the root,
a bad escape or a decoded NUL makes the request invalid (nginx: 400).
The original target is kept untouched for ``$request_uri`` and for
proxying without a URI part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from .hostname import HostPort, parse_host

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


class BadTarget(ValueError):
    """The request target or its path is invalid (answer 400)."""


@dataclass(frozen=True)
class Target:
    """A parsed request target.

    ``path`` is the raw path (still escaped), ``uri`` the normalised one
    (``$uri``), ``args`` the query without ``?`` (``$args``), ``authority``
    the host of an absolute-form target, ``asterisk`` for ``OPTIONS *``.
    """

    raw: str
    path: str
    uri: str
    args: str | None
    authority: HostPort | None = None
    asterisk: bool = False

    @property
    def origin_form(self) -> str:
        """The target as an origin server wants it: ``path[?query]`` (RFC 9112 §3.2.1)."""
        return self.path + ("" if self.args is None else "?" + self.args)


def _decode(path: str) -> str:
    raw = path.encode("utf-8", "surrogateescape")
    if b"%" in raw:
        if re.search(rb"%(?![0-9A-Fa-f]{2})", raw):
            raise BadTarget(f"bad percent-escape in {path!r}")
        raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    if b"\x00" in raw:
        raise BadTarget("a NUL byte in the path")
    return raw.decode("utf-8", "surrogateescape")


def normalize_path(path: str) -> str:
    """``$uri`` for a raw path that starts with ``/``; raise :class:`BadTarget`.

    >>> normalize_path("/api/../static/%2e/x")
    '/static/x'
    """
    if not path.startswith("/"):
        raise BadTarget(f"path {path!r} does not start with '/'")
    decoded = _decode(path)
    out: list[str] = []
    segments = decoded.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if not out:
                raise BadTarget(f"path {path!r} climbs above the root")
            out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        elif seg == "" and not last:
            continue  # merge_slashes: "//" is "/"
        else:
            out.append(seg)
    return "/" + "/".join(out)


def escape_uri(uri: str) -> str:
    """Escape a normalised path for a request line (nginx ``ngx_escape_uri``, NGX_ESCAPE_URI).

    Spaces, ``%``, ``?``, ``#``, controls and non-ASCII bytes become
    ``%XX``; the characters a path may hold literally stay (RFC 3986 §3.3).
    """
    return quote(uri.encode("utf-8", "surrogateescape"), safe="/:@!$&'()*+,;=-._~")


def parse_target(target: str, method: str, scheme: str = "http") -> Target:
    """Parse a request target (RFC 9112 §3.2); raise :class:`BadTarget` if it is invalid."""
    if not target or any(c in target for c in " \t\r\n\x00"):
        raise BadTarget("empty request target or whitespace in it")
    if target == "*":
        if method != "OPTIONS":
            raise BadTarget("'*' is a target for OPTIONS only (RFC 9112 §3.2.4)")
        return Target(raw=target, path="*", uri="*", args=None, asterisk=True)
    authority = None
    rest = target
    m = re.match(r"(?i)(https?)://([^/?#]*)", target)
    if m:
        try:
            authority = parse_host(m.group(2), m.group(1).lower())
        except ValueError as e:
            raise BadTarget(f"bad authority in {target!r}: {e}") from None
        rest = target[m.end() :] or "/"
    if not rest.startswith("/"):
        raise BadTarget(f"target {target!r} is neither origin-form nor absolute-form")
    rest = rest.partition("#")[0]  # a fragment is never sent (RFC 9110 §4.2.5); drop it
    path, sep, query = rest.partition("?")
    return Target(target, path, normalize_path(path), query if sep else None, authority)
