"""Outlier detection: eject a backend that live traffic shows failing (Envoy), sans-I/O.

Passive health, like :class:`lbkit.health.PassiveHealth` (nginx), but with
Envoy's rules (docs ``arch_overview/upstream/outlier``, the
``config.cluster.v3.OutlierDetection`` proto, and
``source/common/upstream/outlier_detection_impl.cc``). Each request's
outcome goes to :meth:`OutlierDetector.observe`: ``True``/``False``, or an
HTTP status (5xx is a failure). Two detectors:

* **consecutive failures** (``consecutive_5xx``, default 5): that many
  failures in a row eject the backend. A failure is a 5xx or a local-origin
  error (refused, reset, timeout), as Envoy counts them when
  ``split_external_local_origin_errors`` is false.
* **failure percentage** (``failure_percentage_*``): in the last
  ``interval`` seconds, a backend with at least ``request_volume`` requests,
  ``threshold`` percent or more of them failed, is ejected (Envoy compares
  with ``>=``), provided at least ``minimum_hosts`` backends have that much
  volume.

Ejection lasts ``base_ejection_time x multiplier``, capped at
``max_ejection_time``. The multiplier (Envoy's ``ejectTimeBackoff``) grows
by one at each ejection while ``multiplier x base < max + base``, and
shrinks by one at each ``interval`` sweep that finds the backend in service
for at least an interval since its return: a backend that keeps failing is
kept out longer and longer (30, 60, 90 ... 300 s), one that recovered is
forgiven step by step.

**max_ejection_percent** bounds the ejected share, with Envoy's exact test
(``DetectorImpl::ejectHost``, since Envoy 1.31): a backend may be ejected
only if ``100 x (ejected_now + 1) / backends <= max_ejection_percent``, or,
with ``always_eject_one`` (Envoy's ``always_eject_one_host``), if none is
ejected now. With the default 10 %: 10 backends allow 1, 20 allow 2, and 3
allow none unless ``always_eject_one`` (then 1). A refused ejection is an
*overflow* (Envoy's ``ejections_overflow`` counter); the failure counters
are reset either way, so 5 more failures are needed to try again.

Where this differs from Envoy, and why:

=============================  =========================  ===========================
setting                        Envoy                      here
=============================  =========================  ===========================
always_eject_one_host          false                      true: the lab has 3 backends
failure percentage             off (enforcing 0 %),       on: 50 %, 20 requests,
                               85 %, 50 requests,         1 host (a lab-sized pool)
                               5 hosts
percentage window              the previous interval's    a sliding ``interval``,
                               bucket, judged at sweeps   judged at each failure
return to service              at the first sweep after   exactly when the ejection
                               the time is up             time is up
success rate (mean - k stdev)  yes                        not implemented
ejection jitter                max_ejection_time_jitter   none (deterministic)
=============================  =========================  ===========================

Observations of an ejected backend are ignored (it gets no traffic unless a
balancer is in panic). No clock is read: times are passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .checker import Transition


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Envoy ``OutlierDetection`` settings in seconds and percent (see the module table).

    ``consecutive_5xx=0`` or ``failure_percentage_threshold=None`` turns
    that detector off.
    """

    consecutive_5xx: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    always_eject_one: bool = True
    failure_percentage_threshold: float | None = 50.0
    failure_percentage_request_volume: int = 20
    failure_percentage_minimum_hosts: int = 1

    def __post_init__(self) -> None:
        if self.consecutive_5xx < 0:
            raise ValueError("consecutive_5xx must be >= 0 (0: off)")
        if not (self.interval > 0 and self.base_ejection_time > 0):
            raise ValueError("interval and base_ejection_time must be > 0 seconds")
        if self.max_ejection_time < self.base_ejection_time:
            # Envoy: "max_ejection_time cannot be smaller than base_ejection_time"
            raise ValueError("max_ejection_time cannot be smaller than base_ejection_time")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be in [0, 100]")
        threshold = self.failure_percentage_threshold
        if threshold is not None and not 0 <= threshold <= 100:
            raise ValueError("failure_percentage_threshold must be in [0, 100] or None")
        if self.failure_percentage_request_volume < 1 or self.failure_percentage_minimum_hosts < 0:
            raise ValueError("request_volume must be >= 1 and minimum_hosts >= 0")


class _Host:
    """One backend's counters (Envoy's ``DetectorHostMonitorImpl``)."""

    __slots__ = (
        "consecutive",
        "ejected_at",
        "ejections",
        "failed",
        "last_return",
        "multiplier",
        "until",
        "window",
    )

    def __init__(self) -> None:
        self.consecutive = 0
        self.window: deque[tuple[float, bool]] = deque()  # (time, failed) in the last interval
        self.failed = 0  # failures in ``window``
        self.ejected_at: float | None = None
        self.until = 0.0
        self.multiplier = 0
        self.ejections = 0
        self.last_return: float | None = None

    def forget(self) -> None:
        self.consecutive = 0
        self.window.clear()
        self.failed = 0

    def prune(self, now: float, interval: float) -> None:
        window = self.window
        while window and window[0][0] <= now - interval:
            if window.popleft()[1]:
                self.failed -= 1


class OutlierDetector:
    """Envoy-style outlier detection over a pool of backends named by string.

    Feed :meth:`observe` with each request's outcome; call :meth:`tick`
    from time to time (or before reading :meth:`ejected`) to return
    backends whose time is up and to run the ``interval`` sweeps.
    ``on_change(name, ejected)`` is called on each ejection and return;
    ``events`` keeps the last ``max_events`` :class:`Transition` s
    (``active`` -> ``ejected`` and back; an overflow is logged with
    ``old == new == "active"``).
    """

    def __init__(
        self,
        backends: Iterable[str],
        config: OutlierConfig | None = None,
        *,
        now: float = 0.0,
        on_change: Callable[[str, bool], object] | None = None,
        max_events: int = 256,
    ) -> None:
        self.config = config or OutlierConfig()
        self.hosts: dict[str, _Host] = {name: _Host() for name in backends}
        if not self.hosts:
            raise ValueError("outlier detection needs at least one backend")
        self.on_change = on_change
        self.events: deque[Transition] = deque(maxlen=max_events)
        self.overflows = 0
        self._next_sweep = now + self.config.interval

    # ------------------------------------------------------------ membership
    def add(self, name: str) -> None:
        if name in self.hosts:
            raise ValueError(f"{name!r} is already watched")
        self.hosts[name] = _Host()

    def remove(self, name: str) -> None:
        self._host(name)
        del self.hosts[name]

    # ----------------------------------------------------------------- input
    def observe(
        self, name: str, result: bool | int, now: float, reason: str = ""
    ) -> Transition | None:
        """One request to ``name`` ended: ``True``/``False``, or its HTTP status.

        Returns the ejection it caused, if any. Runs :meth:`tick` first, so
        a backend whose ejection time is up is back before it is judged.
        """
        host = self._host(name)
        self.tick(now)
        if host.ejected_at is not None:
            return None
        if isinstance(result, bool):
            failed = not result
            reason = reason or ("ok" if result else "local-origin failure")
        else:
            failed = result >= 500
            reason = reason or f"HTTP {result}"
        cfg = self.config
        host.prune(now, cfg.interval)
        host.window.append((now, failed))
        if not failed:
            host.consecutive = 0
            return None
        host.failed += 1
        host.consecutive += 1
        if cfg.consecutive_5xx and host.consecutive >= cfg.consecutive_5xx:
            why = f"after {host.consecutive} consecutive failures: {reason}"
            return self._eject(name, host, now, why)
        if self._percentage_outlier(host, now):
            volume = len(host.window)
            why = (
                f"as {100.0 * host.failed / volume:.0f}% of {volume} requests failed in the "
                f"last {cfg.interval:g} s (threshold {cfg.failure_percentage_threshold:g}%)"
            )
            return self._eject(name, host, now, why)
        return None

    def _percentage_outlier(self, host: _Host, now: float) -> bool:
        cfg = self.config
        threshold = cfg.failure_percentage_threshold
        volume = cfg.failure_percentage_request_volume
        if threshold is None or len(host.window) < volume:
            return False
        if 100.0 * host.failed / len(host.window) < threshold:
            return False
        busy = 0
        for other in self.hosts.values():
            if other.ejected_at is None:
                other.prune(now, cfg.interval)
                busy += len(other.window) >= volume
        return busy >= cfg.failure_percentage_minimum_hosts

    # -------------------------------------------------------------- ejection
    def _eject(self, name: str, host: _Host, now: float, why: str) -> Transition | None:
        cfg = self.config
        host.forget()  # Envoy resets the counters after a detection, ejected or not
        active = sum(h.ejected_at is not None for h in self.hosts.values())
        n = len(self.hosts)
        allowed = 100.0 * (active + 1) / n <= cfg.max_ejection_percent or (
            cfg.always_eject_one and active == 0
        )
        if not allowed:
            self.overflows += 1
            message = (
                f"{name} NOT EJECTED {why}; {active} of {n} already ejected "
                f"(max_ejection_percent {cfg.max_ejection_percent:g}%)"
            )
            self.events.append(Transition(name, "active", "active", now, why, message))
            return None
        base = cfg.base_ejection_time
        if host.multiplier * base < cfg.max_ejection_time + base:
            host.multiplier += 1
        duration = min(base * host.multiplier, cfg.max_ejection_time)
        host.ejected_at = now
        host.until = now + duration
        host.ejections += 1
        message = f"{name} EJECTED for {duration:g} s {why}"
        transition = Transition(name, "active", "ejected", now, why, message)
        self.events.append(transition)
        if self.on_change is not None:
            self.on_change(name, True)
        return transition

    def _return(self, name: str, host: _Host, at: float) -> Transition:
        assert host.ejected_at is not None
        out = at - host.ejected_at
        host.ejected_at = None
        host.last_return = at
        host.forget()  # Envoy's unejectHost resets the consecutive counters
        times = "1 time" if host.ejections == 1 else f"{host.ejections} times"
        message = f"{name} RETURNED after {out:g} s ejected (ejected {times} so far)"
        transition = Transition(name, "ejected", "active", at, "ejection time over", message)
        self.events.append(transition)
        if self.on_change is not None:
            self.on_change(name, False)
        return transition

    # ------------------------------------------------------------------ time
    def tick(self, now: float) -> list[Transition]:
        """Bring time to ``now``: returns due backends and runs the interval sweeps, in order.

        A sweep at time ``t`` lowers the multiplier of every backend in
        service that has been back for at least ``interval`` (Envoy's
        ``onIntervalTimer``). Returns the transitions (returns to service).
        """
        cfg = self.config
        out: list[Transition] = []
        while True:
            ejected = [(h.until, n) for n, h in self.hosts.items() if h.ejected_at is not None]
            first_return = min(ejected) if ejected else (math.inf, "")
            at = min(first_return[0], self._next_sweep)
            if at > now:
                return out
            if first_return[0] <= self._next_sweep:
                name = first_return[1]
                out.append(self._return(name, self.hosts[name], at))
                continue
            for host in self.hosts.values():
                if (
                    host.ejected_at is None
                    and host.multiplier
                    and host.last_return is not None
                    and at - host.last_return >= cfg.interval
                ):
                    host.multiplier -= 1
            self._next_sweep += cfg.interval

    # ---------------------------------------------------------------- output
    def ejected(self, now: float) -> set[str]:
        """Backends out of service at ``now`` (a query: it changes nothing; see :meth:`tick`)."""
        return {n for n, h in self.hosts.items() if h.ejected_at is not None and h.until > now}

    def is_ejected(self, name: str, now: float) -> bool:
        host = self._host(name)
        return host.ejected_at is not None and host.until > now

    def until(self, name: str) -> float | None:
        """When an ejected backend returns (None if it is in service)."""
        host = self._host(name)
        return host.until if host.ejected_at is not None else None

    def multiplier(self, name: str) -> int:
        """The ejection-time multiplier: the next ejection lasts ``base x (this + 1)``."""
        return self._host(name).multiplier

    def ejections(self, name: str) -> int:
        """How many times ``name`` has been ejected in all."""
        return self._host(name).ejections

    def _host(self, name: str) -> _Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"{name!r} is not watched by this detector") from None

    def __repr__(self) -> str:
        out = sorted(n for n, h in self.hosts.items() if h.ejected_at is not None)
        return f"<OutlierDetector {len(self.hosts)} backends, ejected {out}>"
