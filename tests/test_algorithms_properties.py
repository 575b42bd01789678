"""Invariants checked on many random inputs (hypothesis)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbkit.algorithms import Backend, Flow, maglev_table, make_balancer, smooth_wrr_step
from lbkit.sim import remap_report

weights_st = st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=10)
names_st = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12),
    min_size=2,
    max_size=30,
    unique=True,
)


@given(weights_st)
def test_smooth_wrr_gives_each_backend_exactly_its_weight_per_cycle(weights):
    """Over sum(weights) picks each backend is chosen weight times, and the state resets."""
    n = len(weights)
    current = [0] * n
    seq = [smooth_wrr_step(current, weights, range(n)) for _ in range(sum(weights))]
    assert Counter(seq) == {i: w for i, w in enumerate(weights)}
    assert current == [0] * n


@given(weights_st)
def test_smooth_wrr_never_strays_two_picks_from_the_exact_share(weights):
    """At every point of the cycle each count is within 2 of k x w / W: no bursts."""
    n, total = len(weights), sum(weights)
    current, counts = [0] * n, [0] * n
    for k in range(1, total + 1):
        counts[smooth_wrr_step(current, weights, range(n))] += 1
        for i in range(n):
            assert abs(counts[i] - k * weights[i] / total) < 2


def test_ipvs_style_round_robin_does_burst():
    """The contrast: IPVS-style weighted rotation strays by the weight itself."""
    lb = make_balancer("round_robin", [Backend("a", weight=20), Backend("b"), Backend("c")])
    first = [lb.pick().name for _ in range(20)]
    assert first == ["a"] * 20  # 20 in a row where the exact share is 20 x 20/22


@pytest.mark.parametrize("name", ["random", "power_of_two"])
@settings(max_examples=20, deadline=None)
@given(weights=weights_st.filter(lambda w: len(w) >= 2), seed=st.integers(0, 2**32))
def test_random_draws_converge_to_weights(name, weights, seed):
    """Idle backends: weighted random draws converge to weight / total within 3 points."""
    backends = [Backend(f"b{i}", weight=w) for i, w in enumerate(weights)]
    lb = make_balancer(name, backends, seed=seed)
    got = Counter(lb.pick().name for _ in range(20000))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(got[f"b{i}"] / 20000 - w / total) < 0.03


@settings(max_examples=15, deadline=None)
@given(names_st)
def test_ring_hash_moves_only_the_removed_backends_keys(names):
    """Take one backend out: every key that was elsewhere stays where it was."""
    backends = [Backend(n) for n in names]
    report = remap_report("ring_hash", backends, names[0], keys=2000)
    assert report.needless == 0.0


@settings(max_examples=10, deadline=None)
@given(names_st.filter(lambda n: len(n) >= 3))
def test_maglev_moves_close_to_one_nth(names):
    """Take one of N out: about 1/N of keys move (at most 1.5/N with 10k keys)."""
    backends = [Backend(n) for n in names]
    report = remap_report("maglev", backends, names[-1], keys=10000)
    n = len(names)
    assert report.moved <= 1.5 / n


@settings(max_examples=10, deadline=None)
@given(names_st)
def test_maglev_shares_within_one_percent_when_table_is_large(names):
    """Table size > 100 x backends: every backend owns its 1/N share within 1%."""
    table = maglev_table(names, size=65537)
    counts = Counter(table)
    even = 65537 / len(names)
    assert all(abs(counts[i] - even) <= 0.01 * even for i in range(len(names)))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=6))
def test_weighted_maglev_follows_weights(weights):
    """Weighted Maglev: each backend's share is within 2% of its weight's share."""
    backends = [Backend(f"b{i}", weight=w) for i, w in enumerate(weights)]
    counts = Counter(maglev_table(backends, size=65537))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(counts[i] / 65537 - w / total) < 0.02


def test_hashes_agree_across_processes():
    """Another interpreter with another hash salt maps flows to the same backends."""
    code = (
        "from lbkit.algorithms import Backend, Flow, make_balancer\n"
        "for name in ('ring_hash', 'maglev', 'ip_hash'):\n"
        "    lb = make_balancer(name, [Backend(x) for x in 'abcde'])\n"
        "    print(''.join(lb.pick(Flow(client_ip=f'10.0.{i}.1', client_port=i)).name"
        " for i in range(40)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    theirs = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    ours = []
    for name in ("ring_hash", "maglev", "ip_hash"):
        lb = make_balancer(name, [Backend(x) for x in "abcde"])
        ours.append(
            "".join(lb.pick(Flow(client_ip=f"10.0.{i}.1", client_port=i)).name for i in range(40))
        )
    assert theirs == ours
