"""Retries: when a failed attempt may go to another backend (nginx ``proxy_next_upstream``).

Three gates, all pure:

1. :func:`retryable`: the outcome is listed in ``proxy_next_upstream``
   (default ``error timeout``; ``off`` disables). A request that was already
   sent with a method that is not idempotent is retried only if
   ``non_idempotent`` is listed (ngx_http_upstream_test_next). nginx flags
   POST, LOCK and PATCH only; lbkit treats every method outside RFC 9110
   §9.2.2's idempotent set (plus WebDAV's idempotent ones, RFC 4918) as
   non-idempotent, which is safer for methods it does not know.
2. tries: at most ``proxy_next_upstream_tries`` attempts in all; 0 means the
   number of servers, primaries plus backups (``ngx_http_upstream_tries``).
3. :class:`RetryBudget`: Envoy's ``retry_budget`` (cluster circuit
   breakers): the retries in flight for a pool stay below
   ``max(min_retry_concurrency, budget_percent% x active requests)``, with
   Envoy's defaults 3 and 20 %. It stops a retry storm: when every backend
   fails, retries would otherwise multiply the load exactly when the pool can
   least take it. nginx has no budget (only ``proxy_next_upstream_timeout``).
"""

from __future__ import annotations

from collections.abc import Collection

#: What the proxy adapter reports for a failed attempt.
OUTCOMES = (
    "error",
    "timeout",
    "invalid_header",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_403",
    "http_404",
    "http_429",
)
#: RFC 9110 §9.2.2, and RFC 4918's idempotent WebDAV methods.
IDEMPOTENT = frozenset(
    (
        *("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"),  # RFC 9110
        *("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "UNLOCK"),  # RFC 4918
    )
)
#: Statuses that never mark a server failed (ngx_http_upstream_next: NGX_PEER_NEXT).
NOT_FAILURES = frozenset((403, 404))


def idempotent(method: str) -> bool:
    return method.upper() in IDEMPOTENT


def retryable(
    outcome: str, next_upstream: Collection[str], method: str, *, request_sent: bool = True
) -> bool:
    """Gate 1: may ``outcome`` be passed to the next server at all?"""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
    if "off" in next_upstream or outcome not in next_upstream:
        return False
    return not (request_sent and not idempotent(method) and "non_idempotent" not in next_upstream)


def tries_limit(next_upstream_tries: int, servers: int) -> int:
    """Gate 2: how many attempts a request may make in all."""
    return next_upstream_tries if next_upstream_tries > 0 else servers


def counts_as_failure(ok: bool, status: int | None, next_upstream: Collection[str]) -> bool:
    """Whether an attempt marks the server failed for passive health.

    An error, timeout or invalid header always does (``ok=False``). A status
    does only when ``http_NNN`` is listed in ``proxy_next_upstream``, and
    403/404 never do: nginx frees such a peer with NGX_PEER_NEXT, not FAILED.
    """
    if not ok:
        return True
    if status is None or status in NOT_FAILURES:
        return False
    return f"http_{status}" in next_upstream


class RetryBudget:
    """Gate 3: the retries in flight for one pool (Envoy ``retry_budget``)."""

    def __init__(self, budget_percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.active = 0  # retries in flight now
        self.granted = 0
        self.denied = 0

    def limit(self, active_requests: int) -> float:
        """``max(min_retry_concurrency, budget_percent% of active_requests)``."""
        return max(self.min_retry_concurrency, self.budget_percent / 100.0 * active_requests)

    def allows(self, active_requests: int) -> bool:
        """Whether one more retry fits; counts grants and denials for the stats."""
        ok = self.active < self.limit(active_requests)
        if ok:
            self.granted += 1
        else:
            self.denied += 1
        return ok

    def started(self) -> None:
        self.active += 1

    def finished(self) -> None:
        self.active = max(0, self.active - 1)

    def stats(self) -> dict[str, float]:
        return {
            "active": self.active,
            "granted": self.granted,
            "denied": self.denied,
            "budget_percent": self.budget_percent,
            "min_retry_concurrency": self.min_retry_concurrency,
        }
