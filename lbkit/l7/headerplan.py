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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .headers import NOT_FORWARDED, Headers, RequestVars


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

    __slots__ = ("drop", "hop_by_hop", "kept", "nginx", "sets", "sort_host")

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
