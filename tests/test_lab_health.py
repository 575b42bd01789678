"""Health checks through the L7 tier of the layered lab (netns): what a client sees.

alb1 serves a copy of labs/l7/router.toml's api pool (api1..3) with short check
intervals. Two lessons, as the course tells them:

* A TCP check cannot see a backend that accepts connections and answers 500;
  an HTTP check can. With retries and max_fails off (so nothing else hides
  api2), api2 in ``error-500`` keeps a third of the answers 500 under a TCP
  check, and only until it is marked DOWN under an HTTP check. The DOWN
  event comes about ``fall x interval`` after the switch: the prediction is
  stated beside the bound the test allows.
* Under a steady load with retries and an HTTP check, losing one of three
  backends costs the client nothing, and the backend is back in rotation
  about ``rise x interval`` after it recovers. "Losing": ``lab.stop("api2")``
  kills its process (its address stays, so connections are refused), and
  ``lab.start`` starts it again.

Traffic runs only inside the lab (a small Python client in the client's
namespace); every wait polls a condition (the router's ``health`` and
``stats`` control ops) with a deadline; the lab is always taken down.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lbkit.lab import Lab
from lbkit.lab.control import send_control
from lbkit.viz.health_lab import Load

from ._procs import lab_running

pytestmark = pytest.mark.skipif(
    not (hasattr(os, "geteuid") and os.geteuid() == 0), reason="network namespaces need root"
)

ROOT = Path(__file__).resolve().parent.parent
LAYERED = ROOT / "labs/layered.toml"

INTERVAL, TIMEOUT, RISE, FALL, JITTER = 0.2, 0.2, 2, 3, 0.1
SLACK = 0.5  # seconds for scheduling, the control round trips and a loaded machine
#: The DOWN event comes ``FALL`` failed checks after the switch: the first check after
#: it fails, then FALL - 1 more one interval apart; so between (FALL - 1) and FALL
#: intervals (plus a probe's own time) after the switch.
PREDICTED_DOWN = FALL * INTERVAL
DOWN_BOUND = (FALL + 2) * INTERVAL * (1 + JITTER) + TIMEOUT + SLACK
DOWN_FLOOR = (FALL - 1) * INTERVAL * (1 - JITTER) - 0.05
#: Likewise ``RISE`` passing checks bring it back UP.
PREDICTED_UP = RISE * INTERVAL
UP_BOUND = (RISE + 2) * INTERVAL * (1 + JITTER) + TIMEOUT + SLACK
WAIT = 10.0  # deadline of any expected change
CLOCK_SLACK = 0.05  # the router's and the client's clocks, and uvloop's ms resolution

NO_RETRIES = '["off"]'
RETRIES = '["error", "timeout", "http_502", "http_503", "http_504"]'


def router_toml(check: str, next_upstream: str, max_fails: int | None) -> str:
    """labs/l7/router.toml's api pool with a ``check`` ("tcp" or "http") and short intervals."""
    fails = "" if max_fails is None else f", max_fails = {max_fails}"
    probe = 'type = "tcp"' if check == "tcp" else 'type = "http", path = "/healthz"'
    return f"""
[[server]]
listen = [{{ port = 80, default_server = true }}]
server_name = ["lb.example.com", "api.example.com", "10.0.1.3", "10.0.1.4"]

[[server.route]]
path = "/api/"
pool = "api"
next_upstream = {next_upstream}

[pool.api]
algorithm = "least_connections"
health_check = {{ {probe}, interval = {INTERVAL}, timeout = {TIMEOUT}, rise = {RISE}, fall = {FALL}, jitter = {JITTER} }}
servers = [
    {{ address = "10.0.1.10:80", name = "api1"{fails} }},
    {{ address = "10.0.1.11:80", name = "api2"{fails} }},
    {{ address = "10.0.1.12:80", name = "api3"{fails} }},
]
"""  # noqa: E501


#: The client: GETs over a new connection each, by ``workers`` threads, until ``count``
#: requests, ``seconds`` or the ``stop`` file; prints [[start, end, status, backend, error]].
def health(lab: Lab) -> dict:
    reply = send_control(lab.control_path("alb1"), {"op": "health"})
    assert reply["ok"], reply
    return reply


def api2(lab: Lab) -> dict:
    return health(lab)["backends"]["api2"]


def requests_served(lab: Lab) -> int:
    reply = send_control(lab.control_path("alb1"), {"op": "stats"})
    return reply["stats"]["proxy"]["requests"]


def picked(lab: Lab, name: str) -> int:
    stats = send_control(lab.control_path("alb1"), {"op": "stats"})["stats"]
    rows = stats["router"]["upstreams"]["api"]["backends"]
    return next(row["picked"] for row in rows if row["name"] == name)


def wait_for(what: str, predicate: Callable[[], object], deadline: float = WAIT) -> object:
    """Poll ``predicate`` (each poll is a control round trip) until it is truthy."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)  # a poll interval, not a synchronisation: the condition decides


def event(lab: Lab, backend: str, new: str, after: float) -> dict | None:
    """The first ``backend`` transition to ``new`` at or after epoch time ``after``."""
    for e in health(lab)["events"]:
        if e["backend"] == backend and e["new"] == new and e["at"] >= after - CLOCK_SLACK:
            return e
    return None


def use(lab: Lab, router: Path, text: str) -> None:
    """Serve ``text`` on alb1 (reload) and wait until the checks found all three up."""
    router.write_text(text)
    reply = send_control(lab.control_path("alb1"), {"op": "reload"})
    assert reply["ok"], reply

    def all_up() -> bool:
        rows = health(lab)["backends"]
        return all(rows[n]["health"] == "up" and rows[n]["state"] == "up" for n in rows)

    wait_for("every api backend checked up", all_up)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A copy of the layered lab whose albs serve a test router file; always taken down."""
    tmp = tmp_path_factory.mktemp("health")
    (tmp / "l7").mkdir()
    (tmp / "l7/router.toml").write_text(router_toml("http", NO_RETRIES, 0))
    topo = tmp / "layered.toml"
    topo.write_text(LAYERED.read_text())
    state_dir = tmp / "state"
    with lab_running(Lab(topo, provider="netns", state_dir=state_dir), state_dir) as lab:
        yield lab


@pytest.fixture
def router(lab):
    """alb1's router file; api2 is healthy again after each test."""
    path = lab.topology_path.parent / "l7/router.toml"
    try:
        yield path
    finally:
        lab.backend("api2", "healthy")


def test_a_tcp_check_keeps_a_500_backend_in_rotation(lab, router):
    """TCP check, no retries, no max_fails: api2 answering 500 to everything still passes
    its checks, stays up, and about a third of 60 requests are 500s."""
    use(lab, router, router_toml("tcp", NO_RETRIES, 0))
    lab.backend("api2", "error-500")
    checks_before = api2(lab)["checks"]
    load = Load(lab, rate=0, workers=1, count=60, seconds=30)
    rows = load.finish(stop=False)
    statuses = [status for _, _, status, _, _ in rows]
    assert len(rows) == 60 and set(statuses) <= {200, 500}
    print(f"\nTCP check: {statuses.count(500)} of 60 answers were 500 (api2 stays in rotation)")
    assert 12 <= statuses.count(500) <= 28
    wait_for("more checks of api2 than fall", lambda: api2(lab)["checks"] > checks_before + FALL)
    row = api2(lab)
    assert (row["state"], row["health"], row["result"]) == ("up", "up", "TCP connect ok")


def test_an_http_check_takes_a_500_backend_out(lab, router):
    """HTTP check, no retries, no max_fails: the client sees 500s only until api2 is marked
    DOWN, about FALL x INTERVAL after the switch; the next 60 requests have none."""
    use(lab, router, router_toml("http", NO_RETRIES, 0))
    load = Load(lab, rate=0, workers=1, count=5000, seconds=30)
    try:
        base = requests_served(lab)
        wait_for("the client's first requests", lambda: requests_served(lab) > base + 5)
        switched = time.time()
        lab.backend("api2", "error-500")
        down = wait_for("api2 DOWN", lambda: event(lab, "api2", "down", switched))
        at_down = requests_served(lab)

        def enough_after() -> bool:  # 60 at least, over a few check intervals
            return requests_served(lab) >= at_down + 60 and time.time() > down["at"] + 0.5

        wait_for("60 more requests", enough_after)
    finally:
        rows = load.finish()
    assert down["message"] == f"api2 DOWN after {FALL} failures: HTTP 500 on /healthz"
    delay = down["at"] - switched
    print(
        f"\nHTTP check: api2 DOWN {delay:.3f} s after the switch (predicted about "
        f"{PREDICTED_DOWN:.1f} s = fall x interval; allowed {DOWN_FLOOR:.2f}-{DOWN_BOUND:.2f} s)"
    )
    assert DOWN_FLOOR <= delay <= DOWN_BOUND
    errors = [r for r in rows if r[2] != 200]
    assert errors and all(r[2] == 500 for r in errors)  # some 500s, nothing else
    assert max(start for start, *_ in errors) <= down["at"] + CLOCK_SLACK
    after = [r for r in rows if r[0] > down["at"] + CLOCK_SLACK]
    print(f"HTTP check: {len(errors)} 500s before DOWN, 0 in the {len(after)} requests after")
    assert len(after) >= 60 and all(r[2] == 200 for r in after)
    row = api2(lab)
    assert (row["state"], row["health"], row["last"]) == ("down", "down", down["message"])


def test_losing_a_backend_under_load_fails_no_request(lab, router):
    """Retries and an HTTP check on, 3 clients in parallel: api2's process killed (its
    address stays, so connections are refused) and started again; no request fails, and
    api2 is UP about RISE x INTERVAL after it is back and serves requests again."""
    use(lab, router, router_toml("http", RETRIES, None))  # nginx's max_fails=1 fail_timeout=10
    load = Load(lab, rate=0, workers=3, count=20000, seconds=40)
    try:
        base = requests_served(lab)
        wait_for("the client's first requests", lambda: requests_served(lab) > base + 20)
        lost = time.time()
        assert lab.stop("api2")  # the process killed, as in a crash
        down = wait_for("api2 DOWN", lambda: event(lab, "api2", "down", lost))
        during = requests_served(lab)
        wait_for("requests while api2 is down", lambda: requests_served(lab) > during + 50)
        lab.start("api2")  # returns once the host answers its control channel
        restored = time.time()  # ready again: from here, rise x interval
        up = wait_for("api2 UP", lambda: event(lab, "api2", "up", restored))
        served = picked(lab, "api2")
        wait_for("api2 serving again", lambda: picked(lab, "api2") > served + 10)
    finally:
        rows = load.finish()
    failed = [r for r in rows if r[2] != 200]
    back = [r for r in rows if r[3] == "api2" and r[0] > up["at"]]
    print(
        f"\nkill: api2 DOWN {down['at'] - lost:.3f} s after it was lost ({down['message']!r}); "
        f"UP {up['at'] - restored:.3f} s after it was restored (predicted about "
        f"{PREDICTED_UP:.1f} s = rise x interval, allowed <= {UP_BOUND:.2f} s); "
        f"{len(rows)} requests, {len(failed)} failed, {len(back)} served by api2 after UP"
    )
    assert down["message"] == f"api2 DOWN after {FALL} failures: connection refused"
    assert len(rows) > 200 and failed == []
    assert up["message"] == f"api2 UP after {RISE} successes"
    assert up["at"] - restored <= UP_BOUND
    assert back
    row = api2(lab)
    assert (row["state"], row["failed"]) == ("up", False)  # UP cleared its max_fails count
