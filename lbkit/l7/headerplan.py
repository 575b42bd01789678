"""The upstream header list, planned once per location instead of per request.

:func:`lbkit.l7.headers.compose` states the rule (ngx_http_proxy_create_request):
defaults overridden by ``proxy_set_header`` of the same name, ``""`` values not
sent, the client's fields minus hop-by-hop ones and minus every name the proxy
set, Host first. All of that but the values is fixed by the location, so a
:class:`HeaderPlan` works it out once: which defaults survive, which
``proxy_set_header`` values are templates, the set of client names to drop,
and whether Host needs moving. Per request only the values are filled in and
the client's fields filtered in one pass. ``tests/test_l7_headers.py`` checks
that a plan and ``compose`` give identical lists.

:meth:`HeaderPlan.lines` gives the same list as the bytes the proxy sends
(the issue's "header rewrites on bytes"): the proxy's own fields are
rendered once per distinct set of default values and remembered, so a
request only encodes the client's fields it forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from .headers import NOT_FORWARDED, Headers, RequestVars, field_lines


def _host_first(field: tuple[str, str]) -> bool:
    return field[0].lower() != "host"


class HeaderPlan:
    """``compose(client, defaults, set_headers, vars)`` for one location, precomputed.

    ``default_names`` are the names of the defaults the router will pass to
    :meth:`build`, in that order (their values vary per request).

    ``nginx=True`` is nginx's own order and set (ngx_http_proxy_init_headers):
    the ``proxy_set_header`` fields first, then the defaults they did not
    replace, then the client's fields minus only the names the proxy set (the
    defaults include the hop-by-hop ones nginx clears: Connection, Keep-Alive,
    TE, Upgrade, Expect, Transfer-Encoding); fields named in ``Connection``
    are forwarded, as nginx does. ``nginx=False`` is :func:`compose`'s rule.
    """

    __slots__ = ("_fixed", "drop", "hop_by_hop", "kept", "nginx", "sets", "sort_host", "templated")

    def __init__(
        self,
        default_names: Sequence[str],
        set_headers: Sequence[tuple[str, str]],
        *,
        nginx: bool = False,
        cleared: Sequence[str] = (),
    ):
        """``cleared``: defaults whose value is always ``""`` (they only remove the client's
        field, as nginx's ``TE ""``): owned unless configured, never sent, no value needed."""
        configured = {n.lower() for n, _ in set_headers}
        self.nginx = nginx
        self.kept = tuple(i for i, n in enumerate(default_names) if n.lower() not in configured)
        self.sets = tuple((n, v, "$" in v) for n, v in set_headers)
        owned = {default_names[i].lower() for i in self.kept} | configured
        owned |= {n.lower() for n in cleared}
        self.hop_by_hop = not nginx
        self.drop = frozenset(owned) if nginx else NOT_FORWARDED | owned
        # Defaults put Host first; only a configured Host can land elsewhere.
        first_kept = default_names[self.kept[0]].lower() if self.kept else ""
        host_moves = "host" in configured or ("host" in owned and first_kept != "host")
        self.sort_host = host_moves and not nginx
        self.templated = any(template for _, _, template in self.sets)
        self._fixed: dict[tuple[tuple[str, str], ...], bytes] = {}

    def build(
        self,
        client: Sequence[tuple[str, str]],
        defaults: Sequence[tuple[str, str]],
        variables: Callable[[], RequestVars],
        connection: bool,
    ) -> Headers:
        """The header list; ``variables()`` is called only if a value holds a ``$``;
        ``connection``: whether the client sent a Connection field (whose tokens are dropped)."""
        kept = [defaults[i] for i in self.kept]
        sets = []
        env = None
        for name, value, template in self.sets:
            if template:
                env = env or variables()
                value = env.expand(value)
            sets.append((name, value))
        out = [f for f in (sets + kept if self.nginx else kept + sets) if f[1] != ""]
        drop = self.drop
        if connection and self.hop_by_hop:
            named = {
                token.strip().lower()
                for n, v in client
                if n.lower() == "connection"
                for token in v.split(",")
            }
            drop = drop | named
        out += [f for f in client if f[0].lower() not in drop]
        if self.sort_host:
            out.sort(key=_host_first)  # stable: only moves Host first
        return out

    def lines(
        self,
        client: Sequence[tuple[str, str]],
        defaults: tuple[tuple[str, str], ...],
        variables: Callable[[], RequestVars],
        connection: bool,
    ) -> bytes:
        """:meth:`build`'s list as header lines, ``Name: value\\r\\n`` each, in latin-1.

        The proxy's own fields (the ``proxy_set_header`` values and the defaults kept)
        come first and depend only on ``defaults`` when no value is a template, so their
        bytes are made once per distinct ``defaults`` (at most :data:`FIXED_CACHE`
        remembered); the client's forwarded fields are encoded per request. A plan that
        must look at the client's fields to place or drop its own (Host moved first,
        tokens of the client's Connection dropped) renders :meth:`build`'s list instead.
        """
        if self.templated or self.sort_host or (connection and self.hop_by_hop):
            return field_lines(self.build(client, defaults, variables, connection))
        fixed = self._fixed.get(defaults)
        if fixed is None:
            if len(self._fixed) >= FIXED_CACHE:
                self._fixed.clear()
            fixed = self._fixed[defaults] = field_lines(self.build((), defaults, variables, False))
        drop = self.drop
        rest = [f for f in client if f[0].lower() not in drop]
        return fixed + field_lines(rest) if rest else fixed


#: Distinct sets of default values whose rendered fields a plan remembers (lbkit's TOML
#: defaults carry the client's address, so a busy router sees many).
FIXED_CACHE: Final = 1024
