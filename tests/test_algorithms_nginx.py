"""The nginx-derived algorithms pick exactly what nginx picks."""

from __future__ import annotations

from collections import Counter

import pytest

from lbkit.algorithms import Backend, Flow, make_balancer, nginx_ip_hash_key

from ._nginx import NGINX, free_ports, get_body, run_nginx


def names(lb, n: int, flow: Flow | None = None) -> str:
    return "".join(lb.pick(flow).name for _ in range(n))


def test_smooth_wrr_order_is_nginx_order():
    """Weights a=5, b=1, c=1 give nginx's documented order a a b a c a a."""
    lb = make_balancer("weighted_round_robin", [Backend("a", weight=5), Backend("b"), Backend("c")])
    assert names(lb, 14) == "aabacaa" * 2


def test_round_robin_rotates_in_order():
    """Equal weights: 1, 2, 3, 1, 2, 3."""
    lb = make_balancer("round_robin", [Backend("a"), Backend("b"), Backend("c")])
    assert names(lb, 7) == "abcabca"


def test_round_robin_with_weights_bursts_like_ipvs_wrr():
    """Unequal weights: IPVS wrr's a a a a a b c, the burst smooth WRR avoids."""
    lb = make_balancer("round_robin", [Backend("a", weight=5), Backend("b"), Backend("c")])
    assert names(lb, 14) == "aaaaabc" * 2


def test_least_conn_compares_connections_per_weight():
    """a (weight 3, 2 conns) beats b (weight 1, 1 conn): 2/3 < 1/1."""
    a, b = Backend("a", weight=3), Backend("b")
    lb = make_balancer("least_connections", [a, b])
    for _ in range(2):
        lb.on_start(a)
    lb.on_start(b)
    assert lb.pick() is a


def test_least_conn_breaks_ties_with_smooth_wrr():
    """All idle: ties go round by smooth weighted round robin, as nginx does."""
    lb = make_balancer("least_connections", [Backend("a", weight=2), Backend("b")])
    assert names(lb, 6) == "abaaba"


def test_ip_hash_uses_first_three_octets():
    """Every client of one /24 hashes alike; the key is three bytes for IPv4, 16 for IPv6."""
    assert nginx_ip_hash_key("10.1.2.3") == bytes([10, 1, 2])
    assert len(nginx_ip_hash_key("2001:db8::1")) == 16
    lb = make_balancer("ip_hash", [Backend(x) for x in "abcd"])
    chosen = {lb.pick(Flow(client_ip=f"203.0.113.{i}")).name for i in range(256)}
    assert len(chosen) == 1


def test_ip_hash_matches_hand_computed_nginx_value():
    """127.0.0.x over 3 equal servers: hash 89 -> ... -> 5954, 5954 % 3 = 2: server c."""
    h = 89
    for byte in (127, 0, 0):
        h = (h * 113 + byte) % 6271
    assert h % 3 == 2
    lb = make_balancer("ip_hash", [Backend("a"), Backend("b"), Backend("c")])
    assert lb.pick(Flow(client_ip="127.0.0.1")).name == "c"


def test_ip_hash_rehashes_past_a_down_server():
    """A down server's clients move; everyone else keeps their backend."""
    backends = [Backend(x) for x in "abcd"]
    lb = make_balancer("ip_hash", backends)
    clients = [Flow(client_ip=f"10.{i}.{i * 7 % 256}.1") for i in range(200)]
    before = [lb.pick(f).name for f in clients]
    lb.set_state("b", "down")
    after = [lb.pick(f).name for f in clients]
    assert "b" in before and "b" not in after
    assert all(x == y for x, y in zip(before, after, strict=True) if x != "b")


def test_least_response_time_avoids_a_slow_backend():
    """After one slow answer from b, new requests go to the fast a."""
    a, b = Backend("a"), Backend("b")
    lb = make_balancer("least_response_time", [a, b])
    lb.on_start(a, now=0.0)
    lb.on_finish(a, now=0.010)
    lb.on_start(b, now=0.0)
    lb.on_finish(b, now=0.500)
    assert Counter(lb.pick(now=0.6).name for _ in range(10)) == {"a": 10}


def test_least_response_time_peak_then_decay():
    """A latency spike is taken at once; lower ones blend it down over time."""
    a = Backend("a")
    lb = make_balancer("least_response_time", [a], decay=1.0)
    lb.on_finish(a, now=1.0, latency=0.5)
    assert lb.estimate(a, now=1.0) == pytest.approx(0.5)
    lb.on_finish(a, now=3.0, latency=0.1)
    assert 0.1 < lb.estimate(a, now=3.0) < 0.2


def test_power_of_two_prefers_the_less_loaded_candidate():
    """With two backends both are always candidates, so the idle one always wins."""
    a, b = Backend("a"), Backend("b")
    lb = make_balancer("power_of_two", [a, b], seed=5)
    for _ in range(3):
        lb.on_start(a)
    assert names(lb, 20) == "b" * 20


# --------------------------------------------------------------- real nginx
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx not installed (make system-deps)")


def _pool_config(directive: str, servers: list[str], ports: list[int], front: int) -> str:
    upstream = "\n".join(
        f"    server 127.0.0.1:{p}{opts};" for p, opts in zip(ports, servers, strict=True)
    )
    backends = "\n".join(
        f'  server {{ listen 127.0.0.1:{p}; return 200 "s{i}"; }}' for i, p in enumerate(ports)
    )
    return (
        f"  upstream pool {{\n    {directive}\n{upstream}\n  }}\n{backends}\n"
        f"  server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://pool; }} }}"
    )


@needs_nginx
def test_smooth_wrr_matches_real_nginx(tmp_path):
    """Real nginx with weights 5,1,1 serves the same sequence as our balancer."""
    *ports, front = free_ports(4)
    conf = _pool_config("", [" weight=5", "", ""], ports, front)
    ours = make_balancer(
        "weighted_round_robin", [Backend("s0", weight=5), Backend("s1"), Backend("s2")]
    )
    with run_nginx(conf, tmp_path, front):
        theirs = [get_body(front) for _ in range(14)]
    assert theirs == [ours.pick().name for _ in range(14)]


@needs_nginx
def test_ip_hash_matches_real_nginx(tmp_path):
    """Clients from 60 different /24s land where real nginx ip_hash sends them."""
    *ports, front = free_ports(5)
    opts = [" weight=3", "", " weight=2 down", " weight=2"]
    conf = _pool_config("ip_hash;", opts, ports, front)
    backends = [
        Backend("s0", weight=3),
        Backend("s1"),
        Backend("s2", weight=2),
        Backend("s3", weight=2),
    ]
    ours = make_balancer("ip_hash", backends)
    ours.set_state("s2", "down")
    sources = [f"127.{i}.{(i * 37) % 256}.9" for i in range(1, 61)]
    with run_nginx(conf, tmp_path, front):
        theirs = [get_body(front, src) for src in sources]
    assert theirs == [ours.pick(Flow(client_ip=src)).name for src in sources]
    assert len(set(theirs)) == 3
