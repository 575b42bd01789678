"""Chapter 4's helpers: ask an L7 balancer from the lab's client, and read what came back.

Three kinds of function, kept apart as the house style asks (the in-process ones live in
:mod:`lbkit.viz._l7_core` and are re-exported here):

* **Pure** (tested without a lab): :func:`parse_curl` reads ``curl -v``'s
  trace into an :class:`Answer` (the request as curl sent it, the response,
  the backend's ``/echo`` of what it received, the TLS certificate curl
  checked); :func:`header_changes` compares what the client sent with what
  the backend received; :func:`wilson` is the confidence interval of a
  share; :func:`sees_rows` marks, for one request packet, what an L4 box
  reads and what only an L7 box reads (from :func:`lbkit.viz.packets.layer_rows`).
* **The router core, in process** (:mod:`lbkit.l7.router`, no sockets):
  :func:`load_router`, :func:`send` and :func:`route_many` route thousands of
  requests exactly and with a seed, for the canary's share and the exercise.
* **Thin lab calls**: :func:`ask` and :func:`ask_many` run curl inside a lab
  host; :func:`router_stats` reads an L7 host's counters over its control
  channel; :func:`nginx_t` runs the installed nginx's ``-t`` under a private
  prefix.

Tables are rich ``Table`` objects (print them with a ``Console``); the one
plot, :func:`plot_canary`, returns a matplotlib ``Figure`` built without pyplot.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._l7_core import (
    ALB,
    CLIENT,
    ROUTE_QUESTIONS,
    ROUTER_TOML,
    Headers,
    check_routes,
    head,
    load_router,
    nginx_binary,
    nginx_t,
    plot_canary,
    route_choices,
    route_many,
    route_truth,
    rules_table,
    send,
    short_paths,
    upstream_request,
    wilson,
)
from .packets import HTTP_NOTES, L7, layer_rows

if TYPE_CHECKING:
    from rich.table import Table

    from lbkit.lab import Lab


# ------------------------------------------------------------------ curl's answers
@dataclass(frozen=True)
class Answer:
    """One curl exchange: what was sent, what came back, and what the backend received.

    ``status`` is None when no HTTP answer came (``exit_code`` says why: 7 is
    *couldn't connect*, 28 a time-out, 60 a certificate curl refused).
    """

    status: int | None
    backend: str | None  # the X-Backend response header
    headers: Headers  # the response's
    body: str
    request_line: str  # as curl sent it, e.g. "GET /echo HTTP/1.1"
    sent: Headers  # the request's headers as curl sent them
    info: list[str] = field(default_factory=list)  # curl's "* " lines (connection, TLS)
    exit_code: int = 0

    def header(self, name: str) -> str | None:
        """The response header ``name`` (case-insensitive; repeated ones joined), or None."""
        found = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(found) if found else None

    @property
    def echo(self) -> dict[str, Any] | None:
        """The backend's ``/echo`` JSON (the request as it received it), or None."""
        if not self.body.lstrip().startswith("{"):
            return None
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and "headers" in doc else None

    @property
    def received(self) -> Headers:
        """The request headers as the backend received them (from ``/echo``)."""
        doc = self.echo
        return [(str(k), str(v)) for k, v in doc["headers"]] if doc else []

    @property
    def cookie(self) -> str | None:
        """``NAME=VALUE`` of the response's first Set-Cookie (what a browser sends back)."""
        value = self.header("set-cookie")
        return value.split(";", 1)[0].strip() if value else None

    @property
    def tls(self) -> dict[str, str]:
        """The TLS session and certificate curl reported (:func:`tls_info`)."""
        return tls_info(self.info)


def parse_curl(stdout: str, stderr: str, exit_code: int = 0) -> Answer:
    """An :class:`Answer` from ``curl -sv``: the trace is on stderr, the body on stdout.

    curl marks what it sent with ``> ``, what it received with ``< `` and
    its own notes with ``* ``. Only the last response head counts (a
    ``100 Continue`` comes before the real one).
    """
    sent: Headers = []
    request_line = ""
    heads: list[list[str]] = []
    info: list[str] = []
    for raw in stderr.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("> "):
            text = line[2:]
            if not request_line:
                request_line = text
            elif text and ":" in text:
                name, _, value = text.partition(":")
                sent.append((name.strip(), value.strip()))
        elif line.startswith("< "):
            text = line[2:]
            if text.startswith("HTTP/"):
                heads.append([text])
            elif heads and text:
                heads[-1].append(text)
        elif line.startswith("* "):
            info.append(line[2:])
    status: int | None = None
    headers: Headers = []
    if heads:
        head = heads[-1]
        parts = head[0].split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        for text in head[1:]:
            name, _, value = text.partition(":")
            headers.append((name.strip(), value.strip()))
    backend = next((v for n, v in headers if n.lower() == "x-backend"), None)
    return Answer(status, backend, headers, stdout, request_line, sent, info, exit_code)


def tls_info(info: Iterable[str]) -> dict[str, str]:
    """From curl's ``* `` lines: ``protocol``, ``cipher``, ``subject``, ``san``, ``issuer``,
    ``verified`` ("yes"/"no"), for the keys curl reported."""
    out: dict[str, str] = {}
    for raw in info:
        line = raw.strip()
        if m := re.match(r"SSL connection using (\S+) / (\S+)", line):
            out["protocol"], out["cipher"] = m.group(1), m.group(2)
        elif line.startswith("subject:"):
            out["subject"] = line.partition(":")[2].strip()
        elif line.startswith("subjectAltName:"):
            out["san"] = line.partition(":")[2].strip()
        elif line.startswith("issuer:"):
            out["issuer"] = line.partition(":")[2].strip()
        elif "certificate verify ok" in line:
            out["verified"] = "yes"
        elif "certificate verify" in line or "certificate problem" in line:
            out["verified"] = "no"
    return out


def curl_argv(
    url: str,
    *,
    headers: Sequence[str] = (),
    cookie: str | None = None,
    user_agent: str | None = None,
    resolve: str | None = None,
    cacert: str | Path | None = None,
    timeout: float = 5.0,
) -> list[str]:
    """``curl -sv`` for one GET: ``headers`` as ``"Name: value"``, ``resolve`` as
    ``"name:port:ip"`` (curl's ``--resolve``), ``cacert`` the CA file to trust."""
    argv = ["curl", "-sv", "-m", f"{timeout:g}"]
    for h in headers:
        argv += ["-H", h]
    if cookie:
        argv += ["-b", cookie]
    if user_agent:
        argv += ["-A", user_agent]
    if resolve:
        argv += ["--resolve", resolve]
    if cacert:
        argv += ["--cacert", str(cacert)]
    return [*argv, url]


def target(
    lab: Lab, host: str, path: str = "/", service: str | None = None, name: str | None = None
) -> tuple[str, str | None]:
    """``(url, resolve)`` for ``host``'s ``service``; with ``name``, the URL names it and
    ``resolve`` (``"name:port:ip"``) sends it to ``host``, as DNS would (Host and SNI = name)."""
    ip, port = lab.endpoint(host, service)
    scheme = "https" if service == "https" else "http"
    default = 443 if scheme == "https" else 80
    where = name or ip
    url = f"{scheme}://{where}{'' if port == default else f':{port}'}{path}"
    return url, (f"{name}:{port}:{ip}" if name else None)


def ask(
    lab: Lab,
    host: str,
    path: str = "/",
    *,
    headers: Sequence[str] = (),
    cookie: str | None = None,
    user_agent: str | None = None,
    service: str | None = None,
    name: str | None = None,
    cacert: str | Path | None = None,
    via: str = "client",
) -> Answer:
    """GET ``path`` from ``host`` with curl run inside ``via`` (the lab's client).

    ``name`` asks for a host name (``app.example.com``) resolved to ``host``
    with ``--resolve``, so Host and TLS SNI carry it as a browser's would;
    ``service="https"`` with ``cacert`` speaks TLS.
    """
    url, resolve = target(lab, host, path, service, name)
    argv = curl_argv(
        url,
        headers=headers,
        cookie=cookie,
        user_agent=user_agent,
        resolve=resolve,
        cacert=cacert,
    )
    proc = lab.exec(via, argv)
    return parse_curl(proc.stdout, proc.stderr, proc.returncode)


def parse_write_out(text: str) -> list[tuple[int | None, str | None]]:
    """Lines of ``%{http_code} %header{x-backend}`` as ``(status, backend)``; 000 is None."""
    out: list[tuple[int | None, str | None]] = []
    for line in text.splitlines():
        code, _, backend = line.strip().partition(" ")
        if not code:
            continue
        status = int(code) if code.isdigit() and int(code) else None
        out.append((status, backend.strip() or None))
    return out


def ask_many(
    lab: Lab,
    host: str,
    path: str,
    n: int,
    *,
    headers: Sequence[str] = (),
    via: str = "client",
    timeout: float = 60.0,
) -> list[tuple[int | None, str | None]]:
    """``n`` GETs of ``path`` from one curl (one keep-alive connection): ``(status, backend)``
    each, in order. The bodies are thrown away."""
    url = lab.url(host, path)
    argv = ["curl", "-s", "-m", f"{timeout:g}", "-w", "%{http_code} %header{x-backend}\\n"]
    for h in headers:
        argv += ["-H", h]
    for _ in range(n):
        argv += [url, "-o", "/dev/null"]
    return parse_write_out(lab.exec(via, argv, timeout=timeout + 5).stdout)


def spread(
    answers: Iterable[Answer | tuple[int | None, str | None] | str | None],
) -> dict[str, int]:
    """How many answers each backend gave, by name; no answer counts as ``"(none)"``."""
    counts: Counter[str] = Counter()
    for a in answers:
        if isinstance(a, Answer):
            name = a.backend
        elif isinstance(a, tuple):
            name = a[1]
        else:
            name = a
        counts[name or "(none)"] += 1
    return dict(sorted(counts.items()))


def host_of(lab: Lab, address: str) -> str | None:
    """The lab host that owns ``address`` (``"10.0.1.3:50296"`` or an IP), or None.

    netns: the host with that address. local: the host whose services listen
    on that 127.0.1.x address; 127.0.0.1 is everyone's (outgoing connections
    come from it there), so it names none.
    """
    ip = address.rpartition(":")[0] if address.count(":") == 1 else address
    for h in lab.hosts():
        if lab.provider == "netns":
            if ip in (itf.ip for itf in h.interfaces):
                return h.name
            continue
        try:
            mine = lab.endpoint(h.name)[0]
        except Exception:  # a host without a service (the client)
            continue
        if mine == ip and ip != "127.0.0.1":
            return h.name
    return None


def router_stats(lab: Lab, host: str) -> dict[str, Any]:
    """An L7 host's stats (its control channel's ``stats``: proxy and router counters)."""
    from lbkit.lab.control import send_control
    from lbkit.lab.errors import LabError

    reply = send_control(lab.control_path(host), {"op": "stats"})
    if not reply.get("ok"):
        raise LabError(f"{host}: {reply.get('error', 'no stats')}")
    return reply["stats"]


def pool_states(stats: Mapping[str, Any], pool: str) -> list[dict[str, Any]]:
    """``[{name, state, picked, failed}]`` of one pool in :func:`router_stats`' answer."""
    backends = stats["router"]["upstreams"][pool]["backends"]
    return [{k: b[k] for k in ("name", "state", "picked", "failed")} for b in backends]


# ------------------------------------------------------------------ header rewrites
#: Why a proxy adds or changes a field (for :func:`header_changes`), by lower-case name.
WHY: dict[str, str] = {
    "host": "the name the client asked for; kept, so the backend knows the site",
    "x-forwarded-for": "the client's address as the proxy saw it (a client's own is not trusted)",
    "x-forwarded-proto": "the scheme the client used (https even when the backend gets http)",
    "x-forwarded-host": "the Host the client sent",
    "forwarded": "RFC 7239: for, proto and host in one standard header",
    "via": "RFC 9110 §7.6.3: each proxy on the way adds itself",
}
HOP_BY_HOP_WHY = (
    "hop-by-hop: it describes the client's connection, not the request (RFC 9110 §7.6.1)"
)


def header_changes(sent: Sequence[tuple[str, str]], received: Sequence[tuple[str, str]]) -> list:
    """Each header of either side: ``{name, sent, received, change, why}``.

    ``change`` is ``kept``, ``rewritten``, ``added`` or ``removed``; order:
    the client's headers first, then the ones the proxy added. A removed
    field that is hop-by-hop (RFC 9110 §7.6.1, or named by the client's
    ``Connection``) says so.
    """
    from lbkit.l7.headers import NOT_FORWARDED, joined

    named = {
        t.strip().lower()
        for n, v in sent
        if n.lower() == "connection"
        for t in v.split(",")
        if t.strip()
    }
    hop = NOT_FORWARDED | named
    rows = []
    seen: set[str] = set()
    for name, _ in [*sent, *received]:
        key = name.lower()
        if key in seen:
            continue
        seen.add(key)
        before, after = joined(sent, key), joined(received, key)
        if before is not None and after is not None:
            change = "kept" if before == after else "rewritten"
        elif before is not None:
            change = "removed"
        else:
            change = "added"
        if change == "removed" and key in hop:
            why = HOP_BY_HOP_WHY
        elif change == "kept":
            why = ""
        else:
            why = WHY.get(key, "")
        rows.append({"name": name, "sent": before, "received": after, "change": change, "why": why})
    return rows


_CHANGE_STYLE = {"added": "green", "rewritten": "yellow", "removed": "red", "kept": ""}


def changes_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> Table:
    """A rich table of :func:`header_changes` (added green, rewritten yellow, removed red)."""
    from rich.table import Table

    table = Table(title=title or "the client sent / the backend received")
    for name in ("header", "client sent", "backend received", "change", "why"):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            r["sent"] if r["sent"] is not None else "-",
            r["received"] if r["received"] is not None else "-",
            r["change"],
            r["why"],
            style=_CHANGE_STYLE[r["change"]] or None,
        )
    return table


# ------------------------------------------------------------------ what L4 sees, what L7 sees
#: What lbkit's router (labs/l7/router.toml) does with a request field, by lower-case name.
L7_USES: dict[str, str] = {
    "request line": "path routing: /api/ to the api pool, /static/ to the static pool",
    "host": "host routing: app.example.com to the app pool",
    "user-agent": "header routing: phones to the mobile pool",
    "cookie": "sticky sessions: lbkit_sticky names the backend",
    "x-canary": "header routing: forces the canary pool",
}


def request_bytes(method: str, path: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 request head, as a client writes it (RFC 9112 §2.1)."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def request_packet(
    request: bytes,
    client: tuple[str, int] = (CLIENT[0], 51000),
    server: tuple[str, int] = ALB,
):
    """The TCP segment carrying ``request`` from ``client`` to ``server`` (a scapy packet)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    pkt = (
        Ether(src="02:00:c6:33:64:02", dst="02:00:0a:00:01:03")
        / IP(src=client[0], dst=server[0], id=1, flags="DF")
        / TCP(sport=client[1], dport=server[1], flags="PA", seq=1001, ack=5001, window=502)
        / request
    )
    return type(pkt)(bytes(pkt))


def sees_rows(pkt) -> list[dict[str, Any]]:
    """The fields a balancer could decide on: ``{layer, field, value, l4, l7, use}``.

    An L4 box reads the L4-visible fields (addresses, protocol, ports, flags:
    :data:`lbkit.viz.packets.L4_FIELDS`); an L7 box is the TCP endpoint, so it
    has those too (from its socket) and parses the HTTP inside.
    """
    rows = []
    for r in layer_rows(pkt):
        if not (r["l4_visible"] or r["osi"] == L7):
            continue
        key = r["field"].lower()
        use = L7_USES.get(key) or HTTP_NOTES.get(key) or r["note"]
        if r["l4_visible"]:
            use = r["note"]
        rows.append(
            {
                "layer": r["layer"],
                "field": r["field"],
                "value": r["value"],
                "l4": bool(r["l4_visible"]),
                "l7": True,
                "use": use,
            }
        )
    return rows


def sees_table(pkt, title: str = "one request: what each kind of balancer can read") -> Table:
    """A rich table of :func:`sees_rows`: L4 rows orange, the HTTP only L7 reads pink."""
    from rich.table import Table

    from .packets import L4_COLOR, L7_COLOR

    table = Table(title=title)
    for name in ("layer", "field", "value", "L4 box", "L7 box", "what it is good for"):
        table.add_column(name, overflow="fold")
    for r in sees_rows(pkt):
        style = f"black on {L4_COLOR}" if r["l4"] else f"black on {L7_COLOR}"
        table.add_row(
            r["layer"],
            r["field"],
            r["value"],
            "reads" if r["l4"] else "-",
            "reads",
            r["use"],
            style=style,
        )
    return table


__all__ = [
    "ALB",
    "CLIENT",
    "ROUTER_TOML",
    "ROUTE_QUESTIONS",
    "Answer",
    "ask",
    "ask_many",
    "changes_table",
    "check_routes",
    "curl_argv",
    "head",
    "header_changes",
    "host_of",
    "load_router",
    "nginx_binary",
    "nginx_t",
    "parse_curl",
    "parse_write_out",
    "plot_canary",
    "pool_states",
    "request_bytes",
    "request_packet",
    "route_choices",
    "route_many",
    "route_truth",
    "router_stats",
    "rules_table",
    "sees_rows",
    "sees_table",
    "send",
    "short_paths",
    "spread",
    "target",
    "tls_info",
    "upstream_request",
    "wilson",
]
