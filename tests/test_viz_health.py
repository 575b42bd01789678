"""lbkit.viz.health: the figures build, what they draw is the simulation's data, and
chapter 5's helpers and exercise checkers answer from lbkit itself."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lbkit.health import (
    HealthConfig,
    compare_checks,
    detection_samples,
    predict_detection,
    probe_load_samples,
    scenario,
    slow_start_factor,
)
from lbkit.viz.health import (
    FAILURE_CHOICES,
    HINTS,
    STATE_COLORS,
    check_detection,
    check_which_check,
    describe_run,
    detection_truth,
    failed_share,
    plot_detection_times,
    plot_health_timeline,
    plot_probe_load,
    plot_slow_start,
    slow_start_picks,
    which_check_truth,
    without_checks,
)


@pytest.fixture(scope="module")
def runs():
    return compare_checks(scenario(), HealthConfig(), duration=60.0)


def _gid(ax, prefix: str) -> list:
    """The artists of ``ax`` whose gid starts with ``prefix``."""
    return [a for a in ax.get_children() if (a.get_gid() or "").startswith(prefix)]


def test_timeline_builds_two_panels_per_run(runs):
    """TCP and HTTP: a state panel and an error panel each."""
    fig = plot_health_timeline(runs)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title(loc="left").startswith("TCP check")
    assert fig.axes[2].get_title(loc="left").startswith("HTTP check")


def test_timeline_bands_are_the_state_spans(runs):
    """Each backend's bands are its health spans, colored by state."""
    fig = plot_health_timeline(runs)
    ax = fig.axes[2]  # the HTTP run
    bands = [p for p in _gid(ax, "state:api2:") if isinstance(p, Rectangle)]
    drawn = [(p.get_x(), p.get_x() + p.get_width(), p.get_gid().split(":")[2]) for p in bands]
    spans = runs["http"].spans("api2")
    assert [d[2] for d in drawn] == [s[2] for s in spans]
    assert [x for d in drawn for x in d[:2]] == pytest.approx([x for s in spans for x in s[:2]])
    down = next(p for p in bands if p.get_gid().endswith(":down"))
    assert matplotlib.colors.to_hex(down.get_facecolor()) == STATE_COLORS["down"]


def test_timeline_tcp_run_has_no_down_band(runs):
    """Under the TCP check api2 is never drawn down."""
    fig = plot_health_timeline(runs)
    assert _gid(fig.axes[0], "state:api2:down") == []
    assert len(_gid(fig.axes[0], "mode:api2:error-500")) == 1


def test_timeline_marks_transitions_with_messages(runs):
    """The DOWN and UP triangles sit at the transition times; the messages are written."""
    fig = plot_health_timeline(runs)
    ax = fig.axes[2]
    (down,) = _gid(ax, "transition:api2:down")
    outage = runs["http"].outages()[0]
    assert list(down.get_xdata()) == [outage.down_at]
    texts = [t.get_text() for t in _gid(ax, "message:api2:")]
    assert "api2 DOWN after 3 failures: HTTP 500 on /healthz" in texts
    assert "api2 UP after 2 successes" in texts


def test_timeline_error_bars_are_the_error_counts(runs):
    """The error histogram's bars are the failed requests per second."""
    fig = plot_health_timeline(runs)
    for ax, run in ((fig.axes[1], runs["tcp"]), (fig.axes[3], runs["http"])):
        bars = [p for p in ax.patches if p.get_gid() == "errors"]
        _, counts = run.error_counts(1.0)
        assert [b.get_height() for b in bars] == list(counts)
        assert sum(b.get_height() for b in bars) == len(run.errors())


def test_timeline_probe_ticks_are_the_probes(runs):
    """The failed-probe ticks of api2 are the HTTP run's failed probes."""
    fig = plot_health_timeline(runs)
    (ticks,) = _gid(fig.axes[2], "probes:api2:fail")
    failed = [p.start for p in runs["http"].probes if p.backend == "api2" and not p.ok]
    assert list(ticks.get_xdata()) == failed


def test_timeline_accepts_a_single_result(runs):
    """One result alone gives one pair of panels."""
    assert len(plot_health_timeline(runs["http"]).axes) == 2


@pytest.fixture(scope="module")
def samples():
    return detection_samples([0.5, 1.0], [2, 3], seeds=range(6))


def test_detection_points_are_the_delays(samples):
    """The scattered points are the samples' delays."""
    fig = plot_detection_times(samples)
    (points,) = _gid(fig.axes[0], "delays:simulated")
    drawn = sorted(points.get_offsets()[:, 1])
    assert drawn == pytest.approx(sorted(s.delay for s in samples))


def test_detection_windows_are_the_prediction(samples):
    """Each shaded box spans predict_detection's window for its (interval, fall)."""
    fig = plot_detection_times(samples)
    boxes = {p.get_gid(): p for p in _gid(fig.axes[0], "window:")}
    assert set(boxes) == {"window:0.5:2", "window:0.5:3", "window:1:2", "window:1:3"}
    box = boxes["window:1:3"]
    w = predict_detection(HealthConfig(interval=1.0, fall=3), probe_time=0.001)
    assert (box.get_y(), box.get_y() + box.get_height()) == pytest.approx((w.low, w.high))


def test_detection_labelled_sets_side_by_side(samples):
    """Two labelled sets give two point clouds, and the undetected runs are counted."""
    tcp = detection_samples([0.5], [2], seeds=range(3), check="tcp")
    fig = plot_detection_times({"http": samples, "tcp": tcp})
    assert len(_gid(fig.axes[0], "delays:")) == 2
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "tcp (3 not detected)" in labels


def test_detection_draws_on_a_given_axes(samples):
    """With ax, the plot draws there and returns that axes' figure."""
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_detection_times(samples, ax=ax) is fig


def test_probe_load_lines_are_the_rows():
    """Per-backend and total points are the rows' values, one series per balancer count."""
    rows = probe_load_samples([0.5, 2.0], [1, 2], backends=3, periods=20)
    fig = plot_probe_load(rows)
    left, right = fig.axes
    (one,) = _gid(left, "per_backend:1")
    assert list(one.get_xdata()) == [0.5, 2.0]
    assert list(one.get_ydata()) == [r.per_backend for r in rows if r.balancers == 1]
    (two,) = _gid(right, "total:2")
    assert list(two.get_ydata()) == [r.total for r in rows if r.balancers == 2]
    (predicted,) = _gid(right, "predicted_total:2")
    assert list(predicted.get_ydata()) == pytest.approx([2 * 3 / 0.501, 2 * 3 / 2.001])


def test_plots_write_png(tmp_path, runs, samples):
    """Each plot writes a PNG when given a path."""
    for name, make in (
        ("t.png", lambda p: plot_health_timeline(runs, path=p)),
        ("d.png", lambda p: plot_detection_times(samples, path=p)),
        ("l.png", lambda p: plot_probe_load(probe_load_samples([1.0], [1]), path=p)),
    ):
        make(str(tmp_path / name))
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------- chapter 5's helpers
def test_without_checks_keeps_a_dead_backend_in_rotation():
    """No checks: api2 refusing from 10 s to 40 s fails a third of the requests sent then."""
    run = without_checks(scenario("refuse", start=10, end=40))
    assert run.transitions(backend="api2") == []
    assert failed_share(run, 10, 40) == pytest.approx(1 / 3, abs=0.01)
    assert failed_share(run, 0, 10) == 0.0
    assert len(run.errors()) == len(run.errors("api2")) == 500


def test_failed_share_of_an_empty_span_is_zero(runs):
    """No request sent in the span: 0, not a division by zero."""
    assert failed_share(runs["tcp"], 60.0, 70.0) == 0.0


def test_describe_run_says_detected_missed_and_harmless(runs):
    """One line each: DOWN with its message, never DOWN, and a mode that fails nothing."""
    assert describe_run(runs["http"]) == (
        "HTTP check: api2 DOWN 4.66 s after the change "
        "(api2 DOWN after 3 failures: HTTP 500 on /healthz); 77 client errors"
    )
    assert describe_run(runs["tcp"]) == "TCP check: api2 never marked DOWN; 500 client errors"
    harmless = compare_checks(scenario("healthz-500"), HealthConfig(), duration=60.0)["tcp"]
    assert (
        describe_run(harmless) == "TCP check: api2 passes every check, never DOWN; 0 client errors"
    )


def test_slow_start_plot_draws_envoys_factor():
    """Each ramp is slow_start_factor over time, and the share line is factor/(factor+n-1)."""
    fig = plot_slow_start(10.0, aggressions=(1.0,), pool=3)
    left, right = fig.axes
    (ramp,) = _gid(left, "ramp:1")
    t = ramp.get_xdata()
    expected = [100 * slow_start_factor(x, 10.0) for x in t]
    assert list(ramp.get_ydata()) == pytest.approx(expected)
    (share,) = _gid(right, "share:1")
    f = ramp.get_ydata() / 100
    assert list(share.get_ydata()) == pytest.approx(list(100 * f / (f + 2)))


def test_slow_start_picks_follow_the_ramp():
    """A real round robin under SlowStart gives api2 about Envoy's share, then a third."""
    rows = slow_start_picks(10.0, rate=100, seconds=12)
    assert [second for second, _, _ in rows] == list(range(12))
    for _, share, expected in rows:
        assert share == pytest.approx(expected, abs=0.03)
    assert rows[0][1] < 0.1 and rows[-1][1] == pytest.approx(1 / 3, abs=0.02)


def test_slow_start_picks_refuse_a_hash():
    """Maglev ignores slow start: the helper says why instead of pretending."""
    with pytest.raises(ValueError, match="remaps keys"):
        slow_start_picks(algorithm="maglev")


def test_detection_truth_is_the_prediction():
    """interval 2 s, fall 3, timeout 1 s, no jitter: 4 s, 6 s, and 9 s for a hang."""
    assert detection_truth() == {"best": 4.0, "worst": 6.0, "hang": 9.0}


def test_check_detection_accepts_the_truth_and_hints_otherwise():
    """The right numbers are correct; typical mistakes get a hint, never the number."""
    assert check_detection({"best": 4, "worst": "6 s", "hang": 9.0})
    assert str(check_detection({"best": 4, "worst": 6, "hang": 9})) == "correct"
    assert not check_detection(None)
    assert "hang" in str(check_detection({"best": 4, "worst": 6}))
    wrong = check_detection({"best": 4, "worst": 4, "hang": 9})
    assert not wrong and wrong.message == "not yet: " + HINTS["worst_best"]
    assert check_detection({"best": 4, "worst": 6, "hang": 6}).message.endswith(HINTS["hang_worst"])
    assert check_detection({"best": 4, "worst": 6, "hang": 7}).message.endswith(HINTS["hang_once"])
    for verdict in (wrong, check_detection({"best": 6, "worst": 6, "hang": 9})):
        assert not any(n in verdict.message for n in ("4", "6", "9"))


def test_which_check_truth_comes_from_the_probe_table():
    """A refused connect fails both checks; hangs, 500s and slow answers past the
    timeout fail HTTP only; a fast-enough slow backend fails neither."""
    assert which_check_truth() == {
        "a": "both", "b": "http", "c": "http", "d": "neither", "e": "http", "f": "http",
    }  # fmt: skip
    assert set(FAILURE_CHOICES) == set(which_check_truth())


def test_check_which_check_accepts_the_truth_and_counts_mistakes():
    """Synonyms are accepted; a wrong map gets a count; 'tcp' alone gets its own hint."""
    truth = which_check_truth()
    assert check_which_check(truth)
    assert check_which_check({f"({k})": v.upper() for k, v in truth.items()})
    assert check_which_check({**truth, "a": "tcp and http", "d": "none", "b": "L7"})
    assert "1 not right" in str(check_which_check({**truth, "d": "http"}))
    assert "TCP check fails only" in str(check_which_check({**truth, "b": "tcp"}))
    assert "missing: f" in str(check_which_check({k: v for k, v in truth.items() if k != "f"}))
    assert "not a failure" in str(check_which_check({**truth, "z": "both"}))
    assert "answer 'both'" in str(check_which_check({**truth, "a": "maybe"}))
    assert not check_which_check({})
