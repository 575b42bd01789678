"""Passive health: nginx max_fails / fail_timeout, step by step."""

from __future__ import annotations

import pytest

from lbkit.health import PassiveHealth

# Each step: (event, time, expected availability just after). Events: "fail",
# "ok" (a success), "pick" (the balancer selects the server), "check" (no event).
CASES = {
    "one failure disables with max_fails=1": (
        1,
        10.0,
        [("check", 0.0, True), ("fail", 1.0, False), ("check", 5.0, False)],
    ),
    "disabled for exactly fail_timeout after the failure": (
        1,
        10.0,
        [("fail", 1.0, False), ("check", 11.0, False), ("check", 11.001, True)],
    ),
    "max_fails=3 needs three failures": (
        3,
        10.0,
        [("fail", 1.0, True), ("fail", 2.0, True), ("fail", 3.0, False)],
    ),
    "a success inside the window does not clear the count": (
        2,
        10.0,
        [("fail", 1.0, True), ("pick", 2.0, True), ("ok", 2.0, True), ("fail", 3.0, False)],
    ),
    "a success on a pick after a quiet window clears the count": (
        2,
        10.0,
        [("fail", 1.0, True), ("pick", 20.0, True), ("ok", 20.5, True), ("fail", 21.0, True)],
    ),
    "a failed probe after the timeout disables again at once": (
        3,
        10.0,
        [
            ("fail", 1.0, True),
            ("fail", 1.5, True),
            ("fail", 2.0, False),
            ("pick", 13.0, False),
            ("fail", 13.5, False),
            ("check", 23.5, False),
            ("check", 23.6, True),
        ],
    ),
    "choosing the probe keeps other requests away": (
        1,
        10.0,
        [("fail", 0.0, False), ("check", 11.0, True), ("pick", 11.0, False)],
    ),
    "a successful probe re-enables for good": (
        1,
        10.0,
        [("fail", 0.0, False), ("pick", 11.0, False), ("ok", 11.2, True), ("check", 50.0, True)],
    ),
    "max_fails=0 never disables": (
        0,
        10.0,
        [("fail", 1.0, True), ("fail", 1.1, True), ("fail", 1.2, True)],
    ),
}


@pytest.mark.parametrize(("max_fails", "timeout", "steps"), CASES.values(), ids=CASES.keys())
def test_transitions(max_fails, timeout, steps):
    """Each step leaves the server available or not, as nginx's round-robin peer would."""
    h = PassiveHealth(max_fails, timeout)
    for event, now, expected in steps:
        if event == "fail":
            h.failure(now)
        elif event == "ok":
            h.success(now)
        elif event == "pick":
            h.selected(now)
        assert h.available(now) is expected, (event, now, h)


def test_failure_reports_the_flip_once():
    """failure() returns True only for the failure that disables the server."""
    h = PassiveHealth(2, 10.0)
    assert [h.failure(1.0), h.failure(2.0), h.failure(3.0)] == [False, True, False]


def test_until_is_end_of_window():
    """until() tells when a disabled server may be chosen again."""
    h = PassiveHealth(1, 10.0)
    assert h.until() is None
    h.failure(4.0)
    assert h.until() == 14.0


def test_reset_forgets_failures():
    """reset() (all peers failed) makes the server available at once."""
    h = PassiveHealth(1, 10.0)
    h.failure(1.0)
    h.reset()
    assert h.available(2.0)


def test_negative_parameters_refused():
    """max_fails and fail_timeout cannot be negative."""
    with pytest.raises(ValueError):
        PassiveHealth(-1, 10.0)
