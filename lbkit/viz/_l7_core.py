"""What chapter 4 runs without a lab: the L7 router's core in process, the canary's
interval, the exercise, and the installed nginx's ``-t``.

Public through :mod:`lbkit.viz.l7`. The router is :class:`lbkit.l7.router.Router`,
the very core the lab's albs run, seeded, so counts are exact and the same on
every run.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exercises import Verdict, check_letter_answers

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

    from lbkit.l7.model import RouterConfig
    from lbkit.l7.router import RequestHead, Router

REPO = Path(__file__).resolve().parents[2]
#: The layered lab's router file (alb1 and alb2 serve it).
ROUTER_TOML = REPO / "labs" / "l7" / "router.toml"
#: The client's and alb1's addresses in labs/layered.toml (the in-process requests use them).
CLIENT = ("198.51.100.2", 40000)
ALB = ("10.0.1.3", 80)
#: 95% two-sided normal quantile.
Z95 = 1.959963984540054

Headers = list[tuple[str, str]]


# ------------------------------------------------------------------ the router, in process
def load_router(
    path: str | Path = ROUTER_TOML,
    *,
    seed: int = 0,
    pools: Mapping[str, Sequence[str]] | None = None,
) -> Router:
    """A :class:`lbkit.l7.router.Router` for a router TOML, with its RNG seeded.

    ``pools`` replaces pools' servers by lab host name, e.g. ``{"app": ["app1",
    "app2"]}`` (addresses are made up: nothing is connected to in process).
    """
    from lbkit.l7.router import Router
    from lbkit.l7.tomlconf import parse_router_toml

    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    for i, (pool, names) in enumerate((pools or {}).items()):
        data.setdefault("pool", {}).setdefault(pool, {})["servers"] = [
            {"address": f"10.0.9.{10 * i + j + 1}:80", "name": name} for j, name in enumerate(names)
        ]
    return Router(parse_router_toml(data, str(path)), seed=seed)


def head(
    path: str = "/",
    *,
    host: str = "lb.example.com",
    headers: Sequence[tuple[str, str]] = (),
    client: tuple[str, int] = CLIENT,
    server: tuple[str, int] = ALB,
    method: str = "GET",
    scheme: str = "http",
) -> RequestHead:
    """A request head as the proxy hands it to the router (Host first, then ``headers``);
    with ``scheme="https"`` the TLS server name (SNI) is ``host`` too, as curl sends it."""
    from lbkit.l7.router import RequestHead

    sni = host.partition(":")[0] if scheme == "https" else None
    return RequestHead(
        method, path, "1.1", [("Host", host), *headers], client, server, scheme=scheme, sni=sni
    )


def send(router: Router, request: RequestHead, now: float = 0.0) -> tuple[str, str | None, Headers]:
    """Route ``request`` and complete one successful attempt, as the proxy would:
    ``(pool, backend, response headers the router adds)``. A refusal is ``("4xx", None, [])``."""
    from lbkit.l7.router import Reject

    d = router.route(request, now)
    if isinstance(d, Reject):
        return str(d.status), None, []
    backend = d.pick(now)
    if backend is None:
        return d.upstream or "-", None, []
    d.on_start(backend, now)
    d.on_finish(backend, now, True, 200)
    return d.upstream or "-", backend.name, d.response_headers(backend)


def upstream_request(router: Router, request: RequestHead, now: float = 0.0) -> tuple[str, str]:
    """``(backend, text)``: the request head the router would send upstream for ``request``
    (its request line and headers, as the backend receives them)."""
    from lbkit.l7.router import Reject

    d = router.route(request, now)
    if isinstance(d, Reject):
        return "-", f"(refused: {d.status} {d.reason})"
    backend = d.pick(now)
    if backend is None:
        return "-", "(no backend available)"
    line = d.request_line(backend).decode("latin-1").rstrip("\r\n")
    fields = "".join(f"\n{n}: {v}" for n, v in d.upstream_headers(backend))
    d.on_start(backend, now)
    d.on_finish(backend, now, True, 200)
    return backend.name, line + fields


def route_many(router: Router, n: int, path: str = "/api/users", **kw: Any) -> dict[str, int]:
    """``n`` requests for ``path`` through ``router``, one after another: answers per backend."""
    counts: Counter[str] = Counter()
    for i in range(n):
        _, backend, _ = send(router, head(path, **kw), now=i * 0.001)
        counts[backend or "(none)"] += 1
    return dict(sorted(counts.items()))


def rules_table(config: RouterConfig, title: str = "the ALB's rules") -> Table:
    """One row per route: which server (Host), which path, which header conditions, which pool."""
    from rich.table import Table

    table = Table(title=title)
    for name in ("Host", "ports", "path", "only if", "pool", "also"):
        table.add_column(name, overflow="fold")
    for block in config.servers:
        names = ", ".join(n for n in block.server_names if n) or "_"
        if any(ln.default_server for ln in block.listens):
            names += " (and any other)"
        ports = ", ".join(f"{ln.port}{' tls' if ln.ssl else ''}" for ln in block.listens)
        for i, loc in enumerate(block.locations):
            cond = ", ".join(f"{m.header} ~ {m.regex}" for m in loc.matches) or "-"
            pool = (loc.proxy_pass or "").removeprefix("http://") or "-"
            also = []
            if loc.split:
                force = f", or {loc.split.force_header}: 1" if loc.split.force_header else ""
                also.append(f"{loc.split.percent:g}% to {loc.split.upstream}{force}")
            if loc.sticky_cookie:
                also.append(f"sticky cookie {loc.sticky_cookie}")
            if loc.next_upstream != ["error", "timeout"]:
                also.append("retry on " + " ".join(loc.next_upstream))
            modifier = f"{loc.modifier} " if loc.modifier else ""
            table.add_row(
                names if i == 0 else "",
                ports if i == 0 else "",
                modifier + loc.pattern,
                cond,
                pool,
                "; ".join(also) or "-",
            )
        table.add_section()
    return table


# ------------------------------------------------------------------ the canary's share
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a share of ``k`` in ``n`` (Wilson 1927; Agresti & Coull 1998).

    Unlike the textbook ``p ± z·sqrt(p(1-p)/n)``, it stays inside [0, 1] and
    does not collapse to a point when ``k`` is 0, which matters for a 1% share.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0 <= k <= n:
        raise ValueError("k must be between 0 and n")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def plot_canary(
    counts: Mapping[str, int],
    samples: Mapping[str, tuple[int, int]],
    *,
    target: float = 0.01,
    canary: Sequence[str] = ("canary1",),
) -> Figure:
    """Left: each backend's share of ``counts``. Right: the canary's share in each sample
    ``label -> (k, n)``, with its 95% Wilson interval and the ``target`` line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    names = list(counts)
    total = sum(counts.values()) or 1
    shares = [counts[n] / total for n in names]
    colors = ["#e76f51" if n in canary else "#457b9d" for n in names]
    bars = left.bar(names, [100 * s for s in shares], color=colors)
    left.bar_label(bars, labels=[f"{counts[n]:,}" for n in names], padding=2, fontsize=8)
    left.set_ylabel("share of requests (%)")
    left.set_title(f"{total:,} requests for /api/: where they went")
    labels = list(samples)
    for i, label in enumerate(labels):
        k, n = samples[label]
        lo, hi = wilson(k, n)
        p = k / n
        right.errorbar(
            [100 * p],
            [i],
            xerr=[[100 * (p - lo)], [100 * (hi - p)]],
            fmt="o",
            color="#e76f51",
            capsize=5,
        )
        right.annotate(
            f"{k} of {n:,}: {100 * p:.2f}% [{100 * lo:.2f}%, {100 * hi:.2f}%]",
            (100 * hi, i),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    right.axvline(100 * target, color="black", linestyle="--", linewidth=1)
    right.set_yticks(range(len(labels)), labels)
    right.set_ylim(-0.6, len(labels) - 0.4)
    widest = max((wilson(*samples[s])[1] for s in labels), default=target)
    right.set_xlim(0, 100 * max(widest, target) * 1.9)
    right.set_xlabel(f"share sent to the canary (%); dashed: the {100 * target:g}% asked for")
    right.set_title("the canary's share, with its 95% interval")
    return fig


# ------------------------------------------------------------------ the chapter's exercise
#: Which pool gets each request, for labs/l7/router.toml: ``letter -> (text, path, Host, headers)``.
ROUTE_QUESTIONS: dict[str, tuple[str, str, str, tuple[tuple[str, str], ...]]] = {
    "a": ("GET /api/v2/orders from curl", "/api/v2/orders", "lb.example.com", ()),
    "b": (
        "GET /static/app.css from an iPhone",
        "/static/app.css",
        "lb.example.com",
        (("User-Agent", "Mozilla/5.0 (iPhone)"),),
    ),
    "c": (
        "GET /pricing from an Android phone",
        "/pricing",
        "lb.example.com",
        (("User-Agent", "Mozilla/5.0 (Linux; Android 14)"),),
    ),
    "d": (
        "GET /cart, Host app.example.com, from an iPhone",
        "/cart",
        "app.example.com",
        (("User-Agent", "Mozilla/5.0 (iPhone)"),),
    ),
    "e": (
        "GET /api/users with the header X-Canary: 1",
        "/api/users",
        "lb.example.com",
        (("X-Canary", "1"),),
    ),
    "f": ("GET /apidocs from curl", "/apidocs", "lb.example.com", ()),
    "g": ("GET /about, Host www.example.com, from curl", "/about", "www.example.com", ()),
}


def route_choices() -> None:
    """Print the exercise's requests."""
    for letter, (text, *_rest) in ROUTE_QUESTIONS.items():
        print(f"({letter}) {text}")


def route_truth(path: str | Path = ROUTER_TOML) -> dict[str, str]:
    """The pool lbkit's router picks for each of :data:`ROUTE_QUESTIONS` (canary share 0)."""
    router = load_router(path)
    for block in router.config.servers:  # the 1% draw must not decide an exercise
        for loc in block.locations:
            if loc.split is not None:
                loc.split.percent = 0
    out = {}
    for letter, (_text, where, host, headers) in ROUTE_QUESTIONS.items():
        d = router.route(head(where, host=host, headers=headers), 0.0)
        out[letter] = getattr(d, "upstream", None) or f"{d.status}"
    return out


def check_routes(answer: Mapping[str, str] | None) -> Verdict:
    """The exercise: ``{"a": "api", ...}``, a pool name for every request."""
    pools = sorted(load_router().pools)
    return check_letter_answers(
        answer,
        route_truth(),
        {p: p for p in pools},
        what="request",
        how=f"a pool name ({', '.join(pools)})",
        wrong_hint="The router decides in nginx's order: first the server block, by Host (an "
        "unknown Host gets the default server); then the location, the longest prefix of the "
        "path that matches; only among routes with the same path do header conditions choose.",
    )


# ------------------------------------------------------------------ nginx -t
def nginx_binary() -> str | None:
    """The installed nginx, or None."""
    from lbkit._nginx import NGINX

    return NGINX


def nginx_t(path: str | Path, nginx: str | None = None) -> list[str]:
    """nginx's own verdict on a conf.d-style file: the lines ``nginx -t`` prints.

    The file is included in ``http {}`` of a wrapper under a private temporary
    prefix (``lbkit._nginx.write_nginx_conf``), whose folder mirrors the
    file's by symlinks so relative certificate paths resolve as they would
    beside it. The wrapper's path reads ``<prefix>/nginx.conf``; a time stamp
    and pid, when nginx prints them, are dropped. FileNotFoundError if nginx
    is not installed.
    """
    from lbkit._nginx import write_nginx_conf

    binary = nginx or nginx_binary()
    if not binary or not Path(binary).exists():
        raise FileNotFoundError("nginx is not installed (make system-deps installs it)")
    source = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="lbkit-nginx-t-") as tmp:
        prefix = Path(tmp)
        for entry in source.parent.iterdir():
            (prefix / entry.name).symlink_to(entry)
        conf = write_nginx_conf(prefix, f"include {source};", error_level="warn")
        proc = subprocess.run(
            [binary, "-t", "-p", f"{prefix}/", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    lines = []
    for line in proc.stderr.splitlines():
        line = re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: ", r"nginx: \1 ", line)
        lines.append(line.replace(str(conf), "<prefix>/nginx.conf").replace(tmp, "<prefix>"))
    return lines


def short_paths(text: str, root: str | Path = REPO) -> str:
    """``text`` with the checkout's absolute path taken out (``labs/nginx/seed.conf:12``)."""
    return text.replace(f"{Path(root).resolve()}/", "")
