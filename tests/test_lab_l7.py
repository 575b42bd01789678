"""The layered lab's L7 tier: alb1 and alb2 run lbkit's reverse proxy from labs/l7/router.toml.

Routing is checked from the client under netns (root: real packets, client ->
nlb (router) -> alb -> backend) and under the local provider (loopback, the
router file's 10.0.1.x addresses mapped to the hosts' 127.0.1.x endpoints).
Backends answer with their name and an ``X-Backend`` header. HTTPS: alb1 and
alb2 terminate TLS on 443 (8443 locally) with certificates from the lab's one CA
(``lab.ca_path``), checked with curl and Python's ssl from inside the client.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbkit.l7.model import Listen, Location, RouterConfig, ServerBlock, Upstream, UpstreamServer
from lbkit.l7.tomlconf import load_router_toml
from lbkit.lab import Lab, LabError, TopologyError, load_topology, parse_topology
from lbkit.lab.control import send_control
from lbkit.lab.roles.l7 import map_upstreams
from lbkit.lab.services import endpoint, endpoint_map, service_named, services_of
from lbkit.lab.state import LabState

from ._procs import lab_running, processes_mentioning

ROOT = Path(__file__).resolve().parent.parent
LAYERED = ROOT / "labs/layered.toml"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def parse(proc: subprocess.CompletedProcess) -> tuple[dict[str, str], str]:
    """curl -i's output: (headers, body) of a 200 answer."""
    assert proc.returncode == 0, proc.stderr
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    assert lines[0].startswith("HTTP/1.1 200"), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def fetch(lab: Lab, host: str, path: str = "/", *curl: str) -> tuple[dict[str, str], str]:
    """GET ``path`` from ``host``'s http service, sent from the client: (headers, body)."""
    return parse(lab.exec("client", ["curl", "-s", "-i", "-m", "5", *curl, lab.url(host, path)]))


def https_argv(lab: Lab, host: str, name: str, path: str = "/", *curl: str) -> list[str]:
    """curl from the client to ``host``'s https service as ``name`` (SNI and Host), trusting
    the lab CA only."""
    ip, port = lab.endpoint(host, "https")
    url = f"https://{name}{'' if port == 443 else f':{port}'}{path}"
    return ["curl", "-s", "-i", "-m", "5", "--cacert", str(lab.ca_path),
            "--resolve", f"{name}:{port}:{ip}", *curl, url]  # fmt: skip


def fetch_https(
    lab: Lab, host: str, name: str, path: str = "/", *curl: str
) -> tuple[dict[str, str], str]:
    """GET ``https://name/path`` from ``host``, sent from the client: (headers, body)."""
    return parse(lab.exec("client", https_argv(lab, host, name, path, *curl)))


PEER_CERT = """
import json, socket, ssl, sys
ip, port, name, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection((ip, port), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname=name) as tls:
        cert = tls.getpeercert()
print(json.dumps({"san": sorted(v for _, v in cert["subjectAltName"]), "issuer": cert["issuer"]}))
"""


def peer_cert(lab: Lab, host: str, name: str) -> dict:
    """The certificate ``host``'s https service shows for SNI ``name``, verified against the
    lab CA, as seen from the client: ``{"san": [...], "issuer": ...}``."""
    ip, port = lab.endpoint(host, "https")
    argv = [sys.executable, "-c", PEER_CERT, ip, str(port), name, str(lab.ca_path)]
    proc = lab.exec("client", argv)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(
            "netns", marks=pytest.mark.skipif(not IS_ROOT, reason="network namespaces need root")
        ),
        "local",
    ],
)
def lab(request, tmp_path_factory):
    """The layered lab, up under the provider, always taken down; nothing may remain."""
    state_dir = tmp_path_factory.mktemp(f"l7{request.param}")
    with lab_running(Lab(LAYERED, provider=request.param, state_dir=state_dir), state_dir) as lab:
        yield lab
    assert not state_dir.exists()  # the lab CA and its certificates went with the rest


# ------------------------------------------------------------------ routing


def test_api_path_reaches_an_api_backend(lab):
    """/api/x on alb1 is answered by one of api1..3."""
    headers, body = fetch(lab, "alb1", "/api/x")
    assert headers["x-backend"] in {"api1", "api2", "api3"}
    assert body == f"{headers['x-backend']}\n"


def test_static_path_reaches_a_static_backend(lab):
    """/static/ on alb1 is answered by static1 or static2."""
    headers, _ = fetch(lab, "alb1", "/static/logo.png")
    assert headers["x-backend"] in {"static1", "static2"}


def test_mobile_user_agent_reaches_mobile1(lab):
    """An iPhone User-Agent on / goes to mobile1."""
    headers, _ = fetch(lab, "alb1", "/", "-A", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)")
    assert headers["x-backend"] == "mobile1"


def test_canary_header_reaches_canary1(lab):
    """X-Canary: 1 on /api/ forces the canary pool."""
    headers, _ = fetch(lab, "alb1", "/api/x", "-H", "X-Canary: 1")
    assert headers["x-backend"] == "canary1"


def test_sticky_cookie_from_alb1_is_honoured_by_alb2(lab):
    """app.example.com: alb1 sets the sticky cookie; alb2 reads it (no new cookie, a sticky hit)."""
    headers, _ = fetch(lab, "alb1", "/", "-H", "Host: app.example.com")
    assert headers["x-backend"] == "app1"
    cookie = re.match(r"(lbkit_sticky=[^;]+);", headers["set-cookie"]).group(1)
    hits = lab_stats(lab, "alb2")["router"]["sticky_hits"]
    again, _ = fetch(lab, "alb2", "/", "-H", "Host: app.example.com", "-H", f"Cookie: {cookie}")
    assert again["x-backend"] == "app1" and "set-cookie" not in again
    assert lab_stats(lab, "alb2")["router"]["sticky_hits"] == hits + 1


# ------------------------------------------------------------------ HTTPS (TLS termination)


def test_https_reaches_app1_and_the_backend_sees_https(lab):
    """https://app.example.com/echo on alb1 (lab CA trusted): app1 answers over plain HTTP,
    having received X-Forwarded-Proto: https."""
    headers, body = fetch_https(lab, "alb1", "app.example.com", "/echo")
    assert headers["x-backend"] == "app1"
    received = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert received["x-forwarded-proto"] == "https"


def test_the_sticky_cookie_over_https_is_secure(lab):
    """Over HTTPS the sticky cookie carries Secure; over plain HTTP it does not."""
    secure, _ = fetch_https(lab, "alb1", "app.example.com")
    plain, _ = fetch(lab, "alb1", "/", "-H", "Host: app.example.com")
    assert "Secure" in secure["set-cookie"].split("; ")
    assert "Secure" not in plain["set-cookie"].split("; ")


def test_sni_picks_the_certificate_by_name(lab):
    """SNI app.example.com gets app.example.com's certificate; api.example.com the default
    server's (lb.example.com, api.example.com and the albs' addresses); both verify."""
    app = peer_cert(lab, "alb1", "app.example.com")
    api = peer_cert(lab, "alb1", "api.example.com")
    assert app["san"] == ["app.example.com"]
    assert api["san"] == sorted(["lb.example.com", "api.example.com", "10.0.1.3", "10.0.1.4"])
    assert app["issuer"] == api["issuer"]


def test_alb2_serves_a_certificate_from_the_same_ca(lab):
    """alb2 over HTTPS verifies against the same ca.pem as alb1 (one CA per lab), and
    honours alb1's sticky cookie."""
    first, _ = fetch_https(lab, "alb1", "app.example.com")
    cookie = re.match(r"(lbkit_sticky=[^;]+);", first["set-cookie"]).group(1)
    again, _ = fetch_https(lab, "alb2", "app.example.com", "/", "-H", f"Cookie: {cookie}")
    assert again["x-backend"] == "app1" and "set-cookie" not in again
    assert peer_cert(lab, "alb2", "app.example.com") == peer_cert(lab, "alb1", "app.example.com")
    assert sorted(p.name for p in lab.ca_path.parent.glob("ca*.pem")) == ["ca-key.pem", "ca.pem"]


def test_tls_1_1_is_refused_and_counted(lab):
    """curl limited to TLS 1.1 fails its handshake (exit 35); alb1 counts the failure."""
    before = lab_stats(lab, "alb1")["proxy"]["tls_handshake_failures"]
    argv = https_argv(lab, "alb1", "app.example.com", "/", "--tlsv1", "--tls-max", "1.1",
                      "--ciphers", "DEFAULT:@SECLEVEL=0")  # fmt: skip
    assert lab.exec("client", argv).returncode == 35
    deadline = time.monotonic() + 5
    while lab_stats(lab, "alb1")["proxy"]["tls_handshake_failures"] == before:
        assert time.monotonic() < deadline, "the refused handshake was not counted"


def test_url_and_endpoint_of_the_https_service(lab):
    """lab.url(host, path, service="https"): https://10.0.1.3/x natively (the address is in
    the default certificate, so curl verifies it), https://127.0.1.4:8443/x locally."""
    url = lab.url("alb1", "/api/x", service="https")
    if lab.provider == "netns":
        assert url == "https://10.0.1.3/api/x"
        got = lab.exec("client", ["curl", "-s", "-m", "5", "--cacert", str(lab.ca_path), url])
        assert got.returncode == 0, got.stderr
        assert got.stdout in {"api1\n", "api2\n", "api3\n"}
    else:
        assert url == "https://127.0.1.4:8443/api/x"


def test_the_lab_ca_lives_in_the_state(lab):
    """lab.ca_path is STATE/tls/ca.pem, a CA certificate; status names it."""
    assert lab.ca_path == lab.state_dir / "tls" / "ca.pem"
    assert lab.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert lab.status()["ca_path"] == str(lab.ca_path)


def test_status_prints_a_curl_line_that_works(lab):
    """`lbkit lab status` ends with a curl line over HTTPS (run from the client under netns);
    run as printed, it reaches app1."""
    proc = subprocess.run(
        [sys.executable, "-m", "lbkit", "lab", "status", "--state-dir", str(lab.state_dir)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("curl alb1 over HTTPS (lab CA)")
    command = line.split("  ", 1)[1].strip()
    if lab.provider == "netns":
        assert command.startswith("lbkit lab exec client -- curl ")
        command = command.split(" -- ", 1)[1]
    argv = shlex.split(command)
    assert argv[argv.index("--cacert") + 1] == str(lab.ca_path)  # absolute: not under ROOT
    got = lab.exec("client", argv)
    assert got.returncode == 0 and got.stdout == "app1\n", got.stderr


# ------------------------------------------------------------------ control and admin


def lab_stats(lab: Lab, host: str) -> dict:
    reply = send_control(lab.control_path(host), {"op": "stats"})
    assert reply["ok"], reply
    return reply["stats"]


def test_control_status_names_the_proxy_and_its_config(lab):
    """status: role l7, mode proxy, the router file, listening on http, https and admin."""
    status = lab.backend("alb1")
    assert (status["role"], status["mode"]) == ("l7", "proxy")
    assert status["config"].endswith("labs/l7/router.toml")
    ports = {port for _, _, port in status["listening"]}
    assert ports == {lab.endpoint("alb1", s)[1] for s in ("http", "https", "admin")}


def test_stats_show_the_router_pools_by_lab_name(lab):
    """stats: every pool of router.toml with its backends named as the lab's hosts."""
    upstreams = lab_stats(lab, "alb2")["router"]["upstreams"]
    assert {b["name"] for b in upstreams["api"]["backends"]} == {"api1", "api2", "api3"}
    api1 = lab.endpoint("api1")
    assert upstreams["api"]["backends"][0]["address"] == f"{api1[0]}:{api1[1]}"


def test_reload_keeps_serving(lab):
    """reload reads router.toml (and its certificates) again; the next request, plain or
    over HTTPS, is still routed."""
    reply = send_control(lab.control_path("alb2"), {"op": "reload"})
    assert reply["ok"] and reply["reloads"] >= 1
    assert fetch(lab, "alb2", "/api/x", "-H", "X-Canary: 1")[0]["x-backend"] == "canary1"
    assert fetch_https(lab, "alb2", "app.example.com")[0]["x-backend"] == "app1"


def test_sighup_reloads_like_lbkit_l7(lab):
    """SIGHUP to alb1's process reloads its router file, as `lbkit l7` does."""
    before = lab_stats(lab, "alb1")["reloads"]
    os.kill(LabState.load(lab.state_dir).processes["alb1"], signal.SIGHUP)
    deadline = time.monotonic() + 10  # each control round trip lets the host's loop run
    while lab_stats(lab, "alb1")["reloads"] == before:
        assert time.monotonic() < deadline, "no reload after SIGHUP"
    assert lab_stats(lab, "alb1")["reloads"] == before + 1
    assert fetch(lab, "alb1", "/", "-A", "iPhone")[0]["x-backend"] == "mobile1"


def test_health_op_reports_the_api_pools_checks(lab):
    """health: the L4 tier's format; router.toml checks the api pool over HTTP (every 2 s),
    so api1 comes UP (unknown counts as up meanwhile), while pools without checks report
    health None; Lab.health() lists the albs and the placeholder nlb."""
    reply = send_control(lab.control_path("alb1"), {"op": "health"})
    assert reply["ok"] and reply["host"] == "alb1"
    assert reply["checks"] == {"api": "http GET /healthz (200-399) every 2 s, timeout 1 s, "
                                      "rise 2, fall 3"}  # fmt: skip
    api1 = reply["backends"]["api1"]
    assert (api1["state"], api1["pool"]) == ("up", "api") and api1["health"] in ("unknown", "up")
    assert reply["backends"]["static1"]["health"] is None
    doc = lab.health()
    assert set(doc) == {"nlb", "alb1", "alb2"}
    assert doc["alb2"]["role"] == "l7" and set(doc["alb2"]["checks"]) == {"api"}
    assert doc["nlb"]["checks"] is None and "unknown op" in doc["nlb"]["note"]


def test_set_mode_is_refused(lab):
    """An L7 router has no backend modes: set-mode answers ok false."""
    with pytest.raises(LabError, match="fixed mode 'proxy'"):
        lab.backend("alb1", "error-500")


def test_admin_api_answers_inside_the_host_only(lab):
    """The admin API answers /stats where it listens; under netns not on alb1's lab address."""
    ip, port = lab.endpoint("alb1", "admin")
    got = lab.exec("alb1", ["curl", "-s", "-m", "5", f"http://{ip}:{port}/stats"])
    assert '"requests"' in got.stdout
    if lab.provider == "netns":
        assert ip == "127.0.0.1"
        refused = lab.exec("client", ["curl", "-s", "-m", "5", f"http://10.0.1.3:{port}/stats"])
        assert refused.returncode == 7  # connection refused


# ------------------------------------------------------------------ configuration


def test_layered_albs_name_the_router_file():
    """labs/layered.toml: alb1 and alb2 serve l7/router.toml and list http, https, admin."""
    topo = load_topology(LAYERED)
    for name in ("alb1", "alb2"):
        host = topo.host(name)
        assert host.options == {"config": "l7/router.toml"}
        assert [s.name for s in services_of(host)] == ["http", "https", "admin"]
    assert [s.name for s in services_of(topo.host("nlb"))] == ["http"]  # still a placeholder


def l7_topology(**options: object) -> dict:
    return {
        "name": "t",
        "segments": {"lan": {"subnet": "10.0.1.0/24"}},
        "hosts": {"alb": {"role": "l7", "addresses": ["10.0.1.3"], "options": options}},
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"confg": "r.toml"},
            "hosts.alb.options.confg: unknown key (expected config or nginx_conf)",
        ),
        ({"config": "r.toml", "nginx_conf": "n.conf"}, "hosts.alb.options: give config"),
        ({"config": 3}, "hosts.alb.options.config: expected a file path"),
        ({"nginx_conf": ""}, "hosts.alb.options.nginx_conf: expected a file path"),
    ],
)
def test_l7_option_mistakes_name_the_key(options, message):
    """A malformed l7 option is a TopologyError naming file and key."""
    with pytest.raises(TopologyError, match=re.escape(f"x.toml: {message}")):
        parse_topology(l7_topology(**options), source="x.toml")


def test_l7_without_a_router_file_keeps_the_placeholder():
    """No config option: the placeholder's single http service."""
    host = parse_topology(l7_topology()).host("alb")
    (http,) = services_of(host)
    assert http.description.startswith("placeholder")


def test_admin_endpoint_per_addressing():
    """Admin: 127.0.0.1:9101 natively, the host's own 127.0.1.x:9101 on loopback."""
    topo = load_topology(LAYERED)
    alb1 = topo.host("alb1")
    admin = service_named(alb1, "admin")
    assert endpoint(topo, alb1, admin, "native") == ("127.0.0.1", 9101)
    assert endpoint(topo, alb1, admin, "loopback") == ("127.0.1.4", 9101)


def test_https_endpoint_per_addressing():
    """https: 10.0.1.3:443 natively, 127.0.1.4:8443 on loopback (443 moves up as 80 does),
    and the native address maps to the loopback one."""
    topo = load_topology(LAYERED)
    alb1 = topo.host("alb1")
    https = service_named(alb1, "https")
    assert (https.proto, https.description) == ("tcp", "L7 router over TLS (lab CA)")
    assert endpoint(topo, alb1, https, "native") == ("10.0.1.3", 443)
    assert endpoint(topo, alb1, https, "loopback") == ("127.0.1.4", 8443)
    assert endpoint_map(topo, "loopback")[("10.0.1.3", 443)] == ("127.0.1.4", 8443)


def test_a_router_file_without_tls_has_no_https_service(tmp_path):
    """A router file with no `listen ... ssl`: http and admin only."""
    topo = bad_layered(tmp_path, '[[server]]\nlisten = [80]\n[[server.route]]\npath = "/"\n'
                       "return = { status = 204 }\n")  # fmt: skip
    assert [s.name for s in services_of(load_topology(topo).host("alb1"))] == ["http", "admin"]


def test_lab_url_takes_its_scheme_from_the_service():
    """url(..., service="https") is https (port left out when 443), http otherwise."""
    lab = Lab(LAYERED, provider="local", state_dir=ROOT / ".never-made")
    assert lab.url("alb1", "/x", service="https") == "https://10.0.1.3/x"
    assert lab.url("alb1", "/x") == "http://10.0.1.3/x"
    lab.addressing = "loopback"
    assert lab.url("alb1", "/x", service="https") == "https://127.0.1.4:8443/x"
    assert lab.url("alb1", "/x", service="http") == "http://127.0.1.4:8080/x"
    assert lab.ca_path == ROOT / ".never-made" / "tls" / "ca.pem"


def test_dry_run_issues_the_certificates_first(tmp_path):
    """The plan starts with the `lbkit l7 --check` that makes the lab CA and issues the
    routers' certificates into STATE/tls (once for the file both albs share)."""
    lab = Lab(LAYERED, provider="local", state_dir=tmp_path / "state")
    router = ROOT / "labs/l7/router.toml"
    plan = lab.plan()
    assert plan[0] == f"lbkit l7 --config {router} --tls-dir {tmp_path / 'state/tls'} --check"
    assert sum("--tls-dir" in line for line in plan) == 1
    assert not (tmp_path / "state").exists()


def test_a_tls_mistake_fails_up_in_one_line_and_leaves_nothing(tmp_path):
    """A certificate file that is not there: up fails before any host starts, one line
    naming the topology key and the router file's key; the state (CA included) is gone."""
    text = (ROOT / "labs/l7/router.toml").read_text()
    broken = text.replace(
        'server_name = ["app.example.com"]\nssl_certificate = "lab"',
        'server_name = ["app.example.com"]\nssl_certificate = "app.pem"\n'
        'ssl_certificate_key = "app-key.pem"',
    )
    assert broken != text
    (tmp_path / "router.toml").write_text(broken)
    topo = tmp_path / "t.toml"  # one host, on 127.0.1.2: free while the module's lab is up
    topo.write_text(
        'name = "t"\n[segments.lan]\nsubnet = "10.0.1.0/24"\n[hosts.alb]\nrole = "l7"\n'
        'addresses = ["10.0.1.3"]\noptions = { config = "router.toml" }\n'
    )
    lab = Lab(topo, provider="local", state_dir=tmp_path / "state")
    with pytest.raises(LabError) as err:
        lab.up()
    message = str(err.value)
    assert message.startswith(f"{topo}: hosts.alb.options.config: {tmp_path}/router.toml:")
    assert "server[1].ssl_certificate" in message and "\n" not in message
    assert not (tmp_path / "state").exists()
    assert processes_mentioning(str(tmp_path / "state")) == []


def test_local_addresses_map_every_upstream_keeping_names():
    """Under loopback addressing each 10.0.1.x:80 server becomes its host's endpoint, same name."""
    topo = load_topology(LAYERED)
    config = load_router_toml(ROOT / "labs/l7/router.toml")
    mapped = map_upstreams(config, endpoint_map(topo, "loopback"))
    servers = {s.name: s.address for up in mapped.upstreams.values() for s in up.servers}
    assert servers["api1"] == "127.0.1.6:8080" and servers["canary1"] == "127.0.1.13:8080"
    assert config.upstreams["api"].servers[0].address == "10.0.1.10:80"  # the original is kept


def test_unnamed_servers_and_proxy_pass_are_mapped_too():
    """An unnamed server keeps its lab address as name; a literal proxy_pass is rewritten."""
    config = RouterConfig(
        servers=[
            ServerBlock([Listen(80)], locations=[Location("/", proxy_pass="http://10.0.1.11/v2/")])
        ],
        upstreams={
            "u": Upstream("u", [UpstreamServer("10.0.1.10:3000"), UpstreamServer("9.9.9.9")])
        },
    )
    mapped = map_upstreams(config, endpoint_map(load_topology(LAYERED), "loopback"))
    first, other = mapped.upstreams["u"].servers
    assert (first.name, first.address) == ("10.0.1.10:3000", "127.0.1.6:3000")
    assert (other.name, other.address) == (None, "9.9.9.9")
    assert mapped.servers[0].locations[0].proxy_pass == "http://127.0.1.7:8080/v2/"


def bad_layered(tmp_path: Path, router: str) -> Path:
    """A copy of the layered lab whose albs serve ``router`` (written beside it)."""
    (tmp_path / "l7").mkdir()
    (tmp_path / "l7/router.toml").write_text(router)
    topo = tmp_path / "layered.toml"
    topo.write_text(LAYERED.read_text())
    return topo


def test_bad_router_file_fails_up_before_anything_is_made(tmp_path):
    """An unknown algorithm: LabError naming topology, key and the router file's key; no state."""
    text = (ROOT / "labs/l7/router.toml").read_text()
    topo = bad_layered(tmp_path, text.replace('"least_connections"', '"fastest"'))
    lab = Lab(topo, provider="local", state_dir=tmp_path / "state")
    with pytest.raises(LabError) as err:
        lab.up()
    message = str(err.value)
    assert message.startswith(f"{topo}: hosts.alb1.options.config: {tmp_path}/l7/router.toml:")
    assert "pool.api.algorithm" in message and "\n" not in message
    assert not (tmp_path / "state").exists()


def test_cli_reports_a_missing_router_file_in_one_line(tmp_path):
    """`lbkit lab up` with no router file: exit 2, one line naming the key; nothing made."""
    topo = tmp_path / "layered.toml"
    topo.write_text(LAYERED.read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "lbkit", "lab", "up", str(topo), "--provider", "netns",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "hosts.alb1.options.config:" in proc.stderr and "router.toml" in proc.stderr
    assert LabState.load(tmp_path / "state") is None
