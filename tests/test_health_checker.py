"""The active health-check state machine, its schedule and the operator's combination table."""

from __future__ import annotations

import itertools

import pytest

from lbkit.algorithms import Backend, make_balancer
from lbkit.health import (
    EFFECTIVE,
    BackendHealth,
    HealthChecker,
    HealthConfig,
    timeout_reason,
)

OK, KO = True, False
WHY = "HTTP 500 on /healthz"


def feed(machine: BackendHealth, results: str) -> list[str]:
    """Feed ``+`` (success) and ``-`` (failure) one second apart; return the messages."""
    messages = []
    for t, r in enumerate(results):
        transition = machine.result(r == "+", "HTTP 200" if r == "+" else WHY, float(t))
        if transition is not None:
            messages.append(transition.message)
    return messages


# (initial state, results, final state, messages) with rise=2, fall=3
TRANSITIONS = [
    ("unknown", "", "unknown", []),
    ("unknown", "+", "up", ["api2 UP after 1 success"]),
    ("unknown", "-", "down", [f"api2 DOWN after 1 failure: {WHY}"]),
    ("unknown", "+--", "up", ["api2 UP after 1 success"]),
    ("unknown", "+---", "down", ["api2 UP after 1 success", f"api2 DOWN after 3 failures: {WHY}"]),
    ("unknown", "-+", "down", [f"api2 DOWN after 1 failure: {WHY}"]),
    ("unknown", "-++", "up", [f"api2 DOWN after 1 failure: {WHY}", "api2 UP after 2 successes"]),
    ("up", "--", "up", []),
    ("up", "---", "down", [f"api2 DOWN after 3 failures: {WHY}"]),
    ("up", "--+--", "up", []),
    ("up", "--+---", "down", [f"api2 DOWN after 3 failures: {WHY}"]),
    ("down", "+", "down", []),
    ("down", "++", "up", ["api2 UP after 2 successes"]),
    ("down", "+-+", "down", []),
    ("down", "+-++", "up", ["api2 UP after 2 successes"]),
    ("up", "----", "down", [f"api2 DOWN after 3 failures: {WHY}"]),
]


@pytest.mark.parametrize(("initial", "results", "final", "messages"), TRANSITIONS)
def test_transition_table(initial, results, final, messages):
    """Each result sequence ends in the expected state with the expected messages."""
    machine = BackendHealth("api2", HealthConfig(rise=2, fall=3, initial=initial))
    assert feed(machine, results) == messages
    assert machine.state == final


def test_rise_and_fall_are_configurable():
    """rise=3 needs three successes; fall=1 goes down on the first failure."""
    machine = BackendHealth("a", HealthConfig(rise=3, fall=1, initial="down"))
    assert feed(machine, "++") == []
    assert feed(machine, "+") == ["a UP after 3 successes"]
    assert feed(machine, "-") == [f"a DOWN after 1 failure: {WHY}"]


def test_transition_carries_old_new_time_and_reason():
    """A transition records where it came from, when, and the last result's reason."""
    machine = BackendHealth("api2", HealthConfig(initial="up", fall=2))
    machine.result(False, "connection refused", 10.0)
    t = machine.result(False, "timeout after 1.0 s", 12.0)
    assert (t.backend, t.old, t.new, t.at, t.reason) == (
        "api2",
        "up",
        "down",
        12.0,
        "timeout after 1.0 s",
    )
    assert str(t) == "api2 DOWN after 2 failures: timeout after 1.0 s"
    assert machine.last_change == 12.0


def test_counters_are_consecutive():
    """One result of the other kind resets the count."""
    machine = BackendHealth("a", HealthConfig(initial="up"))
    feed(machine, "--+-")
    assert (machine.successes, machine.failures) == (0, 1)


def test_history_is_bounded():
    """Only the last ``history`` results are kept, newest last."""
    machine = BackendHealth("a", HealthConfig(history=3))
    feed(machine, "++-+-")
    assert [r.ok for r in machine.history] == [False, True, False]
    assert [r.at for r in machine.history] == [2.0, 3.0, 4.0]


def test_unknown_counts_as_up_for_traffic():
    """Before any result a backend is unknown in health and up for the balancer."""
    checker = HealthChecker(["a"])
    assert checker.state("a") == "unknown"
    assert checker.effective_state("a") == "up"


@pytest.mark.parametrize(
    ("admin", "health", "expected"), [(a, h, s) for (a, h), s in EFFECTIVE.items()]
)
def test_admin_combination_table(admin, health, expected):
    """Operator choice x health gives the balancer state of the table."""
    checker = HealthChecker(["a"], HealthConfig(initial=health))
    checker.set_admin("a", admin)
    assert checker.effective_state("a") == expected


def test_combination_table_is_complete_and_drain_never_hides_down():
    """Every (admin, health) pair is defined; health down is down whatever the operator says."""
    assert len(EFFECTIVE) == 9
    assert all(EFFECTIVE[a, "down"] == "down" for a in ("ready", "drain", "maint"))
    assert EFFECTIVE["drain", "up"] == "drain"


def test_bad_admin_state_is_rejected():
    """Only ready, drain and maint are operator states."""
    with pytest.raises(ValueError, match="ready, drain, maint"):
        HealthChecker(["a"]).set_admin("a", "down")


def test_on_change_fires_only_when_the_effective_state_changes():
    """unknown -> up is a health transition, not a change for the balancer."""
    seen = []
    checker = HealthChecker(["a"], HealthConfig(fall=2), on_change=lambda n, s: seen.append((n, s)))
    checker.record("a", OK, "HTTP 200", 0.0)  # unknown -> up: still "up"
    checker.set_admin("a", "drain", 1.0)
    checker.record("a", KO, WHY, 2.0)
    checker.record("a", KO, WHY, 3.0)
    checker.set_admin("a", "ready", 4.0)  # still down
    assert seen == [("a", "drain"), ("a", "down")]


def test_events_hold_health_and_operator_transitions_bounded():
    """events keeps the last ``max_events`` transitions, with their messages."""
    checker = HealthChecker(["api2"], HealthConfig(initial="up", fall=1), max_events=2)
    checker.set_admin("api2", "drain", 1.0)
    checker.record("api2", KO, WHY, 2.0)
    checker.set_admin("api2", "ready", 3.0)
    assert [e.message for e in checker.events] == [
        f"api2 DOWN after 1 failure: {WHY}",
        "api2 READY (operator)",
    ]


def test_apply_pushes_effective_states_into_a_balancer():
    """apply sets each checked backend's state on the balancer; others are left alone."""
    lb = make_balancer("round_robin", [Backend("a"), Backend("b"), Backend("c")])
    checker = HealthChecker(["a", "b"], HealthConfig(initial="up", fall=1))
    checker.record("a", KO, WHY, 0.0)
    checker.set_admin("b", "drain")
    assert checker.apply(lb) == {"a": "down", "b": "drain"}
    assert [lb.state(n) for n in "abc"] == ["down", "drain", "up"]
    assert {lb.pick().name for _ in range(5)} == {"c"}


def test_on_change_can_drive_a_balancer_directly():
    """Passing balancer.set_state as on_change keeps the balancer in step."""
    lb = make_balancer("weighted_round_robin", [Backend("a"), Backend("b")])
    checker = HealthChecker(["a", "b"], HealthConfig(fall=1, rise=1), on_change=lb.set_state)
    checker.record("a", KO, "connection refused", 0.0)
    assert lb.state("a") == "down"
    checker.record("a", OK, "HTTP 200", 1.0)
    assert lb.state("a") == "up"


def test_timeout_counts_as_failure_with_its_reason():
    """record_timeout is a failure whose reason names the configured timeout."""
    checker = HealthChecker(["api2"], HealthConfig(initial="up", fall=1, timeout=1.0))
    t = checker.record_timeout("api2", 5.0)
    assert t.message == "api2 DOWN after 1 failure: timeout after 1.0 s"
    assert timeout_reason(0.25) == "timeout after 0.25 s"


# ------------------------------------------------------------------ schedule


def run_schedule(seed: int, rounds: int = 50) -> list[tuple[str, float]]:
    """Drive a checker through ``rounds`` results each, answering instantly; list the probes."""
    checker = HealthChecker(["a", "b", "c"], HealthConfig(interval=2.0, jitter=0.1), seed=seed)
    probes = []
    now = 0.0
    while len(probes) < rounds * 3:
        now = checker.next_due(now)
        for name in checker.due(now):
            probes.append((name, now))
            checker.record(name, OK, "HTTP 200", now)
    return probes


def test_jitter_is_deterministic_for_a_seed():
    """The same seed gives the same schedule; another seed another one."""
    assert run_schedule(1) == run_schedule(1)
    assert run_schedule(1) != run_schedule(2)


def test_jitter_stays_within_its_bounds():
    """Waits are interval x (1 +- jitter), and they do vary."""
    probes = run_schedule(7)
    times = [t for name, t in probes if name == "a"]
    waits = [b - a for a, b in itertools.pairwise(times)]
    assert all(1.8 - 1e-9 <= w <= 2.2 + 1e-9 for w in waits)
    assert max(waits) - min(waits) > 0.1


def test_first_checks_are_spread_within_the_jitter():
    """New backends are first due within jitter x interval of being added."""
    names = [f"b{i}" for i in range(10)]
    checker = HealthChecker(names, HealthConfig(interval=2.0, jitter=0.1))
    first = checker.next_due(0.0)
    assert 0.0 < first < 0.2
    early = checker.due(first)
    rest = checker.due(0.2)
    assert 1 <= len(early) < 10
    assert sorted(early + rest) == sorted(names)


def test_no_jitter_gives_exact_intervals():
    """With jitter 0 every wait is exactly the interval."""
    checker = HealthChecker(["a"], HealthConfig(interval=3.0, jitter=0.0))
    assert checker.due(0.0) == ["a"]
    checker.record("a", OK, "HTTP 200", 0.5)
    assert checker.next_due(0.5) == 3.5


def test_a_backend_in_flight_is_not_due_again():
    """Once handed out by due(), a backend waits for its result."""
    checker = HealthChecker(["a"], HealthConfig(jitter=0.0))
    assert checker.due(0.0) == ["a"]
    assert checker.due(100.0) == []
    assert checker.next_due(100.0) == float("inf")
    checker.abandon("a", 100.0)
    assert checker.due(100.0) == ["a"]


def test_next_due_is_never_in_the_past():
    """An overdue backend is due now, not at its old time."""
    checker = HealthChecker(["a"], HealthConfig(jitter=0.0))
    assert checker.next_due(50.0) == 50.0


def test_fastinter_and_downinter_pick_the_wait():
    """Transitional states use fastinter, fully down uses downinter (HAProxy 5.2)."""
    cfg = HealthConfig(interval=2.0, fastinter=0.5, downinter=10.0, initial="up", rise=2, fall=3)
    machine = BackendHealth("a", cfg)
    assert machine.interval() == 2.0  # up, steady
    machine.result(False, WHY, 0.0)
    assert machine.interval() == 0.5  # up, going down
    machine.result(False, WHY, 1.0)
    machine.result(False, WHY, 2.0)
    assert machine.interval() == 10.0  # fully down
    machine.result(True, "HTTP 200", 3.0)
    assert machine.interval() == 0.5  # down, going up
    assert BackendHealth("b", HealthConfig(fastinter=0.5)).interval() == 0.5  # unknown


def test_result_for_an_unknown_backend_is_a_key_error():
    """record names the backend it does not know."""
    with pytest.raises(KeyError, match="zzz"):
        HealthChecker(["a"]).record("zzz", OK, "", 0.0)


def test_removed_backend_is_no_longer_scheduled():
    """remove forgets the machine, its schedule and its in-flight mark."""
    checker = HealthChecker(["a", "b"], HealthConfig(jitter=0.0))
    checker.remove("a")
    assert checker.due(0.0) == ["b"]


@pytest.mark.parametrize(
    "bad",
    [
        {"rise": 0},
        {"fall": 0},
        {"interval": 0},
        {"timeout": -1},
        {"jitter": 1.0},
        {"initial": "drain"},
        {"fastinter": 0},
    ],
)
def test_bad_config_is_rejected(bad):
    """Invalid thresholds, times, jitter or initial states raise ValueError."""
    with pytest.raises(ValueError):
        HealthConfig(**bad)
