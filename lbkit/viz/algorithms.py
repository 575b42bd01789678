"""Plots for the algorithms chapter: picks, tables, rings, simulation results.

Contract for every ``plot_*``: it takes data, draws on a new
:class:`~matplotlib.figure.Figure` (or on ``ax`` when one is given and the
plot has a single panel), returns the figure, never calls ``plt.show()`` and
writes a file only when given ``path``. Figures are built without pyplot, so
they work under Agg and a notebook shows each one once.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from lbkit.algorithms import (
    NGINX_DIRECTIVE,
    Backend,
    Balancer,
    Flow,
    LeastResponseTime,
    build_ring,
    stable_hash64,
)
from lbkit.sim import RemapReport, ServerSpec, SimResult

#: Where each algorithm lives outside nginx open source (for ``nginx_upstream``).
ELSEWHERE: dict[str, str] = {
    "round_robin": "IPVS: ipvsadm -s rr (equal weights) or -s wrr; HAProxy: balance static-rr",
    "weighted_round_robin": "HAProxy: balance roundrobin; Envoy: ROUND_ROBIN",
    "least_connections": "HAProxy: balance leastconn; IPVS: -s lc / -s wlc",
    "ip_hash": "HAProxy: balance source; IPVS: -s sh",
    "least_response_time": "NGINX Plus: least_time header; Linkerd/Finagle: peak EWMA",
    "power_of_two": "HAProxy: balance random(2); Envoy: LEAST_REQUEST",
    "random": "HAProxy: balance random(1); Envoy: RANDOM",
    "ring_hash": "HAProxy: hash-type consistent; Envoy: RING_HASH",
    "maglev": "Envoy: MAGLEV; IPVS: -s mh; Katran and Google's Maglev at L4",
}

_PCT_STYLE = (("p50", "#2a9d8f", "-"), ("p95", "#e9c46a", "--"), ("p99", "#e76f51", ":"))


# ------------------------------------------------------------------ helpers
def backend_colors(names: Sequence[str]) -> dict[str, str]:
    """A stable color per backend name, in order: tab10, tab20, then a rainbow."""
    n = len(names)
    if n <= 10:
        cmap = colormaps["tab10"]
        return {nm: to_hex(cmap(i)) for i, nm in enumerate(names)}
    if n <= 20:
        cmap = colormaps["tab20"]
        return {nm: to_hex(cmap(i)) for i, nm in enumerate(names)}
    cmap = colormaps["turbo"]
    return {nm: to_hex(cmap(i / max(n - 1, 1))) for i, nm in enumerate(names)}


def _new(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.get_figure(root=True), ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=110, format="png")
    return fig


def _flows(n: int) -> list[Flow]:
    """``n`` distinct flows from distinct clients (for hash-based balancers)."""
    return [
        Flow(client_ip=f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}", client_port=40000)
        for k in range(n)
    ]


# -------------------------------------------------------------- text helpers
def nginx_upstream(
    algorithm: str, backends: Sequence[Backend | ServerSpec | str], pool: str = "app"
) -> str:
    """The nginx ``upstream`` block that selects ``algorithm`` over ``backends``.

    Uses :data:`lbkit.algorithms.NGINX_DIRECTIVE`. When nginx open source has
    no such method, the block says so in a comment and names where it exists.
    Strings are backends of weight 1; a backend's ``address`` is used if set.
    """
    if algorithm not in NGINX_DIRECTIVE:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    directive = NGINX_DIRECTIVE[algorithm]
    lines = [f"upstream {pool} {{"]
    if directive is None:
        lines.append(f"    # nginx open source has no {algorithm}")
        lines.append(f"    # {ELSEWHERE[algorithm]}")
    elif directive.startswith("("):
        lines.append("    # no directive: smooth weighted round robin is nginx's default")
    else:
        lines.append(f"    {directive}")
    for b in backends:
        if isinstance(b, str):
            lines.append(f"    server {b};")
            continue
        extra = f" weight={b.weight}" if b.weight != 1 else ""
        extra += " backup" if getattr(b, "backup", False) else ""
        lines.append(f"    server {getattr(b, 'address', None) or b.name}{extra};")
    lines.append("}")
    return "\n".join(lines)


def pick_sequence(balancer: Balancer, n: int) -> list[str]:
    """The names of the next ``n`` backends ``balancer`` picks.

    No feedback is given (no ``on_start``/``on_finish``), so load-aware
    algorithms show their tie-breaking order. Balancers that hash a flow get
    ``n`` distinct clients.
    """
    if balancer.needs_flow:
        return [balancer.pick(f).name for f in _flows(n)]
    return [balancer.pick().name for _ in range(n)]


def pick_counts(balancer: Balancer, flows: Iterable[Flow]) -> dict[str, int]:
    """How many of ``flows`` each backend gets, in backend order (zeros included)."""
    counts = {b.name: 0 for b in balancer.backends}
    for f in flows:
        counts[balancer.pick(f).name] += 1
    return counts


# ------------------------------------------------------------ pick sequences
def plot_pick_sequence(
    names: Sequence[str],
    backends: Sequence[str],
    *,
    label: str = "",
    ax: Axes | None = None,
) -> Figure:
    """A strip of cells, one per pick, colored by backend and lettered with its name."""
    fig, ax = _new(ax, (max(4.0, 0.42 * len(names) + 1.5), 1.3))
    colors = backend_colors(list(backends))
    for k, nm in enumerate(names):
        ax.add_patch(Rectangle((k, 0), 1, 1, facecolor=colors[nm], edgecolor="white", lw=2))
        ax.text(k + 0.5, 0.5, nm, ha="center", va="center", color="white", fontweight="bold")
    ax.set_xlim(0, max(len(names), 1))
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([k + 0.5 for k in range(len(names))], [str(k + 1) for k in range(len(names))])
    ax.tick_params(axis="x", labelsize=7, length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    if label:
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    return fig


def plot_pick_sequences(rows: Mapping[str, Sequence[str]], backends: Sequence[str]) -> Figure:
    """Several pick strips stacked, one per label (e.g. round robin vs smooth WRR)."""
    longest = max((len(v) for v in rows.values()), default=1)
    fig = Figure(figsize=(0.42 * longest + 3.0, 0.75 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, names) in zip(axes, rows.items(), strict=True):
        plot_pick_sequence(names, backends, label=label, ax=ax)
        ax.set_xlim(0, longest)
    colors = backend_colors(list(backends))
    fig.legend(
        handles=[Patch(color=colors[b], label=b) for b in backends],
        loc="outside right center",
        frameon=False,
    )
    return fig


# ------------------------------------------------------------- simulations
def _heterogeneous(result: SimResult) -> bool:
    return len({(b.weight, b.speed) for b in result.backends}) > 1


def _title(result: SimResult) -> str:
    return f"{result.algorithm}: load {result.load:g}, {result.requests:,} requests"


def plot_sim_result(result: SimResult, path: str | None = None) -> Figure:
    """Two panels: requests served per backend, and the latency distribution.

    Bars are annotated with weight and speed when the backends differ. The
    latency histogram has a log x axis with p50/p95/p99 marked. Saved as a
    PNG at ``path`` when given.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.2])
    names = [b.name for b in result.backends]
    served = [b.served for b in result.backends]
    colors = backend_colors(names)
    x = np.arange(len(names))
    bars = left.bar(x, served, color=[colors[n] for n in names])
    left.set_ylabel("requests served")
    left.set_title("who served what")
    if len(names) <= 16:
        left.set_xticks(x, names, rotation=30 if len(names) > 8 else 0)
    else:
        left.set_xticks([])
        left.set_xlabel(f"{len(names)} backends")
    if _heterogeneous(result) and len(names) <= 16:
        labels = [f"w={b.weight}\n×{b.speed:g}" for b in result.backends]
        left.bar_label(bars, labels=labels, padding=2, fontsize=8)
        left.margins(y=0.18)
    _latency_panel(right, result)
    fig.suptitle(_title(result), fontsize=12)
    return _save(fig, path)


def _latency_panel(ax: Axes, result: SimResult) -> None:
    lat = np.asarray(result.latencies, dtype=float)
    lat = lat[lat > 0]
    ax.set_title("latency of each request (units: mean service time)")
    ax.set_xlabel("latency (log scale)")
    ax.set_ylabel("requests")
    if lat.size == 0:
        ax.text(0.5, 0.5, "no successful requests", ha="center", transform=ax.transAxes)
        return
    lo, hi = float(lat.min()), float(lat.max())
    bins = np.logspace(math.log10(lo), math.log10(hi * 1.0001) + 1e-9, 60)
    ax.hist(lat, bins=bins, color="#8d99ae")
    ax.set_xscale("log")
    for name, color, style in _PCT_STYLE:
        value = getattr(result, name)
        ax.axvline(value, color=color, linestyle=style, linewidth=2, label=f"{name} = {value:.3g}")
    ax.legend(loc="upper left", fontsize=9)


def _grouped(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float]], colors):
    """Grouped bars: one group per ``groups`` entry, one bar per series."""
    k = len(series)
    width = 0.8 / k
    x = np.arange(len(groups))
    out = []
    for j, (label, values) in enumerate(series.items()):
        out.append(
            ax.bar(x + (j - (k - 1) / 2) * width, values, width, label=label, color=colors[j])
        )
    ax.set_xticks(x, groups)
    return out


def plot_comparison(results: Sequence[SimResult], *, ax: Axes | None = None) -> Figure:
    """p50/p95/p99 per algorithm as grouped bars; log y when they span > 30x."""
    fig, ax = _new(ax, (max(6.0, 1.3 * len(results) + 2), 4.0))
    algos = [r.algorithm for r in results]
    series = {p: [getattr(r, p) for r in results] for p, _, _ in _PCT_STYLE}
    _grouped(ax, algos, series, [c for _, c, _ in _PCT_STYLE])
    values = [v for vs in series.values() for v in vs if v > 0]
    if values and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.set_ylabel("latency (units: mean service time)")
    ax.tick_params(axis="x", rotation=20 if len(results) > 4 else 0)
    ax.legend(fontsize=9)
    if results:
        ax.set_title(f"latency percentiles at load {results[0].load:g}")
    return fig


def plot_concurrency(
    results: Sequence[SimResult], *, title: str = "long-lived and short connections mixed"
) -> Figure:
    """Per backend, the most flows held at once (left) and flows served (right), per algorithm.

    With ``ServerSpec(workers=0)`` a backend's queue is simply the
    connections it holds, so equal served counts can hide very unequal
    concurrency; with one worker it is the queue waiting at a slow server.
    The left axis turns logarithmic when the peaks span more than 30x.
    """
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    names = [b.name for b in results[0].backends] if results else []
    algos = [r.algorithm for r in results]
    palette = [to_hex(colormaps["Set2"](j)) for j in range(len(results))]
    peak = {a: [b.max_queue for b in r.backends] for a, r in zip(algos, results, strict=True)}
    served = {a: [b.served for b in r.backends] for a, r in zip(algos, results, strict=True)}
    _grouped(left, names, peak, palette)
    _grouped(right, names, served, palette)
    peaks = [v for vs in peak.values() for v in vs if v > 0]
    if peaks and max(peaks) / min(peaks) > 30:
        left.set_yscale("log")
    left.set_title("most held at once (max queue)")
    right.set_title("served in total")
    left.set_ylabel("requests or connections")
    fig.legend(
        handles=[Patch(color=c, label=a) for a, c in zip(algos, palette, strict=True)],
        loc="outside right center",
        frameon=False,
    )
    fig.suptitle(title, fontsize=12)
    return fig


# ------------------------------------------------------ least response time
def slowdown_samples(
    n: int = 600,
    *,
    slow: tuple[float, float] = (200.0, 320.0),
    factor: float = 4.0,
    seed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic (time, latency) answers of one backend that slows down for a while.

    One answer per time unit on average (Poisson), lognormal latencies of
    median 1, multiplied by ``factor`` while ``slow[0] <= t < slow[1]``.
    """
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0, n))
    lat = rng.lognormal(0.0, 0.5, n)
    lat[(times >= slow[0]) & (times < slow[1])] *= factor
    return times, lat


def peak_ewma_trace(
    times: Sequence[float], latencies: Sequence[float], decay: float = 10.0
) -> np.ndarray:
    """The estimate :class:`~lbkit.algorithms.LeastResponseTime` holds after each answer.

    Feeds the real balancer one backend's answers in time order.
    """
    lb = LeastResponseTime([Backend("b")], decay=decay)
    b = lb.backends[0]
    out = np.empty(len(times))
    for k, (t, lat) in enumerate(zip(times, latencies, strict=True)):
        lb.on_finish(b, now=float(t), latency=float(lat))
        out[k] = lb.estimate(b, float(t))
    return out


def plot_latency_estimates(
    times: Sequence[float],
    latencies: Sequence[float],
    *,
    decay: float = 10.0,
    window: int = 50,
    highlight: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Observed latencies, the peak EWMA, and a rolling p50/p95 over ``window`` answers.

    ``highlight`` shades a time span, such as the one the backend was slow in.
    """
    fig, ax = _new(ax, (10, 3.8))
    if highlight is not None:
        ax.axvspan(*highlight, color="#fde2e4", label="backend slow")
    t = np.asarray(times, dtype=float)
    lat = np.asarray(latencies, dtype=float)
    ax.scatter(t, lat, s=6, color="#adb5bd", label="each answer")
    p50 = [np.percentile(lat[max(0, k - window + 1) : k + 1], 50) for k in range(lat.size)]
    p95 = [np.percentile(lat[max(0, k - window + 1) : k + 1], 95) for k in range(lat.size)]
    ax.plot(t, p50, color="#2a9d8f", linewidth=2, label=f"p50 of last {window}")
    ax.plot(t, p95, color="#e9c46a", linewidth=2, linestyle="--", label=f"p95 of last {window}")
    est = peak_ewma_trace(t, lat, decay)
    ax.plot(t, est, color="#d62828", linewidth=2, label=f"peak EWMA (decay {decay:g})")
    ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.set_ylabel("latency (log scale)")
    ax.set_title("what least_response_time believes about one backend")
    ax.legend(fontsize=9, loc="upper left", ncols=2)
    return fig


# -------------------------------------------------------- consistent hashing
def plot_maglev_table(
    table: Sequence[int], names: Sequence[str], width: int = 256, *, rows: int | None = None
) -> Figure:
    """The Maglev lookup table as an image (``width`` entries a row), and each backend's share.

    ``rows`` limits the image to the first ``rows x width`` entries; the
    shares always count the whole table.
    """
    m = len(table)
    arr = np.asarray(table, dtype=float)
    nrows = math.ceil(m / width) if rows is None else min(rows, math.ceil(m / width))
    shown = np.full(nrows * width, np.nan)
    take = min(m, nrows * width)
    shown[:take] = arr[:take]
    colors = backend_colors(list(names))
    cmap = ListedColormap([colors[nm] for nm in names]).with_extremes(bad="white")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[2.2, 1])
    left.imshow(
        shown.reshape(nrows, width),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(names) - 0.5,
        aspect="auto",
        interpolation="nearest",
    )
    left.set_xlabel(f"entry mod {width}")
    left.set_ylabel(f"entry // {width}")
    part = f"first {take:,} of {m:,}" if take < m else f"all {m:,}"
    left.set_title(f"Maglev table: {part} entries")
    counts = np.bincount(np.asarray(table, dtype=int), minlength=len(names))
    y = np.arange(len(names))
    right.barh(y, counts, color=[colors[nm] for nm in names])
    right.set_yticks(y, names)
    right.invert_yaxis()
    right.axvline(m / len(names), color="black", linestyle="--", linewidth=1, label="M / N")
    for k, c in enumerate(counts):
        right.text(c * 0.97, k, f"{100 * c / m:.1f}%", ha="right", va="center", color="white")
    right.set_xlabel("entries owned")
    right.set_title("share of the table")
    right.margins(x=0.1)
    right.legend(fontsize=8, loc="lower right")
    return fig


def plot_ring(
    backends: Sequence[Backend | str],
    vnodes: int = 8,
    *,
    keys: Sequence[str] = (),
    ax: Axes | None = None,
) -> Figure:
    """The hash ring of :func:`lbkit.algorithms.build_ring` on a circle.

    Points are virtual nodes; the arc before each point (counter-clockwise
    of it) is the range of hashes it owns, drawn in its backend's color.
    Each of ``keys`` is marked where it hashes, as :class:`RingHash` hashes a
    ``Flow(key=...)``, with the backend it goes to.
    """
    bs = [b if isinstance(b, Backend) else Backend(b) for b in backends]
    ring = build_ring(bs, vnodes)
    names = [b.name for b in bs]
    colors = backend_colors(names)
    fig, ax = _new(ax, (6.5, 6.5))
    full = 2**64

    def xy(h: float, r: float) -> tuple[float, float]:
        a = 2 * math.pi * h / full  # clockwise from the top
        return r * math.sin(a), r * math.cos(a)

    share = dict.fromkeys(names, 0.0)
    for k, (point, owner) in enumerate(ring):
        prev = ring[k - 1][0] - (full if k == 0 else 0)
        share[names[owner]] += (point - prev) / full
        hs = np.linspace(prev, point, max(2, int(200 * (point - prev) / full) + 2))
        pts = [xy(h, 1.0) for h in hs]
        ax.plot(
            *zip(*pts, strict=True), color=colors[names[owner]], linewidth=7, solid_capstyle="butt"
        )
        ax.plot(*xy(point, 1.0), "o", color="white", markeredgecolor="black", markersize=5)
    points = [p for p, _ in ring]
    for key in keys:
        h = stable_hash64(key, person=b"flow")
        owner = names[ring[bisect_left(points, h) % len(ring)][1]]
        ax.annotate(
            "",
            xy=xy(h, 1.04),
            xytext=xy(h, 1.2),
            arrowprops={"arrowstyle": "-|>", "color": "black"},
        )
        x, y = xy(h, 1.3)
        ax.text(x, y, f"{key}\n→ {owner}", ha="center", va="center", fontsize=8)
    ax.text(0, 0, "a key belongs to the\nnext point clockwise ↻", ha="center", va="center")
    ax.set_aspect("equal")
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.axis("off")
    ax.set_title(f"hash ring: {len(bs)} backends × {vnodes} virtual nodes")
    ax.legend(
        handles=[
            Patch(color=colors[n], label=f"{n}: {100 * share[n]:.0f}% of ring") for n in names
        ],
        loc="lower center",
        bbox_to_anchor=(0.5, -0.08),
        ncols=min(3, len(names)),
        fontsize=9,
        frameon=False,
    )
    return fig


def plot_remap(
    reports: Sequence[RemapReport], *, n_backends: int | None = None, ax: Axes | None = None
) -> Figure:
    """Per algorithm: share of keys that moved, and share that moved needlessly.

    The dashed line is the ideal 1/N (only the leaving backend's keys move);
    ``N`` is taken from the reports unless given.
    """
    fig, ax = _new(ax, (max(6.0, 1.3 * len(reports) + 2), 4.0))
    if n_backends is None:
        n_backends = max((max(r.before, default=0) + 1 for r in reports), default=1)
    algos = [r.algorithm for r in reports]
    series = {
        "moved (all keys)": [r.moved for r in reports],
        "moved needlessly (keys of staying backends)": [r.needless for r in reports],
    }
    bars = _grouped(ax, algos, series, ["#457b9d", "#e63946"])
    for group in bars:
        labels = [f"{100 * b.get_height():.0f}%" for b in group]
        ax.bar_label(group, labels=labels, padding=2, fontsize=8)
    ax.axhline(
        1 / n_backends,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"ideal: 1/N = {100 / n_backends:.0f}%",
    )
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of keys")
    removed = reports[0].removed if reports else "?"
    ax.set_title(f"backend {removed} leaves a pool of {n_backends}: which keys move?")
    ax.tick_params(axis="x", rotation=20 if len(reports) > 4 else 0)
    ax.legend(fontsize=9, loc="upper right")
    return fig
