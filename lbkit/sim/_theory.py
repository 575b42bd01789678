"""Closed-form results the simulator must reproduce."""

from __future__ import annotations


def supermarket_mean_time(load: float, d: int, terms: int = 64) -> float:
    """Mean time in system of the supermarket model as the number of servers grows.

    Mitzenmacher, *The Power of Two Choices in Randomized Load Balancing*
    (IEEE TPDS 12(10), 2001), Theorem 1 and Corollary: with Poisson arrivals
    at rate ``load x n``, exponential service of mean 1 and each arrival
    joining the shortest of ``d`` servers sampled at random,

    * d = 1: T = 1 / (1 - load) (each server an M/M/1 queue);
    * d >= 2: T = sum_{i>=1} load^((d^i - d) / (d - 1)).

    At load 0.9: 10.0 for d = 1, 2.6141 for d = 2.
    """
    if not 0 < load < 1:
        raise ValueError(f"load must be within (0, 1), got {load}")
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if d == 1:
        return 1.0 / (1.0 - load)
    total = 0.0
    for i in range(1, terms):
        exponent = (d**i - d) // (d - 1)
        term = load**exponent
        total += term
        if term < 1e-15:
            break
    return total
