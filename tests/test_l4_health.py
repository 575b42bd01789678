"""Health checks in the L4 tier: config, the adapter's logic with fake probes, and the lab.

Unit tests drive :class:`lbkit.l4.health.L4Health` (and the forwarder's
engines without their sockets) with recorded results or scripted probes.
The lab tests (netns, root) run ``labs/l4.toml`` with a health check and
switch api2's behaviour; every wait polls a condition (the ``health``
control op) with a generous deadline, and no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lbkit.health import ProbeResult
from lbkit.l4 import nft
from lbkit.l4.admin import _Collector, handle_admin
from lbkit.l4.config import from_cli, from_topology
from lbkit.l4.forwarder import Forwarder
from lbkit.l4.health import L4Health, make_probe, plan_checks
from lbkit.l4.labtopo import VIP, l4_topology_data, write_l4_topology
from lbkit.l4.proxy import L4Proxy, proxy_health
from lbkit.lab import Lab, LabError, parse_topology
from lbkit.lab.control import send_control
from lbkit.lab.roles.http_server import Request

SELF_IP, SELF_MAC, CLIENT_MAC = "10.0.1.2", "02:00:00:00:00:02", "02:00:00:00:00:64"
API = {"api1": "10.0.1.10", "api2": "10.0.1.11", "api3": "10.0.1.12"}
MACS = {ip: f"02:00:00:00:01:{ip.rsplit('.', 1)[1]}" for ip in API.values()}
FAST = {"type": "http", "interval": 0.2, "timeout": 0.5, "fall": 2, "rise": 2}
TCP_FAST = {**FAST, "type": "tcp"}
DEADLINE = 10.0  # seconds any asyncio scenario may run


def topology(health: object | None = None, engine: str = "fast", source: str = "l4.toml"):
    """labs/l4.toml (its nat variant for ``engine``) with ``health`` as the lb's option."""
    return parse_topology(l4_topology_data("nat", engine, health), source=source)


def config(health: object | None = FAST, engine: str = "fast"):
    topo = topology(health, engine)
    return from_topology(topo, topo.host("lb"))


def forwarder(health: object | None = FAST) -> Forwarder:
    """A fast-engine forwarder with its core built and neighbours known, no socket."""
    fwd = Forwarder(config(health))
    fwd.lb = fwd._make_balancer(SELF_IP, SELF_MAC)
    for ip, mac in MACS.items():
        fwd.lb.learn(ip, mac)
    return fwd


def syn(sport: int) -> bytes:
    frame = (
        Ether(src=CLIENT_MAC, dst=SELF_MAC)
        / IP(src="10.0.1.100", dst=VIP)
        / TCP(sport=sport, dport=80, flags="S")
    )
    return bytes(frame)


def backend_of(out: list[bytes]) -> str:
    ip = Ether(out[0])[IP].dst
    return next(name for name, a in API.items() if a == ip)


def fail(fwd: Forwarder, key: str, times: int, reason: str = "HTTP 500 on /healthz") -> None:
    for _ in range(times):
        fwd.health.checker.record(key, False, reason, time.monotonic())


def succeed(fwd: Forwarder, key: str, times: int) -> None:
    for _ in range(times):
        fwd.health.checker.record(key, True, "HTTP 200 on /healthz", time.monotonic())


def get(path: str) -> Request:
    return Request("GET", path, "1.1", [], 0, False, ("127.0.0.1", 40000), ("127.0.0.1", 9100))


def metrics(fwd: Forwarder) -> str:
    registry = CollectorRegistry()
    registry.register(_Collector(fwd))
    return handle_admin(fwd, get("/metrics"), registry)[2].decode()


# ----------------------------------------------------------------- config


def test_topology_health_table_becomes_a_spec():
    """``health = { type = "http", interval = 0.2, ... }`` is read with the defaults filled in."""
    cfg = config({"type": "http", "interval": 0.2, "fall": 2})
    h = cfg.health
    assert (h.type, h.path, h.expect, h.interval, h.fall, h.rise) == (
        "http", "/healthz", "200-399", 0.2, 2, 2,
    )  # fmt: skip


def test_no_health_option_means_no_checks():
    """Without ``health`` nothing is probed: the checker only holds the operator's choice."""
    cfg = config(None)
    assert cfg.health is None
    assert not Forwarder(cfg).health.enabled


@pytest.mark.parametrize(
    ("health", "message"),
    [
        ({"type": "udp"}, r"options\.health\.type: expected tcp or http, got 'udp'"),
        ({"type": "tcp", "body": "ok"}, r"options\.health\.body: only for type http"),
        ({"type": "tcp", "path": "/x"}, r"options\.health\.path: only for type http"),
        ({"type": "http", "intervall": 1}, r"options\.health\.intervall: unknown key"),
        ({"type": "http", "interval": 0}, r"options\.health\.interval: expected seconds > 0"),
        ({"type": "http", "fall": 0}, r"options\.health\.fall: expected a whole number >= 1"),
        ({"type": "http", "rise": 1.5}, r"options\.health\.rise: expected a whole number"),
        ({"type": "http", "expect": "200-999"}, r"options\.health\.expect: bad status range"),
        ({"type": "http", "port": 0}, r"options\.health\.port: port 0 is out of range"),
        ({"type": "http", "jitter": 1.0}, r"options\.health\.jitter: expected a fraction"),
        (["tcp"], r"options\.health: expected a table"),
        ("ping", r"options\.health: 'ping' is not tcp, http or http:/PATH"),
    ],
)
def test_health_option_mistakes_name_file_and_key(health, message):
    """Each mistake is one line naming the file and the key."""
    topo = topology(health, source="labs/mine.toml")
    with pytest.raises(LabError, match=r"^labs/mine\.toml: hosts\.lb\." + message) as err:
        from_topology(topo, topo.host("lb"))
    assert "\n" not in str(err.value)


def test_topology_udp_only_backend_needs_a_port_to_check():
    """A backend in a UDP service only: the error names ``health.port``."""
    data = l4_topology_data("nat", "fast", {"type": "tcp"})
    data["hosts"]["lb"]["options"]["services"] = [{"port": 7, "proto": "udp", "backends": ["api1"]}]
    topo = parse_topology(data, source="labs/mine.toml")
    with pytest.raises(LabError, match=r"options\.health\.port: backend api1 serves only udp"):
        from_topology(topo, topo.host("lb"))
    data["hosts"]["lb"]["options"]["health"] = {"type": "tcp", "port": 80}
    topo = parse_topology(data, source="labs/mine.toml")
    assert from_topology(topo, topo.host("lb")).health.port == 80


def test_topology_health_table_without_type_is_an_http_check():
    """``type`` defaults to http, as in an L7 pool's ``health_check``."""
    h = config({"interval": 1}).health
    assert (h.type, h.path, h.interval) == ("http", "/healthz", 1.0)


def test_topology_health_body_is_matched_by_the_probe():
    """``body = "ok"`` reaches the box's http probe: a 200 without that text fails."""
    spec = config({"type": "http", "body": "ok"}).health

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ndegraded")
        await writer.drain()
        writer.close()

    async def main():
        async with await asyncio.start_server(answer, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            return await make_probe(spec, "127.0.0.1", port)(1.0)

    result = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert (result.ok, result.reason) == (False, "body did not match 'ok'")


def test_health_shorthand_string():
    """``health = "http:/ready"`` is an http check of /ready with the defaults."""
    h = config("http:/ready").health
    assert (h.type, h.path, h.interval, h.fall) == ("http", "/ready", 2.0, 3)


def test_cli_health_flags():
    """``--health http:/ready --health-interval 0.5 --health-fall 2`` builds the same spec."""
    cfg = from_cli(
        "eth0", ["10.0.1.200:80"], ["10.0.1.10"],
        health={"type": "http:/ready", "interval": 0.5, "fall": 2},
    )  # fmt: skip
    assert (cfg.health.type, cfg.health.path, cfg.health.interval, cfg.health.fall) == (
        "http", "/ready", 0.5, 2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"fall": 2}, r"^--health-fall: needs --health"),
        ({"type": "tcp:/x"}, r"^--health: a path goes with http only"),
        ({"type": "http", "interval": -1.0}, r"^--health-interval: expected seconds > 0"),
        ({"type": "tcp", "body": "ok"}, r"^--health-body: only for type http"),
        ({"type": "http:healthz"}, r"^--health: expected a path like /healthz"),
    ],
)
def test_cli_health_mistakes_name_the_flag(flags, message):
    """Each mistake in the --health flags names the flag."""
    with pytest.raises(LabError, match=message):
        from_cli("eth0", ["10.0.1.200:80"], ["10.0.1.10"], health=flags)


def test_cli_udp_only_service_needs_a_port_to_check():
    """A UDP-only box cannot probe its port with tcp or http: --health-port is asked for."""
    with pytest.raises(LabError, match=r"^--health-port: backend 10.0.1.10 serves only udp"):
        from_cli("eth0", ["10.0.1.200:7/udp"], ["10.0.1.10"], health={"type": "tcp"})


def test_lbkit_l4_help_lists_the_health_flags():
    """`lbkit l4 --help` has a health checks group with every flag."""
    out = subprocess.run(
        [sys.executable, "-m", "lbkit", "l4", "--help"], capture_output=True, text=True
    ).stdout
    for flag in ("--health tcp|http[:PATH]", "--health-interval", "--health-timeout",
                 "--health-rise", "--health-fall", "--health-port", "--health-body"):  # fmt: skip
        assert flag in out


# ------------------------------------------------------------------ plan


def test_one_check_per_backend_address_and_port():
    """labs/l4.toml: one check per backend on its TCP port; the UDP service follows it."""
    checks = plan_checks(config().services, config().health)
    assert [(c.key, c.ip, c.port, c.services) for c in checks] == [
        (name, ip, 80, (("tcp", 80), ("udp", 7))) for name, ip in API.items()
    ]


def test_a_backend_on_two_ports_gets_two_checks():
    """Two TCP services on different backend ports: two checks, keyed ``name:port``."""
    cfg = from_cli(
        "eth0", ["10.0.1.200:80", "10.0.1.200:81"], ["10.0.1.10"], health={"type": "tcp"}
    )
    assert [(c.key, c.port, c.services) for c in plan_checks(cfg.services, cfg.health)] == [
        ("10.0.1.10:80", 80, (("tcp", 80),)),
        ("10.0.1.10:81", 81, (("tcp", 81),)),
    ]


def test_probes_aim_at_each_backends_own_address(monkeypatch):
    """The probes go to 10.0.1.x:80 from the box, never to the VIP."""
    aimed = []
    monkeypatch.setattr(
        "lbkit.l4.health.http_check", lambda ip, port, path, **kw: aimed.append((ip, port, path))
    )
    L4Health(config().services, config().health, lambda check, state: None)
    assert aimed == [(ip, 80, "/healthz") for ip in API.values()]
    assert all(ip != VIP for ip, _, _ in aimed)


# ------------------------------------------------------- adapter, recorded


def test_down_reaches_every_service_of_the_backend():
    """``fall`` failures: api2 is down in the TCP and the UDP service's balancer."""
    fwd = forwarder()
    succeed(fwd, "api2", 1)  # unknown -> up
    assert [p.balancer.state("api2") for p in fwd.lb._pools.values()] == ["up", "up"]
    fail(fwd, "api2", 2)
    assert [p.balancer.state("api2") for p in fwd.lb._pools.values()] == ["down", "down"]
    report = fwd.stats()["health"]
    assert report["backends"]["api2"]["state"] == "down"
    assert report["backends"]["api2"]["last"] == "api2 DOWN after 2 failures: HTTP 500 on /healthz"
    assert report["events"][-1]["message"] == "api2 DOWN after 2 failures: HTTP 500 on /healthz"


def test_new_flows_avoid_a_down_backend_and_its_old_flows_are_repicked():
    """After api2 goes down no new SYN goes to it, and a flow it had moves on its next packet."""
    fwd = forwarder()
    first = {
        sport: backend_of(fwd.lb.handle_bytes(syn(sport), 1.0)) for sport in range(40000, 40060)
    }
    on_api2 = next(s for s, name in first.items() if name == "api2")
    fail(fwd, "api2", 1)
    picked = Counter(backend_of(fwd.lb.handle_bytes(syn(s), 2.0)) for s in range(41000, 41060))
    assert picked["api2"] == 0 and sum(picked.values()) == 60
    assert backend_of(fwd.lb.handle_bytes(syn(on_api2), 3.0)) != "api2"
    assert fwd.lb.counters["conntrack:repicked"] == 1


def test_operator_drain_combines_with_the_checks():
    """drain + healthy = drain; drain + failed = down; recovered = drain; operator up = up."""
    fwd = forwarder()
    succeed(fwd, "api2", 1)
    fwd.set_backend("api2", "drain")
    state = lambda: fwd.lb._pools[(6, VIP, 80)].balancer.state("api2")  # noqa: E731
    assert state() == "drain"
    fail(fwd, "api2", 2)
    assert state() == "down"
    succeed(fwd, "api2", 2)
    assert state() == "drain"
    fwd.set_backend("api2", "up")
    assert state() == "up"
    messages = [e["message"] for e in fwd.stats()["health"]["events"]]
    assert messages[-4:] == [
        "api2 DRAIN (operator)",
        "api2 DOWN after 2 failures: HTTP 500 on /healthz",
        "api2 UP after 2 successes",
        "api2 READY (operator)",
    ]


def test_operator_down_without_checks_is_todays_behaviour():
    """No health option: POST state=down takes the backend out; state=up puts it back."""
    fwd = forwarder(None)
    fwd.set_backend("api2", "down")
    assert {p.balancer.state("api2") for p in fwd.lb._pools.values()} == {"down"}
    fwd.set_backend("api2", "up")
    assert {p.balancer.state("api2") for p in fwd.lb._pools.values()} == {"up"}
    assert "lbkit_l4_backend_up" not in metrics(fwd)


def test_no_backend_up_drops_new_flows_and_counts_them():
    """All three down: a SYN is dropped, counted in no_backend_drops and in /metrics."""
    fwd = forwarder()
    for name in API:
        fail(fwd, name, 1)
    assert fwd.lb.handle_bytes(syn(40000), 1.0) == []
    assert fwd.lb.handle_bytes(syn(40001), 1.0) == []
    assert fwd.stats()["no_backend_drops"] == 2
    text = metrics(fwd)
    assert "lbkit_l4_no_backend_drops_total 2.0" in text
    assert 'lbkit_l4_backend_up{backend="api2"} 0.0' in text
    assert 'lbkit_l4_health_transitions_total{backend="api2",to="down"} 1.0' in text


def test_admin_health_endpoint_and_control_op():
    """GET /health and the control op ``health`` answer the same backends and events."""
    from lbkit.l4.admin import handle_control

    fwd = forwarder()
    fail(fwd, "api3", 1, "connection refused")
    answer = handle_admin(fwd, get("/health"), CollectorRegistry())
    http = json.loads(answer[2])
    control = asyncio.run(handle_control(fwd, {"op": "health"}))
    assert control["ok"] is True
    for doc in (http, control):
        row = doc["backends"]["api3"]
        assert (row["state"], row["last"]) == (
            "down",
            "api3 DOWN after 1 failure: connection refused",
        )
        assert isinstance(row["since"], float)
        assert doc["events"][-1]["message"] == row["last"] and "at" in doc["events"][-1]


def test_an_engine_that_fails_to_apply_does_not_stop_the_checks():
    """An exception from the engine is kept in apply_error; the checker goes on."""

    def broken(check, state):
        raise RuntimeError("engine gone")

    health = L4Health(config().services, config().health, broken)
    health.checker.record("api2", False, "HTTP 500 on /healthz", 1.0)  # unknown -> down
    assert health.apply_error == "api2 down: engine gone"
    assert health.checker.state("api2") == "down"


# --------------------------------------------------------- adapter, looped


def run(coro) -> object:
    async def bounded():
        async with asyncio.timeout(DEADLINE):
            return await coro

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def test_the_check_loop_with_fake_probes_moves_the_balancer():
    """Scripted probes: api2 fails -> down in the core; passes again -> up (the real loop)."""
    fwd = forwarder({"type": "http", "interval": 0.01, "fall": 2, "rise": 2})
    verdict = {name: ProbeResult(True, "HTTP 200 on /healthz", 0.0) for name in API}

    def probe(name):
        async def check(timeout: float) -> ProbeResult:
            return verdict[name]

        return check

    fwd.health.probes = {name: probe(name) for name in API}
    state = lambda: fwd.lb._pools[(6, VIP, 80)].balancer.state("api2")  # noqa: E731

    async def scenario():
        async with fwd.health.running():
            await until(lambda: fwd.health.results["api2"] >= 1)
            verdict["api2"] = ProbeResult(False, "HTTP 500 on /healthz", 0.0)
            await until(lambda: state() == "down")
            verdict["api2"] = ProbeResult(True, "HTTP 200 on /healthz", 0.0)
            await until(lambda: state() == "up")

    run(scenario())
    messages = [t.message for t in fwd.health.checker.events if t.backend == "api2"]
    assert messages[-2:] == [
        "api2 DOWN after 2 failures: HTTP 500 on /healthz",
        "api2 UP after 2 successes",
    ]


# ------------------------------------------------------------- nftables


def test_nftables_state_change_rewrites_the_map_in_one_script(monkeypatch):
    """api2 down: one ``nft -f`` script replaces the table, the maps without api2."""
    scripts: list[str] = []
    monkeypatch.setattr(
        nft, "apply", lambda script, netns=None, check=False: scripts.append(script)
    )
    monkeypatch.setattr(nft, "counters", lambda table, netns=None: {})
    fwd = Forwarder(config(FAST, engine="nftables"))
    fwd._apply_nat()
    fail(fwd, "api2", 1)
    assert len(scripts) == 2
    script = scripts[-1]
    assert script.count("table ip lbkit_l4\ndelete table ip lbkit_l4\n") == 1  # atomic replace
    assert "10.0.1.11" not in script
    assert "mod 2 map { 0 : 10.0.1.10 . 80, 1 : 10.0.1.12 . 80 }" in script
    assert fwd.stats()["down"] == ["api2"]


def test_nftables_with_no_backend_drops_and_carries_the_count(monkeypatch):
    """All down: the service rule drops; its count survives the next table reload."""
    scripts: list[str] = []
    tables = [{"10.0.1.200:80/tcp": {"packets": 0, "bytes": 0}}]
    monkeypatch.setattr(
        nft, "apply", lambda script, netns=None, check=False: scripts.append(script)
    )
    monkeypatch.setattr(nft, "counters", lambda table, netns=None: tables[-1])
    fwd = Forwarder(config(FAST, engine="nftables"))
    fwd._apply_nat()
    for name in API:
        fail(fwd, name, 1)
    rule = 'ip daddr 10.0.1.200 tcp dport 80 ct state new counter drop comment "10.0.1.200:80/tcp"'
    assert rule in scripts[-1]
    tables.append({"10.0.1.200:80/tcp": {"packets": 3, "bytes": 180}})  # three SYNs dropped
    assert fwd.stats()["no_backend_drops"] == 3
    succeed(fwd, "api1", 2)  # back: the table is replaced, its counters start again
    tables.append({"10.0.1.200:80/tcp": {"packets": 0, "bytes": 0}})
    assert "dnat" in scripts[-1]
    stats = fwd.stats()
    assert stats["no_backend_drops"] == 3 and stats["nft"]["10.0.1.200:80/tcp"]["packets"] == 3


def test_render_nat_drop_unserved_is_valid_for_nft(tmp_path):
    """The drop rule of a service without backends passes ``nft -c`` (when nft is here)."""
    import shutil

    script = nft.render_nat("lbnat", [nft.NftService(VIP, 80, "tcp", [])], drop_unserved=True)
    assert 'ct state new counter drop comment "10.0.1.200:80/tcp"' in script
    if shutil.which("nft") is None or os.geteuid() != 0:
        pytest.skip("nft -c needs nft and root")
    nft.apply(script, check=True)


# ------------------------------------------------------------------ proxy


def test_proxy_health_moves_the_proxies_balancers():
    """Local provider: a check's verdict reaches the TCP and the UDP proxy of that backend."""
    cfg = config()
    proxies = [
        L4Proxy(VIP, s.port, s.proto, [(b.name, "127.0.1.9", 9000) for b in s.backends])
        for s in cfg.services
    ]
    endpoints = {(ip, 80): ("127.0.1.9", 8080) for ip in API.values()}
    health = proxy_health(cfg, proxies, endpoints, on_event=None)
    health.checker.record("api2", False, "connection refused", 1.0)
    assert [p.balancer.state("api2") for p in proxies] == ["down", "down"]
    assert [p.balancer.state("api1") for p in proxies] == ["up", "up"]


def test_proxy_health_needs_a_service_on_the_checked_port():
    """A health.port no backend serves under the local provider is a one-line error."""
    cfg = config({"type": "tcp", "port": 9999})
    with pytest.raises(LabError, match=r"^health\.port: api1 has no TCP service on port 9999"):
        proxy_health(cfg, [], {(ip, 80): ("127.0.1.9", 8080) for ip in API.values()})


# ------------------------------------------------------------------- lab

root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="network namespaces need root"
)


@pytest.fixture
def lab(request, tmp_path):
    """A running l4 lab with ``(health, engine)``, always taken down."""
    health, engine = request.param
    provider = "local" if engine == "proxy" else "netns"
    path = write_l4_topology(
        tmp_path / "topology.toml", "nat", "fast" if engine == "proxy" else engine, health
    )
    lab = Lab(path, provider=provider, state_dir=tmp_path / "state")
    try:
        try:
            lab.up()
        except LabError as e:
            if provider == "local" and "is in use" in str(e):
                pytest.skip(f"another lab holds the local provider's addresses: {e}")
            raise
        # The box may probe a backend before it listens (DOWN after 1 failure, then UP
        # after `rise` successes): start every test from all backends up.
        wait_for(lab, all_up, generous(health, health["rise"] + 1))
        yield lab
    finally:
        lab.down()


def all_up(report: dict) -> bool:
    return all(row["health"] == "up" for row in report["backends"].values())


def health_of(lab: Lab) -> dict:
    reply = send_control(lab.control_path("lb"), {"op": "health"})
    assert reply["ok"], reply
    return reply


def wait_for(lab: Lab, condition: Callable[[dict], bool], within: float) -> dict:
    """Poll the ``health`` op until ``condition(report)``; fail after ``within`` seconds."""
    end = time.monotonic() + within
    while True:
        report = health_of(lab)
        if condition(report):
            return report
        assert time.monotonic() < end, f"not reached in {within:.1f} s: {report['backends']}"
        time.sleep(0.05)


def generous(health: dict, results: int) -> float:
    """10x the prediction for ``results`` more probe results: that many intervals, plus
    one probe's timeout (the one in flight when the backend changed)."""
    return 10 * (results * health["interval"] + health["timeout"])


def gets(lab: Lab, n: int) -> Counter:
    """``n`` GETs to the VIP from the client, each a new connection; answer lines counted."""
    url = lab.url("lb") if lab.provider == "local" else f"http://{VIP}/"
    argv = ["curl", "-s", "-m", "5", "-H", "Connection: close", *[url] * n]
    return Counter(lab.exec("client", argv, timeout=60).stdout.splitlines())


def messages(report: dict, backend: str = "api2") -> list[str]:
    return [e["message"] for e in report["events"] if e["backend"] == backend]


def back_in_rotation(lab: Lab, batches: int = 5, n: int = 30) -> bool:
    """api2 answers one of at most ``batches x n`` GETs."""
    return any(gets(lab, n)["api2"] for _ in range(batches))


@root
@pytest.mark.parametrize("lab", [(TCP_FAST, "fast")], indirect=True, ids=["tcp-fast"])
def test_tcp_check_keeps_a_backend_that_answers_500(lab):
    """TCP check: api2 answering 500 stays in rotation (clients get its 500s); refuse is seen."""
    before = health_of(lab)["backends"]["api2"]["checks"]
    lab.backend("api2", "error-500")
    fall = TCP_FAST["fall"]
    report = wait_for(
        lab,
        lambda r: r["backends"]["api2"]["checks"] >= before + fall + 1,
        generous(TCP_FAST, fall + 1),
    )
    assert report["backends"]["api2"]["state"] == "up"
    answers = gets(lab, 60)
    assert answers["api2: error"] > 0 and sum(answers.values()) == 60
    lab.backend("api2", "refuse")
    report = wait_for(
        lab, lambda r: r["backends"]["api2"]["state"] == "down", generous(TCP_FAST, fall)
    )
    assert report["backends"]["api2"]["last"] == "api2 DOWN after 2 failures: connection refused"
    lab.backend("api2", "healthy")
    report = wait_for(
        lab, lambda r: r["backends"]["api2"]["state"] == "up", generous(TCP_FAST, TCP_FAST["rise"])
    )
    assert messages(report)[-1] == "api2 UP after 2 successes"


@root
@pytest.mark.parametrize(
    "lab",
    [(FAST, "fast"), (FAST, "scapy"), (FAST, "nftables"), (FAST, "proxy")],
    indirect=True,
    ids=["http-fast", "http-scapy", "http-nftables", "http-proxy-local"],
)
def test_http_check_takes_a_500_backend_out_and_back(lab):
    """HTTP check: api2 answering 500 goes down, clients see no 500; healthy: back; refuse: down."""
    fall, rise = FAST["fall"], FAST["rise"]
    lab.backend("api2", "error-500")
    report = wait_for(lab, lambda r: r["backends"]["api2"]["state"] == "down", generous(FAST, fall))
    assert report["backends"]["api2"]["last"] == "api2 DOWN after 2 failures: HTTP 500 on /healthz"
    answers = gets(lab, 30)
    assert sum(answers.values()) == 30 and set(answers) <= {"api1", "api3"}
    lab.backend("api2", "healthy")
    report = wait_for(lab, lambda r: r["backends"]["api2"]["state"] == "up", generous(FAST, rise))
    assert messages(report)[-1] == "api2 UP after 2 successes"
    assert back_in_rotation(lab)
    lab.backend("api2", "refuse")
    report = wait_for(lab, lambda r: r["backends"]["api2"]["state"] == "down", generous(FAST, fall))
    assert messages(report)[-1] == "api2 DOWN after 2 failures: connection refused"


@root
@pytest.mark.parametrize(
    "lab", [(FAST, "fast"), (FAST, "nftables")], indirect=True, ids=["fast", "nftables"]
)
def test_lab_with_no_backend_up_drops_new_flows_and_counts_them(lab):
    """Every backend refusing: the VIP drops new connections and /stats counts them."""
    for name in API:
        lab.backend(name, "refuse")
    wait_for(
        lab,
        lambda r: all(r["backends"][n]["state"] == "down" for n in API),
        generous(FAST, FAST["fall"]),
    )
    tried = lab.exec("client", ["curl", "-s", "--connect-timeout", "1", f"http://{VIP}/"])
    assert tried.returncode == 28  # a connect timeout: dropped, not refused
    stats = json.loads(lab.exec("lb", ["curl", "-s", "127.0.0.1:9100/stats"]).stdout)
    assert stats["no_backend_drops"] >= 1
    text = lab.exec("lb", ["curl", "-s", "127.0.0.1:9100/metrics"]).stdout
    assert 'lbkit_l4_backend_up{backend="api1"} 0.0' in text
