"""Slow start: Envoy's weight ramp, which algorithms honour it, and its effect on picks."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from lbkit.algorithms import ALGORITHMS, Backend, make_balancer
from lbkit.health import (
    NO_SLOW_START,
    SLOW_START_ALGORITHMS,
    HealthChecker,
    HealthConfig,
    SlowStart,
    slow_start_factor,
    slow_start_weight,
    supports_slow_start,
    why_no_slow_start,
)


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (0.0, 10.0),  # max(0, 1) / 10 = 0.1: the floor and the first second agree
        (0.5, 10.0),
        (1.0, 10.0),
        (2.5, 25.0),
        (5.0, 50.0),
        (9.0, 90.0),
        (10.0, 100.0),
        (60.0, 100.0),
    ],
)
def test_formula_linear(since, expected):
    """aggression 1: weight x max(0.1, t / window), full weight after the window."""
    assert slow_start_weight(100, since, 10.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("aggression", "since", "expected"),
    [
        (2.0, 2.5, 100 * 0.25**0.5),  # faster at first: 50
        (2.0, 4.0, 100 * 0.4**0.5),
        (0.5, 5.0, 100 * 0.5**2),  # slower at first: 25
        (0.5, 2.0, 10.0),  # 0.2^2 = 0.04 is below the 10 % floor
    ],
)
def test_formula_aggression(aggression, since, expected):
    """time_factor ** (1 / aggression), never below min_weight_percent."""
    assert slow_start_weight(100, since, 10.0, aggression) == pytest.approx(expected)


def test_min_weight_percent_is_the_floor():
    """With a 30 % floor, the first seconds get 30 % of the weight."""
    assert slow_start_weight(10, 1.0, 100.0, min_weight_percent=30) == pytest.approx(3.0)
    assert slow_start_weight(10, 50.0, 100.0, min_weight_percent=30) == pytest.approx(5.0)


def test_factor_rejects_bad_parameters():
    """Aggression must be positive and the floor a percentage."""
    with pytest.raises(ValueError):
        slow_start_factor(1.0, 10.0, aggression=0)
    with pytest.raises(ValueError):
        slow_start_factor(1.0, 10.0, min_weight_percent=150)


@pytest.mark.parametrize("aggression", [0.5, 1.0, 1.5, 3.0])
def test_ramp_is_monotonic(aggression):
    """The factor never decreases with time and ends at exactly 1."""
    factors = [slow_start_factor(t / 4, 30.0, aggression) for t in range(0, 140)]
    assert all(a <= b for a, b in itertools.pairwise(factors))
    assert factors[-1] == 1.0


def test_every_algorithm_is_classified():
    """Each registered algorithm either honours slow start or has a reason not to."""
    assert set(ALGORITHMS) == SLOW_START_ALGORITHMS | set(NO_SLOW_START)
    assert not SLOW_START_ALGORITHMS & set(NO_SLOW_START)


@pytest.mark.parametrize("name", ["ip_hash", "ring_hash", "maglev"])
def test_hash_based_algorithms_do_not_support_it(name):
    """Hash-based balancers ignore slow start, and say why (flows would move)."""
    assert not supports_slow_start(name)
    assert "remaps" in why_no_slow_start(name)


@pytest.mark.parametrize("name", sorted(SLOW_START_ALGORITHMS))
def test_weight_based_algorithms_support_it(name):
    """Weight-based balancers honour slow start."""
    assert supports_slow_start(make_balancer(name, [Backend("a")]))
    assert why_no_slow_start(name) is None


def test_unknown_algorithm_is_an_error():
    """An algorithm name we do not know is not silently classified."""
    with pytest.raises(ValueError, match="fastest"):
        supports_slow_start("fastest")


def test_slowstart_is_inert_on_a_hash_balancer():
    """On maglev, SlowStart changes no weight and reports why."""
    lb = make_balancer("maglev", [Backend("a"), Backend("b", weight=2)])
    slow = SlowStart(lb, 10.0)
    slow.start("a", 0.0)
    assert not slow.enabled and "maglev" in slow.reason
    assert slow.update(1.0) == {}
    assert [b.weight for b in lb.backends] == [1, 2]


def test_attaching_scales_weights_without_changing_shares():
    """Weights become configured x resolution; nothing is ramping yet."""
    lb = make_balancer("weighted_round_robin", [Backend("a", weight=3), Backend("b")])
    slow = SlowStart(lb, 10.0)
    assert [b.weight for b in lb.backends] == [300, 100]
    assert slow.weights(0.0) == {"a": 300, "b": 100}
    picks = Counter(lb.pick().name for _ in range(400))
    assert picks == {"a": 300, "b": 100}


def test_effective_weights_ramp_then_settle():
    """A started backend's integer weight climbs with time and ends at full weight."""
    lb = make_balancer("least_connections", [Backend("a"), Backend("b", weight=2)])
    slow = SlowStart(lb, 10.0)
    slow.start("b", 100.0)
    seen = [slow.weights(100.0 + t)["b"] for t in range(0, 12)]
    assert seen == [20, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 200]
    slow.update(111.0)
    assert slow.ramping(111.0) == set()
    assert lb.backend("b").weight == 200


def test_operator_weight_change_goes_through_slowstart():
    """set_weight on the helper changes the configured weight under the ramp."""
    lb = make_balancer("round_robin", [Backend("a"), Backend("b")])
    slow = SlowStart(lb, 10.0)
    slow.set_weight("a", 4)
    assert slow.update(0.0) == {"a": 400}


def shares_per_second(lb, slow, seconds: int, picks: int) -> list[float]:
    """Run ``picks`` picks each simulated second; the share of api2 in each second."""
    shares = []
    for t in range(seconds):
        slow.update(float(t))
        counts = Counter(lb.pick(now=float(t)).name for _ in range(picks))
        shares.append(counts["api2"] / picks)
    return shares


def test_recovered_backend_share_ramps_up_on_smooth_wrr():
    """api2 back at t=0 with a 10 s window: about 5 % of picks at first, a third after."""
    lb = make_balancer("weighted_round_robin", [Backend(f"api{i}") for i in (1, 2, 3)])
    slow = SlowStart(lb, 10.0)
    checker = HealthChecker(
        ["api1", "api2", "api3"], HealthConfig(rise=1, fall=1, initial="up"), on_change=lb.set_state
    )
    checker.record("api2", False, "connection refused", -5.0)
    assert lb.state("api2") == "down"
    back = checker.record("api2", True, "HTTP 200 on /healthz", 0.0)
    assert slow.observe(back)
    shares = shares_per_second(lb, slow, 13, 2100)
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(shares))
    assert shares[0] == pytest.approx(0.1 / 2.1, abs=0.002)  # f / (2 + f), f = 0.1
    assert shares[5] == pytest.approx(0.5 / 2.5, abs=0.002)
    assert shares[12] == pytest.approx(1 / 3, abs=0.002)


def test_first_health_up_does_not_ramp():
    """unknown -> up at startup is not a recovery (HAProxy's rule)."""
    lb = make_balancer("round_robin", [Backend("a")])
    slow = SlowStart(lb, 10.0)
    t = HealthChecker(["a"]).record("a", True, "HTTP 200", 0.0)
    assert not slow.observe(t)
    assert slow.ramping(0.0) == set()


@pytest.mark.parametrize("name", sorted(SLOW_START_ALGORITHMS))
def test_ramping_backend_gets_fewer_picks_on_every_supported_algorithm(name):
    """At its 10 % floor the recovered backend gets about a tenth of a's picks."""
    lb = make_balancer(name, [Backend("a"), Backend("b")], seed=1)
    slow = SlowStart(lb, 100.0)
    slow.start("b", 0.0)
    slow.update(1.0)
    if name == "least_response_time":  # same measured latency on both, so weight decides
        for backend in lb.backends:
            lb.on_start(backend, 0.0)
            lb.on_finish(backend, 0.0, latency=0.01)
    counts = Counter()
    for _ in range(1000):
        backend = lb.pick(now=1.0)
        counts[backend.name] += 1
        lb.on_start(backend, 1.0)  # flows stay open: load-aware balancers weigh them
    assert 50 < counts["b"] < 150  # weight 10 against 100: about 1 pick in 11
