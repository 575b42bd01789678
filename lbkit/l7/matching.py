"""nginx's matching rules: which ``server`` block, then which ``location``.

Pure functions over :mod:`lbkit.l7.model`, following nginx's documented
order (https://nginx.org/en/docs/http/ngx_http_core_module.html#location and
#server_name; ngx_http_core_find_location, ngx_http_find_virtual_server).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from .model import Location, ServerBlock


@lru_cache(maxsize=1024)
def _regex(pattern: str, caseless: bool) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE if caseless else 0)


def match_location(locations: Sequence[Location], uri: str) -> Location | None:
    """The location nginx picks for ``uri`` (the path, without the query string).

    1. An exact ``= /path`` match wins at once.
    2. Otherwise the longest matching prefix (plain or ``^~``) is remembered;
       if it is ``^~``, it wins and no regex is tried.
    3. Otherwise regexes (``~`` case-sensitive, ``~*`` caseless) are tried in
       the order they appear; the first match wins.
    4. Otherwise the remembered longest prefix, if any.
    """
    longest: Location | None = None
    for loc in locations:
        if loc.modifier == "=" and uri == loc.pattern:
            return loc
        prefix = loc.modifier in ("", "^~") and uri.startswith(loc.pattern)
        if prefix and (longest is None or len(loc.pattern) > len(longest.pattern)):
            longest = loc
    if longest is not None and longest.modifier == "^~":
        return longest
    for loc in locations:
        if loc.modifier in ("~", "~*") and _regex(loc.pattern, loc.modifier == "~*").search(uri):
            return loc
    return longest


def _name_rank(name: str, host: str) -> tuple[int, int] | None:
    """How ``server_name`` ``name`` matches ``host``: (class, length) or None.

    Classes in nginx's order of precedence: 0 exact, 1 leading wildcard
    (``*.example.com``, and ``.example.com``, which also matches
    ``example.com``), 2 trailing wildcard (``mail.*``), 3 regex (``~...``).
    Longer wildcards win within a class; regexes go by order (length 0).
    """
    name = name.lower()
    if name.startswith("~"):
        return (3, 0) if _regex(name[1:], True).search(host) else None
    if name == host:
        return (0, len(name))
    if name.startswith("*.") and host.endswith(name[1:]):
        return (1, len(name))
    if name.startswith(".") and (host == name[1:] or host.endswith(name)):
        return (1, len(name))
    if name.endswith(".*") and host.startswith(name[:-1]):
        return (2, len(name))
    return None


def select_server(
    servers: Sequence[ServerBlock], host: str | None, port: int
) -> ServerBlock | None:
    """The server block nginx uses for a request to ``port`` with ``Host: host``.

    Among the blocks listening on ``port``: the best ``server_name`` match
    (see :func:`_name_rank`; a missing Host matches ``""``), else the block
    marked ``default_server`` for that port, else the first one.
    """
    candidates = [s for s in servers if any(ln.port == port for ln in s.listens)]
    if not candidates:
        return None
    wanted = (host or "").lower().rstrip(".")
    best: tuple[tuple[int, int], int, ServerBlock] | None = None
    for order, server in enumerate(candidates):
        for name in server.server_names:
            if name == "" and wanted == "":
                return server
            rank = _name_rank(name, wanted) if name else None
            if rank is None:
                continue
            key = (rank[0], -rank[1])
            if best is None or (key, order) < (best[0], best[1]):
                best = (key, order, server)
    if best is not None:
        return best[2]
    for server in candidates:
        if any(ln.port == port and ln.default_server for ln in server.listens):
            return server
    return candidates[0]
