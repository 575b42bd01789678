"""nginx's smooth weighted round robin step, shared by several algorithms."""

from __future__ import annotations

from collections.abc import Sequence


def smooth_wrr_step(current: list[int], weights: Sequence[int], candidates: Sequence[int]) -> int:
    """One pick of nginx's smooth weighted round robin; mutates ``current``.

    As ``ngx_http_upstream_get_peer`` (src/http/ngx_http_upstream_round_robin.c):
    every candidate's ``current`` grows by its weight, the largest wins (the
    first one on ties), and the winner's ``current`` drops by the total
    weight. Over ``sum(weights)`` picks each candidate is chosen exactly its
    weight times, spread as evenly as the weights allow.
    """
    best = -1
    total = 0
    for i in candidates:
        w = weights[i]
        current[i] += w
        total += w
        if best < 0 or current[i] > current[best]:
            best = i
    current[best] -= total
    return best
