"""Passive health: judge a backend by the real requests it serves (nginx max_fails).

nginx ``server ... max_fails=N fail_timeout=T`` (defaults 1 and 10 s). The
bookkeeping is nginx's own, three numbers per peer in
src/http/ngx_http_upstream_round_robin.c:

* ``ngx_http_upstream_free_round_robin_peer``, failed attempt:
  ``fails += 1; accessed = checked = now``.
* the same function, successful attempt: ``if accessed < checked: fails = 0``.
* ``ngx_http_upstream_get_peer`` skips a peer while
  ``max_fails and fails >= max_fails and now - checked <= fail_timeout``;
  when it selects a peer it moves ``checked`` to ``now`` if more than
  ``fail_timeout`` has passed (here: :meth:`PassiveHealth.selected`).

What that means: failures add up, and only a success clears them, and only
a success of a request that chose the server after a quiet ``fail_timeout``
(so failures less than ``fail_timeout`` apart always add up: the
documentation's "within fail_timeout"). ``max_fails`` of them make the
server unavailable for ``fail_timeout`` after the last one. Then one request may
choose it, and choosing it moves ``checked`` to now, which keeps every
other request away for another ``fail_timeout``: exactly one probe goes
through. If the probe succeeds the count restarts from zero (``accessed <
checked``) and the server is back; if it fails the server stays out for
another ``fail_timeout`` (the count is still >= max_fails). A success
*inside* the window does not clear the count (``accessed == checked``). ``max_fails=0``
disables the accounting. Times are seconds, passed in: no clock is read.
"""

from __future__ import annotations


class PassiveHealth:
    """One backend's failure accounting, exactly as nginx's round-robin peer."""

    __slots__ = ("accessed", "checked", "fail_timeout", "fails", "max_fails")

    def __init__(self, max_fails: int = 1, fail_timeout: float = 10.0) -> None:
        if max_fails < 0 or fail_timeout < 0:
            raise ValueError("max_fails and fail_timeout must be >= 0")
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.fails = 0
        self.accessed = 0.0  # time of the last failure
        self.checked = 0.0  # start of the current failure window

    def available(self, now: float) -> bool:
        """Whether the backend may be chosen at ``now``."""
        return not (
            self.max_fails
            and self.fails >= self.max_fails
            and now - self.checked <= self.fail_timeout
        )

    def selected(self, now: float) -> None:
        """The balancer chose this backend: a quiet window since ``checked`` restarts it."""
        if now - self.checked > self.fail_timeout:
            self.checked = now

    def failure(self, now: float) -> bool:
        """An attempt failed; returns True if this made the backend unavailable."""
        was = self.available(now)
        self.fails += 1
        self.accessed = self.checked = now
        return was and not self.available(now)

    def success(self, now: float) -> None:
        """An attempt succeeded: clears the count if the window was restarted since."""
        if self.accessed < self.checked:
            self.fails = 0

    def reset(self) -> None:
        """Forget every failure: nginx does this to all peers when none is left."""
        self.fails = 0

    def until(self) -> float | None:
        """When an unavailable backend becomes choosable again (None if it counts nothing)."""
        if not self.max_fails or self.fails < self.max_fails:
            return None
        return self.checked + self.fail_timeout

    def __repr__(self) -> str:
        return (
            f"<PassiveHealth fails={self.fails}/{self.max_fails} "
            f"checked={self.checked} timeout={self.fail_timeout}>"
        )
