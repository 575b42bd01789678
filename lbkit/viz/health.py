"""Plots and exercises for the health-check chapter: timelines, detection, load, slow start.

Each plot takes data from :mod:`lbkit.health.sim` (or measured rows of the
same shape, as ``bench/bench_health.py`` makes) and returns a
:class:`~matplotlib.figure.Figure` built without pyplot, as every plot of
:mod:`lbkit.viz`. Drawn artists carry a ``gid`` naming what they show
(``state:api2:down``, ``errors``, ``window:2:3``...), so tests can check
the data behind a figure rather than its pixels.

Also here, pure: :func:`without_checks` (the simulation with a balancer
that never learns), :func:`failed_share`, and chapter 5's exercise
checkers (:func:`check_detection`, :func:`check_which_check`), whose truth
comes from :func:`lbkit.health.predict_detection` and the simulation's
probe table, as :mod:`lbkit.viz.exercises` does for the other chapters.
The live lab's helpers are in :mod:`lbkit.viz.health_lab`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from lbkit.health import HealthConfig, predict_detection, slow_start_factor
from lbkit.health.sim import (
    DetectionSample,
    HealthSimResult,
    ProbeLoad,
    SimBackend,
    detection_table,
    probe_outcome,
    simulate_health,
)

from .algorithms import _new, _save
from .exercises import Verdict, _say, check_letter_answers

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


# -------------------------------------------------------------- no checks at all
def without_checks(
    backends: Sequence[SimBackend | str], duration: float = 60.0, **options: object
) -> HealthSimResult:
    """:func:`~lbkit.health.sim.simulate_health` with a balancer that never checks.

    The checker starts every backend ``up`` and probes it once, at time 0
    (a TCP connect, while everything is healthy); its next probe would come
    after the run. So whatever happens later, the balancer keeps every
    backend in rotation: a pool without health checks. ``options`` go to
    ``simulate_health`` (``traffic``, ``algorithm``, ``seed``...).
    """
    config = HealthConfig(interval=1e9, jitter=0.0, initial="up")
    return simulate_health(backends, config, check="tcp", duration=duration, **options)  # type: ignore[arg-type]


def failed_share(result: HealthSimResult, start: float = 0.0, end: float | None = None) -> float:
    """The share of client requests sent in ``[start, end)`` that failed (0 with none sent)."""
    stop = result.duration if end is None else end
    sent = [r for r in result.requests if start <= r.at < stop]
    return sum(not r.ok for r in sent) / len(sent) if sent else 0.0


def describe_run(result: HealthSimResult, backend: str = "api2") -> str:
    """One line: did ``result``'s check take ``backend`` out, how fast, at what cost.

    ``HTTP check: api2 DOWN 4.66 s after the change (api2 DOWN after 3
    failures: HTTP 500 on /healthz); 77 client errors``. A mode that fails
    neither the check nor the clients is not an outage: the line says so.
    """
    label = {"tcp": "TCP check", "http": "HTTP check"}[result.check]
    outages = result.outages(backend=backend)
    if not outages:
        errors = len(result.errors(backend))
        return f"{label}: {backend} passes every check, never DOWN; {errors} client errors"
    o = outages[0]
    if o.down_at is None:
        return f"{label}: {backend} never marked DOWN; {o.client_errors} client errors"
    message = next(t.message for t in result.transitions(None, backend) if t.at == o.down_at)
    return (
        f"{label}: {backend} DOWN {o.detection_delay:.2f} s after the change ({message}); "
        f"{o.client_errors} client errors"
    )


# --------------------------------------------------------------------- slow start
def plot_slow_start(
    window: float = 10.0,
    *,
    aggressions: Sequence[float] = (0.5, 1.0, 2.0),
    min_weight_percent: float = 10.0,
    pool: int = 3,
    path: str | None = None,
) -> Figure:
    """Envoy's slow-start ramp: weight (left) and share of requests (right) after UP.

    Left, :func:`lbkit.health.slow_start_factor` over ``1.2 x window``
    seconds for each ``aggression`` (1: linear, as HAProxy's ``slowstart``;
    the floor is ``min_weight_percent``). Right, the share of requests the
    recovered backend gets in a pool of ``pool`` equal backends, next to
    its full share ``1/pool``: ``factor / (factor + pool - 1)``.
    """
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    t = np.linspace(0.0, 1.2 * window, 241)
    for j, aggression in enumerate(aggressions):
        factors = np.array(
            [slow_start_factor(x, window, aggression, min_weight_percent) for x in t]
        )
        color = _SERIES[j % len(_SERIES)]
        label = f"aggression {aggression:g}" + (" (linear)" if aggression == 1 else "")
        left.plot(t, 100 * factors, color=color, label=label, gid=f"ramp:{aggression:g}")
        share = factors / (factors + pool - 1)
        right.plot(t, 100 * share, color=color, label=label, gid=f"share:{aggression:g}")
    left.axhline(min_weight_percent, color="#adb5bd", lw=1, linestyle=":", gid="floor")
    right.axhline(100 / pool, color="#6c757d", lw=1, linestyle="--", gid="full_share")
    left.set_title(f"weight after UP (window {window:g} s, floor {min_weight_percent:g}%)")
    right.set_title(f"its share of requests, {pool} equal backends (full: {100 / pool:.0f}%)")
    left.set_ylabel("% of configured weight")
    right.set_ylabel("% of requests")
    for ax in (left, right):
        ax.axvline(window, color="#adb5bd", lw=1)
        ax.set_xlabel("seconds since the backend came back UP")
        ax.set_xlim(0, t[-1])
        ax.set_ylim(0, 105 if ax is left else max(105 / pool, 40))
        ax.legend(fontsize=8, loc="lower right")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return _save(fig, path)


def slow_start_picks(
    window: float = 10.0,
    *,
    algorithm: str = "round_robin",
    names: Sequence[str] = ("api1", "api2", "api3"),
    recovering: str = "api2",
    rate: int = 100,
    seconds: int = 12,
) -> list[tuple[int, float, float]]:
    """``(second, share of picks, expected share)`` for ``recovering`` after it came UP at 0.

    A real balancer (``algorithm``, equal weights) under
    :class:`lbkit.health.SlowStart`: each second the ramp is applied
    (:meth:`~lbkit.health.SlowStart.update`), then ``rate`` picks are made.
    The expected share is ``f / (f + n - 1)`` with ``f`` Envoy's factor at
    that second. ValueError for an algorithm that ignores slow start.
    """
    from lbkit.algorithms import Backend, make_balancer
    from lbkit.health import SlowStart, why_no_slow_start

    why = why_no_slow_start(algorithm)
    if why is not None:
        raise ValueError(why)
    balancer = make_balancer(algorithm, [Backend(n) for n in names], seed=0)
    ramp = SlowStart(balancer, window)
    ramp.start(recovering, 0.0)
    out = []
    for second in range(seconds):
        ramp.update(float(second))
        picks = [balancer.pick(None, second + k / rate).name for k in range(rate)]
        factor = slow_start_factor(float(second), window)
        out.append((second, picks.count(recovering) / rate, factor / (factor + len(names) - 1)))
    return out


# ----------------------------------------------------------------------- exercises
#: Exercise 1's check: interval 2 s, fall 3, timeout 1 s, no jitter (to make it exact).
DETECTION_EXERCISE = HealthConfig(interval=2.0, fall=3, rise=2, timeout=1.0, jitter=0.0)


def detection_truth(config: HealthConfig = DETECTION_EXERCISE) -> dict[str, float]:
    """``{"best", "worst", "hang"}``: fastest and slowest DOWN for a backend that answers
    500 (probes take no time), and the slowest for one that never answers (each probe
    waits its timeout), from :func:`lbkit.health.predict_detection`."""
    fast = predict_detection(config)
    hang = predict_detection(config, timeouts=True)
    return {"best": fast.low, "worst": fast.high, "hang": hang.high}


#: Exercise 1's hints: they point at the step that went wrong, never at the number.
HINTS: dict[str, str] = {
    "best": "best case: the failure happens just before a check; count the intervals "
    "between the first and the last of the failing checks",
    "best_fall": "best case: the first failing check can come right after the failure; "
    "how many intervals until the last of the fall checks?",
    "worst": "worst case: wait for the first failing check, then the rest",
    "worst_best": "worst case: the failure can happen just after a check passed; how long "
    "until the first check that sees it?",
    "hang": "a hanging backend: the same count, plus each probe's own wait",
    "hang_worst": "a backend that never answers: how long does each probe take before it "
    "counts as a failure?",
    "hang_once": "every one of the fall probes waits for its timeout, not only the last",
}


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().removesuffix("s").strip())
        except ValueError:
            return None
    return None


def check_detection(answer: Mapping[str, object] | None) -> Verdict:
    """Exercise 1: ``{"best": s, "worst": s, "hang": s}`` for :data:`DETECTION_EXERCISE`."""
    if not answer:
        return _say(False, "give seconds for 'best', 'worst' and 'hang', e.g. {'best': 1, ...}")
    given = {str(k).strip().lower(): _seconds(v) for k, v in answer.items()}
    truth = detection_truth()
    missing = [k for k in truth if given.get(k) is None]
    if missing:
        return _say(False, f"give a number of seconds for: {', '.join(missing)}")
    i, fall, timeout = (
        DETECTION_EXERCISE.interval,
        DETECTION_EXERCISE.fall,
        DETECTION_EXERCISE.timeout,
    )

    def near(key: str, value: float) -> bool:
        return abs(given[key] - value) <= 0.05  # type: ignore[operator]

    if not near("best", truth["best"]):
        if near("best", fall * i):
            return _say(False, HINTS["best_fall"])
        return _say(False, HINTS["best"])
    if not near("worst", truth["worst"]):
        if near("worst", truth["best"]):
            return _say(False, HINTS["worst_best"])
        return _say(False, HINTS["worst"])
    if not near("hang", truth["hang"]):
        if near("hang", truth["worst"]):
            return _say(False, HINTS["hang_worst"])
        if near("hang", truth["worst"] + timeout):
            return _say(False, HINTS["hang_once"])
        return _say(False, HINTS["hang"])
    return _say(True, "")


#: Exercise 2: each failure as ``letter: (what happens, mode, slow_delay)``; the check's
#: timeout is :data:`DETECTION_EXERCISE`'s (1 s).
FAILURE_CHOICES: dict[str, tuple[str, str, float]] = {
    "a": ("the process crashed: nothing listens on the port any more", "refuse", 0.0),
    "b": ("the database is gone: the app answers every request with a 500", "error-500", 0.0),
    "c": ("a deadlock: connections are accepted, nothing is ever answered",
          "accept-no-answer", 0.0),
    "d": ("the app is busy: every answer takes 0.3 s", "slow", 0.3),
    "e": ("the app is swapping: every answer takes 3 s", "slow", 3.0),
    "f": ("the app is shutting down: only /healthz answers 500, requests still work",
          "healthz-500", 0.0),
}  # fmt: skip
_CHECK_WORDS = {
    "both": "both", "tcp and http": "both", "tcp+http": "both", "all": "both",
    "http": "http", "l7": "http", "http only": "http",
    "tcp": "tcp", "l4": "tcp", "tcp only": "tcp",
    "neither": "neither", "none": "neither", "no": "neither",
}  # fmt: skip


def failure_choices() -> None:
    """Print exercise 2's failures (the check's timeout is 1 s)."""
    for letter, (text, _mode, _delay) in FAILURE_CHOICES.items():
        print(f"({letter}) {text}")


def which_check_truth(timeout: float = DETECTION_EXERCISE.timeout) -> dict[str, str]:
    """For each failure: which checks fail it (``both``, ``http``, ``tcp`` or ``neither``),
    from the simulation's probe table (:func:`lbkit.health.sim.probe_outcome`)."""
    out = {}
    for letter, (_text, mode, delay) in FAILURE_CHOICES.items():
        fails = {
            check
            for check in ("tcp", "http")
            if not probe_outcome(check, mode, timeout=timeout, slow_delay=delay, probe_time=0).ok
        }
        out[letter] = {0: "neither", 2: "both"}.get(len(fails)) or fails.pop()
    return out


def check_which_check(answer: Mapping[str, str] | None) -> Verdict:
    """Exercise 2: ``{"a": "both" | "http" | "tcp" | "neither", ...}`` for every failure."""

    def tcp_slip(meant: dict[str, str]) -> str | None:
        if "tcp" in meant.values():
            return ("a TCP check fails only when the connection cannot be opened; would an "
                    "HTTP check get an answer then?")  # fmt: skip
        return None

    return check_letter_answers(
        answer,
        which_check_truth(),
        _CHECK_WORDS,
        what="failure",
        how="'both', 'http', 'tcp' or 'neither'",
        wrong_hint="For each, ask: does the connection open (if not, every check fails)? Does "
        "GET /healthz get a 2xx or 3xx within the 1 s timeout? The checks judge only what "
        "they probe, not what real requests get.",
        before_counting=tcp_slip,
    )
