"""lbkit.viz.health_lab: chapter 5's router files, lab folder, client, counts and the live lesson.

The pure parts run anywhere: the router file is read back by the router's own
TOML loader, the lab folder by the topology loader, and the paced client runs
against a small HTTP server on loopback. The lab test (netns, root) runs the
chapter's lesson once per check kind and asserts that the lab leaves nothing.
"""

from __future__ import annotations

import dataclasses
import http.server
import os
import threading
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

from lbkit.health import CheckSpec, OutlierConfig, predict_detection
from lbkit.l7.tomlconf import parse_router_toml
from lbkit.lab import load_topology
from lbkit.lab.notebook import labs_dir
from lbkit.viz.health_lab import (
    LIVE_CHECK,
    READ_TIMEOUT,
    LiveRun,
    Load,
    Row,
    expected_event,
    hangs,
    plot_live_runs,
    router_toml,
    wait_for,
    write_health_lab,
)

from ._procs import processes_mentioning

FAST = CheckSpec(type="http", interval=0.2, timeout=0.2, rise=2, fall=3, jitter=0.1)


def parsed(text: str):
    return parse_router_toml(tomllib.loads(text), "router.toml")


def test_router_file_is_the_lesson_pool_with_its_check():
    """The default file: /api/ to api1..3, round robin, LIVE_CHECK, no retries, max_fails 0."""
    config = parsed(router_toml())
    pool = config.upstreams["api"]
    assert pool.algorithm == "round_robin"
    assert pool.health_check == LIVE_CHECK
    assert [(s.name, s.address, s.max_fails) for s in pool.servers] == [
        ("api1", "10.0.1.10:80", 0),
        ("api2", "10.0.1.11:80", 0),
        ("api3", "10.0.1.12:80", 0),
    ]
    (route,) = config.servers[0].locations
    assert (route.pattern, route.next_upstream) == ("/api/", ["off"])
    assert config.limits.proxy_read_timeout == READ_TIMEOUT


def test_router_file_with_a_tcp_check():
    """type tcp: the pool's check is a TCP connect with the same timings."""
    tcp = dataclasses.replace(LIVE_CHECK, type="tcp")
    check = parsed(router_toml(tcp)).upstreams["api"].health_check
    assert check is not None and check.type == "tcp"
    assert (check.interval, check.timeout, check.rise, check.fall) == (1.0, 0.5, 2, 3)


def test_router_file_options_reach_the_router():
    """No check, retries, a backup, outlier detection and slow start, all read back."""
    text = router_toml(
        None,
        retries=True,
        backup="api3",
        outlier={"consecutive_5xx": 4, "failure_percentage_threshold": False},
        slow_start=5,
    )
    config = parsed(text)
    pool = config.upstreams["api"]
    assert pool.health_check is None
    assert [s.name for s in pool.servers if s.backup] == ["api3"]
    assert pool.outlier == OutlierConfig(consecutive_5xx=4, failure_percentage_threshold=None)
    assert pool.slow_start == 5.0
    assert "http_502" in config.servers[0].locations[0].next_upstream


def test_router_file_refuses_an_unknown_backup():
    """A backup that is not in the pool is a mistake, said at once."""
    with pytest.raises(ValueError, match="backup must be one of"):
        router_toml(backup="api9")


def test_lab_folder_is_the_layered_lab_serving_the_router(tmp_path):
    """The copy has every host of labs/layered.toml; both albs read its l7/router.toml."""
    text = router_toml(FAST)
    topology = load_topology(write_health_lab(tmp_path / "files", text))
    assert set(topology.hosts) == set(load_topology(labs_dir() / "layered.toml").hosts)
    router = tmp_path / "files" / "l7" / "router.toml"
    assert router.read_text() == text
    for alb in ("alb1", "alb2"):
        assert Path(topology.host(alb).router_path) == router


def test_expected_event_follows_the_probe_table():
    """Which transition a lesson waits for: a check that sees the mode, else outlier
    detection when clients fail, else none."""
    tcp = dataclasses.replace(LIVE_CHECK, type="tcp")
    outlier = {"consecutive_5xx": 5}
    assert expected_event(LIVE_CHECK, "error-500") == "down"
    assert expected_event(tcp, "error-500") is None
    assert expected_event(tcp, "refuse") == "down"
    assert expected_event(LIVE_CHECK, "healthz-500") == "down"
    assert expected_event(None, "error-500", outlier) == "ejected"
    assert expected_event(None, "healthz-500", outlier) is None
    assert hangs(LIVE_CHECK, "accept-no-answer") and not hangs(tcp, "accept-no-answer")
    assert not hangs(LIVE_CHECK, "error-500")


def canned_run() -> LiveRun:
    """api2 switched to error-500 at t=10 and marked DOWN at t=12; a request every 0.5 s."""
    rows = [
        Row(9.5, 9.51, 200, "api2", None),  # before the switch
        Row(10.0, 10.01, 200, "api1", None),
        Row(10.5, 10.51, 500, "api2", None),
        Row(11.0, 11.01, 200, "api3", None),
        Row(11.5, 11.51, 200, "api1", None),
        Row(12.0, 12.01, 500, "api2", None),  # at the DOWN, within the clock slack
        Row(12.2, 14.2, 504, None, None),  # the router answered
        Row(12.5, 12.51, 200, "api3", None),
        Row(13.0, 13.01, 200, "api1", None),
        Row(13.5, 13.51, 200, "api3", None),
        Row(14.0, 14.01, 200, "api1", None),
        Row(14.5, 14.51, 200, "api3", None),
    ]
    event = {
        "at": 12.0,
        "new": "down",
        "message": "api2 DOWN after 3 failures: HTTP 500 on /healthz",
    }
    window = predict_detection(LIVE_CHECK.config())
    return LiveRun(
        LIVE_CHECK, "error-500", "api2", 10.0, 14.5, rows, event, {"state": "down"}, window
    )


def test_live_run_counts_before_and_after_the_transition():
    """Rows are split at the switch and at the DOWN (plus the clock slack), and counted."""
    run = canned_run()
    assert run.after[0].start == 10.0
    assert len(run.after) == 11 and run.delay == pytest.approx(2.0)
    assert {r.status for r in run.before_out} == {200, 500}
    assert [r.start for r in run.after_out] == [12.2, 12.5, 13.0, 13.5, 14.0, 14.5]
    assert run.statuses() == {"200": 8, "500": 2, "504": 1}
    assert run.statuses(run.after_out) == {"200": 5, "504": 1}
    assert len(run.failed) == 3
    assert run.answered_by(run.after_out) == {"(none)": 1, "api1": 2, "api3": 3}
    text = run.summary()
    assert "2.00 s after the switch: api2 DOWN after 3 failures" in text
    assert "predicted: 1.80 .. 3.30 s" in text


def test_live_run_without_a_transition_counts_everything_as_before():
    """No event: every request after the switch is 'before', none 'after'; the summary says so."""
    run = dataclasses.replace(
        canned_run(), event=None, row={"state": "up", "result": "TCP connect ok"}
    )
    assert run.before_out == run.after and run.after_out == [] and run.delay is None
    assert "never taken out: alb1 holds it up, last check result: TCP connect ok" in run.summary()


def test_live_plot_draws_each_request_and_the_transition():
    """Ticks per status in each backend's row; the DOWN line at its delay; the window shaded."""
    run = canned_run()
    fig = plot_live_runs({"HTTP check": run})
    (ax,) = fig.axes
    ticks = {a.get_gid(): a for a in ax.get_lines() if (a.get_gid() or "").startswith("requests:")}
    assert set(ticks) == {"requests:200", "requests:500", "requests:504"}
    assert list(ticks["requests:500"].get_xdata()) == pytest.approx([0.5, 2.0])
    assert list(ticks["requests:500"].get_ydata()) == [2, 2]  # api2's row (api1 on top: 3)
    assert list(ticks["requests:504"].get_ydata()) == [0]  # the (router) row
    (event,) = [a for a in ax.get_lines() if a.get_gid() == "event"]
    assert list(event.get_xdata()) == pytest.approx([2.0, 2.0])
    assert [p.get_gid() for p in ax.patches] == ["window"]


class _Answer(http.server.BaseHTTPRequestHandler):
    """200 from 'api1', or 500 from 'api2' for paths under /bad; counts what it answered."""

    answered = 0

    def do_GET(self) -> None:
        bad = self.path.startswith("/bad")
        self.send_response(500 if bad else 200)
        self.send_header("X-Backend", "api2" if bad else "api1")
        self.send_header("Content-Length", "0")
        self.end_headers()
        type(self).answered += 1

    def log_message(self, *args: object) -> None:
        pass


class _StubLab:
    """What Load needs of a Lab: a state folder, a host prefix and an endpoint."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.state_dir = tmp
        self.port = port

    def exec_prefix(self, host: str) -> list[str]:
        return []

    def endpoint(self, host: str) -> tuple[str, int]:
        return "127.0.0.1", self.port


@pytest.fixture
def server():
    _Answer.answered = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_load_runs_until_its_time_is_up(tmp_path, server):
    """Left alone, the client stops after ``seconds``: 0.3 s at 50/s is 15 requests."""
    load = Load(_StubLab(tmp_path, server), path="/ok", rate=50, workers=2, seconds=0.3)
    load.proc.wait(timeout=20)
    rows = load.finish()
    assert len(rows) == 15 and {(r.status, r.backend, r.error) for r in rows} == {
        (200, "api1", None)
    }
    assert [r.start for r in rows] == sorted(r.start for r in rows)


def test_load_stops_at_finish_and_reports_each_request(tmp_path, server):
    """finish() stops a 30 s client early; every request it sent is a row (500s from api2)."""
    load = Load(_StubLab(tmp_path, server), path="/bad/x", rate=40, workers=4, seconds=30)
    wait_for("five answers", lambda: _Answer.answered >= 5, deadline=20)
    rows = load.finish()
    assert 5 <= len(rows) < 40 * 30
    assert len(rows) >= _Answer.answered - 4  # at most one request per worker in flight
    assert all(r.status == 500 and r.backend == "api2" for r in rows)
    assert not any(tmp_path.iterdir())  # the stop file is removed


@pytest.mark.skipif(
    not (hasattr(os, "geteuid") and os.geteuid() == 0), reason="network namespaces need root"
)
def test_the_lesson_live_and_the_lab_leaves_nothing(tmp_path, monkeypatch):
    """netns: a TCP check keeps api2 answering 500 in rotation; an HTTP check takes it out
    and no request fails after its DOWN; take_down removes namespaces, processes, files."""
    from lbkit.lab.providers.netns import list_namespaces
    from lbkit.viz.health_lab import health_lab, live_failure, take_down

    monkeypatch.setenv("LBKIT_STATE_ROOT", str(tmp_path))
    lab = health_lab("health-test", provider="netns", router=router_toml(FAST))
    try:
        tcp = live_failure(lab, dataclasses.replace(FAST, type="tcp"), "error-500", linger=0.5)
        assert tcp.event is None and tcp.row["result"] == "TCP connect ok"
        assert tcp.statuses().get("500", 0) >= 5
        run = live_failure(lab, FAST, "error-500", linger=0.5)
        assert run.event["message"] == "api2 DOWN after 3 failures: HTTP 500 on /healthz"
        assert any(r.status == 500 for r in run.before_out)
        assert run.after_out and all(r.status == 200 for r in run.after_out)
    finally:
        assert take_down(lab)
    assert [ns for ns in list_namespaces() if ns.startswith(f"{lab.prefix}-")] == []
    assert processes_mentioning(str(lab.state_dir)) == []
    assert not lab.state_dir.exists()
    assert not take_down(lab)  # twice is harmless
