"""A real capture: tcpdump in two network namespaces joined by a veth, merged into one timeline.

Traffic stays inside the two namespaces this file creates (10.99.0.0/24
exists only there); nothing is added to the root namespace.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import subprocess
import sys

import pytest

from lbkit.lab.capture import Capture
from lbkit.lab.capture_merge import handshake, merge_pcaps, read_pcap
from lbkit.lab.errors import LabError

A_IP, B_IP, PORT = "10.99.0.1", "10.99.0.2", 8080
needs_root_and_tcpdump = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("tcpdump") is None,
    reason="needs root (network namespaces) and tcpdump",
)

#: One-shot HTTP server: answers one request on B_IP:PORT, then exits.
SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{B_IP}", {PORT}))
s.listen(1)
print("ready", flush=True)
s.settimeout(20)
c, _ = s.accept()
c.settimeout(10)
data = b""
for _ in range(100):
    if b"\\r\\n\\r\\n" in data:
        break
    chunk = c.recv(4096)
    if not chunk:
        break
    data += chunk
c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
c.close()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


@pytest.fixture
def pair():
    """Namespaces a, b: eth0 10.99.0.1/24 and 10.99.0.2/24 on one veth; deleted afterwards."""
    base = f"lbkcap-{secrets.token_hex(3)}"
    a, b = f"{base}-a", f"{base}-b"
    created = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            created.append(ns)
        ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, addr in ((a, A_IP), (b, B_IP)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield a, b
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line ``proc`` prints, waiting at most ``timeout`` seconds."""
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().decode().strip() if readable else ""


def end(proc: subprocess.Popen) -> None:
    """Kill ``proc`` by its pid if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@needs_root_and_tcpdump
def test_http_request_seen_on_client_and_server(pair, tmp_path):
    """Both hosts record the S, S., . handshake and the HTTP GET of one curl request.

    Those are the first four packets on each side, so each tcpdump stops by itself after
    four (``count``): stopping it with a signal right after curl could lose packets it had
    not read yet, when the machine is busy."""
    a, b = pair
    server = subprocess.Popen([*in_ns(b), sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    try:
        assert read_line(server, 10) == "ready"
        hosts = {"client": in_ns(a), "api1": in_ns(b)}
        eth0 = {"client": "eth0", "api1": "eth0"}
        with Capture(hosts, tmp_path, interfaces=eth0, filter=f"tcp port {PORT}", count=4) as cap:
            url = f"http://{B_IP}:{PORT}/echo"
            curl = [*in_ns(a), "curl", "-sS", "--max-time", "5", url]
            reply = subprocess.run(curl, capture_output=True, timeout=15)
            assert reply.stdout == b"ok", reply.stderr
            paths = cap.wait(timeout=10)
        rows = merge_pcaps(paths)
    finally:
        end(server)
    assert handshake(rows, A_IP, B_IP, PORT) == {
        "client": ["S", "S.", "."],
        "api1": ["S", "S.", "."],
    }
    for host in ("client", "api1"):
        assert any(r.host == host and r.summary == "HTTP GET /echo" for r in rows), host


@needs_root_and_tcpdump
def test_wait_returns_once_count_packets_are_recorded(pair, tmp_path):
    """With count=3, wait() returns after three UDP datagrams and the file holds exactly them."""
    a, _ = pair
    send = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range(3):\n    s.sendto(b'x%d' % i, ('{B_IP}', 9999))\n"
    )
    with Capture({"client": in_ns(a)}, tmp_path, interfaces={"client": "eth0"}, count=3,
                 filter="udp port 9999") as cap:  # fmt: skip
        subprocess.run([*in_ns(a), sys.executable, "-c", send], check=True, timeout=15)
        paths = cap.wait(timeout=10)
    rows = read_pcap(paths["client"], "client")
    assert [(r.proto, r.dport, r.payload_len) for r in rows] == [("UDP", 9999, 2)] * 3


@needs_root_and_tcpdump
def test_capture_stops_its_tcpdump_when_the_block_raises(pair, tmp_path):
    """Leaving the with-block by an exception ends every tcpdump it started."""
    a, b = pair
    cap = Capture({"client": in_ns(a), "api1": in_ns(b)}, tmp_path, interfaces={"client": "eth0"})
    with pytest.raises(RuntimeError), cap:
        pids = cap.pids
        raise RuntimeError("boom")
    assert len(pids) == 2
    assert cap.running == []


def test_missing_tcpdump_is_a_one_line_lab_error(tmp_path):
    """A host without tcpdump: LabError naming the host and the package to install."""
    cap = Capture({"box": []}, tmp_path, tcpdump="lbkit-no-such-tcpdump")
    with pytest.raises(LabError) as err:
        cap.start()
    message = str(err.value)
    assert "box" in message and "'tcpdump' package" in message and "\n" not in message


@needs_root_and_tcpdump
def test_missing_tcpdump_in_a_namespace_is_reported_the_same(pair, tmp_path):
    """`ip netns exec` failing to exec tcpdump gives the same one-line LabError."""
    a, _ = pair
    cap = Capture({"client": in_ns(a)}, tmp_path, tcpdump="lbkit-no-such-tcpdump")
    with pytest.raises(LabError, match="capture on client: tcpdump is not installed"):
        cap.start()


@needs_root_and_tcpdump
def test_tcpdump_exiting_early_names_host_and_reason(pair, tmp_path):
    """An unknown interface makes tcpdump exit; the error names the host and tcpdump's reason."""
    a, _ = pair
    cap = Capture({"client": in_ns(a)}, tmp_path, interfaces={"client": "eth9"})
    with pytest.raises(LabError, match="capture on client: tcpdump exited before listening"):
        cap.start()


@needs_root_and_tcpdump
def test_failed_start_stops_the_tcpdumps_already_listening(pair, tmp_path):
    """When one host's tcpdump fails, start() ends the others before raising."""
    a, b = pair
    cap = Capture(
        {"client": in_ns(a), "api1": in_ns(b)},
        tmp_path,
        interfaces={"client": "eth0", "api1": "eth9"},
    )
    with pytest.raises(LabError, match="capture on api1"):
        cap.start()
    assert cap.pids.keys() == {"client", "api1"}
    assert cap.running == []
