"""Plots for the health-check chapter: state timelines, detection times, probe load.

Each takes data from :mod:`lbkit.health.sim` (or measured rows of the same
shape, as ``bench/bench_health.py`` makes) and returns a
:class:`~matplotlib.figure.Figure` built without pyplot, as every plot of
:mod:`lbkit.viz`. Drawn artists carry a ``gid`` naming what they show
(``state:api2:down``, ``errors``, ``window:2:3``...), so tests can check
the data behind a figure rather than its pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from lbkit.health.sim import (
    DetectionSample,
    HealthSimResult,
    ProbeLoad,
    detection_table,
)

from .algorithms import _new, _save

#: Health states as colored bands.
STATE_COLORS: dict[str, str] = {"up": "#2a9d8f", "down": "#e63946", "unknown": "#adb5bd"}
#: The backend's mode, drawn as a thin strip above its state band (healthy: nothing).
MODE_COLORS: dict[str, str] = {
    "slow": "#f4a261",
    "error-500": "#9d0208",
    "healthz-500": "#e76f51",
    "accept-no-answer": "#6a4c93",
    "refuse": "#212529",
}
_CHECK_LABELS = {"tcp": "TCP check (L4: connect)", "http": "HTTP check (L7: GET /healthz)"}
_SERIES = ("#264653", "#e76f51", "#2a9d8f", "#8338ec")


def _labelled(
    results: HealthSimResult | Sequence[HealthSimResult] | Mapping[str, HealthSimResult],
) -> dict[str, HealthSimResult]:
    if isinstance(results, HealthSimResult):
        results = [results]
    if isinstance(results, Mapping):
        return {_CHECK_LABELS.get(k, k): r for k, r in results.items()}
    return {_CHECK_LABELS[r.check]: r for r in results}


# ---------------------------------------------------------------- timeline
def _timeline_panel(
    ax: Axes, result: HealthSimResult, balancer: str | None, messages: bool
) -> None:
    names = result.names
    rows = {name: len(names) - 1 - k for k, name in enumerate(names)}  # first on top
    lb = balancer or result.balancers[0]
    for name, y in rows.items():
        for start, end, state in result.spans(name, lb):
            ax.add_patch(
                Rectangle(
                    (start, y - 0.25),
                    end - start,
                    0.5,
                    facecolor=STATE_COLORS[state],
                    edgecolor="none",
                    gid=f"state:{name}:{state}",
                )
            )
        spec = result.backend(name)
        for start, end, mode in spec.spans(result.duration):
            if mode == "healthy":
                continue
            ax.add_patch(
                Rectangle(
                    (start, y + 0.3),
                    end - start,
                    0.14,
                    facecolor=MODE_COLORS[mode],
                    edgecolor="none",
                    gid=f"mode:{name}:{mode}",
                )
            )
            ax.text(start, y + 0.47, f" {mode}", fontsize=7, va="bottom", color=MODE_COLORS[mode])
        probes = [p for p in result.probes if p.backend == name and p.balancer == lb]
        for ok, color in ((True, "#495057"), (False, "#e63946")):
            times = [p.start for p in probes if p.ok is ok and p.start < result.duration]
            ax.plot(
                times,
                [y - 0.36] * len(times),
                linestyle="none",
                marker="|",
                markersize=5,
                color=color,
                gid=f"probes:{name}:{'ok' if ok else 'fail'}",
            )
        for t in result.transitions(lb, name):
            if t.new not in ("up", "down"):
                continue
            ax.plot(
                [t.at],
                [y],
                marker="v" if t.new == "down" else "^",
                color="black",
                markersize=7,
                linestyle="none",
                gid=f"transition:{name}:{t.new}",
            )
            if messages and t.old != "unknown":
                ax.annotate(
                    t.message,
                    (t.at, y),
                    xytext=(7, 0),
                    textcoords="offset points",
                    fontsize=7,
                    va="center",
                    color="white",
                    fontweight="bold",
                    gid=f"message:{name}:{t.new}",
                )
    ax.set_ylim(-0.6, len(names) - 0.2)
    ax.set_yticks(list(rows.values()), list(rows))
    ax.set_xlim(0, result.duration)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _errors_panel(ax: Axes, result: HealthSimResult, width: float) -> None:
    edges, counts = result.error_counts(width)
    ax.bar(edges[:-1], counts, width=width, align="edge", color="#e63946", gid="errors")
    total = len(result.errors())
    ax.set_ylabel(f"errors/{width:g} s", fontsize=8)
    ax.text(
        0.99,
        0.9,
        f"{total} of {len(result.requests)} requests failed",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
    )
    ax.set_ylim(0, max(1, int(counts.max(initial=0))) * 1.3)
    ax.set_xlim(0, result.duration)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_health_timeline(
    results: HealthSimResult | Sequence[HealthSimResult] | Mapping[str, HealthSimResult],
    *,
    balancer: str | None = None,
    messages: bool = True,
    bin_width: float = 1.0,
    path: str | None = None,
) -> Figure:
    """Health state per backend over time, and client errors underneath, per run.

    Pass ``compare_checks(scenario(), ...)`` to put the TCP and the HTTP
    check of the same backend side by side. For each run: a band per
    backend colored by the health state ``balancer`` (the first by default)
    held, a thin strip above it where the backend's mode was not healthy,
    a tick per probe (red: failed), triangles at DOWN/UP transitions with
    their messages; below, failed client requests per ``bin_width`` seconds.
    """
    runs = _labelled(results)
    n = len(runs)
    height = sum(0.55 * len(r.backends) + 1.6 for r in runs.values()) + 0.8
    fig = Figure(figsize=(11, height), layout="constrained")
    ratios = []
    for r in runs.values():
        ratios += [max(len(r.backends), 1) * 0.9, 1.0]
    axes = fig.subplots(2 * n, 1, sharex=True, height_ratios=ratios, squeeze=False)[:, 0]
    for k, (label, result) in enumerate(runs.items()):
        top, bottom = axes[2 * k], axes[2 * k + 1]
        _timeline_panel(top, result, balancer, messages)
        _errors_panel(bottom, result, bin_width)
        top.set_title(f"{label}: {len(result.errors())} client errors", loc="left", fontsize=10)
    axes[-1].set_xlabel("time (s)")
    handles = [Patch(color=c, label=s) for s, c in STATE_COLORS.items()]
    modes = {m for r in runs.values() for b in r.backends for _, _, m in b.spans(r.duration)}
    handles += [Patch(color=MODE_COLORS[m], label=f"mode {m}") for m in MODE_COLORS if m in modes]
    handles.append(
        Line2D([], [], color="#e63946", marker="|", linestyle="none", label="probe failed")
    )
    fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------ detection times
def plot_detection_times(
    samples: Sequence[DetectionSample] | Mapping[str, Sequence[DetectionSample]],
    *,
    ax: Axes | None = None,
    path: str | None = None,
) -> Figure:
    """Detection delay per (interval, fall): one point per run, over the predicted window.

    ``samples`` from :func:`lbkit.health.sim.detection_samples`, or several
    labelled sets (``{"measured": ..., "simulated": ...}``) drawn side by
    side. The shaded box is :func:`~lbkit.health.sim.predict_detection`'s
    window, the dashed line its mean; a short black bar marks each set's
    median. Runs that never detected are counted in the legend.
    """
    sets = dict(samples) if isinstance(samples, Mapping) else {"simulated": list(samples)}
    rows = {(r.interval, r.fall): r for s in sets.values() for r in detection_table(s)}
    keys = sorted(rows)
    fig, ax = _new(ax, (max(6.0, 1.2 * len(keys) + 2.0), 4.2))
    x_of = {key: float(x) for x, key in enumerate(keys)}
    for key, x in x_of.items():
        w = rows[key].window
        ax.add_patch(
            Rectangle(
                (x - 0.42, w.low),
                0.84,
                w.high - w.low,
                facecolor="#dee2e6",
                edgecolor="#adb5bd",
                gid=f"window:{key[0]:g}:{key[1]}",
            )
        )
        ax.plot(
            [x - 0.42, x + 0.42],
            [w.mean] * 2,
            linestyle="--",
            color="#6c757d",
            lw=1,
            label="predicted mean" if x == 0 else None,
            gid=f"mean:{key[0]:g}:{key[1]}",
        )
    k = len(sets)
    for j, (label, group) in enumerate(sets.items()):
        offset = (j - (k - 1) / 2) * (0.6 / k)
        xs, ys, missed = [], [], 0
        by_key: dict[tuple[float, int], list[float]] = {}
        for s in group:
            if s.delay is None:
                missed += 1
                continue
            by_key.setdefault((s.interval, s.fall), []).append(s.delay)
        for key, delays in by_key.items():
            spread = np.linspace(-0.08, 0.08, len(delays)) if len(delays) > 1 else np.zeros(1)
            xs += list(x_of[key] + offset + spread)
            ys += delays
            med = float(np.median(delays))
            ax.plot([x_of[key] + offset - 0.12, x_of[key] + offset + 0.12], [med] * 2, color="k")
        note = f" ({missed} not detected)" if missed else ""
        ax.scatter(
            xs,
            ys,
            s=14,
            alpha=0.75,
            color=_SERIES[j % len(_SERIES)],
            label=f"{label}{note}",
            gid=f"delays:{label}",
            zorder=3,
        )
    ax.add_patch(Rectangle((0, 0), 0, 0, facecolor="#dee2e6", label="predicted window"))
    ax.set_xticks(list(x_of.values()), [f"inter {i:g} s\nfall {f}" for i, f in keys], fontsize=8)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("time from failure to DOWN (s)")
    ax.set_title("detection time: (fall-1 .. fall) x interval, plus jitter")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


# ------------------------------------------------------------ probe load
def plot_probe_load(rows: Sequence[ProbeLoad], *, path: str | None = None) -> Figure:
    """Probes/s per backend (left) and in total (right) versus interval, per balancer count.

    Points are simulated or measured (``rows``), dashed lines the
    prediction ``balancers x backends / interval``. Both axes are
    logarithmic: halving the interval doubles the load, and so does a
    second balancer checking the same backends.
    """
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    counts = sorted({r.balancers for r in rows})
    for j, n in enumerate(counts):
        mine = sorted((r for r in rows if r.balancers == n), key=lambda r: r.interval)
        color = _SERIES[j % len(_SERIES)]
        x = [r.interval for r in mine]
        label = f"{n} balancer{'s' if n > 1 else ''}"
        for ax, measured, predicted, what in (
            (left, "per_backend", "predicted_per_backend", "per_backend"),
            (right, "total", "predicted_total", "total"),
        ):
            ax.plot(
                x,
                [getattr(r, measured) for r in mine],
                marker="o",
                linestyle="none",
                color=color,
                label=label,
                gid=f"{what}:{n}",
            )
            ax.plot(
                x,
                [getattr(r, predicted) for r in mine],
                linestyle="--",
                color=color,
                lw=1,
                gid=f"predicted_{what}:{n}",
            )
    backends = sorted({r.backends for r in rows})
    left.set_title("probes each backend receives")
    right.set_title(f"probes in total ({', '.join(map(str, backends))} backends)")
    intervals = sorted({r.interval for r in rows})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(intervals, [f"{i:g}" for i in intervals])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("check interval (s)")
        ax.set_ylabel("probes/s")
        ax.legend(fontsize=8)
    fig.suptitle("every balancer checks every backend: the load multiplies", fontsize=11)
    return _save(fig, path)
