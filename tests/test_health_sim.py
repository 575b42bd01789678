"""The health-check simulation: the real checker in simulated time, and its predictions."""

from __future__ import annotations

import itertools

import pytest

from lbkit.health import (
    HealthConfig,
    SimBackend,
    Traffic,
    compare_checks,
    detection_samples,
    detection_table,
    predict_detection,
    predict_probe_load,
    predict_recovery,
    probe_load_samples,
    scenario,
    simulate_health,
    timeout_reason,
)
from lbkit.health.sim import MODES, probe_outcome, request_outcome
from lbkit.lab.roles.backend_core import MODES as BACKEND_MODES

CFG = HealthConfig()  # HAProxy's defaults: rise 2, fall 3, inter 2 s, timeout 1 s, jitter 10 %
RATE = 50.0  # client requests/s in the default Traffic


def run(mode: str = "error-500", check: str = "http", **options):
    """The course's case: api2 in ``mode`` from 10 s to 40 s, 60 s in all."""
    options.setdefault("duration", 60.0)
    return simulate_health(
        scenario(mode, 10.0, 40.0), options.pop("config", CFG), check=check, **options
    )


def test_modes_are_the_lab_backends():
    """The simulated modes are exactly the lab backend role's."""
    assert MODES == BACKEND_MODES


@pytest.mark.parametrize(
    ("check", "mode", "ok", "reason"),
    [
        ("tcp", "healthy", True, "TCP connect ok"),
        ("tcp", "error-500", True, "TCP connect ok"),
        ("tcp", "healthz-500", True, "TCP connect ok"),
        ("tcp", "accept-no-answer", True, "TCP connect ok"),
        ("tcp", "slow", True, "TCP connect ok"),
        ("tcp", "refuse", False, "connection refused"),
        ("http", "healthy", True, "HTTP 200 on /healthz"),
        ("http", "error-500", False, "HTTP 500 on /healthz"),
        ("http", "healthz-500", False, "HTTP 500 on /healthz"),
        ("http", "accept-no-answer", False, timeout_reason(1.0)),
        ("http", "slow", False, timeout_reason(1.0)),
        ("http", "refuse", False, "connection refused"),
    ],
)
def test_probe_outcome_table(check, mode, ok, reason):
    """Each mode passes or fails each check kind as the module's table says."""
    result = probe_outcome(check, mode, timeout=1.0, slow_delay=1.5)
    assert (result.ok, result.reason) == (ok, reason)


def test_slow_under_the_timeout_passes_http():
    """A slow backend that answers within the check's timeout passes the HTTP check."""
    assert probe_outcome("http", "slow", timeout=1.0, slow_delay=0.2).ok


def test_timed_out_probe_takes_the_timeout():
    """A probe of a backend that never answers ends when its timeout expires."""
    assert probe_outcome("http", "accept-no-answer", timeout=0.7).elapsed == 0.7


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("healthy", "ok"),
        ("healthz-500", "ok"),
        ("error-500", "500"),
        ("refuse", "refused"),
        ("accept-no-answer", "timeout"),
    ],
)
def test_request_outcome(mode, outcome):
    """A client request to a backend in each mode gets what the lab backend would give."""
    assert request_outcome(mode, Traffic())[0] == outcome


def test_same_seed_same_run():
    """Two runs with one seed record identical probes, transitions and requests."""
    a = run(traffic=Traffic(arrivals="poisson"), seed=7)
    b = run(traffic=Traffic(arrivals="poisson"), seed=7)
    assert a.probes == b.probes
    assert a.messages() == b.messages()
    assert a.requests == b.requests


def test_other_seed_other_schedule():
    """Another seed draws other jitter: the probes start at other times."""
    a, b = run(seed=1), run(seed=2)
    assert [p.start for p in a.probes] != [p.start for p in b.probes]


def test_tcp_check_keeps_the_500_backend_in_rotation():
    """Under a TCP check api2 answering 500 is never marked down."""
    result = run(check="tcp")
    (outage,) = result.outages()
    assert not outage.detected
    assert [t.new for t in result.transitions(backend="api2")] == ["up"]


def test_tcp_check_errors_last_until_the_mode_ends():
    """Under a TCP check clients get 500s in every second from 10 s to 40 s, none after."""
    result = run(check="tcp")
    edges, counts = result.error_counts(1.0)
    during = counts[(edges[:-1] >= 10) & (edges[:-1] < 40)]
    assert during.size == 30 and (during > 0).all()
    assert counts[edges[:-1] >= 40].sum() == 0
    assert {r.outcome for r in result.errors()} == {"500"}
    assert len(result.errors()) == pytest.approx(30 * RATE / 3, abs=2)


def test_http_check_stops_the_errors_after_detection():
    """Under an HTTP check the 500s stop at the DOWN transition."""
    result = run(check="http")
    (outage,) = result.outages()
    assert outage.detected
    assert outage.errors_after_down == 0
    assert max(r.at for r in result.errors()) < outage.down_at
    assert outage.client_errors == len(result.errors()) > 0


def test_http_check_fewer_errors_than_tcp():
    """The same 30 s of 500s cost clients far less under an HTTP check."""
    runs = compare_checks(scenario(), CFG, duration=60.0)
    assert len(runs["http"].errors()) * 4 < len(runs["tcp"].errors())


def test_down_message_names_the_count_and_the_reason():
    """The DOWN transition reads like HAProxy's log: the failures counted and why."""
    (down,) = [t for t in run().transitions(backend="api2") if t.new == "down"]
    assert down.message == "api2 DOWN after 3 failures: HTTP 500 on /healthz"


def test_down_after_exactly_fall_failed_probes():
    """The DOWN transition is recorded at the end of the fall-th failed probe."""
    config = HealthConfig(fall=4, interval=1.0)
    result = run(config=config)
    (outage,) = result.outages()
    failed = [
        p for p in result.probes if p.backend == "api2" and not p.ok and p.end <= outage.down_at
    ]
    assert len(failed) == 4
    assert failed[-1].end == outage.down_at


CONFIGS = [
    HealthConfig(),
    HealthConfig(interval=1.0, fall=2, jitter=0.0),
    HealthConfig(interval=0.5, fall=5, jitter=0.3),
    HealthConfig(interval=3.0, fall=1),
    HealthConfig(interval=2.0, fall=3, fastinter=0.5),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"inter{c.interval}-fall{c.fall}")
@pytest.mark.parametrize("mode", ["error-500", "refuse", "accept-no-answer"])
def test_detection_within_the_predicted_window(config, mode):
    """Over 15 seeds and change times, every detection delay is inside predict_detection's."""
    samples = detection_samples(
        [config.interval], [config.fall], seeds=range(15), base=config, mode=mode
    )
    window = predict_detection(config, timeouts=mode == "accept-no-answer", probe_time=0.001)
    assert all(s.window == window for s in samples)
    delays = [s.delay for s in samples]
    assert None not in delays
    assert all(d in window for d in delays), (delays, window)


def test_detection_spreads_over_the_window():
    """The change falls at every phase of the schedule: delays spread over most of the window."""
    config = HealthConfig(jitter=0.0)
    samples = detection_samples([2.0], [3], seeds=range(40), base=config)
    window = predict_detection(config, probe_time=0.001)
    delays = [s.delay for s in samples]
    assert max(delays) - min(delays) > 0.8 * (window.high - window.low)


def test_predicted_window_haproxy_defaults():
    """rise 2 fall 3 inter 2 s, 10 % jitter, instant answers: DOWN 3.6 to 6.6 s after the change."""
    window = predict_detection(HealthConfig())
    assert (window.low, window.high) == pytest.approx((3.6, 6.6))
    assert window.low < window.mean < window.high


def test_predicted_window_adds_a_timeout_per_failed_check():
    """A backend that never answers: each of the fall checks adds its timeout."""
    fast, hang = predict_detection(CFG), predict_detection(CFG, timeouts=True)
    assert hang.low - fast.low == pytest.approx(CFG.fall * CFG.timeout)
    assert hang.high - fast.high == pytest.approx(CFG.fall * CFG.timeout)


@pytest.mark.parametrize("check", ["tcp", "http"])
def test_refuse_detected_by_both_checks(check):
    """A backend that refuses connections is taken down by a TCP and by an HTTP check."""
    result = run("refuse", check=check)
    (outage,) = result.outages()
    assert outage.detected
    assert outage.detection_delay in predict_detection(CFG, probe_time=0.001)
    assert "connection refused" in result.messages()[-2]


def test_healthz_500_is_taken_down_though_clients_were_fine():
    """healthz-500: the HTTP check removes a backend whose real answers were good."""
    result = run("healthz-500", check="http")
    (outage,) = result.outages()
    assert outage.detected
    assert outage.client_errors == 0
    assert result.errors() == []


def test_hanging_backend_detected_only_by_http():
    """accept-no-answer: TCP connects, so only the HTTP check (timing out) notices."""
    runs = compare_checks(scenario("accept-no-answer"), CFG, duration=60.0)
    assert not runs["tcp"].outages()[0].detected
    outage = runs["http"].outages()[0]
    assert outage.detection_delay in predict_detection(CFG, timeouts=True, probe_time=0.001)
    assert "timeout after 1.0 s" in runs["http"].messages()[-2]


@pytest.mark.parametrize("rise", [1, 2, 4])
def test_recovery_after_rise_successes(rise):
    """Back to healthy, the backend is UP after rise passing checks, inside predict_recovery's."""
    config = HealthConfig(rise=rise)
    result = run(config=config)
    (outage,) = result.outages()
    up = result.transitions(backend="api2")[-1]
    plural = "success" if rise == 1 else "successes"
    assert up.message == f"api2 UP after {rise} {plural}"
    passed = [
        p for p in result.probes if p.backend == "api2" and p.ok and 40 <= p.start < outage.up_at
    ]
    assert len(passed) == rise
    assert outage.recovery_delay in predict_recovery(config, probe_time=0.001)


def test_requests_return_after_recovery():
    """After the UP transition api2 gets its share of requests again, and they succeed."""
    result = run()
    (outage,) = result.outages()
    after = [r for r in result.requests if r.at >= outage.up_at]
    mine = [r for r in after if r.backend == "api2"]
    assert len(mine) == pytest.approx(len(after) / 3, abs=1)
    assert all(r.ok for r in mine)


@pytest.mark.parametrize("interval", [0.5, 2.0, 5.0])
def test_probe_load_is_one_per_interval_per_checker(interval):
    """Each balancer probes each healthy backend once per interval (plus the probe's time)."""
    config = HealthConfig(interval=interval)
    result = simulate_health(
        ["api1", "api2", "api3"], config, duration=200 * interval, traffic=None, balancers=2
    )
    for name in result.names:
        for lb in result.balancers:
            assert result.probe_rate(name, lb) == pytest.approx(1 / interval, rel=0.03)
        assert result.probe_rate(name) == pytest.approx(2 / interval, rel=0.03)


def test_probe_load_samples_match_the_prediction():
    """probe_load_samples: balancers x backends / interval; a second balancer doubles it."""
    rows = probe_load_samples([1.0, 4.0], [1, 2], backends=4, periods=100)
    assert len(rows) == 4
    for row in rows:
        assert row.per_backend == pytest.approx(row.predicted_per_backend, rel=0.03)
        assert row.total == pytest.approx(row.per_backend * 4)
        assert row.predicted_total == pytest.approx(
            predict_probe_load(
                HealthConfig(interval=row.interval),
                backends=4,
                balancers=row.balancers,
                probe_time=0.001,
            )
        )
    one, two = rows[0], rows[1]
    assert (one.balancers, two.balancers) == (1, 2)
    assert two.total == pytest.approx(2 * one.total, rel=0.03)


def test_downinter_slows_the_checks_of_a_dead_backend():
    """While fully down a backend is probed every downinter, not every interval."""
    config = HealthConfig(interval=1.0, downinter=5.0, jitter=0.0)
    result = simulate_health(
        [SimBackend("api1", [(5.0, "refuse")])], config, duration=100.0, traffic=None
    )
    _, counts = result.probe_counts(width=50.0)
    assert counts["api1"][-1] == pytest.approx(10, abs=1)


def test_each_balancer_detects_on_its_own_schedule():
    """Two balancers both take api2 down, at different moments (independent jitter)."""
    result = run(balancers=2)
    downs = {lb: result.outages(lb)[0].down_at for lb in result.balancers}
    assert None not in downs.values()
    assert downs["lb1"] != downs["lb2"]
    assert {r.balancer for r in result.requests} == {"lb1", "lb2"}


def test_every_backend_down_means_no_backend():
    """When every backend refuses and is down, requests find no backend at all."""
    backends = [SimBackend(n, [(5.0, "refuse")]) for n in ("api1", "api2")]
    result = simulate_health(backends, CFG, duration=30.0)
    late = [r for r in result.requests if r.at > 20.0]
    assert late and all(r.outcome == "no backend" for r in late)


def test_least_connections_avoids_hung_backend_before_detection():
    """With least_connections, hung requests pile up on api2, so it gets fewer new ones."""
    rr = run("accept-no-answer", algorithm="round_robin")
    lc = run("accept-no-answer", algorithm="least_connections")
    assert len(lc.errors("api2")) < len(rr.errors("api2"))


def test_spans_cover_the_run():
    """A backend's state spans tile [0, duration] and follow its transitions."""
    result = run()
    spans = result.spans("api2")
    assert spans[0][0] == 0 and spans[-1][1] == result.duration
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert [s for _, _, s in spans] == ["unknown", "up", "down", "up"]
    assert result.state_at("api2", 30.0) == "down"


def test_detection_table_summarises_samples():
    """detection_table: one row per (interval, fall), every run detected and inside its window."""
    samples = detection_samples([0.5, 1.0], [2, 3], seeds=range(5))
    rows = detection_table(samples)
    assert [(r.interval, r.fall) for r in rows] == [(0.5, 2), (0.5, 3), (1.0, 2), (1.0, 3)]
    assert all(r.runs == 5 and r.delays_ok for r in rows)


def test_tcp_samples_of_500_are_never_detected():
    """detection_samples with a TCP check of error-500: no run detects it."""
    samples = detection_samples([1.0], [2], seeds=range(3), check="tcp")
    assert [s.delay for s in samples] == [None, None, None]
    assert detection_table(samples)[0].detected == 0


def test_unknown_mode_is_refused():
    """A timeline naming a mode the lab backend does not have is an error."""
    with pytest.raises(ValueError, match="unknown mode"):
        SimBackend("api1", [(1.0, "on-fire")])


def test_mode_at_follows_the_timeline():
    """mode_at: the initial mode, then each change from its time on."""
    b = SimBackend("api2", [(40.0, "healthy"), (10.0, "error-500")])
    assert [b.mode_at(t) for t in (0, 9.99, 10, 39.9, 40)] == [
        "healthy",
        "healthy",
        "error-500",
        "error-500",
        "healthy",
    ]
