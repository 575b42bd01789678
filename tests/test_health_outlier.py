"""Outlier detection on live traffic: Envoy's detectors, ejection times and the ejection cap."""

from __future__ import annotations

import pytest

from lbkit.health import OutlierConfig, OutlierDetector

NAMES3 = ["api1", "api2", "api3"]
NAMES10 = [f"b{i}" for i in range(10)]


def detector(names=NAMES3, **config) -> OutlierDetector:
    return OutlierDetector(names, OutlierConfig(**config))


def fail(d: OutlierDetector, name: str, n: int, now: float, status: int = 503):
    """``n`` failed requests to ``name`` at ``now``; returns the last observation's result."""
    out = None
    for _ in range(n):
        out = d.observe(name, status, now)
    return out


def test_consecutive_failures_eject():
    """The 5th 5xx in a row ejects, with the reason in the message."""
    d = detector()
    assert fail(d, "api2", 4, 1.0) is None
    t = d.observe("api2", 503, 1.0)
    assert t.message == "api2 EJECTED for 30 s after 5 consecutive failures: HTTP 503"
    assert d.ejected(1.0) == {"api2"}


def test_a_success_resets_the_consecutive_count():
    """Failures broken by a success do not add up."""
    d = detector(failure_percentage_threshold=None)
    fail(d, "api2", 4, 1.0)
    d.observe("api2", 200, 1.0)
    assert fail(d, "api2", 4, 1.0) is None
    assert d.ejected(1.0) == set()


def test_local_origin_failures_count_like_5xx():
    """False (refused, reset, timeout) counts as a failure; 4xx does not."""
    d = detector(failure_percentage_threshold=None)
    for _ in range(4):
        d.observe("api1", False, 0.0, "connection refused")
    d.observe("api1", 404, 0.0)
    assert d.ejected(0.0) == set()
    for _ in range(4):
        d.observe("api1", False, 0.0, "connection refused")
    t = d.observe("api1", False, 0.0, "connection refused")
    assert t.message.endswith("5 consecutive failures: connection refused")


def test_failure_ratio_needs_the_minimum_volume():
    """12 failures in 19 requests are not judged; the 20th request's failure is."""
    d = detector(
        consecutive_5xx=0, failure_percentage_threshold=50, failure_percentage_request_volume=20
    )
    for i in range(19):
        assert d.observe("api2", 500 if i % 5 < 3 else 200, float(i) / 10) is None
    assert d.ejected(2.0) == set()
    t = d.observe("api2", 500, 1.9)
    assert t is not None
    assert t.message == (
        "api2 EJECTED for 30 s as 65% of 20 requests failed in the last 10 s (threshold 50%)"
    )


def test_failure_ratio_below_threshold_does_not_eject():
    """40 % failures stay in service at a 50 % threshold."""
    d = detector(consecutive_5xx=0)
    for i in range(50):
        d.observe("api2", 500 if i % 5 < 2 else 200, float(i) / 10)
    assert d.ejected(5.0) == set()


def test_failure_ratio_window_slides():
    """Failures older than the interval no longer count towards the ratio."""
    d = detector(consecutive_5xx=0, failure_percentage_request_volume=10, interval=10.0)
    for _ in range(9):
        d.observe("api2", 500, 0.0)
    for i in range(10):
        d.observe("api2", 200, 10.0 + i / 10)  # the 9 failures slid out at t=10
    assert d.observe("api2", 500, 11.0) is None  # 1 of 11 failed
    assert d.ejected(11.0) == set()


def test_failure_ratio_needs_minimum_hosts_with_volume():
    """With minimum_hosts=2, one busy backend alone is not judged (Envoy's rule)."""
    d = detector(
        consecutive_5xx=0,
        failure_percentage_request_volume=10,
        failure_percentage_minimum_hosts=2,
    )
    for _ in range(10):
        d.observe("api2", 500, 1.0)
    assert d.ejected(1.0) == set()
    for _ in range(10):
        d.observe("api1", 200, 1.0)
    assert d.observe("api2", 500, 1.0) is not None


def test_ejection_ends_at_the_right_time():
    """Ejected at t=1 for 30 s: still out at 30.999, back at 31 with a RETURNED event."""
    d = detector()
    fail(d, "api2", 5, 1.0)
    assert d.until("api2") == 31.0
    assert d.tick(30.999) == []
    assert d.ejected(30.999) == {"api2"}
    back = d.tick(31.0)
    assert [t.message for t in back] == ["api2 RETURNED after 30 s ejected (ejected 1 time so far)"]
    assert d.ejected(31.0) == set()
    assert d.until("api2") is None


def test_ejected_is_a_pure_query():
    """ejected(now) reflects expiry without tick; tick emits the event."""
    d = detector()
    fail(d, "api2", 5, 0.0)
    assert d.ejected(30.0) == set()
    assert d.is_ejected("api2", 29.0)
    assert len(d.tick(30.0)) == 1


def test_observations_of_an_ejected_backend_are_ignored():
    """Failures while ejected do not extend or repeat the ejection."""
    d = detector()
    fail(d, "api2", 5, 0.0)
    assert fail(d, "api2", 10, 5.0) is None
    assert d.ejections("api2") == 1
    assert d.until("api2") == 30.0


def test_ejection_time_multiplies_and_caps():
    """Repeated ejections last base x n: 30, 60, 90 ... capped at max_ejection_time."""
    d = detector(base_ejection_time=30, max_ejection_time=100, interval=1000)
    durations = []
    now = 0.0
    for _ in range(6):
        fail(d, "api2", 5, now)
        durations.append(d.until("api2") - now)
        now = d.until("api2")
        d.tick(now)
    assert durations == [30, 60, 90, 100, 100, 100]


def test_multiplier_stops_growing_past_the_cap():
    """Envoy grows the multiplier only while multiplier x base < max + base."""
    d = detector(base_ejection_time=30, max_ejection_time=300, interval=10_000)
    now = 0.0
    for _ in range(20):
        fail(d, "api2", 5, now)
        now = d.until("api2")
        d.tick(now)
    assert d.multiplier("api2") == 11


def test_multiplier_decays_while_healthy():
    """Each interval sweep a backend spends in service lowers the multiplier by one."""
    d = detector(base_ejection_time=30, interval=10)
    fail(d, "api2", 5, 0.0)
    d.tick(30.0)
    fail(d, "api2", 5, 30.0)  # multiplier 2, back at 90
    assert d.until("api2") == 90.0
    d.tick(90.0)
    assert d.multiplier("api2") == 2
    d.tick(99.0)
    assert d.multiplier("api2") == 2  # sweep at 90: back for 0 s only
    d.tick(100.0)
    assert d.multiplier("api2") == 1  # sweep at 100: back for 10 s
    d.tick(110.0)
    assert d.multiplier("api2") == 0
    fail(d, "api2", 5, 110.0)
    assert d.until("api2") == 140.0  # forgiven: base time again


def test_counters_reset_after_return():
    """A returned backend needs a full run of failures again."""
    d = detector(failure_percentage_threshold=None)
    fail(d, "api2", 5, 0.0)
    assert fail(d, "api2", 4, 30.0) is None
    assert d.ejected(30.0) == set()


@pytest.mark.parametrize(
    ("names", "percent", "one", "max_out"),
    [
        (NAMES3, 10, True, 1),  # 10 % of 3 is 0, but one may always go
        (NAMES3, 10, False, 0),  # Envoy's default: nothing in a small pool
        (NAMES3, 50, False, 1),  # 1/3 <= 50 %, 2/3 > 50 %
        (NAMES3, 100, False, 3),
        (NAMES10, 10, True, 1),
        (NAMES10, 10, False, 1),
        (NAMES10, 30, False, 3),
        (NAMES10, 35, True, 3),
    ],
)
def test_max_ejection_percent_bounds_the_ejected_share(names, percent, one, max_out):
    """Every backend fails at once; at most the allowed number is ejected."""
    d = detector(names, max_ejection_percent=percent, always_eject_one=one)
    for name in names:
        fail(d, name, 5, 0.0)
    assert len(d.ejected(0.0)) == max_out
    assert d.overflows == len(names) - max_out


def test_overflow_is_logged_and_needs_new_failures():
    """A refused ejection is an event; the counter restarts, as in Envoy."""
    d = detector()
    fail(d, "api1", 5, 0.0)
    assert fail(d, "api2", 5, 0.0) is None
    last = d.events[-1]
    assert (last.old, last.new) == ("active", "active")
    assert last.message == (
        "api2 NOT EJECTED after 5 consecutive failures: HTTP 503; "
        "1 of 3 already ejected (max_ejection_percent 10%)"
    )
    assert fail(d, "api2", 4, 0.0) is None
    assert d.overflows == 1


def test_a_slot_frees_when_a_backend_returns():
    """Once the ejected backend returns, another may be ejected."""
    d = detector()
    fail(d, "api1", 5, 0.0)
    d.tick(30.0)
    assert fail(d, "api2", 5, 30.0) is not None
    assert d.ejected(30.0) == {"api2"}


def test_on_change_reports_ejection_and_return():
    """on_change(name, True) on ejection and (name, False) on return."""
    seen = []
    d = OutlierDetector(NAMES3, on_change=lambda n, e: seen.append((n, e)))
    fail(d, "api3", 5, 0.0)
    d.tick(100.0)
    assert seen == [("api3", True), ("api3", False)]


def test_returns_are_processed_in_time_order():
    """tick over a long gap returns each backend at its own time."""
    d = detector(max_ejection_percent=100)
    fail(d, "api1", 5, 0.0)
    fail(d, "api2", 5, 5.0)
    back = d.tick(1000.0)
    assert [(t.backend, t.at) for t in back] == [("api1", 30.0), ("api2", 35.0)]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_ejection_time": 10, "base_ejection_time": 30},
        {"max_ejection_percent": 101},
        {"interval": 0},
        {"consecutive_5xx": -1},
        {"failure_percentage_threshold": 150},
    ],
)
def test_bad_config_is_rejected(bad):
    """Envoy's own validation (max >= base) and range checks."""
    with pytest.raises(ValueError):
        OutlierConfig(**bad)
