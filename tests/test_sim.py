"""The simulator reproduces queueing theory and reports what happened."""

from __future__ import annotations

import pytest

from lbkit.algorithms import Backend
from lbkit.sim import (
    ServerSpec,
    Workload,
    identical_servers,
    remap_report,
    simulate,
    supermarket_mean_time,
)


def test_theory_values_at_load_09():
    """The closed forms: 10.0 for one choice, 2.6135 for two (1 + .81 + .9^6 + .9^14 + ...)."""
    assert supermarket_mean_time(0.9, 1) == pytest.approx(10.0)
    assert supermarket_mean_time(0.9, 2) == pytest.approx(2.6141, abs=1e-4)


def test_power_of_two_reproduces_the_supermarket_model():
    """100 servers at load 0.9, power of two: mean time in system within 3% of 2.61."""
    r = simulate("power_of_two", identical_servers(100), Workload(requests=200_000), seed=1)
    assert r.mean_latency == pytest.approx(supermarket_mean_time(0.9, 2), rel=0.03)


def test_random_reproduces_mm1():
    """100 servers at load 0.9, random: each an M/M/1 queue, mean within 10% of 10."""
    r = simulate("random", identical_servers(100), Workload(requests=200_000), seed=1)
    assert r.mean_latency == pytest.approx(10.0, rel=0.10)


def test_same_seed_same_result():
    """A run is a pure function of its inputs and seed."""
    one = simulate("least_connections", identical_servers(5), Workload(requests=3000), seed=4)
    two = simulate("least_connections", identical_servers(5), Workload(requests=3000), seed=4)
    assert one.to_dict() == two.to_dict()


def test_served_counts_add_up():
    """Every request is served, failed or refused: nothing is lost."""
    servers = identical_servers(4)
    servers[0].error_rate = 0.5
    servers[1].capacity = 2
    r = simulate("round_robin", servers, Workload(requests=5000, load=0.95), seed=2)
    assert sum(b.served for b in r.backends) + r.refused == 5000
    assert r.errors > 0 and r.refused > 0


def test_smart_algorithms_spare_a_slow_server():
    """A server at quarter speed: round robin piles a queue on it, least-conn does not."""
    servers = [ServerSpec("s1"), ServerSpec("s2"), ServerSpec("slow", speed=0.25)]
    work = Workload(requests=20_000, load=0.7)
    rr = simulate("round_robin", servers, work, seed=3)
    lc = simulate("least_connections", servers, work, seed=3)
    assert rr.served["slow"] == pytest.approx(20_000 / 3, rel=0.01)
    assert lc.served["slow"] < rr.served["slow"] / 2
    assert lc.p99 < rr.p99 / 3


def test_least_connections_balances_long_lived_connections():
    """Long and short connections mixed: least-conn keeps the busiest backend far lighter."""
    servers = identical_servers(8, workers=0)
    work = Workload(requests=40_000, load=0.9, service="bimodal", long_fraction=0.02)
    rr = simulate("round_robin", servers, work, seed=5)
    lc = simulate("least_connections", servers, work, seed=5)
    assert lc.max_queue < rr.max_queue


def test_backend_down_event_stops_its_traffic():
    """An event takes s2 down mid-run; it serves nothing afterwards."""
    work = Workload(requests=4000, load=0.5, events=[(100.0, "s2", "down")])
    early = simulate("round_robin", identical_servers(3), Workload(requests=4000, load=0.5))
    late = simulate("round_robin", identical_servers(3), work)
    assert 0 < late.served["s2"] < early.served["s2"] / 2


def test_bursty_arrivals_hurt_tail_latency():
    """Same mean rate in bursts: the p99 grows."""
    servers = identical_servers(10)
    calm = simulate("random", servers, Workload(requests=30_000, load=0.7), seed=6)
    bursty = simulate(
        "random", servers, Workload(requests=30_000, load=0.7, arrivals="bursty"), seed=6
    )
    assert bursty.p99 > calm.p99


def test_hash_algorithms_get_flows():
    """Algorithms that hash the flow run in the simulator with synthetic clients."""
    r = simulate("maglev", identical_servers(4), Workload(requests=2000, load=0.5), seed=1)
    assert all(b.served > 0 for b in r.backends)


def test_remap_report_for_algorithms_without_affinity():
    """Round robin has no affinity: taking one of five out moves most keys."""
    report = remap_report("round_robin", [Backend(x) for x in "abcde"], "c", keys=1000)
    assert report.moved > 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"load": 0}, "load must be > 0"),
        ({"requests": 0}, "requests must be >= 1"),
        ({"arrivals": "storm"}, "arrivals must be one of"),
        ({"service": "fast"}, "service must be one of"),
        ({"warmup": 1.0}, "warmup"),
    ],
)
def test_workload_rejects_bad_values(kwargs, message):
    """A bad workload field is a ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        Workload(**kwargs)


def test_server_rejects_bad_speed():
    """A server needs a positive speed."""
    with pytest.raises(ValueError, match="'x': speed"):
        ServerSpec("x", speed=0)


def test_progress_is_reported_to_the_end():
    """The progress callback ends at (total, total)."""
    seen = []
    simulate(
        "random",
        identical_servers(3),
        Workload(requests=40_000),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (40_000, 40_000) and len(seen) > 1
