"""Retries: proxy_next_upstream conditions, tries, the retry budget, passive health."""

from __future__ import annotations

import pytest

from lbkit.l7.model import Listen, Location, RouterConfig, ServerBlock, Upstream, UpstreamServer
from lbkit.l7.retry import RetryBudget, counts_as_failure, retryable, tries_limit
from lbkit.l7.router import Decision, RequestHead, Router

NU_502 = ["error", "timeout", "http_502"]


def make_router(
    next_upstream=NU_502, tries=0, servers=3, max_fails=1, nginx_semantics=None
) -> Router:
    up = Upstream(
        "api",
        [
            UpstreamServer(f"10.0.1.{10 + i}:80", name=f"api{i + 1}", max_fails=max_fails)
            for i in range(servers)
        ],
    )
    loc = Location(
        "/", proxy_pass="http://api", next_upstream=list(next_upstream), next_upstream_tries=tries
    )
    block = ServerBlock([Listen(80)], ["example.com"], [loc])
    return Router(RouterConfig([block], {"api": up}), nginx_semantics=nginx_semantics)


def route(router: Router, method: str = "GET", now: float = 0.0) -> Decision:
    head = RequestHead(
        method, "/", "1.1", [("Host", "example.com")], ("198.51.100.2", 40000), ("10.0.1.3", 80)
    )
    d = router.route(head, now)
    assert isinstance(d, Decision)
    return d


def fail_once(d: Decision, now: float = 0.0):
    b = d.pick(now)
    d.on_start(b, now)
    d.on_finish(b, now, ok=True, status=502)
    return b


# --------------------------------------------------------------- pure gates
@pytest.mark.parametrize(
    ("outcome", "listed", "method", "expected"),
    [
        ("error", ["error", "timeout"], "GET", True),
        ("http_502", ["error", "timeout"], "GET", False),
        ("http_502", NU_502, "GET", True),
        ("error", ["off"], "GET", False),
        ("error", ["error", "off"], "GET", False),
        ("http_502", NU_502, "POST", False),
        ("http_502", [*NU_502, "non_idempotent"], "POST", True),
        ("error", ["error"], "PATCH", False),
        ("error", ["error"], "PUT", True),
        ("error", ["error"], "BREW", False),
    ],
)
def test_retryable_table(outcome, listed, method, expected):
    """An outcome is retried only if listed; non-idempotent methods need non_idempotent."""
    assert retryable(outcome, listed, method) is expected


def test_unsent_post_may_be_retried():
    """A POST that never reached the server (connect error) is retried (nginx: request_sent)."""
    assert retryable("error", ["error"], "POST", request_sent=False)


def test_unknown_outcome_is_an_error():
    """A misspelt outcome raises instead of silently not retrying."""
    with pytest.raises(ValueError, match="unknown outcome"):
        retryable("http_501", ["error"], "GET")


def test_tries_zero_means_number_of_servers():
    """next_upstream_tries=0 allows one attempt per server (ngx_http_upstream_tries)."""
    assert (tries_limit(0, 4), tries_limit(2, 4)) == (4, 2)


@pytest.mark.parametrize(
    ("ok", "status", "listed", "expected"),
    [
        (False, None, [], True),
        (True, 200, NU_502, False),
        (True, 502, NU_502, True),
        (True, 500, NU_502, False),
        (True, 404, ["http_404"], False),
        (True, 403, ["http_403"], False),
    ],
)
def test_what_counts_as_a_failure(ok, status, listed, expected):
    """Errors always fail a server; statuses only when listed; 403/404 never."""
    assert counts_as_failure(ok, status, listed) is expected


def test_budget_limit_formula():
    """The budget is max(3, 20% of active requests), Envoy's defaults."""
    b = RetryBudget()
    assert (b.limit(0), b.limit(10), b.limit(100)) == (3, 3, 20.0)


def test_budget_refuses_beyond_limit():
    """With 3 retries in flight and few requests, a fourth is refused and counted."""
    b = RetryBudget()
    for _ in range(3):
        b.started()
    assert not b.allows(active_requests=5)
    assert b.denied == 1


# ------------------------------------------------------------- on a Decision
def test_502_is_retried_on_another_backend():
    """After a 502 the decision allows a retry, and the next pick is a different server."""
    d = route(make_router())
    first = fail_once(d)
    assert d.should_retry(1, "http_502", 0.0)
    assert d.pick(0.0).name != first.name


def test_no_retry_when_every_server_was_tried():
    """Three servers, three failed attempts: nothing is left to try."""
    d = route(make_router(max_fails=0))
    for _ in range(3):
        fail_once(d)
    assert not d.should_retry(3, "http_502", 0.0)
    assert d.pick(0.0) is None


def test_next_upstream_tries_caps_attempts():
    """next_upstream_tries=2 stops after the second attempt although a server is left."""
    d = route(make_router(tries=2, max_fails=0))
    fail_once(d)
    fail_once(d)
    assert not d.should_retry(2, "http_502", 0.0)


def test_post_not_retried_by_default():
    """A POST that reached a server is not passed on unless non_idempotent is listed."""
    d = route(make_router(), method="POST")
    fail_once(d)
    assert not d.should_retry(1, "http_502", 0.0)


def test_budget_stops_a_retry_storm():
    """Once 3 retries are in flight for a nearly idle pool, the next retry is refused."""
    router = make_router(servers=3, max_fails=0)
    for _ in range(3):  # three requests each on their second attempt, in flight
        d = route(router)
        fail_once(d)
        assert d.should_retry(1, "http_502", 0.0)
        d.on_start(d.pick(0.0), 0.0)
    d = route(router)
    fail_once(d)
    assert not d.should_retry(1, "http_502", 0.0)
    assert router.stats()["retries_denied_by_budget"] == 1


def test_listed_502_ejects_the_backend():
    """A 502 listed in next_upstream counts for max_fails: the server leaves the pool."""
    router = make_router()
    bad = fail_once(route(router))
    picks = {route(router).pick(1.0).name for _ in range(6)}
    assert bad.name not in picks
    rows = {r["name"]: r for r in router.stats()["upstreams"]["api"]["backends"]}
    assert rows[bad.name]["ejections"] == 1 and rows[bad.name]["state"] == "down"


def test_404_never_ejects():
    """A 404 is the application's answer, not a server failure (NGX_PEER_NEXT)."""
    router = make_router(next_upstream=["error", "http_404"])
    d = route(router)
    b = d.pick(0.0)
    d.on_start(b, 0.0)
    d.on_finish(b, 0.0, ok=True, status=404)
    assert router.pools["api"].balancer.state(b.name) == "up"


def test_ejected_backend_returns_after_fail_timeout():
    """After fail_timeout (10 s) the ejected server is chosen again, once its effective
    weight (0 after the failure: weight/max_fails = 1) has climbed back, as in nginx:
    the others take the first picks, then it returns."""
    router = make_router()
    bad = fail_once(route(router))
    picks = [route(router, now=10.5).pick(10.5).name for _ in range(6)]
    assert bad.name in picks
    assert picks[0] != bad.name


def test_all_ejected_are_reset_and_tried_under_lbkit_semantics():
    """lbkit's TOML: when every server is out for its failures, all are let in again
    (quick recovery, like Envoy's panic mode)."""
    router = make_router(servers=2, nginx_semantics=False)
    for _ in range(2):
        fail_once(route(router))
    assert route(router, now=1.0).pick(1.0) is not None


def test_all_ejected_means_none_until_fail_timeout_like_nginx():
    """nginx 1.22: every server out for its failures -> no live upstreams (502) until
    fail_timeout (10 s by default) passes; then a server is tried again."""
    router = make_router(servers=2)
    for _ in range(2):
        fail_once(route(router))
    assert route(router, now=1.0).pick(1.0) is None
    assert route(router, now=11.0).pick(11.0) is not None


def test_restart_on_same_backend_is_not_a_retry():
    """A fresh connection to the same backend (stale pooled one) is not counted as a retry."""
    router = make_router()
    d = route(router)
    b = d.pick(0.0)
    d.on_start(b, 0.0)
    d.on_finish(b, 0.0, ok=True)
    d.on_start(b, 0.0)
    assert router.stats()["retries"] == 0


def test_retry_counted_and_released():
    """A retry on another backend counts in stats and frees its budget slot when done."""
    router = make_router()
    d = route(router)
    fail_once(d)
    b = d.pick(0.0)
    d.on_start(b, 0.0)
    assert router.pools["api"].budget.active == 1
    d.on_finish(b, 0.0, ok=True, status=200)
    assert (router.stats()["retries"], router.pools["api"].budget.active) == (1, 0)
