"""A discrete-event simulator of a balancer in front of queueing servers.

Each server is a FIFO queue with ``workers`` parallel servers (an M/G/c
queue; c = 1 is the supermarket model of Mitzenmacher 2001). Because service
is FIFO, a request's completion time is known the moment it is assigned, so
the only events are arrivals (generated in order) and completions (a heap);
each completion feeds ``on_finish`` back to the balancer before the next
arrival is picked, exactly as a live balancer learns of finished requests.

The balancer is the very object L4 and L7 use (``make_balancer``): the
simulator drives ``pick``/``on_start``/``on_finish`` with simulated time.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence

import numpy as np

from lbkit.algorithms import Backend, Flow, NoBackendAvailable, make_balancer

from ._model import ServerSpec, Workload
from ._report import BackendReport, SimResult

Progress = Callable[[int, int], None]

#: How often (in requests) the progress callback is called.
PROGRESS_EVERY = 1 << 14


def _service_sampler(w: Workload, rng: random.Random) -> Callable[[], float]:
    mean = w.service_mean
    if w.service == "exponential":
        rate = 1.0 / mean
        return lambda: rng.expovariate(rate)
    if w.service == "deterministic":
        return lambda: mean
    if w.service == "lognormal":
        sigma = 1.0
        mu = math.log(mean) - sigma * sigma / 2  # so that the mean is ``mean``
        return lambda: rng.lognormvariate(mu, sigma)
    short = mean / (1 - w.long_fraction + w.long_fraction * w.long_factor)
    long_ = short * w.long_factor
    p = w.long_fraction
    return lambda: (
        rng.expovariate(1.0 / long_) if rng.random() < p else rng.expovariate(1.0 / short)
    )


def simulate(
    algorithm: str,
    servers: Sequence[ServerSpec],
    workload: Workload | None = None,
    *,
    seed: int = 1,
    progress: Progress | None = None,
    **algorithm_options: object,
) -> SimResult:
    """Run ``workload`` through ``algorithm`` in front of ``servers``; return the report.

    Deterministic for a given ``seed``. ``progress(done, total)`` is called
    every few thousand requests (for a progress bar). Options such as
    ``decay`` or ``table_size`` go to the algorithm.
    """
    w = workload or Workload()
    if not servers:
        raise ValueError("backends must be >= 1, got 0")
    rng = random.Random(seed)
    backends = [Backend(s.name, weight=s.weight) for s in servers]
    balancer = make_balancer(algorithm, backends, seed=seed + 1, **algorithm_options)
    n = len(servers)
    arrival_rate = w.load * sum(s.rate for s in servers) / w.service_mean
    batch_rate = arrival_rate / w.burst if w.arrivals == "bursty" else arrival_rate
    batch_p = 1.0 / w.burst  # geometric batch size with mean ``burst``
    service = _service_sampler(w, rng)

    speed = [s.speed for s in servers]
    workers = [s.workers for s in servers]
    free_at: list[list[float]] = [[0.0] * s.workers for s in servers]  # worker heaps
    err_rate = [s.error_rate for s in servers]
    err_time = [s.error_time for s in servers]
    capacity = [s.capacity for s in servers]
    in_system = [0] * n
    max_queue = [0] * n
    served = [0] * n
    errors = [0] * n
    lat_sum = [0.0] * n
    lat_n = [0] * n
    refused = 0
    latencies = np.empty(w.requests, dtype=np.float64)
    ok_mask = np.ones(w.requests, dtype=bool)
    measured_from = int(w.requests * w.warmup)
    events = sorted(w.events)
    needs_flow = balancer.needs_flow
    client_ips = [f"198.18.{(c >> 8) & 255}.{c & 255}" for c in range(min(w.clients, 65536))]

    pick, on_start, on_finish = balancer.pick, balancer.on_start, balancer.on_finish
    index = {b: i for i, b in enumerate(backends)}
    heappush, heappop = heapq.heappush, heapq.heappop
    rnd, expo = rng.random, rng.expovariate
    done_heap: list[tuple[float, int, float, bool]] = []
    t = 0.0
    left_in_batch = 0
    k = 0
    total = w.requests
    while k < total:
        if left_in_batch == 0:
            t += expo(batch_rate)
            left_in_batch = 1
            if w.arrivals == "bursty":
                # Geometric batch size: P(size = m) = (1-p)^(m-1) p.
                left_in_batch = (
                    1 + int(math.log(1.0 - rnd()) / math.log(1.0 - batch_p)) if batch_p < 1 else 1
                )
        left_in_batch -= 1
        while done_heap and done_heap[0][0] <= t:
            done, i, lat, ok = heappop(done_heap)
            in_system[i] -= 1
            on_finish(backends[i], done, ok, lat)
        while events and events[0][0] <= t:
            _, name, state = events.pop(0)
            balancer.set_state(name, state)
        flow = None
        if needs_flow:
            c = int(rnd() * len(client_ips))
            flow = Flow(client_ip=client_ips[c], client_port=1024 + k % 60000, key=None)
        try:
            b = pick(flow, t)
        except NoBackendAvailable:
            refused += 1
            latencies[k] = 0.0
            ok_mask[k] = False
            k += 1
            continue
        i = index[b]
        if capacity[i] and in_system[i] >= capacity[i]:
            refused += 1
            errors[i] += 1
            latencies[k] = 0.0
            ok_mask[k] = False
            on_start(b, t)
            on_finish(b, t, False, 0.0)
            k += 1
            continue
        s = service() / speed[i]
        ok = True
        if err_rate[i] and rnd() < err_rate[i]:
            ok = False
            s *= err_time[i]
            errors[i] += 1
        c_workers = workers[i]
        if c_workers == 0:
            done = t + s
        elif c_workers == 1:
            slot = free_at[i]
            start = slot[0] if slot[0] > t else t
            done = slot[0] = start + s
        else:
            slot = free_at[i]
            start = slot[0] if slot[0] > t else t
            done = start + s
            heapq.heapreplace(slot, done)
        lat = done - t
        latencies[k] = lat
        ok_mask[k] = ok
        if k >= measured_from:
            lat_sum[i] += lat
            lat_n[i] += 1
        served[i] += 1
        q = in_system[i] + 1
        in_system[i] = q
        if q > max_queue[i]:
            max_queue[i] = q
        on_start(b, t)
        heappush(done_heap, (done, i, lat, ok))
        k += 1
        if progress is not None and not k % PROGRESS_EVERY:
            progress(k, total)
    while done_heap:
        done, i, lat, ok = heappop(done_heap)
        in_system[i] -= 1
        on_finish(backends[i], done, ok, lat)
    if progress is not None:
        progress(total, total)

    measured = latencies[measured_from:][ok_mask[measured_from:]]
    per_backend = [
        BackendReport(
            name=servers[i].name,
            weight=servers[i].weight,
            speed=servers[i].speed,
            served=served[i],
            errors=errors[i],
            max_queue=max_queue[i],
            mean_latency=lat_sum[i] / lat_n[i] if lat_n[i] else 0.0,
        )
        for i in range(n)
    ]
    return SimResult.from_latencies(
        algorithm=algorithm,
        load=w.load,
        requests=w.requests,
        duration=t,
        refused=refused,
        latencies=measured,
        backends=per_backend,
        all_latencies=latencies,
    )
