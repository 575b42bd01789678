"""What a simulation run reports, and how much traffic a backend change moves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from lbkit.algorithms import Backend, Flow, make_balancer


@dataclass
class BackendReport:
    """One backend's share of a run."""

    name: str
    weight: int
    speed: float
    served: int
    errors: int
    max_queue: int
    mean_latency: float


@dataclass
class SimResult:
    """A run's summary. Latencies are in units of the mean service time.

    ``p50``/``p95``/``p99`` and ``mean_latency`` cover successful requests
    after the warm-up; ``errors`` counts failed answers, ``refused`` the
    requests no backend could take.
    """

    algorithm: str
    load: float
    requests: int
    duration: float
    mean_latency: float
    p50: float
    p95: float
    p99: float
    max_queue: int
    errors: int
    refused: int
    backends: list[BackendReport]
    latencies: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    all_latencies: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    @classmethod
    def from_latencies(
        cls,
        *,
        algorithm: str,
        load: float,
        requests: int,
        duration: float,
        refused: int,
        latencies: np.ndarray,
        backends: list[BackendReport],
        all_latencies: np.ndarray,
    ) -> SimResult:
        if latencies.size:
            p50, p95, p99 = (float(x) for x in np.percentile(latencies, [50, 95, 99]))
            mean = float(latencies.mean())
        else:
            p50 = p95 = p99 = mean = 0.0
        return cls(
            algorithm=algorithm,
            load=load,
            requests=requests,
            duration=duration,
            mean_latency=mean,
            p50=p50,
            p95=p95,
            p99=p99,
            max_queue=max((b.max_queue for b in backends), default=0),
            errors=sum(b.errors for b in backends),
            refused=refused,
            backends=backends,
            latencies=latencies,
            all_latencies=all_latencies,
        )

    @property
    def served(self) -> dict[str, int]:
        return {b.name: b.served for b in self.backends}

    def to_dict(self) -> dict[str, object]:
        """Plain data for ``--json``: every summary field and the per-backend rows."""
        data = {k: v for k, v in asdict(self).items() if k not in ("latencies", "all_latencies")}
        data["served"] = self.served
        return data


@dataclass
class RemapReport:
    """What happens to ``keys`` flows when backend ``removed`` leaves."""

    algorithm: str
    removed: str
    keys: int
    moved: float
    needless: float
    before: list[int]
    after: list[int]


def remap_report(
    algorithm: str, backends: Sequence[Backend], removed: str, keys: int = 10_000, seed: int = 1
) -> RemapReport:
    """Map ``keys`` flows, take ``removed`` down, map them again.

    ``moved`` is the fraction of flows whose backend changed; ``needless``
    the fraction of flows that were *not* on the removed backend and moved
    anyway. A perfect consistent hash has ``moved ~ 1/N`` and ``needless`` 0:
    that is what keeps caches warm and connections unbroken when one server
    of many leaves. Algorithms without affinity reshuffle nearly everything.
    """
    flows = [
        Flow(client_ip=f"198.18.{(k >> 8) & 255}.{k & 255}", key=f"user-{k}") for k in range(keys)
    ]
    before_lb = make_balancer(algorithm, [_copy(b) for b in backends], seed=seed)
    after_lb = make_balancer(algorithm, [_copy(b) for b in backends], seed=seed)
    after_lb.set_state(removed, "down")
    names = [b.name for b in backends]
    before = [names.index(before_lb.pick(f).name) for f in flows]
    after = [names.index(after_lb.pick(f).name) for f in flows]
    gone = names.index(removed)
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    stayers = [(a, b) for a, b in zip(before, after, strict=True) if a != gone]
    needless = sum(a != b for a, b in stayers)
    return RemapReport(
        algorithm=algorithm,
        removed=removed,
        keys=keys,
        moved=moved / keys,
        needless=needless / len(stayers) if stayers else 0.0,
        before=before,
        after=after,
    )


def _copy(b: Backend) -> Backend:
    return Backend(
        b.name, weight=b.weight, backup=b.backup, max_conns=b.max_conns, address=b.address
    )
