"""The lab on network namespaces: reachability, modes, captures, and leaving nothing behind.

These need root (CI is root). Each lab lives under a temporary state
directory, so its namespace prefix is its own and never collides with a
learner's running lab.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lbkit._proc import alive
from lbkit.lab import Lab, LabError
from lbkit.lab.capture_merge import handshake, merge_pcaps
from lbkit.lab.providers.netns import list_namespaces
from lbkit.lab.state import LabState

from ._procs import processes_mentioning

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="network namespaces need root"
)
BACKENDS = {"api1": "10.0.1.10", "api2": "10.0.1.11", "api3": "10.0.1.12"}


def curl(lab: Lab, url: str, *extra: str) -> subprocess.CompletedProcess:
    return lab.exec("client", ["curl", "-s", "-m", "5", *extra, url], timeout=15)


def leftovers(lab: Lab) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(f"{lab.prefix}-")]


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    lab = Lab("labs/basic.toml", provider="netns", state_dir=tmp_path_factory.mktemp("basic"))
    try:
        yield lab.up()
    finally:
        lab.down()
    assert leftovers(lab) == []


def test_client_reaches_every_backend_by_address(basic):
    """curl from the client to 10.0.1.10-12 gets each backend's own name."""
    for name, ip in BACKENDS.items():
        assert curl(basic, f"http://{ip}/").stdout == f"{name}\n"
        assert curl(basic, f"http://{ip}:3000/healthz").stdout == "ok\n"


def test_root_namespace_gets_no_lab_address_or_route(basic):
    """While the lab runs, the root namespace has no 10.0.1.x address or route."""
    addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert "10.0.1." not in addrs and "10.0.1." not in routes


def test_backend_modes_are_seen_from_the_client(basic):
    """Each mode switched through the control socket shows at the client, then healthy again."""
    url = "http://10.0.1.11/"
    try:
        basic.backend("api2", "error-500")
        assert curl(basic, url, "-o", "/dev/null", "-w", "%{http_code}").stdout == "500"
        basic.backend("api2", "healthz-500")
        assert curl(basic, url + "healthz", "-o", "/dev/null", "-w", "%{http_code}").stdout == "500"
        assert curl(basic, url).stdout == "api2\n"
        basic.backend("api2", "refuse")
        assert curl(basic, url).returncode == 7  # curl: failed to connect
        basic.backend("api2", "accept-no-answer")
        assert basic.exec("client", ["curl", "-s", "-m", "1", url]).returncode == 28  # timeout
        basic.backend("api2", "slow", slow_delay=3.0)
        assert basic.exec("client", ["curl", "-s", "-m", "1", url]).returncode == 28
    finally:
        basic.backend("api2", "healthy")
    assert curl(basic, url).stdout == "api2\n"


def test_a_stopped_host_is_refused_and_starts_again(basic):
    """lab.stop kills api3's process (a crash): the client is refused, the lab reports it not
    running; lab.start brings it back, answering as before, under a new pid."""
    url = "http://10.0.1.12/"
    old_pid = LabState.load(basic.state_dir).processes["api3"]
    try:
        assert basic.stop("api3") is True
        assert curl(basic, url).returncode == 7  # connection refused
        row = next(h for h in basic.status()["hosts"] if h["name"] == "api3")
        assert row["running"] is False
        assert basic.stop("api3") is False  # already stopped
    finally:
        basic.start("api3")
    assert curl(basic, url).stdout == "api3\n"
    assert LabState.load(basic.state_dir).processes["api3"] != old_pid
    assert not alive(old_pid)
    with pytest.raises(LabError, match="no host named 'nope'"):
        basic.stop("nope")


def test_merged_capture_shows_the_handshake_from_both_sides(basic, tmp_path):
    """Client and api1 both record SYN, SYN-ACK, ACK of one curl, merged in time order."""
    with basic.capture(["client", "api1"], tmp_path, filter="tcp port 80") as cap:
        assert curl(basic, "http://10.0.1.10/").stdout == "api1\n"
    rows = merge_pcaps(cap.paths)
    seen = handshake(rows, "10.0.1.2", "10.0.1.10", 80)
    assert seen["client"] == ["S", "S.", "."]
    assert seen["api1"] == ["S", "S.", "."]
    assert [r.time for r in rows] == sorted(r.time for r in rows)


def test_forward_reaches_a_backend_from_this_machine(basic):
    """lab.forward gives a 127.0.0.1 URL that reaches api2 through the client host."""
    url, pid = basic.forward("api2")
    assert url.startswith("http://127.0.0.1:") and pid > 0
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.read() == b"api2\n"


def test_up_again_is_a_no_op(basic):
    """A second up on a running lab keeps the same host processes."""
    before = LabState.load(basic.state_dir).processes
    basic.up()
    assert LabState.load(basic.state_dir).processes == before


def test_layered_client_reaches_every_backend_through_the_nlb(tmp_path):
    """In the layered lab the client (public segment) reaches every VPC host by address."""
    lab = Lab("labs/layered.toml", provider="netns", state_dir=tmp_path / "layered")
    try:
        lab.up()
        for host in lab.topology.by_role("backend"):
            assert curl(lab, f"http://{host.ip}/").stdout == f"{host.name}\n"
        assert "placeholder" in curl(lab, "http://198.51.100.10/").stdout
        assert curl(lab, "http://10.0.1.3/").stdout in ("static1\n", "static2\n")  # alb1 routes
    finally:
        lab.down()
    assert leftovers(lab) == []


def test_down_after_sigkill_during_up_leaves_nothing(tmp_path):
    """SIGKILL `lab up` once it has made namespaces and hosts; `down` removes them all."""
    state_dir = tmp_path / "killed"
    up = subprocess.Popen(
        [sys.executable, "-m", "lbkit", "lab", "up", "labs/layered.toml", "--state-dir",
         str(state_dir), "--provider", "netns"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    lab = Lab("labs/layered.toml", provider="netns", state_dir=state_dir)
    try:
        deadline = time.monotonic() + 30
        state = None
        while time.monotonic() < deadline:
            state = LabState.load(state_dir)
            if state and len(state.processes) >= 2:
                break
            time.sleep(0.005)
        up.send_signal(signal.SIGKILL)
        up.wait()
        assert state is not None and len(state.processes) >= 2 and not state.complete
        assert leftovers(lab)  # there is something to clean up
    finally:
        if up.poll() is None:
            up.kill()
        lab.down()
    assert leftovers(lab) == []
    assert processes_mentioning(str(state_dir)) == []


def test_failed_up_removes_what_it_built(tmp_path):
    """A host that cannot start: up raises naming it, and no namespace is left."""
    bad = tmp_path / "bad.toml"
    text = Path("labs/basic.toml").read_text()
    bad.write_text(text.replace('addresses = ["10.0.1.11"]', 'addresses = ["10.0.1.11"]\n'
                                '[hosts.api2.options]\nmode = "sleepy"'))  # fmt: skip
    lab = Lab(bad, provider="netns", state_dir=tmp_path / "state")
    with pytest.raises(LabError, match="api2"):
        lab.up()
    assert leftovers(lab) == []
    assert processes_mentioning(str(tmp_path / "state")) == []


def test_netns_without_root_says_which_provider_to_use(tmp_path):
    """As an unprivileged user, --provider netns fails in one line naming --provider local."""
    proc = subprocess.run(
        ["unshare", "--user", sys.executable, "-m", "lbkit", "lab", "up", "labs/basic.toml",
         "--provider", "netns", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--provider local" in proc.stderr


LOCAL_SCRIPT = """
import os, sys, urllib.request
from lbkit.lab import Lab
assert os.geteuid() != 0
lab = Lab("labs/basic.toml", state_dir=sys.argv[1])
assert lab.provider == "local", lab.provider
try:
    lab.up()
    for name in ("api1", "api2", "api3"):
        body = urllib.request.urlopen(lab.url(name), timeout=5).read().decode()
        assert body == name + "\\n", (name, body)
    print("reached", lab.url("api1"), lab.url("api2"), lab.url("api3"))
finally:
    lab.down()
"""


def test_local_provider_as_an_unprivileged_user(tmp_path):
    """Without root (unshare --user), auto picks local and every backend answers on loopback."""
    proc = subprocess.run(
        ["unshare", "--user", sys.executable, "-c", LOCAL_SCRIPT, str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reached http://127.0.1.3:8080/" in proc.stdout
    assert processes_mentioning(str(tmp_path / "state")) == []
