"""Chapter 5's live lab: the layered lab whose albs run a health-check lesson's router file.

The chapter breaks ``api2`` on purpose while a steady client sends requests
through ``alb1``, and counts what the client got before and after the
balancer's checks took ``api2`` out. Three kinds of function, as in
:mod:`lbkit.viz.l7`:

* **Pure** (tested without a lab): :func:`router_toml` writes the router
  file of a lesson (the ``api`` pool behind ``/api/``, a ``health_check``
  or none, retries and ``max_fails`` off so that nothing but the check
  hides a broken backend); :func:`write_health_lab` writes a lab folder (a
  copy of ``labs/layered.toml`` and its ``l7/router.toml``);
  :class:`LiveRun` counts a run's rows.
* **The lab's life**: :func:`health_lab` brings that lab up in the
  chapter's own state folder (:func:`lbkit.lab.notebook.notebook_state_dir`)
  and registers :func:`take_down` to run at interpreter exit, so a kernel
  that dies leaves nothing behind; :func:`take_down` is also the last cell.
* **Thin lab calls**: :func:`use_router` rewrites the router file, reloads
  the albs and waits until their checks found every backend up;
  :class:`Load` is a paced HTTP client in the lab's ``client`` host;
  :func:`live_failure` is one lesson (switch a backend's mode under load,
  wait for the DOWN transition, count); :func:`wait_for` polls a condition
  with a deadline. Every wait polls; none sleeps for a guessed time.

The check settings of the live lesson (:data:`LIVE_CHECK`: 1 s interval,
0.5 s timeout, rise 2, fall 3) are the simulation's defaults scaled down so
that a lesson takes seconds; the router reads the same
:class:`lbkit.health.CheckSpec` the TOML ``health_check`` makes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from lbkit.health import CheckSpec, DelayWindow, predict_detection
from lbkit.health.sim import Traffic, probe_outcome, request_outcome
from lbkit.lab.notebook import labs_dir, notebook_state_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lbkit.lab import Lab

T = TypeVar("T")

#: The api pool of ``labs/layered.toml``: name and address of each backend.
API_SERVERS: tuple[tuple[str, str], ...] = (
    ("api1", "10.0.1.10:80"),
    ("api2", "10.0.1.11:80"),
    ("api3", "10.0.1.12:80"),
)
#: The L7 hosts of the layered lab; both serve the same router file.
ALBS: tuple[str, ...] = ("alb1", "alb2")
#: The live lesson's check: HAProxy's rise 2 / fall 3, at a 1 s interval and a 0.5 s timeout.
LIVE_CHECK = CheckSpec(type="http", interval=1.0, timeout=0.5, rise=2, fall=3, jitter=0.1)
#: How long the router waits for a backend's answer (so a hanging backend costs 2 s, not 60).
READ_TIMEOUT = 2.0
#: Seconds of slack between the router's clock and the client's when comparing times.
CLOCK_SLACK = 0.05
#: The lab folder's name inside the chapter's state folder.
FILES = "files"


# ------------------------------------------------------------------- router files
def check_toml(check: CheckSpec) -> str:
    """``check`` as the TOML inline table of a pool's ``health_check``."""
    fields = [f'type = "{check.type}"']
    if check.type == "http":
        fields += [f'path = "{check.path}"', f'expect = "{check.expect}"']
        if check.body is not None:
            fields.append(f"body = {json.dumps(check.body)}")
    fields += [
        f"interval = {check.interval!r}",
        f"timeout = {check.timeout!r}",
        f"rise = {check.rise}",
        f"fall = {check.fall}",
        f"jitter = {check.jitter!r}",
    ]
    return "{ " + ", ".join(fields) + " }"


def _inline(table: Mapping[str, object]) -> str:
    """A flat mapping as a TOML inline table (numbers, booleans, strings)."""
    parts = []
    for key, value in table.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        parts.append(f"{key} = {text}")
    return "{ " + ", ".join(parts) + " }"


def router_toml(
    check: CheckSpec | None = LIVE_CHECK,
    *,
    retries: bool = False,
    max_fails: int = 0,
    backup: str | None = None,
    algorithm: str = "round_robin",
    outlier: Mapping[str, object] | None = None,
    slow_start: float | None = None,
    read_timeout: float = READ_TIMEOUT,
) -> str:
    """A router file: ``/api/`` to the ``api`` pool (api1..3), checked by ``check``.

    For the lesson, by default nothing else hides a broken backend: no
    retries (``next_upstream = ["off"]``) and no passive health
    (``max_fails = 0``). ``retries`` turns nginx's usual list on
    (``error timeout http_502 http_503 http_504``); ``backup`` names a
    server that takes requests only while no other is up. ``check`` None: no
    active checks. ``outlier``: Envoy's outlier detection on the pool's real
    requests (:class:`lbkit.health.OutlierConfig` fields); ``slow_start``:
    seconds of weight ramp after a backend comes back UP. Round robin, as
    the simulation, so each backend gets a third of the requests whatever
    their latency.
    """
    tries = '["error", "timeout", "http_502", "http_503", "http_504"]' if retries else '["off"]'
    servers = []
    for name, address in API_SERVERS:
        extra = f", max_fails = {max_fails}"
        if name == backup:
            extra += ", backup = true"
        servers.append(f'    {{ address = "{address}", name = "{name}"{extra} }},')
    if backup is not None and backup not in dict(API_SERVERS):
        raise ValueError(f"backup must be one of {', '.join(dict(API_SERVERS))}; got {backup!r}")
    health = "" if check is None else f"health_check = {check_toml(check)}\n"
    if outlier is not None:
        health += f"outlier = {_inline(outlier)}\n"
    if slow_start is not None:
        health += f"slow_start = {float(slow_start)!r}\n"
    what = "no active checks" if check is None else check.describe()
    return (
        f"# Chapter 5's router: the api pool, {what}.\n"
        f"# retries {'on' if retries else 'off'}, max_fails {max_fails}"
        f"{f', {backup} a backup' if backup else ''}.\n"
        f"[limits]\nproxy_connect_timeout = {read_timeout!r}\n"
        f"proxy_read_timeout = {read_timeout!r}\n\n"
        "[[server]]\n"
        "listen = [{ port = 80, default_server = true }]\n"
        'server_name = ["lb.example.com", "api.example.com", "10.0.1.3", "10.0.1.4"]\n\n'
        "[[server.route]]\n"
        'path = "/api/"\n'
        'pool = "api"\n'
        f"next_upstream = {tries}\n\n"
        "[pool.api]\n"
        f'algorithm = "{algorithm}"\n'
        f"{health}"
        "servers = [\n" + "\n".join(servers) + "\n]\n"
    )


def write_health_lab(folder: str | Path, router: str | None = None) -> Path:
    """Write a lab folder: ``layered.toml`` (a copy) and ``l7/router.toml``; its topology path.

    The albs of ``labs/layered.toml`` read ``l7/router.toml`` next to the
    topology file, so the copy serves ``router`` (default :func:`router_toml`)
    and nothing in ``labs/`` changes.
    """
    folder = Path(folder)
    (folder / "l7").mkdir(parents=True, exist_ok=True)
    (folder / "l7" / "router.toml").write_text(router if router is not None else router_toml())
    topology = folder / "layered.toml"
    topology.write_text((labs_dir() / "layered.toml").read_text())
    return topology


def router_path(lab: Lab) -> Path:
    """The router file the lab's albs serve."""
    return lab.topology_path.parent / "l7" / "router.toml"


# -------------------------------------------------------------- the lab's life
def health_lab(name: str = "health", provider: str = "auto", router: str | None = None) -> Lab:
    """The layered lab serving ``router`` on its albs, up, and taken down at exit.

    State in :func:`~lbkit.lab.notebook.notebook_state_dir` ``(name)``, the
    lab folder in its ``files`` subfolder; :func:`take_down` removes both.
    """
    from lbkit.lab import Lab

    state = notebook_state_dir(name)
    topology = write_health_lab(state / FILES, router)
    lab = Lab(topology, provider=provider, state_dir=state)
    atexit.register(take_down, lab)
    try:
        return lab.up()
    except BaseException:
        take_down(lab)
        raise


def take_down(lab: Lab) -> bool:
    """Take the lab down and remove its folder; True if anything was running. Idempotent."""
    found = lab.down()
    files = lab.topology_path.parent
    if files.name == FILES and files.parent == lab.state_dir:
        shutil.rmtree(files, ignore_errors=True)
    with contextlib.suppress(OSError):
        lab.state_dir.rmdir()
    return found


# ------------------------------------------------------------------ control calls
def wait_for(
    what: str, predicate: Callable[[], T], deadline: float = 10.0, poll: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise TimeoutError(f"timed out after {deadline:g} s waiting for {what}")
        time.sleep(poll)  # a poll interval: the condition decides, not the sleep


def alb_health(lab: Lab, host: str = "alb1") -> dict[str, Any]:
    """``host``'s health report (its control channel's ``health`` op)."""
    from lbkit.lab.control import send_control
    from lbkit.lab.errors import LabError

    reply = send_control(lab.control_path(host), {"op": "health"})
    if not reply.get("ok"):
        raise LabError(f"{host}: {reply.get('error', 'no health report')}")
    return reply


def backend_row(lab: Lab, backend: str = "api2", host: str = "alb1") -> dict[str, Any]:
    """What ``host`` knows of ``backend``: state, health, last transition, last result..."""
    return alb_health(lab, host)["backends"][backend]


def event_after(
    lab: Lab, backend: str, new: str, after: float, host: str = "alb1"
) -> dict[str, Any] | None:
    """``host``'s first transition of ``backend`` to ``new`` at or after epoch ``after``."""
    for event in alb_health(lab, host)["events"]:
        if (
            event["backend"] == backend
            and event["new"] == new
            and event["at"] >= after - CLOCK_SLACK
        ):
            return event
    return None


def requests_served(lab: Lab, host: str = "alb1") -> int:
    """How many requests ``host`` has received so far."""
    from .l7 import router_stats

    return int(router_stats(lab, host)["proxy"]["requests"])


def all_up(lab: Lab, hosts: Iterable[str] = ALBS) -> bool:
    """Whether every backend is up on every host, and checked up where checks run."""
    for host in hosts:
        for row in alb_health(lab, host)["backends"].values():
            if row["state"] != "up" or row.get("health") not in (None, "up"):
                return False
    return True


def use_router(
    lab: Lab, text: str, hosts: Sequence[str] = ALBS, deadline: float = 15.0
) -> dict[str, Any]:
    """Serve ``text`` on the albs (write, reload) and wait until every backend is up there.

    Returns ``hosts[0]``'s health report. A router that the albs refuse
    raises :class:`~lbkit.lab.errors.LabError` with their message.
    """
    from lbkit.lab.control import send_control
    from lbkit.lab.errors import LabError

    path = router_path(lab)
    if path.read_text() != text:
        path.write_text(text)
    for host in hosts:
        reply = send_control(lab.control_path(host), {"op": "reload"})
        if not reply.get("ok"):
            raise LabError(f"{host}: {reply.get('error', 'reload refused')}")
    wait_for("every backend up on the albs", lambda: all_up(lab, hosts), deadline)
    return alb_health(lab, hosts[0])


# ------------------------------------------------------------------------- traffic
class Row(NamedTuple):
    """One client request: epoch times sent and answered, status (None: no answer),
    the backend that answered (its ``X-Backend``), the client's error if any."""

    start: float
    end: float
    status: int | None
    backend: str | None
    error: str | None


#: The client, run inside the lab's ``client`` host: GET ``path`` over a new connection each,
#: request k due at ``k / rate`` s (rate 0: back to back), by ``workers`` threads, until
#: ``seconds``, ``count`` requests (0: no count) or the ``stop`` file; prints
#: ``[[start, end, status, backend, error], ...]`` as JSON.
LOAD_SCRIPT = r"""
import http.client, json, os, sys, threading, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rate, workers, seconds, stop = float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
timeout, count = float(sys.argv[8]), int(sys.argv[9])
t0 = time.monotonic()
lock = threading.Lock()
rows, next_slot = [], [0]

def due():
    with lock:
        k = next_slot[0]
        next_slot[0] += 1
    if count and k >= count:
        return t0 + seconds  # past the end: the worker stops
    return t0 + k / rate if rate else time.monotonic()

def work():
    while True:
        at = due()
        if at >= t0 + seconds:
            return
        wait = at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if os.path.exists(stop):
            return
        start = time.time()
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            answer = conn.getresponse()
            answer.read()
            row = [start, time.time(), answer.status, answer.getheader("X-Backend"), None]
        except Exception as e:
            row = [start, time.time(), None, None, type(e).__name__]
        finally:
            conn.close()
        with lock:
            rows.append(row)

threads = [threading.Thread(target=work) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(sorted(rows)))
"""


class Load:
    """:data:`LOAD_SCRIPT` running in the lab's ``client``, aimed at ``host``'s ``path``.

    ``rate`` requests per second (50: the simulation's default traffic; 0: as
    fast as the workers go), each on a new connection; ``workers`` threads, so
    that requests left hanging by a backend do not hold up the rest. It stops
    after ``seconds``, after ``count`` requests (0: no count) or at
    :meth:`finish` (``stop=False``: wait for the count or the time instead).
    """

    def __init__(
        self,
        lab: Lab,
        *,
        host: str = "alb1",
        path: str = "/api/x",
        rate: float = 50.0,
        workers: int = 48,
        seconds: float = 60.0,
        timeout: float = 5.0,
        count: int = 0,
    ) -> None:
        if not (rate >= 0 and workers >= 1 and seconds > 0 and timeout > 0 and count >= 0):
            raise ValueError("seconds and timeout must be > 0, rate and count >= 0, workers >= 1")
        self.stop_file = lab.state_dir / f"stop-load-{time.monotonic_ns()}"
        ip, port = lab.endpoint(host)
        args = [ip, port, path, rate, workers, seconds, self.stop_file, timeout, count]
        argv = [*lab.exec_prefix("client"), sys.executable, "-c", LOAD_SCRIPT, *map(str, args)]
        self.seconds = seconds
        self.timeout = timeout
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(self, stop: bool = True) -> list[Row]:
        """Stop the client (``stop=False``: let it end by its count or time) and return
        its rows, by start time."""
        if stop:
            self.stop_file.touch()
        try:
            out, err = self.proc.communicate(
                timeout=(0 if stop else self.seconds) + self.timeout + 10
            )
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.stop_file.unlink(missing_ok=True)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the load client failed: {err.strip()[-500:]}")
        return [Row(*row) for row in json.loads(out)]


# --------------------------------------------------------------------- one lesson
def _probe_fails(check: CheckSpec, mode: str) -> tuple[bool, str]:
    res = probe_outcome(check.type, mode, timeout=check.timeout, probe_time=0.0)
    return not res.ok, res.reason


def hangs(check: CheckSpec | None, mode: str) -> bool:
    """Whether ``check``'s probes of a backend in ``mode`` time out (rather than fail fast)."""
    if check is None:
        return False
    failed, reason = _probe_fails(check, mode)
    return failed and reason.startswith("timeout")


def detects(check: CheckSpec | None, mode: str) -> bool:
    """Whether ``check`` fails a backend in ``mode`` (so that it is marked DOWN in the end)."""
    return check is not None and _probe_fails(check, mode)[0]


def clients_fail(mode: str) -> bool:
    """Whether real requests to a backend in ``mode`` fail (a 5xx, a refusal, a hang)."""
    return request_outcome(mode, Traffic())[0] != "ok"


def expected_event(check: CheckSpec | None, mode: str, outlier: object = None) -> str | None:
    """The transition that takes a backend in ``mode`` out: ``down`` (the check sees it),
    ``ejected`` (outlier detection sees the clients' failures), or None (nothing does)."""
    if detects(check, mode):
        return "down"
    if outlier is not None and clients_fail(mode):
        return "ejected"
    return None


def status_text(status: int | None) -> str:
    return "no answer" if status is None else str(status)


@dataclass
class LiveRun:
    """A live lesson: ``backend`` switched to ``mode`` at epoch ``switched`` under load.

    ``rows``: every client request (before the switch too); ``event``:
    alb1's transition that took the backend out after the switch (``down``
    by a check, ``ejected`` by outlier detection; None: nothing noticed);
    ``row``: alb1's view of the backend when the run ended; ``window``:
    :func:`lbkit.health.predict_detection` for the check (None without one).
    """

    check: CheckSpec | None
    mode: str
    backend: str
    switched: float
    ended: float
    rows: list[Row]
    event: dict[str, Any] | None
    row: dict[str, Any]
    window: DelayWindow | None
    slack: float = CLOCK_SLACK

    @property
    def after(self) -> list[Row]:
        """The requests sent after the switch."""
        return [r for r in self.rows if r.start >= self.switched]

    @property
    def failed(self) -> list[Row]:
        """The requests sent after the switch that did not get a 200."""
        return [r for r in self.after if r.status != 200]

    @property
    def delay(self) -> float | None:
        """Seconds from the switch to alb1's transition (None: none came)."""
        return None if self.event is None else self.event["at"] - self.switched

    @property
    def before_out(self) -> list[Row]:
        """Requests sent from the switch until the transition (all of them, without one)."""
        if self.event is None:
            return self.after
        return [r for r in self.after if r.start <= self.event["at"] + self.slack]

    @property
    def after_out(self) -> list[Row]:
        """Requests sent after the transition (plus the clock slack)."""
        if self.event is None:
            return []
        return [r for r in self.after if r.start > self.event["at"] + self.slack]

    def statuses(self, rows: Iterable[Row] | None = None) -> dict[str, int]:
        """``{"200": n, "500": m, ...}`` of ``rows`` (default: those after the switch)."""
        counts = Counter(status_text(r.status) for r in (self.after if rows is None else rows))
        return dict(sorted(counts.items()))

    def answered_by(self, rows: Iterable[Row] | None = None) -> dict[str, int]:
        """Requests per answering backend (``"(none)"``: the router answered, or nobody)."""
        counts = Counter(r.backend or "(none)" for r in (self.after if rows is None else rows))
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """A few lines with this run's numbers (they vary from run to run)."""
        what = "no active check" if self.check is None else f"{self.check.type.upper()} check"
        seconds = self.ended - self.switched
        lines = [
            f"{what}, {self.backend} {self.mode}: {len(self.after)} requests in the "
            f"{seconds:.1f} s after the switch, {len(self.failed)} not 200 {self.statuses()}"
        ]
        if self.event is None:
            lines.append(
                f"  {self.backend} never taken out: alb1 holds it {self.row['state']}, "
                f"last check result: {self.row.get('result') or '(no checks)'}"
            )
        else:
            lines.append(f"  {self.delay:.2f} s after the switch: {self.event['message']}")
            if self.window is not None and self.event["new"] == "down":
                w = self.window
                lines.append(
                    f"  predicted: {w.low:.2f} .. {w.high:.2f} s after it (mean {w.mean:.2f} s)"
                )
            before = self.before_out
            lines.append(
                f"  before: {len(before)} requests, {sum(r.status != 200 for r in before)} "
                f"not 200; after: {len(self.after_out)} requests, "
                f"{sum(r.status != 200 for r in self.after_out)} not 200"
            )
        return "\n".join(lines)


def live_failure(
    lab: Lab,
    check: CheckSpec | None,
    mode: str,
    *,
    backend: str = "api2",
    outlier: Mapping[str, object] | None = None,
    rate: float = 50.0,
    linger: float = 1.5,
    deadline: float = 20.0,
    restore: bool = True,
) -> LiveRun:
    """One lesson: serve ``check``, load alb1, switch ``backend`` to ``mode``, count.

    The albs serve :func:`router_toml` ``(check, outlier=outlier)`` (retries
    and max_fails off) and every backend is up before the switch.
    Observation lasts the predicted worst-case detection time plus
    ``linger`` seconds and, when something should take the backend out
    (:func:`expected_event`), until ``linger`` seconds after alb1's
    transition, which must come within ``deadline`` s. Then the client stops
    and, with ``restore``, the backend is ``healthy`` again.
    """
    use_router(lab, router_toml(check, outlier=outlier))
    expect = expected_event(check, mode, outlier)
    window = None
    if check is not None:
        window = predict_detection(check.config(), timeouts=hangs(check, mode))
    observe = (window.high if window else 2.0) + linger
    load = Load(lab, rate=rate, seconds=deadline + observe + 10)
    event = None
    try:
        base = requests_served(lab)
        wait_for("the client's first requests", lambda: requests_served(lab) > base + 25)
        switched = time.time()
        lab.backend(backend, mode)
        end = switched + observe
        if expect is not None:
            event = wait_for(
                f"{backend} {expect.upper()} on alb1",
                lambda: event_after(lab, backend, expect, switched),
                deadline,
            )
            end = max(end, event["at"] + linger)
        wait_for("the end of the observation", lambda: time.time() >= end, observe + deadline)
        ended = time.time()
        row = backend_row(lab, backend)
    finally:
        rows = load.finish()
        if restore:
            lab.backend(backend, "healthy")
    return LiveRun(check, mode, backend, switched, ended, rows, event, row, window)


def probes_received(lab: Lab, backend: str = "api2", seconds: float = 3.0) -> tuple[float, int]:
    """``(seconds, requests)``: what ``backend``'s HTTP counter grew by in about ``seconds``
    with no client traffic (the albs' probes only, under HTTP checks)."""
    before = lab.backend(backend)["requests"]["http"]
    start = time.monotonic()
    wait_for("the counting time", lambda: time.monotonic() - start >= seconds, seconds + 5)
    after = lab.backend(backend)["requests"]["http"]
    return time.monotonic() - start, after - before


# ---------------------------------------------------------------------------- plot
#: Colors of the client's answers, by status.
STATUS_COLORS: dict[str, str] = {
    "200": "#2a9d8f",
    "500": "#e63946",
    "502": "#9d0208",
    "503": "#212529",
    "504": "#6a4c93",
    "no answer": "#f4a261",
}


def plot_live_runs(runs: Mapping[str, LiveRun], *, path: str | None = None) -> Figure:
    """Each client request of each run, by time since the switch and answering backend.

    One panel per run (labelled by its key): a tick per request, colored by
    its status (:data:`STATUS_COLORS`), in the row of the backend that
    answered (``(router)``: the balancer answered itself, or nobody did); a
    vertical line at alb1's transition, with its message; for a DOWN, the
    predicted window shaded.
    """
    from matplotlib.figure import Figure

    from .algorithms import _save

    lanes = [name for name, _ in API_SERVERS] + ["(router)"]
    fig = Figure(figsize=(11, 1.9 * len(runs) + 0.6), layout="constrained")
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, (label, run) in zip(axes, runs.items(), strict=True):
        y_of = {name: len(lanes) - 1 - k for k, name in enumerate(lanes)}
        rows = [r for r in run.rows if r.start >= run.switched - 0.5]
        by_status: dict[str, list[Row]] = {}
        for r in rows:
            by_status.setdefault(status_text(r.status), []).append(r)
        for status, group in sorted(by_status.items()):
            ax.plot(
                [r.start - run.switched for r in group],
                [y_of.get(r.backend or "(router)", 0) for r in group],
                linestyle="none",
                marker="|",
                markersize=9,
                color=STATUS_COLORS.get(status, "#adb5bd"),
                label=status,
                gid=f"requests:{status}",
            )
        ax.axvline(0, color="#6c757d", lw=1, linestyle=":", gid="switch")
        if run.window is not None and run.event is not None and run.event["new"] == "down":
            ax.axvspan(run.window.low, run.window.high, color="#dee2e6", zorder=0, gid="window")
        if run.event is not None:
            ax.axvline(run.delay, color="black", lw=1.2, gid="event")
            ax.annotate(
                run.event["message"],
                (run.delay, len(lanes) - 0.55),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
                va="center",
            )
        ax.set_yticks(list(y_of.values()), list(y_of))
        ax.set_ylim(-0.6, len(lanes) - 0.3)
        ax.set_xlim(-0.5, max(run.ended - run.switched, 1.0))
        ax.set_title(f"{label}: {len(run.failed)} of {len(run.after)} requests after the "
                     f"switch not 200", loc="left", fontsize=10)  # fmt: skip
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="status")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xlabel(f"seconds since {next(iter(runs.values())).backend} was switched")
    return _save(fig, path)
