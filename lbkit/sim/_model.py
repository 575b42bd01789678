"""What the simulator simulates: servers and a workload, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

ARRIVALS = ("poisson", "bursty")
SERVICES = ("exponential", "deterministic", "lognormal", "bimodal")


@dataclass
class ServerSpec:
    """One backend as the simulator models it.

    ``speed`` scales its service rate (2.0 serves twice as fast). ``workers``
    requests are served at once, the rest wait in FIFO order; ``workers=0``
    means no queue at all (every flow is served at once, as long-lived
    connections are: what matters then is how many each backend holds).
    ``error_rate`` of its answers are failures, returned after
    ``error_time`` x the normal service time (a failing server is often a
    *fast* one). ``capacity`` bounds the requests it holds (0: unbounded);
    arrivals beyond it are refused.
    """

    name: str
    speed: float = 1.0
    weight: int = 1
    workers: int = 1
    error_rate: float = 0.0
    error_time: float = 0.01
    capacity: int = 0

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"server {self.name!r}: speed must be > 0")
        if self.workers < 0:
            raise ValueError(f"server {self.name!r}: workers must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"server {self.name!r}: error_rate must be within [0, 1]")
        if self.capacity < 0:
            raise ValueError(f"server {self.name!r}: capacity must be >= 0")

    @property
    def rate(self) -> float:
        """Requests per unit time it can complete, in units of the mean service time."""
        return self.speed * (self.workers or 1)


@dataclass
class Workload:
    """The traffic: how many requests, how fast, how long each takes.

    ``load`` is the offered load as a fraction of the servers' total
    capacity: the arrival rate is ``load x sum(server.rate)``, so 0.9 means
    the servers are busy 90% of the time, whatever their number and speed.
    Time is in units of ``service_mean``.

    * ``arrivals="poisson"``: independent arrivals (the supermarket model).
      ``"bursty"``: batches of on average ``burst`` requests arriving
      together, with the same mean rate.
    * ``service``: ``exponential`` (mean ``service_mean``), ``deterministic``,
      ``lognormal`` (sigma 1, heavy tail) or ``bimodal`` (a fraction
      ``long_fraction`` of requests is ``long_factor`` times longer than the
      rest, the mix of short API calls and long-lived connections).
    * the first ``warmup`` fraction of requests is left out of the latency
      figures, so the empty start does not flatter anyone.
    * ``events``: ``(time, backend, state)`` changes applied during the run,
      such as ``(500.0, "s3", "down")``.
    """

    requests: int = 200_000
    load: float = 0.9
    arrivals: str = "poisson"
    burst: float = 10.0
    service: str = "exponential"
    service_mean: float = 1.0
    long_fraction: float = 0.05
    long_factor: float = 100.0
    warmup: float = 0.1
    clients: int = 10_000
    events: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if not self.load > 0:
            raise ValueError(f"load must be > 0, got {self.load}")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}")
        if self.service not in SERVICES:
            raise ValueError(f"service must be one of {', '.join(SERVICES)}")
        if self.service_mean <= 0:
            raise ValueError("service_mean must be > 0")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError("warmup must be within [0, 1)")
        if not 0.0 <= self.long_fraction <= 1.0 or self.long_factor < 1:
            raise ValueError("long_fraction must be within [0, 1] and long_factor >= 1")
        if self.clients < 1:
            raise ValueError("clients must be >= 1")


def identical_servers(n: int, **options: object) -> list[ServerSpec]:
    """``n`` identical servers named ``s1``..``sn`` (the supermarket model's)."""
    if n < 1:
        raise ValueError(f"backends must be >= 1, got {n}")
    return [ServerSpec(f"s{i + 1}", **options) for i in range(n)]  # type: ignore[arg-type]
