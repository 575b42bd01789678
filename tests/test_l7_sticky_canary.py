"""Sticky sessions by signed cookie, and the canary split measured against its binomial spread."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from lbkit.l7.canary import to_canary
from lbkit.l7.model import (
    Listen,
    Location,
    RouterConfig,
    ServerBlock,
    Split,
    Upstream,
    UpstreamServer,
)
from lbkit.l7.router import Decision, RequestHead, Router
from lbkit.l7.sticky import resolve_token, sticky_token

LOCAL = ("10.0.1.3", 80)
SECRET = "s3cret"


def app_router(secret: str = SECRET, split: Split | None = None, seed: int = 0) -> Router:
    app = Upstream(
        "app", [UpstreamServer(f"10.0.1.{40 + i}:80", name=f"app{i + 1}") for i in range(3)]
    )
    canary = Upstream("canary", [UpstreamServer("10.0.1.50:80", name="canary1")])
    loc = Location("/", proxy_pass="http://app", sticky_cookie="sid", split=split)
    block = ServerBlock([Listen(80)], ["app.example.com"], [loc])
    config = RouterConfig([block], {"app": app, "canary": canary}, sticky_secret=secret)
    return Router(config, seed=seed)


def send(router: Router, headers=(), client=("198.51.100.2", 40000), scheme="http") -> Decision:
    head = RequestHead(
        "GET", "/", "1.1", [("Host", "app.example.com"), *headers], client, LOCAL, scheme
    )
    d = router.route(head, 0.0)
    assert isinstance(d, Decision)
    return d


def first_visit(router: Router, scheme: str = "http") -> tuple[str, str]:
    """(backend name, Set-Cookie value) of a request without a cookie."""
    d = send(router, scheme=scheme)
    b = d.pick(0.0)
    ((name, value),) = d.response_headers(b)
    assert name == "Set-Cookie"
    return b.name, value


def cookie_of(set_cookie: str) -> tuple[str, str]:
    return ("Cookie", set_cookie.split(";")[0])


# ------------------------------------------------------------------- sticky
def test_token_names_backend_only_with_the_secret():
    """A token resolves to its backend under the same secret, to nothing under another."""
    token = sticky_token(SECRET, "app", "app2")
    assert resolve_token(SECRET, "app", ["app1", "app2"], token) == "app2"
    assert resolve_token("other", "app", ["app1", "app2"], token) is None


def test_first_response_sets_the_cookie():
    """The first answer pins the client: NAME=token; Path=/; HttpOnly; SameSite=Lax."""
    _, value = first_visit(app_router())
    assert value.startswith("sid=")
    assert value.endswith("; Path=/; HttpOnly; SameSite=Lax")


def test_https_cookie_is_secure():
    """Over https the cookie also carries Secure."""
    _, value = first_visit(app_router(), scheme="https")
    assert value.endswith("; Secure")


def test_cookie_brings_the_client_back():
    """Requests carrying the cookie all reach the pinned backend, and get no new cookie."""
    router = app_router()
    name, value = first_visit(router)
    for _ in range(10):
        d = send(router, [cookie_of(value)])
        b = d.pick(0.0)
        assert b.name == name
        assert d.response_headers(b) == []


def test_routers_sharing_the_secret_honour_each_other():
    """alb2 honours a cookie set by alb1 when both hold the same secret."""
    name, value = first_visit(app_router())
    other = app_router(seed=99)
    for _ in range(3):
        assert send(other, [cookie_of(value)]).pick(0.0).name == name


@pytest.mark.parametrize("state", ["down", "drain"])
def test_unavailable_backend_rebalanced_with_new_cookie(state):
    """When the pinned backend is down or draining, another is picked and a new cookie set."""
    router = app_router()
    name, value = first_visit(router)
    router.set_backend_state("app", name, state)
    d = send(router, [cookie_of(value)])
    b = d.pick(0.0)
    assert b.name != name
    assert d.response_headers(b)[0][1] != value


def test_tampered_cookie_ignored():
    """A forged or altered token is ignored: normal pick, fresh cookie."""
    router = app_router()
    d = send(router, [("Cookie", "sid=AAAAAAAAAAAAAAAAAAAAAA")])
    b = d.pick(0.0)
    assert d.response_headers(b)[0][1].startswith("sid=" + sticky_token(SECRET, "app", b.name))


def test_cookie_from_another_secret_ignored():
    """A cookie made with another lab's secret gets no special treatment."""
    _, value = first_visit(app_router(secret="elsewhere"))
    d = send(app_router(), [cookie_of(value)])
    assert d.response_headers(d.pick(0.0))


def test_sticky_hits_counted():
    """stats() counts requests routed by their cookie."""
    router = app_router()
    _, value = first_visit(router)
    send(router, [cookie_of(value)]).pick(0.0)
    assert router.stats()["sticky_hits"] == 1


# ------------------------------------------------------------------- canary
def binomial_interval(n: int, p: float, confidence: float) -> tuple[int, int]:
    """The central ``confidence`` interval of Binomial(n, p), computed exactly."""
    tail = (1 - confidence) / 2
    pmf = (1 - p) ** n
    cdf, k, lo, hi = 0.0, 0, None, None
    while hi is None:
        cdf += pmf
        if lo is None and cdf > tail:
            lo = k
        if cdf >= 1 - tail:
            hi = k
        pmf *= (n - k) / (k + 1) * p / (1 - p)
        k += 1
    return lo, hi


def test_binomial_interval_sanity():
    """The helper gives about mean +- 3.3 sd at 99.9 % for n=10,000, p=1 %."""
    lo, hi = binomial_interval(10_000, 0.01, 0.999)
    assert 66 <= lo <= 70 and 131 <= hi <= 135


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_percent_canary_share_within_interval(seed):
    """10,000 routed requests at percent=1: the canary count lies in the 99.9 % interval."""
    router = Router(
        app_router(split=Split("canary", 1.0, force_header="x-canary")).config, seed=seed
    )
    canary = sum(send(router).upstream == "canary" for _ in range(10_000))
    lo, hi = binomial_interval(10_000, 0.01, 0.999)
    assert lo <= canary <= hi
    assert router.stats()["canary"] == canary


def test_canary_is_not_a_counter():
    """The canary requests are not evenly spaced every 100th (independent draws)."""
    router = app_router(split=Split("canary", 1.0))
    hits = [i for i in range(10_000) if send(router).upstream == "canary"]
    gaps = {b - a for a, b in pairwise(hits)}
    assert len(gaps) > 5


def test_force_header_forces_canary():
    """X-Canary: 1 always reaches the canary pool, even at percent=0."""
    router = app_router(split=Split("canary", 0.0, force_header="x-canary"))
    assert all(send(router, [("X-Canary", "1")]).upstream == "canary" for _ in range(20))


@pytest.mark.parametrize("value", ["0", "false", "off", ""])
def test_falsy_force_header_does_not_force(value):
    """X-Canary: 0 (or false, off, empty) does not force the canary."""
    router = app_router(split=Split("canary", 0.0, force_header="x-canary"))
    assert send(router, [("X-Canary", value)]).upstream == "app"


def test_client_sticky_split_is_stable_per_client():
    """sticky="client": one client address always lands on the same side."""
    split = Split("canary", 50.0, sticky="client")
    rng = random.Random(0)
    sides = {to_canary(split, [], "198.51.100.77", rng) for _ in range(50)}
    assert len(sides) == 1


def test_client_sticky_split_share_within_interval():
    """sticky="client" over 10,000 distinct clients still splits about percent of them."""
    split = Split("canary", 1.0, sticky="client")
    rng = random.Random(0)
    clients = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(10_000)]
    canary = sum(to_canary(split, [], ip, rng) for ip in clients)
    lo, hi = binomial_interval(10_000, 0.01, 0.999)
    assert lo <= canary <= hi


def test_same_seed_same_split_sequence():
    """Two routers with one seed send the same requests to the canary."""
    seq = [
        [send(r).upstream for _ in range(500)]
        for r in (app_router(split=Split("canary", 10.0)), app_router(split=Split("canary", 10.0)))
    ]
    assert seq[0] == seq[1]


def test_sticky_cookie_for_canary_backend_overrides_split():
    """A client pinned to the canary stays there though the split draw would say otherwise."""
    router = app_router(split=Split("canary", 0.0))
    token = sticky_token(SECRET, "canary", "canary1")
    d = send(router, [("Cookie", f"sid={token}")])
    assert (d.upstream, d.pick(0.0).name) == ("canary", "canary1")
