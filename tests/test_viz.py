"""lbkit.viz: plots return figures that show the data; playground and checkers work."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lbkit.algorithms import ALGORITHMS, Backend, Flow, build_ring, maglev_table, make_balancer
from lbkit.sim import ServerSpec, Workload, identical_servers, remap_report, simulate
from lbkit.viz import (
    algorithm_playground,
    check_ring_fraction,
    check_sticky,
    check_wrr_sequence,
    nginx_upstream,
    peak_ewma_trace,
    pick_counts,
    pick_sequence,
    plot_comparison,
    plot_concurrency,
    plot_latency_estimates,
    plot_maglev_table,
    plot_pick_sequence,
    plot_pick_sequences,
    plot_remap,
    plot_ring,
    plot_sim_result,
    slowdown_samples,
)

SMALL = Workload(requests=2_000, load=0.7)
HETERO = [ServerSpec("s1", weight=2), ServerSpec("s2"), ServerSpec("slow", speed=0.25)]


@pytest.fixture(scope="module")
def result():
    return simulate("least_connections", HETERO, SMALL, seed=1)


def _bar_heights(ax) -> list[float]:
    return [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]


def test_sim_result_has_two_panels(result):
    """plot_sim_result draws a served panel and a latency panel."""
    fig = plot_sim_result(result)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2


def test_sim_result_bars_are_served_counts(result):
    """The left panel's bar heights are the requests each backend served."""
    fig = plot_sim_result(result)
    assert _bar_heights(fig.axes[0]) == [b.served for b in result.backends]


def test_sim_result_annotates_heterogeneous_backends(result):
    """Weight and speed are written over each bar when backends differ."""
    texts = [t.get_text() for t in plot_sim_result(result).axes[0].texts]
    assert texts == ["w=2\n×1", "w=1\n×1", "w=1\n×0.25"]


def test_sim_result_marks_percentiles(result):
    """The latency panel has one labelled vertical line per p50, p95, p99."""
    labels = [line.get_label() for line in plot_sim_result(result).axes[1].get_lines()]
    assert [lab.split(" ")[0] for lab in labels] == ["p50", "p95", "p99"]


def test_sim_result_writes_png(result, tmp_path):
    """Given a path, plot_sim_result saves a PNG there."""
    path = tmp_path / "out.png"
    plot_sim_result(result, path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sim_result_writes_nothing_without_path(result, tmp_path, monkeypatch):
    """Without a path nothing is written."""
    monkeypatch.chdir(tmp_path)
    plot_sim_result(result)
    assert list(tmp_path.iterdir()) == []


def test_comparison_bars_are_percentiles():
    """plot_comparison draws p50/p95/p99 for each result, grouped by percentile series."""
    runs = [simulate(a, HETERO, SMALL, seed=1) for a in ("round_robin", "power_of_two")]
    heights = _bar_heights(plot_comparison(runs).axes[0])
    assert heights == [runs[0].p50, runs[1].p50, runs[0].p95, runs[1].p95, runs[0].p99, runs[1].p99]


def test_comparison_goes_log_when_spread_is_large():
    """A slow server under round robin makes the y axis logarithmic."""
    runs = [simulate(a, HETERO, SMALL, seed=1) for a in ("round_robin", "least_connections")]
    assert plot_comparison(runs).axes[0].get_yscale() == "log"


def test_concurrency_bars_are_max_queue_and_served():
    """plot_concurrency shows each backend's max concurrency (left) and served (right)."""
    work = Workload(requests=2_000, load=5, service="bimodal")
    runs = [simulate(a, identical_servers(3, workers=0), work, seed=1) for a in ("round_robin",)]
    left, right = plot_concurrency(runs).axes
    assert _bar_heights(left) == [b.max_queue for b in runs[0].backends]
    assert _bar_heights(right) == [b.served for b in runs[0].backends]


def test_pick_sequence_is_smooth_wrr():
    """pick_sequence returns nginx's smooth order for weights 5, 1, 1."""
    pool = [Backend("a", weight=5), Backend("b"), Backend("c")]
    assert "".join(pick_sequence(make_balancer("weighted_round_robin", pool), 7)) == "aabacaa"


def test_pick_sequence_feeds_flows_to_hashing_balancers():
    """Balancers that need a flow get one per pick."""
    lb = make_balancer("ring_hash", [Backend("a"), Backend("b")])
    assert len(pick_sequence(lb, 20)) == 20


def test_pick_strip_has_one_cell_per_pick():
    """plot_pick_sequence draws one colored cell per pick, lettered with the backend."""
    names = list("aabacaa")
    ax = plot_pick_sequence(names, ["a", "b", "c"]).axes[0]
    assert len(ax.patches) == 7
    assert [t.get_text() for t in ax.texts] == names


def test_pick_strips_stack_one_row_per_label():
    """plot_pick_sequences draws one axis per labelled sequence."""
    fig = plot_pick_sequences({"rr": list("aaaaabc"), "wrr": list("aabacaa")}, ["a", "b", "c"])
    assert len(fig.axes) == 2


def test_maglev_plot_counts_whole_table():
    """The share panel of plot_maglev_table counts every entry of the table."""
    names = ["s1", "s2", "s3"]
    table = maglev_table(names, size=251)
    widths = [p.get_width() for p in plot_maglev_table(table, names, width=16).axes[1].patches]
    assert sum(widths) == 251


def test_maglev_plot_shows_only_requested_rows():
    """rows limits the image to rows x width entries."""
    names = ["s1", "s2"]
    image = plot_maglev_table(maglev_table(names), names, width=64, rows=4).axes[0].images[0]
    assert image.get_array().shape == (4, 64)


def test_ring_has_one_marker_per_virtual_node():
    """plot_ring draws one point marker per virtual node of build_ring."""
    backends = [Backend("a"), Backend("b"), Backend("c", weight=2)]
    ax = plot_ring(backends, vnodes=4).axes[0]
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(markers) == len(build_ring(backends, 4)) == 16


def test_ring_labels_keys_with_their_backend():
    """Each key passed to plot_ring is written with the backend it maps to."""
    ax = plot_ring(["a", "b"], vnodes=4, keys=["user-1"]).axes[0]
    lb = make_balancer("ring_hash", [Backend("a"), Backend("b")], vnodes=4)
    owner = lb.pick(Flow(key="user-1")).name
    assert any(t.get_text() == f"user-1\n→ {owner}" for t in ax.texts)


def test_remap_bars_are_moved_and_needless():
    """plot_remap draws moved then needless fractions, with the 1/N line."""
    pool = [Backend(f"s{i}") for i in range(1, 5)]
    reports = [remap_report(a, pool, "s2", keys=500) for a in ("round_robin", "ring_hash")]
    ax = plot_remap(reports).axes[0]
    expected = [r.moved for r in reports] + [r.needless for r in reports]
    assert _bar_heights(ax) == pytest.approx(expected)
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(1 / 4)


def test_peak_ewma_jumps_to_a_peak():
    """peak_ewma_trace follows a latency above the estimate at once."""
    trace = peak_ewma_trace([1.0, 2.0, 3.0], [1.0, 1.0, 9.0])
    assert trace[-1] == pytest.approx(9.0)


def test_latency_estimates_plot_has_four_series():
    """plot_latency_estimates draws answers, rolling p50, rolling p95 and the estimate."""
    times, lat = slowdown_samples(n=100)
    ax = plot_latency_estimates(times, lat, window=10).axes[0]
    assert len(ax.get_lines()) == 3 and len(ax.collections) == 1


def test_pick_counts_lumps_one_slash24_with_ip_hash():
    """pick_counts shows ip_hash sending a whole /24 to one backend."""
    lb = make_balancer("ip_hash", [Backend(f"app{i}") for i in range(4)])
    counts = pick_counts(lb, [Flow(client_ip=f"203.0.113.{h}") for h in range(1, 101)])
    assert sorted(counts.values()) == [0, 0, 0, 100]


def test_nginx_upstream_has_the_directive():
    """nginx_upstream writes the algorithm's directive and weighted servers."""
    text = nginx_upstream("least_connections", [Backend("a", weight=2), Backend("b")])
    assert text.splitlines()[1:4] == ["    least_conn;", "    server a weight=2;", "    server b;"]


def test_nginx_upstream_says_when_nginx_lacks_it():
    """An algorithm nginx open source lacks is named as missing, in a comment."""
    assert "# nginx open source has no maglev" in nginx_upstream("maglev", ["a", "b"])


def test_playground_builds_and_updates():
    """The playground builds without a kernel and reruns on a control change."""
    pg = algorithm_playground()
    assert pg.result is not None and pg.result.algorithm == "round_robin"
    pg.requests.value = 2_000
    pg.algorithm.value = "power_of_two"
    assert pg.result.algorithm == "power_of_two"
    assert pg.result.requests == 2_000
    assert isinstance(pg.figure, Figure)


def test_playground_offers_every_algorithm():
    """The dropdown lists every registered algorithm."""
    assert list(algorithm_playground().algorithm.options) == list(ALGORITHMS)


def test_wrr_checker_accepts_right_answer():
    """check_wrr_sequence accepts the smooth order for weights 3, 1."""
    assert check_wrr_sequence("aaba aaba")


def test_wrr_checker_rejects_bursty_answer():
    """check_wrr_sequence rejects the bursty order with a hint."""
    verdict = check_wrr_sequence("aaabaaab")
    assert not verdict and str(verdict).startswith("not yet")


def test_sticky_checker_accepts_right_answer():
    """check_sticky accepts ip_hash and the changing-address choice."""
    assert check_sticky("ip_hash", "b")


def test_sticky_checker_rejects_wrong_algorithm():
    """check_sticky rejects an algorithm without affinity."""
    assert not check_sticky("round_robin", "b")


def test_ring_checker_accepts_one_fifth():
    """check_ring_fraction accepts 1/5 in any spelling."""
    assert all(check_ring_fraction(a) for a in (0.2, "1/5", "20%"))


def test_ring_checker_rejects_reshuffle():
    """check_ring_fraction rejects 'almost everything moves'."""
    assert not check_ring_fraction(0.8)
