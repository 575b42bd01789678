"""Semantics every algorithm honours: backup, down, drain, max_conns, errors."""

from __future__ import annotations

from collections import Counter

import pytest

from lbkit.algorithms import ALGORITHMS, Backend, Flow, NoBackendAvailable, make_balancer

ALL = list(ALGORITHMS)


def flows(n: int) -> list[Flow]:
    return [Flow(client_ip=f"198.51.{k % 256}.{k // 256}", client_port=1000 + k) for k in range(n)]


def picks(lb, n: int = 300) -> Counter:
    return Counter(lb.pick(f, now=k * 0.01).name for k, f in enumerate(flows(n)))


@pytest.mark.parametrize("name", ALL)
def test_every_backend_gets_traffic(name):
    """With three equal backends, each one receives flows."""
    lb = make_balancer(name, [Backend("a"), Backend("b"), Backend("c")])
    got = Counter()
    for k, f in enumerate(flows(300)):
        b = lb.pick(f, now=k * 0.01)
        lb.on_start(b, now=k * 0.01)
        lb.on_finish(b, now=k * 0.01 + 0.005)
        got[b.name] += 1
    assert set(got) == {"a", "b", "c"}


@pytest.mark.parametrize("name", ALL)
def test_down_backend_is_never_picked(name):
    """A backend set down receives no flow."""
    lb = make_balancer(name, [Backend("a"), Backend("b"), Backend("c")])
    lb.set_state("b", "down")
    assert "b" not in picks(lb)


@pytest.mark.parametrize("name", ALL)
def test_drain_gets_no_new_flows_but_counts_old_ones_down(name):
    """A draining backend is not picked, and its existing flows still finish."""
    a, b = Backend("a"), Backend("b")
    lb = make_balancer(name, [a, b])
    lb.on_start(b)
    lb.set_state(b, "drain")
    assert set(picks(lb)) == {"a"}
    lb.on_finish(b)
    assert lb.active(b) == 0


@pytest.mark.parametrize("name", ALL)
def test_backup_serves_only_when_every_primary_is_down(name):
    """Backups get nothing while a primary is up, everything once none is."""
    lb = make_balancer(name, [Backend("a"), Backend("b"), Backend("spare", backup=True)])
    assert "spare" not in picks(lb)
    lb.set_state("a", "down")
    assert "spare" not in picks(lb)
    lb.set_state("b", "down")
    assert set(picks(lb)) == {"spare"}


@pytest.mark.parametrize("name", ALL)
def test_max_conns_is_respected(name):
    """A backend at max_conns is skipped until one of its flows finishes."""
    a, b = Backend("a", max_conns=1), Backend("b")
    lb = make_balancer(name, [a, b])
    lb.on_start(a)
    assert set(picks(lb)) == {"b"}
    lb.on_finish(a)
    lb.set_state(b, "down")
    assert set(picks(lb, 5)) == {"a"}


@pytest.mark.parametrize("name", ALL)
def test_nothing_available_raises(name):
    """With every backend down, pick raises NoBackendAvailable naming the states."""
    lb = make_balancer(name, [Backend("a"), Backend("b")])
    lb.set_state("a", "down")
    lb.set_state("b", "drain")
    with pytest.raises(NoBackendAvailable, match="a=down, b=drain"):
        lb.pick(Flow(client_ip="192.0.2.1"))


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_choices(name):
    """Two balancers built alike pick alike: no hidden global state or salted hash."""
    one = make_balancer(name, [Backend(x) for x in "abcd"], seed=7)
    two = make_balancer(name, [Backend(x) for x in "abcd"], seed=7)
    assert [one.pick(f).name for f in flows(50)] == [two.pick(f).name for f in flows(50)]


@pytest.mark.parametrize("name", [n for n in ALL if n != "least_response_time"])
def test_weight_change_takes_effect(name):
    """Raising a backend's weight raises its share (least_response_time: see its tests)."""
    lb = make_balancer(name, [Backend("a"), Backend("b")], seed=3)
    before = picks(lb, 2000)["a"]
    lb.set_weight("a", 9)
    after = picks(lb, 2000)["a"]
    assert after > before


def test_unknown_algorithm_names_the_known_ones():
    """make_balancer rejects an unknown name and lists the valid ones."""
    with pytest.raises(ValueError, match="round_robin"):
        make_balancer("fastest", [Backend("a")])


@pytest.mark.parametrize("name", ["ip_hash", "ring_hash", "maglev"])
def test_hashing_algorithms_need_a_flow(name):
    """Hash-based algorithms refuse to pick without a flow to hash."""
    with pytest.raises(TypeError, match="Flow"):
        make_balancer(name, [Backend("a"), Backend("b")]).pick()


def test_bad_state_and_weight_are_rejected():
    """Only up/down/drain states and integer weights >= 1 are accepted."""
    lb = make_balancer("round_robin", [Backend("a")])
    with pytest.raises(ValueError, match="up, down, drain"):
        lb.set_state("a", "sleeping")
    with pytest.raises(ValueError, match="weight"):
        lb.set_weight("a", 0)
    with pytest.raises(KeyError, match="zzz"):
        lb.set_state("zzz", "down")


def test_backend_names_must_be_unique():
    """Two backends with one name would make state changes ambiguous."""
    with pytest.raises(ValueError, match="unique"):
        make_balancer("random", [Backend("a"), Backend("a")])


def test_backend_validates_its_fields():
    """Weight below 1 or negative max_conns is an error naming the backend."""
    with pytest.raises(ValueError, match="'x': weight"):
        Backend("x", weight=0)
    with pytest.raises(ValueError, match="'x': max_conns"):
        Backend("x", max_conns=-1)


# ------------------------------------------------- nginx's effective_weight after failures
@pytest.mark.parametrize("name", ["weighted_round_robin", "least_connections"])
def test_penalized_backend_ramps_back_one_per_pick(name):
    """penalize() lowers the effective weight (nginx: weight/max_fails); each pick where the
    backend is a candidate raises it by one, up to its weight; a weight change resets it."""
    bal = make_balancer(name, [Backend("a", weight=4), Backend("b", weight=4)])
    a = bal.backend("a")
    bal.penalize(a, 4)
    assert bal._effective[0] == 0
    seen = []
    for _ in range(5):
        bal.pick(None, 0.0)
        seen.append(bal._effective[0])
    assert seen == [1, 2, 3, 4, 4]
    bal.penalize(a, 10)
    assert bal._effective[0] == 0  # never below zero
    bal.set_weight("a", 2)
    assert bal._effective[0] == 2  # a new weight starts afresh


def test_penalize_is_a_no_op_for_algorithms_without_effective_weights():
    bal = make_balancer("round_robin", [Backend("a"), Backend("b")])
    bal.penalize(bal.backend("a"), 1)
    assert [bal.pick(None, 0.0).name for _ in range(4)] == ["a", "b", "a", "b"]
