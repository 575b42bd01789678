"""nginx's smooth weighted round robin step, shared by several algorithms."""

from __future__ import annotations

from collections.abc import Sequence


def smooth_wrr_step(
    current: list[int],
    weights: Sequence[int],
    candidates: Sequence[int],
    effective: list[int] | None = None,
) -> int:
    """One pick of nginx's smooth weighted round robin; mutates ``current``.

    As ``ngx_http_upstream_get_peer`` (src/http/ngx_http_upstream_round_robin.c):
    every candidate's ``current`` grows by its weight, the largest wins (the
    first one on ties), and the winner's ``current`` drops by the total
    weight. Over ``sum(weights)`` picks each candidate is chosen exactly its
    weight times, spread as evenly as the weights allow.

    With ``effective`` (nginx's ``effective_weight``, lowered after failures:
    see :func:`penalize`), candidates grow by their effective weight, and each
    candidate's effective weight climbs back by one per pick up to its weight.
    """
    if effective is not None:
        return _step_effective(current, weights, candidates, effective)
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


def _step_effective(
    current: list[int], weights: Sequence[int], candidates: Sequence[int], effective: list[int]
) -> int:
    best = -1
    total = 0
    for i in candidates:
        e = effective[i]
        current[i] += e
        total += e
        if e < weights[i]:
            effective[i] = e + 1
        if best < 0 or current[i] > current[best]:
            best = i
    current[best] -= total
    return best


def penalize(effective: list[int], i: int, amount: int) -> None:
    """A failed attempt on candidate ``i`` lowers its effective weight by ``amount``
    (nginx: ``weight / max_fails``, never below 0; ngx_http_upstream_free_round_robin_peer)."""
    effective[i] = max(0, effective[i] - amount)


def follow_weights(
    effective: list[int] | None, old: Sequence[int] | None, new: Sequence[int]
) -> list[int]:
    """Effective weights after the weights changed from ``old`` to ``new``: a changed
    weight starts afresh (as nginx's on a reload), an unchanged one keeps its penalty."""
    if effective is None or old is None or len(old) != len(new):
        return list(new)
    return [w if o != w else min(e, w) for e, o, w in zip(effective, old, new, strict=True)]
